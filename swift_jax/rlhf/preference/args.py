"""RLHFArgs: the preference-training arguments, named and defaulted as ms-swift 4.6's `swift rlhf` (RLHFArguments)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from swift_jax.rlhf.preference.losses import CPO_LOSS_TYPES, DPO_LOSSES

RLHF_TYPES = ("dpo", "orpo", "simpo", "cpo", "kto", "rm")
KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")
NO_REFERENCE = ("orpo", "cpo", "simpo", "rm")  # methods without a reference model


@dataclasses.dataclass
class RLHFArgs:
    """What `--rlhf_type` trains and the coefficients of its loss (every SFT argument applies besides)."""

    rlhf_type: Literal["dpo", "orpo", "simpo", "cpo", "kto", "rm"] = "dpo"
    """dpo | orpo | simpo (= cpo with loss_type simpo) | cpo | kto | rm (reward model, Bradley-Terry)."""
    beta: float | None = None
    """Strength of the KL/reference term (the temperature of the preference logits). Default: 2.0 for simpo,
    0.1 otherwise (ms-swift)."""
    loss_type: list[str] | None = None
    """DPO: sigmoid (default) | hinge | ipo | robust | bco_pair | sppo_hard | nca_pair | aot | aot_unpaired |
    apo_zero | apo_down | exo_pair | discopop | sft, several at once with --loss_weights (MPO); CPO: sigmoid
    (default) | hinge | ipo | simpo; KTO: kto (default) | apo_zero_unpaired."""
    loss_weights: list[float] | None = None
    """Weights of several DPO --loss_type values (default 1 each)."""
    label_smoothing: float = 0.0
    """Probability that a preference label is flipped (sigmoid, robust, exo_pair, aot, CPO)."""
    rpo_alpha: float | None = None
    """DPO: adds rpo_alpha * the chosen answers' NLL (RPO). None: no NLL term."""
    ld_alpha: float | None = None
    """DPO (LD-DPO): weight of the log-probs of answer tokens past the shorter answer's length."""
    discopop_tau: float = 0.05
    """DPO loss_type discopop: temperature of the log-ratio modulation."""
    simpo_gamma: float = 1.0
    """SimPO: target reward margin."""
    cpo_alpha: float = 1.0
    """CPO/SimPO: weight of the chosen answers' NLL (0 for pure SimPO)."""
    desirable_weight: float = 1.0
    """KTO: weight of the desirable examples' loss."""
    undesirable_weight: float = 1.0
    """KTO: weight of the undesirable examples' loss."""
    center_rewards_coefficient: float | None = None
    """RM: adds coef * (r_chosen + r_rejected)^2 to keep rewards centred (0.01 is typical)."""
    ref_model: str | None = None
    """Full fine-tuning (dpo, kto): the reference model (default: --model, a frozen copy)."""
    ref_adapters: list[str] = dataclasses.field(default_factory=list)
    """LoRA adapters for the reference (e.g. the SFT adapter you start from); default: the policy with every
    adapter switched off."""
    reference_free: bool = False
    """DPO: no reference model (its log-probs are 0). Ours, outside ms-swift's names."""
    precompute_ref_log_probs: bool = False
    """DPO/KTO: compute the reference log-probs once, in a first pass over the training data, and train without a
    reference forward (full fine-tuning then keeps no frozen copy). Ours, outside ms-swift's names."""

    def validate(self, tuner_type: str = "lora") -> "RLHFArgs":
        """Fill ms-swift's derived defaults (SimPO -> CPO, beta, loss_type) and check the combination."""
        if self.rlhf_type not in RLHF_TYPES:
            raise ValueError(f"--rlhf_type {self.rlhf_type!r}: expected one of {RLHF_TYPES}")
        if self.rlhf_type == "simpo":  # ms-swift's _init_simpo
            self.rlhf_type = "cpo"
            self.loss_type = self.loss_type or ["simpo"]
            self.beta = 2.0 if self.beta is None else self.beta
        self.beta = 0.1 if self.beta is None else self.beta
        if self.loss_type is None:
            self.loss_type = {"dpo": ["sigmoid"], "cpo": ["sigmoid"], "kto": ["kto"]}.get(self.rlhf_type, [])
        choices = {"dpo": tuple(DPO_LOSSES), "cpo": CPO_LOSS_TYPES, "kto": KTO_LOSS_TYPES}.get(self.rlhf_type, ())
        if self.loss_type and not choices:
            raise ValueError(f"--rlhf_type {self.rlhf_type} takes no --loss_type (got {self.loss_type})")
        bad = [t for t in self.loss_type if t not in choices]
        if bad:
            raise ValueError(f"--loss_type {bad} is not one of {self.rlhf_type}'s loss types {choices}")
        if len(self.loss_type) > 1 and self.rlhf_type != "dpo":
            raise ValueError(f"several --loss_type values ({self.loss_type}) are only supported for dpo")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"--loss_weights has {len(self.loss_weights)} values for --loss_type {self.loss_type}")
        if "robust" in self.loss_type and not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"--label_smoothing {self.label_smoothing}: robust needs a value in [0, 0.5)")
        if self.ref_model is not None and (self.rlhf_type in NO_REFERENCE or tuner_type != "full"):
            raise ValueError("--ref_model is only for full fine-tuning with dpo or kto (CPO/ORPO/SimPO/RM have no "
                             "reference; LoRA runs use the policy with its adapters off, or --ref_adapters)")
        if self.precompute_ref_log_probs and (self.rlhf_type in NO_REFERENCE or self.reference_free):
            raise ValueError(f"--precompute_ref_log_probs: {self.rlhf_type}{' with --reference_free' if self.reference_free else ''} "
                             "has no reference model to precompute (it is for dpo and kto)")
        return self
