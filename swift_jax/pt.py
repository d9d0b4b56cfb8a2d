"""`python -m swift_jax.pt ...`: pre-training (ms-swift's `swift pt`): the same trainer and arguments as SFT with
`--use_chat_template false` (`text` rows, and `messages` rows as plain query + response, every token trained)
and otherwise the SFT defaults (LoRA)."""

from __future__ import annotations

from swift_jax.train import main

PT_DEFAULTS = {"use_chat_template": False}
"""ms-swift's PretrainArguments: no chat template, so every token is trained (its loss_scale 'all')."""

if __name__ == "__main__":
    main(defaults=PT_DEFAULTS, command="pt")
