"""Preference-training methods for the shared trainer: DPO family, CPO/SimPO, ORPO, KTO and reward models.

Each is a `swift_jax.trainer.Method`: its data are pair rows (`swift_jax.rlhf.data`), its loss one forward of
the policy over both answers of every pair (`logps.model_pair_stats`) and, for DPO/KTO, one of the reference:

- LoRA (default): the same model with every adapter switched off (`tuners.lora.adapters_disabled`), so the
  reference costs no parameter memory, as PEFT's `disable_adapter()` in ms-swift;
- full fine-tuning, `--ref_model` or `--ref_adapters`: a frozen model the trainer passes as `extra` (its state;
  the method keeps the graph), loaded by `extra_state`;
- `--reference_free`: reference log-probs are 0;
- `--precompute_ref_log_probs`: either reference runs once, before training (`swift_jax.rlhf.precompute`), and
  the step reads its values from the batch (`ref_logps`).

Losses and metrics follow ms-swift 4.6 (see `swift_jax.rlhf.losses`); the step's loss is the mean over pairs
(KTO: examples) of all micro-batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from swift_jax.rlhf import losses as L
from swift_jax.rlhf.args import RLHFArgs
from swift_jax.rlhf.logps import PairStats, model_pair_stats, segment_pair_sums
from swift_jax.rlhf.precompute import REF_KEY
from swift_jax.trainer.method import LossOutput, Method, mean_metric
from swift_jax.tuners.lora import adapters_disabled
from swift_jax.tuners.value_head import attach_value_head

sg = jax.lax.stop_gradient


def _token_mean(total: jax.Array, count: jax.Array):
    """A `(sum, count)` metric of per-pair sums over per-pair token counts: a mean over answer tokens."""
    return total.astype(jnp.float32).sum(), count.astype(jnp.float32).sum()


def pair_metrics(stats: PairStats, out: L.PreferenceOut, logps: L.PairLogps | None = None, *,
                 sequence_logits: str | None = None) -> dict:
    """TRL's `rewards/*`, `logps/*` and `logits/*` metrics as (sum, count) over the valid pairs. `logits/*` is
    the vocabulary-mean logit averaged over answer tokens (DPO), or with `sequence_logits` over every position
    of the sequences, prompt included: "all" (TRL's CPO, the mean of the whole logits tensor) or "but_last"
    (TRL's ORPO, which drops each row's last position). TRL's also count the padding of its batch, which ours
    has none of, so the two agree on batches without padding."""
    valid = stats.valid
    logps = stats.logps if logps is None else logps
    c, r = out.chosen_rewards, out.rejected_rewards
    tokens = lambda t: jnp.where(valid, t, 0)
    if sequence_logits is not None:
        drop = 1.0 if sequence_logits == "but_last" else 0.0
        return {**pair_metrics(stats, out, logps),
                "logits/chosen": _token_mean(stats.chosen_sequence_logits - drop * stats.chosen_last_logits,
                                             tokens(stats.chosen_length - drop)),
                "logits/rejected": _token_mean(stats.rejected_sequence_logits - drop * stats.rejected_last_logits,
                                               tokens(stats.rejected_length - drop))}
    return {
        "rewards/chosen": mean_metric(c, valid),
        "rewards/rejected": mean_metric(r, valid),
        "rewards/accuracies": mean_metric(c > r, valid),
        "rewards/margins": mean_metric(c - r, valid),
        "logps/chosen": mean_metric(logps.chosen, valid),
        "logps/rejected": mean_metric(logps.rejected, valid),
        "logits/chosen": _token_mean(stats.chosen_logits, tokens(stats.logps.chosen_tokens)),
        "logits/rejected": _token_mean(stats.rejected_logits, tokens(stats.logps.rejected_tokens)),
    }


def nll_metric(stats: PairStats):
    """The chosen answers' NLL as a (sum, token count) metric."""
    return -stats.chosen_unweighted.sum(), stats.logps.chosen_tokens.sum().astype(jnp.float32)


class PreferenceMethod(Method):
    """Shared parts: pair data, the policy forward, a reference (for the methods that have one)."""

    batch_keys = ("input_ids", "labels", "segment_ids", "positions", "pair_value")
    has_reference = False

    def __init__(self, rlhf: RLHFArgs, *, model_path: str = "", dtype: str | None = None, tuner_type: str = "lora",
                 loss_chunk_size: int = 1024):
        self.rlhf = rlhf.validate(tuner_type)
        self.name = self.rlhf.rlhf_type
        self.model_path, self.dtype, self.tuner_type = model_path, dtype, tuner_type
        self.loss_chunk_size = loss_chunk_size
        self.pairs_per_row = 1  # set by build_data (packed rows hold several pairs)
        self._ref_graphdef = None
        self.precomputed = self.has_reference and self.rlhf.precompute_ref_log_probs and not self.rlhf.reference_free
        if self.precomputed:
            self.batch_keys = PreferenceMethod.batch_keys + (REF_KEY,)
        self.pipe = None
        self.ref_table = None  # precompute.ReferenceTable of the training pairs
        self._ref_forward = None  # streams: the reference forward run on each batch before its step

    # -- data ---------------------------------------------------------------------------------------------
    def build_data(self, args, tokenizer, **kwargs):
        from swift_jax.rlhf.data import build_preference_data

        pipe = build_preference_data(args, tokenizer, self.rlhf.rlhf_type, **kwargs)
        self.pairs_per_row = pipe.pairs_per_row
        self.pipe = pipe
        return pipe

    # -- forwards -----------------------------------------------------------------------------------------
    def stats(self, model, batch, ld_alpha: float | None = None) -> PairStats:
        return model_pair_stats(model, batch, pairs_per_row=self.pairs_per_row, chunk_size=self.loss_chunk_size,
                                ld_alpha=ld_alpha)

    @property
    def reference_mode(self) -> str:
        """free | frozen (a separate model in `extra`) | adapters_off."""
        if self.rlhf.reference_free:
            return "free"
        if self.tuner_type == "full" or self.rlhf.ref_model or self.rlhf.ref_adapters:
            return "frozen"
        return "adapters_off"

    def reference_stats(self, model, batch, extra, policy: PairStats) -> PairStats:
        """The reference's PairStats (no gradient); `policy`'s token counts when reference-free or precomputed."""
        mode = self.reference_mode
        if mode == "free" or self.precomputed:
            if mode == "free":
                chosen = rejected = jnp.zeros_like(policy.logps.chosen)
            else:
                chosen, rejected = segment_pair_sums(batch[REF_KEY], batch["segment_ids"], self.pairs_per_row)
            return jax.tree.map(sg, policy._replace(logps=policy.logps._replace(chosen=chosen, rejected=rejected)))
        if mode == "frozen":
            ref_model = nnx.merge(self._ref_graphdef, extra)
            ref_model.eval()
            return jax.tree.map(sg, self.stats(ref_model, batch))
        with adapters_disabled():
            return jax.tree.map(sg, self.stats(model, batch))

    def extra_state(self, trainer) -> Any:
        """The frozen reference model's state when it is a separate model (full FT, --ref_model, --ref_adapters);
        with --precompute_ref_log_probs, none: the reference runs here, once (see `precompute_reference`)."""
        if not self.has_reference or self.reference_mode == "free":
            return None
        if self.precomputed:
            self.precompute_reference(trainer)
            return None
        if self.reference_mode != "frozen":
            return None
        self._ref_graphdef, state = self._load_reference(trainer)
        return state

    def _load_reference(self, trainer) -> tuple[nnx.GraphDef, Any]:
        """(graphdef, state) of the frozen reference: --ref_model or --model, with --ref_adapters merged."""
        from swift_jax.modeling import load_model
        from swift_jax.trainer.setup import resolve_path
        from swift_jax.tuners import load_adapter, merge_lora

        path = resolve_path(self.rlhf.ref_model or self.model_path)
        ref = load_model(path, dtype=self.dtype, mesh=getattr(trainer, "mesh", None))
        for path in self.rlhf.ref_adapters:
            merge_lora(load_adapter(ref, path))
        return nnx.split(ref)

    def reference_forward(self, trainer):
        """A host batch -> the reference's (chosen, rejected) log-prob sums of its pair slots, computed on the run's
        mesh: the policy with its adapters off (read from the trainer's current state at each call), or a frozen
        copy. On several processes each passes its own rows and gets its own rows' values back."""
        import numpy as np
        from jax.experimental import multihost_utils

        from swift_jax.parallel import logical_to_spec
        from swift_jax.trainer.trainer import device_batch

        keys = ("input_ids", "labels", "segment_ids", "positions")
        rows = logical_to_spec(("batch",), trainer.mesh)
        out = jax.sharding.NamedSharding(trainer.mesh, rows)

        def sums(model, batch):
            model.eval()
            stats = self.stats(model, batch)
            return stats.logps.chosen, stats.logps.rejected

        if self.reference_mode == "frozen":
            graphdef, state = self._load_reference(trainer)
            compiled = jax.jit(lambda s, b: sums(nnx.merge(graphdef, s), b), out_shardings=(out, out))
            inputs = lambda: (state,)
        else:
            def adapters_off(params, rng, frozen, batch):
                with adapters_disabled():
                    return sums(nnx.merge(trainer.graphdef, params, rng, frozen), batch)

            compiled = jax.jit(adapters_off, out_shardings=(out, out))
            inputs = lambda: (trainer.state.params, trainer.state.rng, trainer.frozen)

        def forward(host: dict):
            chosen, rejected = compiled(*inputs(), device_batch(host, keys, trainer.mesh))
            # this process's pair slots, `[its rows * pairs_per_row]`, as device_batch placed its rows
            local = multihost_utils.global_array_to_host_local_array((chosen, rejected), trainer.mesh, (rows, rows))
            return tuple(np.asarray(x) for x in local)

        return forward

    def precompute_reference(self, trainer) -> None:
        """--precompute_ref_log_probs: the reference's values of every training pair (one pass over an epoch in
        the training layout; a stream gets them batch by batch in `make_batches`) and of the validation batches."""
        from swift_jax.rlhf.data import pad_pair
        from swift_jax.rlhf.precompute import ReferenceTable, attach_computed, in_step, padded_batches

        pipe = self.pipe
        forward = self.reference_forward(trainer)
        if pipe.streaming:
            self._ref_forward = forward
        else:
            empty = pad_pair(None, pipe.row_length, pipe.pad_id)
            batches = padded_batches(iter(pipe.share_of_rows()), pipe.batch_size, empty)
            batches = in_step(batches, next(padded_batches([empty], pipe.batch_size, empty)))  # all in step
            self.ref_table = ReferenceTable.compute(forward, batches, len(pipe.train_table), self.pairs_per_row)
        pipe.set_val_batches([attach_computed(forward, b, self.pairs_per_row) for b in pipe.val_batches()])

    def make_batches(self, trainer, host_batches: list[dict]) -> list[dict]:
        """With --precompute_ref_log_probs: the batches with their reference values."""
        from swift_jax.rlhf.precompute import attach_computed

        if not self.precomputed:
            return host_batches
        if self.ref_table is not None:
            return [self.ref_table.attach(b) for b in host_batches]
        return [attach_computed(self._ref_forward, b, self.pairs_per_row) for b in host_batches]

    def describe(self) -> str:
        r = self.rlhf
        ref = f", reference: {self.reference_mode}{' (precomputed)' if self.precomputed else ''}" if self.has_reference else ""
        return f"{r.rlhf_type} (loss_type {r.loss_type or '-'}, beta {r.beta}{ref})"


class DPO(PreferenceMethod):
    """DPO and its variants (`--loss_type`, MPO weights, RPO, LD-DPO)."""

    has_reference = True

    def init_carry(self) -> L.RunningMean | None:
        """bco_pair's running mean of the micro-batches' mean rewards (TRL's RunningMoments)."""
        return L.RunningMean.zeros() if "bco_pair" in self.rlhf.loss_type else None

    def loss(self, model, batch, extra) -> LossOutput:
        return self.loss_with_carry(model, batch, extra, self.init_carry())[0]

    def loss_with_carry(self, model, batch, extra, carry) -> tuple[LossOutput, Any]:
        r = self.rlhf
        policy = self.stats(model, batch, ld_alpha=r.ld_alpha)
        ref = self.reference_stats(model, batch, extra, policy)
        hyper = L.DPOHyper(r.beta, r.label_smoothing, r.discopop_tau)
        if carry is not None:  # bco_pair: update the running mean with this micro-batch first, as TRL
            x = L.Logratios(policy.logps.chosen, policy.logps.rejected, ref.logps.chosen, ref.logps.rejected)
            carry = carry.update(L.bco_batch_reward(x, policy.valid, r.beta), policy.valid.any())
            hyper = hyper._replace(bco_delta=carry.mean)
        out = L.dpo_losses(policy.logps, ref.logps, policy.valid, loss_types=r.loss_type, loss_weights=r.loss_weights,
                           hyper=hyper, nll=policy.nll, rpo_alpha=r.rpo_alpha)
        metrics = pair_metrics(policy, out)
        if r.rpo_alpha is not None or "sft" in r.loss_type:
            metrics["nll_loss"] = nll_metric(policy)
        n = policy.valid.sum().astype(jnp.float32)
        return LossOutput(out.losses.sum(), n, metrics), carry


class CPO(PreferenceMethod):
    """CPO and SimPO (`--rlhf_type simpo` = CPO with loss_type simpo): no reference, + cpo_alpha * NLL."""

    def loss(self, model, batch, extra) -> LossOutput:
        r = self.rlhf
        policy = self.stats(model, batch)
        out = L.cpo_losses(policy.logps, policy.valid, loss_type=r.loss_type[0], beta=r.beta,
                           label_smoothing=r.label_smoothing, simpo_gamma=r.simpo_gamma)
        n = policy.valid.sum().astype(jnp.float32)
        metrics = pair_metrics(policy, out, _averaged(policy) if r.loss_type[0] in ("ipo", "simpo") else None,
                               sequence_logits="all")
        metrics["nll_loss"] = nll_metric(policy)
        return LossOutput(out.losses.sum() + r.cpo_alpha * policy.nll * n, n, metrics)


class ORPO(PreferenceMethod):
    """ORPO: the chosen answers' NLL plus beta times the odds-ratio term; no reference."""

    def loss(self, model, batch, extra) -> LossOutput:
        policy = self.stats(model, batch)
        out, log_odds = L.orpo_losses(policy.logps, policy.valid, beta=self.rlhf.beta)
        n = policy.valid.sum().astype(jnp.float32)
        metrics = pair_metrics(policy, out, _averaged(policy), sequence_logits="but_last")
        metrics["nll_loss"] = nll_metric(policy)
        metrics["log_odds_chosen"] = mean_metric(log_odds, policy.valid)
        metrics["log_odds_ratio"] = mean_metric(jax.nn.log_sigmoid(log_odds), policy.valid)
        return LossOutput(out.losses.sum() + policy.nll * n, n, metrics)


def _averaged(stats: PairStats) -> L.PairLogps:
    """Per-token average log-probs (TRL's `average_log_prob`: CPO ipo/simpo, ORPO)."""
    p = stats.logps
    return p._replace(chosen=p.chosen / jnp.maximum(p.chosen_tokens, 1),
                      rejected=p.rejected / jnp.maximum(p.rejected_tokens, 1))


class KTO(PreferenceMethod):
    """KTO: each pair slot holds (the labelled example, the KL example = its prompt with another row's answer)."""

    has_reference = True

    def loss(self, model, batch, extra) -> LossOutput:
        r = self.rlhf
        policy = self.stats(model, batch)
        ref = self.reference_stats(model, batch, extra, policy)
        valid = policy.valid
        desirable = _pair_values(batch, self.pairs_per_row) > 0.5
        kl = L.kto_kl(policy.logps.rejected, ref.logps.rejected, valid) if r.loss_type[0] == "kto" else jnp.zeros(())
        losses, rewards = L.kto_losses(policy.logps.chosen, ref.logps.chosen, desirable, kl, valid, beta=r.beta,
                                       desirable_weight=r.desirable_weight, undesirable_weight=r.undesirable_weight,
                                       loss_type=r.loss_type[0])
        good, bad = valid & desirable, valid & ~desirable
        vocab = model.config.vocab_size
        metrics = {
            "kl": (kl, jnp.ones((), jnp.float32)),
            "rewards/chosen": mean_metric(rewards, good),
            "rewards/rejected": mean_metric(rewards, bad),
            "logps/chosen": mean_metric(policy.logps.chosen, good),
            "logps/rejected": mean_metric(policy.logps.chosen, bad),
            "logits/chosen": mean_metric(policy.chosen_logits * vocab, good),  # TRL: sum over tokens and vocab
            "logits/rejected": mean_metric(policy.chosen_logits * vocab, bad),
        }
        return LossOutput(losses.sum(), valid.sum().astype(jnp.float32), metrics)

    def derived_metrics(self, metrics: dict) -> dict:
        """As TRL's KTOTrainer logs them: `rewards/margins` = the chosen mean minus the rejected mean, and a
        side's `rewards`/`logps`/`logits` only when the step had examples of it (else left out: NaN)."""
        out = {}
        for side in ("chosen", "rejected"):
            for kind in ("rewards", "logps", "logits"):
                total, count = metrics[f"{kind}/{side}"]
                out[f"{kind}/{side}"] = jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
        return out


def _pair_values(batch: dict, pairs_per_row: int) -> jax.Array:
    """The per-pair `pair_value` (RM margin, KTO label) `[pairs]`: its mean over the pair's chosen segment."""
    total, _ = segment_pair_sums(batch["pair_value"], batch["segment_ids"], pairs_per_row)
    length, _ = segment_pair_sums(jnp.ones(batch["segment_ids"].shape), batch["segment_ids"], pairs_per_row)
    return total / jnp.maximum(length, 1)


class RewardModel(PreferenceMethod):
    """Reward model: a value head on the decoder reads each answer's last token; Bradley-Terry loss."""

    def prepare_model(self, model) -> None:
        attach_value_head(model)

    def loss(self, model, batch, extra) -> LossOutput:
        r = self.rlhf
        seg = batch["segment_ids"]
        hidden = model.hidden_states(batch["input_ids"], positions=batch["positions"], segment_ids=seg)
        values = model.score(hidden)  # [batch, seq]
        last = (seg > 0) & (seg != jnp.pad(seg[:, 1:], ((0, 0), (0, 1))))  # a sequence's last token
        k = 2 * self.pairs_per_row
        onehot = (seg[..., None] == jnp.arange(1, k + 1, dtype=seg.dtype)) & last[..., None]
        per_segment = jnp.einsum("bs,bsk->bk", values, onehot.astype(jnp.float32)).reshape(seg.shape[0], -1, 2)
        chosen, rejected = per_segment[..., 0].reshape(-1), per_segment[..., 1].reshape(-1)
        valid = onehot.any(1).reshape(seg.shape[0], -1, 2)[..., 0].reshape(-1)
        margin = _pair_values(batch, self.pairs_per_row)
        losses = L.reward_model_losses(chosen, rejected, valid, margin=margin,
                                       center_rewards_coefficient=r.center_rewards_coefficient)
        metrics = {
            "rewards/chosen": mean_metric(chosen, valid),
            "rewards/rejected": mean_metric(rejected, valid),
            "rewards/accuracies": mean_metric(chosen > rejected, valid),
            "rewards/margins": mean_metric(chosen - rejected, valid),
        }
        if r.center_rewards_coefficient is not None:
            metrics["center_rewards_loss"] = mean_metric(r.center_rewards_coefficient * (chosen + rejected) ** 2, valid)
        return LossOutput(losses.sum(), valid.sum().astype(jnp.float32), metrics)


METHODS: dict[str, type[PreferenceMethod]] = {"dpo": DPO, "cpo": CPO, "orpo": ORPO, "kto": KTO, "rm": RewardModel}
"""rlhf_type (after SimPO -> CPO) -> method class."""


def make_method(rlhf: RLHFArgs, *, model_path: str = "", dtype: str | None = None, tuner_type: str = "lora",
                loss_chunk_size: int = 1024) -> PreferenceMethod:
    """The method for `rlhf.rlhf_type` (validates `rlhf`, so `simpo` becomes CPO with its defaults)."""
    rlhf = dataclasses.replace(rlhf).validate(tuner_type)
    return METHODS[rlhf.rlhf_type](rlhf, model_path=model_path, dtype=dtype, tuner_type=tuner_type,
                                   loss_chunk_size=loss_chunk_size)
