"""Preference training (`python -m swift_jax.rlhf`): DPO family, CPO/SimPO, ORPO, KTO, reward models.

    losses.py   the losses as pure functions of per-sequence log-probs (ms-swift 4.6 / TRL formulas)
    rows.py     preference row formats -> chosen / rejected conversations
    data.py     pairs -> rows of whole pairs (padded or packed), a DataPipeline
    logps.py    per-answer log-probs of one forward over pair rows
    methods.py  the trainer Methods (DPO, CPO, ORPO, KTO, RewardModel) and their reference models
    args.py     RLHFArgs (ms-swift's names and defaults)

Online RL (GRPO family; see `grpo.py`): grpo_loss.py (policy loss), advantages.py, dynamic_sampling.py,
rollout.py (compiled sampler), grpo_logps.py, grpo_data.py (prompt rows), grpo_args.py (GRPOArgs), memory.py.
"""

from swift_jax.rlhf.args import RLHF_TYPES, RLHFArgs
from swift_jax.rlhf.data import PreferencePipeline, build_preference_data
from swift_jax.rlhf.methods import CPO, DPO, KTO, METHODS, ORPO, RewardModel, attach_value_head, make_method

__all__ = [
    "CPO",
    "DPO",
    "KTO",
    "METHODS",
    "ORPO",
    "RLHF_TYPES",
    "RLHFArgs",
    "PreferencePipeline",
    "RewardModel",
    "attach_value_head",
    "build_preference_data",
    "make_method",
]
