"""The seam between the trainer and a training method (SFT, pre-training, DPO family, GRPO family).

The trainer owns the run: state, the jit step with gradient accumulation, the optimizer, logs, evaluation,
checkpoints, resume and multi-host agreement. A *method* says only three things:

- what its data is: `build_data(...)` returns a pipeline of host batches (numpy arrays, leading axis = rows);
- what its loss is: `loss(model, batch, extra)` -> `LossOutput`, traced inside the compiled step;
- optionally, a phase that makes the step's batches (`make_batches`, e.g. GRPO's rollouts) and frozen extra
  state the loss reads (`extra_state`, e.g. a full reference model for DPO).

A new method subclasses `Method`, fills those in, and is passed to `Trainer(args, method)`; the trainer never
names a method.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from .loss import chunked_cross_entropy

if TYPE_CHECKING:
    from flax import nnx

    from .trainer import Trainer

Metric = tuple[jax.Array, jax.Array]
"""(sum, count) of a metric over a micro-batch; the logged value is sum / count over the whole step."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LossOutput:
    """What a method's loss returns for one micro-batch.

    `loss_sum` is summed over the micro-batch's units (target tokens for SFT, pairs for DPO, sequences or
    tokens for GRPO) and `count` is the number of those units; the step's loss is the sum of `loss_sum`
    over all micro-batches divided by the sum of `count`, so accumulating 4 x 2 equals one batch of 8.
    `metrics` maps a logged name to `(sum, count)`, aggregated the same way.
    """

    loss_sum: jax.Array
    count: jax.Array
    metrics: dict[str, Metric] = dataclasses.field(default_factory=dict)


def mean_metric(values: jax.Array, mask: jax.Array | None = None) -> Metric:
    """A `(sum, count)` metric for the mean of `values` (over `mask`'s true entries when given)."""
    values = values.astype(jnp.float32)
    if mask is None:
        return values.sum(), jnp.asarray(values.size, jnp.float32)
    return jnp.where(mask, values, 0.0).sum(), mask.sum().astype(jnp.float32)


class Method:
    """Base class of training methods; subclasses override `build_data` and `loss` (and optionally more)."""

    name: str = "method"
    batch_keys: tuple[str, ...] = ("input_ids", "labels", "segment_ids", "positions")
    """Host arrays of one micro-batch that the step receives (each `[rows, ...]`, rows split over data x fsdp)."""

    def build_data(self, args, tokenizer, *, batch_size: int, eval_batch_size: int, batches_per_step: int, seed: int,
                   shuffle: bool, process_index: int, process_count: int):
        """The data pipeline for `args` (the run's `DataArgs`): an object with `train_iterator(num_epochs)` (a
        checkpointable iterator of host batches of `batch_size` rows; the `batches_per_step` batches of one step
        must stack), `val_batches()` (of `eval_batch_size` rows), `steps_per_epoch` and `stats`, like
        `swift_jax.data.DataPipeline`; optionally `split_val_rows()` (rows for the run folder's val_dataset.jsonl)."""
        raise NotImplementedError

    def loss(self, model: "nnx.Module", batch: dict[str, jax.Array], extra: Any) -> LossOutput:
        """The summed loss of one micro-batch (traced; `model` is in train or eval mode as the caller set)."""
        raise NotImplementedError

    def prepare_model(self, model: "nnx.Module") -> None:
        """Change the model (in place) after the tuner is applied and before its state is split, e.g. attach a
        reward model's value head. Nothing by default."""

    def extra_state(self, trainer: "Trainer") -> Any:
        """Frozen arrays the loss reads besides the model (e.g. a reference model's parameters); None by default."""
        return None

    def init_carry(self) -> Any:
        """State the loss reads and updates from micro-batch to micro-batch, in training and evaluation, across
        steps (see `loss_with_carry`); it is checkpointed with the train state, so resume is exact. E.g.
        bco_pair's running mean of rewards (TRL's RunningMoments). None by default."""
        return None

    def loss_with_carry(self, model: "nnx.Module", batch: dict[str, jax.Array], extra: Any, carry: Any) -> tuple[LossOutput, Any]:
        """`loss` and the updated carry (what the step calls); the default leaves the carry alone."""
        return self.loss(model, batch, extra), carry

    def derived_metrics(self, metrics: dict[str, Metric]) -> dict[str, jax.Array]:
        """Logged values computed from the step's aggregated `(sum, count)` metrics, for those that are not a
        mean of their own (KTO's `rewards/margins` = the chosen mean minus the rejected mean, as TRL); NaN
        leaves a value out of that step's log record. None by default (an empty dict)."""
        return {}

    def make_batches(self, trainer: "Trainer", host_batches: list[dict]) -> list[dict]:
        """A phase before each step that turns the data's batches into the step's (GRPO: prompts -> rollouts
        -> rewards -> advantages). The default passes them through."""
        return host_batches

    def describe(self) -> str:
        """One line for the run's start-up report."""
        return self.name


class LanguageModeling(Method):
    """Next-token cross-entropy on the labelled tokens: SFT (templated chats, answers trained) and pre-training
    (`swift pt`: every token trained). `router_aux_loss_coef` adds the MoE load-balancing loss."""

    def __init__(self, name: str = "sft", *, loss_chunk_size: int = 1024, router_aux_loss_coef: float = 0.0,
                 vision=None, acc_strategy: str = "token"):
        self.name = name
        self.acc_strategy = acc_strategy
        """token: `token_acc` (share of target tokens predicted); seq: `seq_acc` (share of samples whose every
        target token is predicted), as ms-swift's --acc_strategy."""
        self.loss_chunk_size = loss_chunk_size
        self.router_aux_loss_coef = router_aux_loss_coef
        self.vision = vision
        """`data.vision.VisionData` of a vision-language model: batches carry patches and M-RoPE positions
        (Qwen2-VL family) or tiles (InternVL)."""

    def build_data(self, args, tokenizer, **kwargs):
        from swift_jax.data import build_data

        if self.vision is not None and args.template is None:  # ms-swift's template of the model type
            args = dataclasses.replace(args, template=self.vision.template)
        pipe = build_data(args, tokenizer, vision=self.vision, **kwargs)
        if self.vision is not None:  # patches and their layout per row (data.vision_batching)
            self.batch_keys = pipe.features
        elif pipe.weighted:  # ms-swift's non-binary loss_scale: batches carry per-token weights
            self.batch_keys = Method.batch_keys + ("loss_scale",)
        return pipe

    def loss(self, model, batch, extra) -> LossOutput:
        inputs = dict(positions=batch["positions"], segment_ids=batch["segment_ids"])
        if self.vision is not None and not self.vision.is_qwen2_vl:  # InternVL: tiles per row
            from swift_jax.models.vision.tiles import row_hidden_states

            hidden = row_hidden_states(model, batch["input_ids"], batch["positions"], batch["segment_ids"],
                                       batch["pixel_values"])
        elif self.vision is not None:  # positions [rows, seq, 3] -> M-RoPE's [3, rows, seq]; patches per row
            from swift_jax.models.vision.rows import row_embeds

            positions = jnp.moveaxis(batch["positions"], -1, 0)
            embeds = row_embeds(model, batch["input_ids"], batch)
            hidden = model.model(batch["input_ids"], positions, batch["segment_ids"], embeds=embeds)
        elif self.router_aux_loss_coef:
            hidden, aux = model.hidden_states(batch["input_ids"], **inputs, return_aux_loss=True)
        else:
            hidden = model.hidden_states(batch["input_ids"], **inputs)
        seq = self.acc_strategy == "seq"
        loss_sum, count, correct, *sequences = chunked_cross_entropy(
            hidden, batch["labels"], model.logits, chunk_size=self.loss_chunk_size, weights=batch.get("loss_scale"),
            segment_ids=batch["segment_ids"] if seq else None)
        if self.router_aux_loss_coef:  # weighted by tokens, like the mean cross-entropy
            loss_sum = loss_sum + self.router_aux_loss_coef * aux * count
        n = count.astype(jnp.float32)
        if seq:
            right, total = (x.astype(jnp.float32) for x in sequences)
            return LossOutput(loss_sum, n, {"seq_acc": (right, total)})
        return LossOutput(loss_sum, n, {"token_acc": (correct.astype(jnp.float32), n)})
