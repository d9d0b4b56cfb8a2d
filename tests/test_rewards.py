"""Built-in reward functions (ms-swift 4.6's formulas), the `orms` registry and `--external_plugins` loading."""

import importlib.util
import json
import math
import os
import textwrap

import numpy as np
import pytest

from swift_jax.rewards import ORM, build_reward_funcs, load_plugins, orms, score_completions
from swift_jax.rlhf.grpo.args import GRPOArgs


def _funcs(*names, **args):
    return build_reward_funcs(names, GRPOArgs(**{"max_completion_length": 100, **args}))


def test_accuracy_is_ms_swifts_math_verify():
    """ms-swift 4.6's MathAccuracy recorded on these cases (scripts/record_grpo_golden.py): equal rewards."""
    golden = json.load(open(os.path.join(os.path.dirname(__file__), "golden", "grpo_ms_swift.json")))["math_accuracy"]
    (acc,) = _funcs("accuracy")
    assert acc(golden["completions"], solution=golden["solution"]) == golden["rewards"]
    # symbolic equivalence, \boxed{} extraction, <answer> tags; an unparseable gold answer scores 0
    got = acc(["\\boxed{\\frac{1}{2}}", "<answer>0.5</answer>", "so \\boxed{1+x}", "\\boxed{3}", "\\boxed{5}"],
              solution=["0.5", "$\\frac{1}{2}$", "$x+1$", "$4$", "no number"])
    assert got == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_accuracy_without_math_verify_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "math_verify" else real(name, *a))
    with pytest.raises(ImportError, match=r"swift-jax\[math\]"):
        _funcs("accuracy")


def test_format():
    (fmt,) = _funcs("format")
    assert fmt(["<think>a\nb</think>\n<answer>1</answer>", "<think>a</think><answer>1</answer> extra", "<answer>1</answer>"]) == [1.0, 0.0, 0.0]


def test_cosine_follows_the_length_schedule():
    (cos,) = _funcs("cosine", cosine_max_len=10)
    ids = [[1] * 0, [1] * 10, [1] * 5, [1] * 5]
    got = cos(["\\boxed{4}", "so \\boxed{4}", "<answer>4</answer>", "\\boxed{3}"], solution=["4"] * 4, response_token_ids=ids)
    # correct: 1.0 at length 0, 0.5 at cosine_max_len; wrong: -0.5 at 0, 0.0 at max; midpoint halfway
    assert got == pytest.approx([1.0, 0.5, 0.75, -0.25])


def test_repetition_penalty():
    (rep,) = _funcs("repetition")  # trigrams, max penalty -1
    got = rep(["a b c a b c", "a b", "", "one two three four"])
    assert got == pytest.approx([(1 - 3 / 4) * -1.0, 0.0, 0.0, 0.0])  # 4 trigrams, 3 distinct


def test_soft_overlong():
    (soft,) = _funcs("soft_overlong", soft_cache_length=20)  # soft_max_length defaults to 100
    got = soft([""] * 3, response_token_ids=[[0] * 70, [0] * 90, [0] * 100])
    assert got == pytest.approx([0.0, -0.5, -1.0])
    with pytest.raises(ValueError, match="soft_cache_length"):
        _funcs("soft_overlong")


def test_unknown_reward_names_the_registry_and_the_plugin_route():
    with pytest.raises(ValueError, match="external_plugins"):
        _funcs("nonexistent")


def test_external_plugin_registers_and_scores(tmp_path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        textwrap.dedent(
            """
            from swift_jax.rewards import ORM, orms

            class ExactMatch(ORM):
                def __call__(self, completions, solution, **kwargs):
                    return [None if s is None else float(c.strip() == s) for c, s in zip(completions, solution)]

            orms['exact'] = ExactMatch
            """
        )
    )
    registry = load_plugins([str(plugin)])
    assert issubclass(registry["exact"], ORM) and orms is registry
    funcs = _funcs("exact", "repetition")
    scores = score_completions(funcs, ["4 ", "5", "x"], {"solution": ["4", "4", None], "response_token_ids": [[1], [2], [3]]})
    np.testing.assert_array_equal(scores[:, 0][:2], [1.0, 0.0])
    assert math.isnan(scores[2, 0]) and scores.shape == (3, 2)
    with pytest.raises(FileNotFoundError, match="missing.py"):
        load_plugins("missing.py")
    del orms["exact"]
