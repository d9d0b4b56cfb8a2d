"""`--reward_model`: a value-head checkpoint (what `--rlhf_type rm` trains) loads with its head and scores GRPO
completions at the last token of prompt + completion as transformers' *ForSequenceClassification does, under
the checkpoint's name."""

import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoTokenizer

import swift_jax
from swift_jax.rlhf.grpo import GRPO
from swift_jax.rlhf.grpo.args import GRPOArgs
from swift_jax.rlhf.grpo.data import PromptBatches
from swift_jax.rlhf.reward_model import ModelReward
from swift_jax.tuners.value_head import attach_value_head

from test_grpo import CONFIG, ROWS, TOKENIZER

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _save(model, folder):
    swift_jax.save_pretrained(model, str(folder))
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(TOKENIZER, name)):
            shutil.copy(os.path.join(TOKENIZER, name), folder / name)
    return str(folder)


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory):
    model = attach_value_head(swift_jax.init_model(CONFIG, dtype="float32", seed=3), seed=5)
    model.score.kernel[...] = model.score.kernel[...] * 50  # rewards well apart from 0
    folder = tmp_path_factory.mktemp("rm") / "my_rm"
    folder.mkdir()
    return _save(model, folder)


def test_reward_model_scores_the_last_token_of_prompt_and_completion(rm_path):
    rm = ModelReward(rm_path, max_length=128)
    assert rm.name == "my_rm" and rm.model.score is not None  # load_model read score.weight
    messages = [[{"role": "user", "content": "question 1"}], [{"role": "user", "content": "a longer question 22"}]] * 2
    completions = ["yes", "no it is not", "", "yes yes"]
    got = rm(completions, messages=messages)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(rm_path, dtype=torch.float32).eval()
    with torch.no_grad():  # transformers reads the score at the last token of each unpadded row
        want = [float(hf(torch.tensor([rm.encode(m, c)])).logits[0, 0]) for m, c in zip(messages, completions)]
    assert got == pytest.approx(want, abs=1e-4)
    assert len(set(np.round(got, 4))) == 4  # the completion changes the score


def test_grpo_with_a_reward_model(rm_path, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    args = GRPOArgs(num_generations=4, max_completion_length=8, temperature=1.0, reward_funcs=["format"], reward_model=[rm_path],
                    reward_weights=[1.0, 0.5], beta=0.0)
    method = GRPO(args, tokenizer=tokenizer, eos_ids=(tokenizer.convert_tokens_to_ids("<|im_end|>"),), max_length=128)
    assert method.reward_names == ["Format", "my_rm"]
    data = PromptBatches(ROWS, tokenizer, num_generations=4, batch_size=8).batches()
    (batch,) = method.make_batches_for(swift_jax.init_model(CONFIG, dtype="float32", seed=0), [next(data)])
    rm_mean = method.host_metrics["rewards/my_rm/mean"]
    assert rm_mean != 0.0 and method.host_metrics["reward"] == pytest.approx(0.5 * rm_mean, abs=1e-4)  # format scores 0
    assert np.abs(batch["advantages"]).sum() > 0

    with pytest.raises(ValueError, match="3 rewards"):
        GRPOArgs(reward_funcs=["format", "accuracy"], reward_model=[rm_path], reward_weights=[1.0, 1.0])
    plain = _save(swift_jax.init_model(CONFIG, dtype="float32", seed=0), tmp_path / "policy")
    with pytest.raises(ValueError, match="no value head.*rlhf_type rm"):
        ModelReward(plain)
