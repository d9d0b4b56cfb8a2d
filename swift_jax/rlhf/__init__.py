"""`python -m swift_jax.rlhf --rlhf_type T` (ms-swift's `swift rlhf`): the training methods beyond SFT.

    preference/      DPO family, CPO/SimPO, ORPO, KTO, reward models (offline pairs)
    grpo/            the GRPO family (online: rollouts -> rewards -> advantages -> policy loss)
    reward_model.py  a trained reward model as a GRPO reward
    __main__.py      the command: `--rlhf_type` picks an arguments class and a method
"""

from swift_jax.rlhf.preference.args import RLHF_TYPES, RLHFArgs
from swift_jax.rlhf.preference.data import PreferencePipeline, build_preference_data
from swift_jax.rlhf.preference.methods import CPO, DPO, KTO, METHODS, ORPO, RewardModel, attach_value_head, make_method

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
