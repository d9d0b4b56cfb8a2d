"""Online RL, the GRPO family (GRPO, DAPO, GSPO, Dr. GRPO, BNPO, RLOO, REINFORCE++): prompts -> rollouts ->
rewards -> advantages -> the clipped policy loss.

    args.py              GRPOArgs (ms-swift's names and defaults)
    data.py              prompt rows, each repeated num_generations times (ms-swift's RepeatSampler)
    rollout.py           the compiled sampler (KV cache, on the training mesh)
    advantages.py        group-relative advantages and reward statistics
    dynamic_sampling.py  DAPO's resampling of groups whose rewards do not vary
    logps.py             completion log-probs under the policy or the reference
    loss.py              the policy loss (clipping, KL, loss types)
    memory.py            compiled programs' memory, checked before the first rollout
    method.py            GRPO, the trainer Method
"""

from swift_jax.rlhf.grpo.method import GRPO

__all__ = ["GRPO"]
