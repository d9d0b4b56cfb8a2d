"""--optim, --lr_scheduler_type / --lr_scheduler_kwargs, --warmup_steps: the same numbers as transformers' Trainer
builds with torch (the reference ms-swift runs)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

from swift_jax.cli import parse_config
from swift_jax.config import ALIASES, TrainArguments, TrainingArgs
from swift_jax.trainer.optim import OPTIM_RULES, learning_rate_schedule, make_optimizer, resolve_optim

LR = 1e-2


def hf_lrs(name: str, total: int, warmup: int, kwargs: dict | None = None) -> list[float]:
    """transformers' learning rate after 0, 1, ..., total optimizer steps."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    sched = transformers.get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total, scheduler_specific_kwargs=kwargs)
    out = []
    for _ in range(total + 1):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("name, kwargs", [
    ("cosine", None), ("linear", None), ("constant", None), ("constant_with_warmup", None),
    ("cosine_with_min_lr", {"min_lr": 1e-3}), ("cosine_with_min_lr", {"min_lr_rate": 0.25}),
    ("cosine_with_restarts", {"num_cycles": 3}), ("cosine", {"num_cycles": 1.0}),
])
def test_schedules_equal_transformers_get_scheduler(name, kwargs):
    total, warmup = 20, 4
    ours = learning_rate_schedule(name, LR, total, warmup, kwargs)
    np.testing.assert_allclose([float(ours(s)) for s in range(total + 1)], hf_lrs(name, total, warmup, kwargs), rtol=1e-5, atol=1e-9)


def test_cosine_with_min_lr_needs_its_floor_and_rejects_foreign_kwargs():
    with pytest.raises(ValueError, match="needs exactly one of min_lr or min_lr_rate"):
        learning_rate_schedule("cosine_with_min_lr", LR, 10, 0, {})
    with pytest.raises(ValueError, match=r"--lr_scheduler_kwargs \['min_lr'\] does not apply to --lr_scheduler_type linear"):
        learning_rate_schedule("linear", LR, 10, 0, {"min_lr": 1e-6})


def args_of(*flags):
    return parse_config(TrainArguments, ["--model", "m", "--dataset", "d.jsonl", *flags], aliases=ALIASES).validate()


def test_warmup_steps_follow_transformers_and_refuse_a_ratio_beside_them():
    assert args_of("--warmup_steps", "7").training.warmup_steps_for(100) == 7
    assert args_of("--warmup_steps", "0.05").training.warmup_steps_for(100) == 5  # below 1: a fraction (transformers 5)
    assert args_of("--warmup_ratio", "0.03").training.warmup_steps_for(100) == 3  # rounded up
    with pytest.raises(ValueError, match="--warmup_ratio and --warmup_steps cannot be set at the same time"):
        args_of("--warmup_ratio", "0.1", "--warmup_steps", "5")


def test_lr_scheduler_kwargs_parse_from_json_and_yaml(tmp_path):
    args = args_of("--lr_scheduler_type", "cosine_with_min_lr", "--lr_scheduler_kwargs", '{"min_lr": 1e-6}')
    assert args.training.scheduler_kwargs() == {"min_lr": 1e-6}
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\ndataset: [d.jsonl]\nlr_scheduler_type: cosine_with_min_lr\nlr_scheduler_kwargs: {min_lr_rate: 0.1}\n")
    args = parse_config(TrainArguments, [str(recipe)], aliases=ALIASES).validate()
    assert args.training.scheduler_kwargs() == {"min_lr_rate": 0.1}
    with pytest.raises(ValueError, match="is not a JSON object"):
        args_of("--lr_scheduler_kwargs", "min_lr=1e-6")
    with pytest.raises(ValueError, match="needs exactly one of min_lr or min_lr_rate"):
        args_of("--lr_scheduler_type", "cosine_with_min_lr")


# -- optimizers: one or two updates against the torch optimizer transformers' Trainer builds for that name ---------
W0 = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
B0 = np.random.default_rng(1).normal(size=(4,)).astype(np.float32)
GRADS = [np.random.default_rng(2 + i).normal(size=(6, 4)).astype(np.float32) for i in range(2)]
GRADS_B = [np.random.default_rng(5 + i).normal(size=(4,)).astype(np.float32) for i in range(2)]
WD = 0.1


def torch_reference(optim: str):
    """The Trainer's torch optimizer for `optim` (weight decay on the matrix, none on the bias, as its groups)."""
    w, b = torch.nn.Parameter(torch.tensor(W0)), torch.nn.Parameter(torch.tensor(B0))
    groups = [{"params": [w], "weight_decay": WD}, {"params": [b], "weight_decay": 0.0}]
    if optim == "adafactor":
        opt = transformers.Adafactor(groups, lr=LR, scale_parameter=False, relative_step=False)
    elif optim == "sgd":
        opt = torch.optim.SGD(groups, lr=LR)
    elif optim == "adagrad":
        opt = torch.optim.Adagrad(groups, lr=LR)
    elif optim == "rmsprop":
        opt = torch.optim.RMSprop(groups, lr=LR)
    else:
        opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.95), eps=1e-8, fused=optim == "adamw_torch_fused")
    for g, gb in zip(GRADS, GRADS_B):
        w.grad, b.grad = torch.tensor(g), torch.tensor(gb)
        opt.step()
    return w.detach().numpy(), b.detach().numpy()


def optax_run(optim: str):
    opt = make_optimizer(optax.constant_schedule(LR), weight_decay=WD, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=None, optim=optim)
    params = {"kernel": jnp.asarray(W0), "bias": jnp.asarray(B0)}
    state = opt.init(params)
    for g, gb in zip(GRADS, GRADS_B):
        updates, state = opt.update({"kernel": jnp.asarray(g), "bias": jnp.asarray(gb)}, state, params)
        params = optax.apply_updates(params, updates)
    return np.asarray(params["kernel"]), np.asarray(params["bias"])


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop"])
def test_optim_updates_equal_the_torch_optimizer(optim):
    (w, b), (ref_w, ref_b) = optax_run(optim), torch_reference(optim)
    assert np.abs(w - W0).max() > 1e-3  # the step moved the weights
    np.testing.assert_allclose(w, ref_w, atol=2e-6)
    np.testing.assert_allclose(b, ref_b, atol=2e-6)


def test_lion_is_optax_lion_with_the_adam_betas_and_decoupled_decay():
    # bitsandbytes' Lion (what transformers runs for lion_32bit) is not installed; optax.lion is the same rule
    w, _ = optax_run("lion_32bit")
    p = jnp.asarray(W0)
    ref = optax.lion(LR, b1=0.9, b2=0.95, weight_decay=WD)
    state = ref.init(p)
    for g in GRADS:
        u, state = ref.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, u)
    np.testing.assert_allclose(w, np.asarray(p), atol=1e-7)


def test_low_bit_names_run_the_float32_rule_with_one_warning_and_unknown_names_fail():
    assert resolve_optim("adamw_torch") == ("adamw", None)
    rule, note = resolve_optim("adamw_8bit")
    assert rule == "adamw" and "optax keeps no low-bit optimizer state; using adamw with float32 state" in note
    np.testing.assert_array_equal(optax_run("adamw_bnb_8bit")[0], optax_run("adamw_torch")[0])
    assert resolve_optim("paged_lion_8bit")[0] == "lion"
    with pytest.raises(ValueError, match=r"--optim 'galore_adamw': not available in swift_jax; choose one of \["):
        args_of("--optim", "galore_adamw")
    assert set(OPTIM_RULES) <= {o.value for o in transformers.training_args.OptimizerNames} | {"adamw_apex_fused"}
