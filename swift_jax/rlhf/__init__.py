"""Preference (DPO family) and online RL (GRPO family) training methods."""
