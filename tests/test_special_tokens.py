"""--new_special_tokens: the tokenizer gains the tokens, the embedding grows as transformers' resize_token_embeddings
grows it, and checkpoints and exports carry both."""

import json
import os

import numpy as np
import torch
import transformers
from infer_fixtures import build_chat_model
from test_trainer import args_of
from tiny_models import build_hf_model, save_hf_model

import swift_jax
from swift_jax.export import main as export_main
from swift_jax.hf.special_tokens import resize_token_embeddings
from swift_jax.trainer.trainer import Trainer


def test_new_rows_are_the_mean_rows_transformers_adds(tmp_path):
    for tied in (True, False):
        hf = build_hf_model("qwen2", seed=3, tie_word_embeddings=tied)
        path = save_hf_model(hf, tmp_path / f"m{tied}")
        model = swift_jax.load_model(path, dtype="float32")
        resize_token_embeddings(model, 256)
        torch.manual_seed(0)
        hf.resize_token_embeddings(256)  # mean_resizing: new rows ~ N(mean, 1e-9 x covariance)
        ours = np.asarray(model.model.embed_tokens.embedding[...])
        np.testing.assert_allclose(ours, hf.get_input_embeddings().weight.detach().numpy(), atol=1e-3)
        np.testing.assert_allclose(ours[128:], np.broadcast_to(ours[:128].mean(0), (128, ours.shape[1])), atol=1e-6)
        if not tied:
            np.testing.assert_allclose(np.asarray(model.lm_head.kernel[...]).T, hf.lm_head.weight.detach().numpy(), atol=1e-3)
        swift_jax.save_pretrained(model, str(tmp_path / f"saved{tied}"))
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / f"saved{tied}")
        assert reloaded.config.vocab_size == 256 and reloaded.get_input_embeddings().weight.shape == (256, 64)


def test_training_saves_the_grown_tokenizer_and_export_merges_with_it(tmp_path):
    base = build_chat_model(tmp_path / "base")  # 320 tokens, vocab_size 320
    trainer = Trainer(args_of("--model", base, "--init_from_scratch", "false", "--output_dir", str(tmp_path / "out"),
                              "--max_steps", "1", "--max_length", "256", "--new_special_tokens", "<tool>", "<obs>",
                              "--modules_to_save", "embed_tokens"))
    result = trainer.train()
    checkpoint = os.path.join(result["run_dir"], "checkpoint-1")
    assert trainer.model.config.vocab_size == 384  # 322 tokens, rounded up to a multiple of 128 (as ms-swift)
    saved = transformers.AutoTokenizer.from_pretrained(checkpoint)
    assert saved.convert_tokens_to_ids(["<tool>", "<obs>"]) == [320, 321] and "<tool>" in saved.all_special_tokens
    assert saved("a<tool>b").input_ids.count(320) == 1  # one token, never split
    merged = export_main(["--adapters", checkpoint, "--merge_lora", "true"])
    assert merged == f"{checkpoint}-merged"
    assert json.load(open(os.path.join(merged, "config.json")))["vocab_size"] == 384
    assert transformers.AutoTokenizer.from_pretrained(merged).convert_tokens_to_ids("<obs>") == 321
    model = transformers.AutoModelForCausalLM.from_pretrained(merged)
    trained_rows = np.asarray(trainer.current_model().model.embed_tokens.embedding[...])
    np.testing.assert_allclose(model.get_input_embeddings().weight.detach().numpy(), trained_rows, atol=1e-6)
