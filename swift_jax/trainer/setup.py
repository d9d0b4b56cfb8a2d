"""Run set-up shared by the training commands: bundled paths, the model, the tuner, the compilation cache."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
from flax import nnx

from swift_jax.config import TrainArguments

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_path(path: str) -> str:
    """A path as given, or relative to the installed package (bundled assets like `assets/quickstart`)."""
    if os.path.exists(path):
        return path
    bundled = os.path.join(PACKAGE_DIR, path.removeprefix("swift_jax/"))
    return bundled if os.path.exists(bundled) else path


def enable_compilation_cache(cache_dir: str | None, output_dir: str) -> str | None:
    """Turn on JAX's persistent compilation cache in `cache_dir` (`none` disables it), so a second run of the
    same job skips XLA compilation. An explicit JAX_COMPILATION_CACHE_DIR in the environment wins. The cache
    never goes inside `output_dir` (a run folder is the user's result, not a cache)."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    if not cache_dir or cache_dir.lower() == "none":
        return None
    path = os.path.abspath(os.path.expanduser(cache_dir))
    out = os.path.abspath(output_dir)
    if path == out or path.startswith(out + os.sep):
        raise ValueError(f"--compilation_cache_dir {cache_dir} is inside --output_dir {output_dir}; choose a folder outside it")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def resolve_scan_layers(scan_layers: bool | None, gradient_checkpointing, platform: str | None = None) -> bool:
    """`--scan_layers`, or its default: scanned layers (one compiled layer body), except on CPU without
    gradient checkpointing, where XLA:CPU cannot overlap neighbouring layers' backward work inside the
    scan's loop and the unrolled layout steps 1.1-1.3x faster (`scripts/bench_scan.py`, docs/benchmarks.md)."""
    if scan_layers is not None:
        return scan_layers
    no_remat = gradient_checkpointing in (False, "false")
    return not (no_remat and (platform or jax.default_backend()) == "cpu")


def build_model(args: TrainArguments, mesh) -> nnx.Module:
    """The base model on the mesh: loaded from safetensors, or initialised from config.json."""
    from swift_jax.modeling import init_model, load_model, read_hf_config, resolve_model_dir

    m = args.model_args
    full = args.tuner.tuner_type == "full"
    # Full fine-tuning keeps float32 master weights whatever the compute dtype.
    param_dtype = "float32" if full and m.dtype not in (None, "float32", "fp32") else None
    path = resolve_path(m.model)
    scan = resolve_scan_layers(m.scan_layers, args.training.gradient_checkpointing)
    if m.init_from_scratch:
        hf_config = read_hf_config(resolve_model_dir(path))
        hf_config = m.adjust_config()(hf_config) if m.adjust_config() else hf_config
        return init_model(hf_config, dtype=m.dtype, seed=args.training.seed, mesh=mesh, param_dtype=param_dtype, scan_layers=scan)
    return load_model(path, dtype=m.dtype, mesh=mesh, param_dtype=param_dtype, scan_layers=scan, adjust_config=m.adjust_config())


ADAPTER_FIELDS = {"lora_rank": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout"}


def check_adapter_conflicts(args: TrainArguments, adapter_dirs: list[str]) -> None:
    """`--adapters` brings its own rank, alpha and dropout (PEFT's adapter_config.json); a flag the user gave
    explicitly that says otherwise is an error naming both values, never silently replaced."""
    from swift_jax.hf.peft import read_peft_config

    explicit = getattr(args, "explicit_flags", frozenset())
    for path in adapter_dirs:
        config = read_peft_config(path)
        for flag, key in ADAPTER_FIELDS.items():
            ours = getattr(args.tuner, flag)
            if flag in explicit and key in config and float(config[key]) != float(ours):
                raise ValueError(
                    f"--{flag} {ours} conflicts with --adapters {path}, whose adapter_config.json has {key}={config[key]}; "
                    f"drop --{flag} (the adapter's value is used) or train a new adapter without --adapters"
                )


@dataclasses.dataclass
class TunerPlan:
    """What the tuner decided: the trainable filter, masks of partly frozen stacked variables (full
    fine-tuning with freeze rules; see tuners/select.py), and whether adapters are trained (PEFT export)."""

    trainable: Any
    masks: dict[str, Any] = dataclasses.field(default_factory=dict)
    is_lora: bool = False


def apply_tuner(model: nnx.Module, args: TrainArguments) -> TunerPlan:
    """Attach adapters as the tuner asks (new ones, or `--adapters` to continue), or choose the parameters
    full fine-tuning trains; NEFTune noise on the embeddings. Adapter dropout uses `--seed` whichever way
    the adapters came."""
    from swift_jax.tuners import multimodal

    t = args.tuner
    seed = args.training.seed
    multimodal.check_controls(model, t)
    if t.neftune_noise_alpha:
        from swift_jax.tuners.neftune import add_neftune

        add_neftune(model, t.neftune_noise_alpha, seed=seed + 2)
    if t.tuner_type == "full":
        if t.adapters:
            raise ValueError("--adapters needs --tuner_type lora (full fine-tuning trains the base weights)")
        return _full_plan(model, t)
    from swift_jax.tuners.init import uses_kernel

    # QLoRA quantizes the base first; PiSSA/OLoRA (QPiSSA) first split the float kernel, then quantize the residual.
    quantize_first = t.tuner_type == "qlora" and not uses_kernel(t.init_weights)
    if quantize_first:
        from swift_jax.tuners.qlora import quantize_base

        quantize_base(model, bits=t.quant_bits, skip=multimodal.quantization_skip(model))
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    if not t.adapters:
        from swift_jax.models.config import to_jnp_dtype
        from swift_jax.tuners import ALL_LINEAR, loraize

        if multimodal.is_multimodal(model) and ALL_LINEAR in t.target_modules and not t.target_regex:
            t.target_regex = multimodal.lora_target_regex(model, t)  # saved in args.json and the adapter config

        loraize(model, target_modules=t.target_modules, rank=t.lora_rank, alpha=t.lora_alpha, dropout=t.lora_dropout,
                rngs=rngs, use_rslora=t.use_rslora, use_dora=t.use_dora, init_weights=t.init_weights,
                lora_dtype=to_jnp_dtype(t.lora_dtype) if t.lora_dtype else None, target_regex=t.target_regex)
        if t.target_parameters:  # per-expert LoRA on the MoE experts (PEFT's target_parameters)
            from swift_jax.tuners.experts import loraize_experts

            loraize_experts(model, t.target_parameters, rank=t.lora_rank, alpha=t.lora_alpha, rngs=rngs,
                            use_rslora=t.use_rslora, init_weights=t.init_weights,
                            lora_dtype=to_jnp_dtype(t.lora_dtype) if t.lora_dtype else None)
    else:
        from swift_jax.tuners.adapters import load_adapter

        paths = [resolve_path(p) for p in t.adapters]
        for p in paths:
            if not os.path.isdir(p):
                raise FileNotFoundError(f"--adapters {p}: no such folder")
        check_adapter_conflicts(args, paths)
        for p in paths:
            load_adapter(model, p, rngs=rngs)
        _adopt_saved_modules(t, paths)
    if t.tuner_type == "qlora" and not quantize_first:  # PEFT's pissa_init on a 4-bit layer does the same
        from swift_jax.tuners.qlora import quantize_base

        quantize_base(model, bits=t.quant_bits, skip=multimodal.quantization_skip(model))
    if not (t.modules_to_save or t.lora_bias != "none"):
        return TunerPlan(nnx.LoRAParam, is_lora=True)
    from swift_jax.tuners.select import module_selection

    selection = module_selection(model, t.modules_to_save, t.lora_bias)
    return TunerPlan(selection.filter(also=nnx.LoRAParam), selection.masks, is_lora=True)


def _adopt_saved_modules(t, paths: list[str]) -> None:
    """An adapter's own modules_to_save and bias="all" keep training (and are saved again) when training
    continues from it, as PEFT's `is_trainable=True`; otherwise checkpoints would lose them."""
    from swift_jax.hf.peft import read_peft_config

    for p in paths:
        config = read_peft_config(p)
        t.modules_to_save = list(dict.fromkeys([*t.modules_to_save, *(config.get("modules_to_save") or [])]))
        if config.get("bias") == "all":
            t.lora_bias = "all"


def _full_plan(model: nnx.Module, t) -> TunerPlan:
    from swift_jax.tuners import multimodal

    freeze, trainable = list(t.freeze_parameters), list(t.trainable_parameters)
    if multimodal.is_multimodal(model):  # --freeze_llm / --freeze_vit / --freeze_aligner
        more_freeze, more_trainable = multimodal.full_freeze_rules(model, t)
        freeze, trainable = freeze + more_freeze, trainable + more_trainable
    rules = dict(freeze_parameters=freeze, freeze_parameters_regex=t.freeze_parameters_regex,
                 freeze_parameters_ratio=t.freeze_parameters_ratio, trainable_parameters=trainable,
                 trainable_parameters_regex=t.trainable_parameters_regex)
    if not any(rules.values()):
        return TunerPlan(nnx.Param)
    from swift_jax.tuners.select import full_selection

    selection = full_selection(model, **rules)
    if not selection.paths:
        raise ValueError("the freeze rules leave no parameter to train; add --trainable_parameters or relax them")
    return TunerPlan(selection.filter(), selection.masks)
