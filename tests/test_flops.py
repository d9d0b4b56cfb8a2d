"""The FLOP formula against a hand count on a tiny config."""

import numpy as np
import pytest

from swift_jax.flops import attention_flops, causal_pairs, mfu, peak_flops, segment_lengths, training_flops
from swift_jax.models.config import ModelConfig

CFG = ModelConfig(
    model_type="qwen2", vocab_size=10, hidden_size=4, intermediate_size=6, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=1, head_dim=2, max_position_embeddings=32,
)


def test_hand_count_full_and_lora():
    # per layer: q 4*4 + k 4*2 + v 4*2 + o 4*4 = 48, mlp 3*4*6 = 72 -> 120; x2 layers = 240; head 4*10 = 40
    n = 280
    lengths = [3, 2]  # tokens = 5
    # attention pairs: 3 -> 1+2+3 = 6, 2 -> 1+2 = 3 -> 9 pairs x 2 layers x 12*heads*head_dim (48) = 864
    assert attention_flops(CFG, lengths) == 864
    assert training_flops(CFG, lengths) == 6 * n * 5 + 864
    assert training_flops(CFG, lengths, full=False, lora_params=7) == 4 * n * 5 + 6 * 7 * 5 + 864


def test_sliding_window_and_padding():
    assert causal_pairs(5, None) == 15
    assert causal_pairs(5, 2) == 1 + 2 + 2 + 2 + 2
    windowed = CFG.replace(layer_windows=(2, None))
    assert attention_flops(windowed, [5]) == 48 * (9 + 15)
    seg = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 0, 0, 0, 0]])
    assert sorted(segment_lengths(seg)) == [2, 2, 3]


def test_peak_table_and_mfu():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("TPU v5 lite") == 197e12
    assert peak_flops("cpu") is None and mfu(1e12, 1.0, "cpu", 1) is None
    assert mfu(989e12 * 0.5, 1.0, "NVIDIA H200", 1) == pytest.approx(0.5)
