"""Reward functions for online RL, in ms-swift 4's plugin form (`swift.rewards`).

A plugin file passed with `--external_plugins plugin.py` does::

    from swift_jax.rewards import ORM, orms

    class MyReward(ORM):
        def __call__(self, completions, solution, **kwargs) -> list[float]:
            return [float(c.strip() == s) for c, s in zip(completions, solution)]

    orms['my_reward'] = MyReward

and `--reward_funcs my_reward` uses it. Built-ins: accuracy, format, cosine, repetition, soft_overlong.
"""

from .orm import ORM, orms
from .plugins import build_reward_funcs, load_plugins, score_completions

__all__ = ["ORM", "orms", "build_reward_funcs", "load_plugins", "score_completions"]
