"""When a run logs, evaluates, saves, picks its best checkpoint and stops (transformers' strategies under ms-swift's
defaults and its EarlyStopCallback), and what --bf16/--fp16 and --save_only_model change."""

import os

import jax
import numpy as np
import pytest
from test_trainer import BASE, args_of, lines

from swift_jax.trainer import checkpoint as ckpt
from swift_jax.trainer.best import BestMetric, EarlyStop
from swift_jax.trainer.trainer import Trainer

SMALL = [*BASE, "--dataset", BASE[BASE.index("--dataset") + 1].replace("#400", "#32")]  # 4 steps an epoch on 8 devices


def run_small(tmp_path, *flags):
    from swift_jax.cli import parse_config
    from swift_jax.config import ALIASES, TrainArguments

    trainer = Trainer(parse_config(TrainArguments, [*SMALL, "--output_dir", str(tmp_path), *flags], aliases=ALIASES).validate())
    return trainer, trainer.train()


def checkpoints(run_dir):
    return sorted(int(d.split("-")[1]) for d in os.listdir(run_dir) if d.startswith("checkpoint-"))


def test_epoch_strategies_save_and_evaluate_at_epoch_ends_and_the_first_step_is_logged(tmp_path):
    trainer, result = run_small(tmp_path, "--num_train_epochs", "2", "--save_strategy", "epoch", "--logging_steps", "3",
                                "--val_dataset", BASE[BASE.index("--dataset") + 1].replace("#400", "#8"))
    assert trainer.steps_per_epoch == 4 and trainer.args.training.eval_strategy == "epoch"  # follows save_strategy
    records = lines(result["run_dir"])
    assert checkpoints(result["run_dir"]) == [4, 8]
    assert [r["step"] for r in records if "eval_loss" in r] == [4, 8]
    assert [r["step"] for r in records if "loss" in r] == [1, 3, 6, 8]  # --logging_first_step defaults to true


def test_strategy_no_neither_evaluates_nor_saves_and_acc_strategy_seq_logs_seq_acc(tmp_path):
    trainer, result = run_small(tmp_path, "--max_steps", "3", "--save_strategy", "no", "--split_dataset_ratio", "0.25",
                                "--logging_first_step", "false", "--logging_steps", "2", "--acc_strategy", "seq")
    assert trainer.args.training.eval_strategy == "no" and trainer.args.data.split_dataset_ratio == 0  # as ms-swift
    records = lines(result["run_dir"])
    assert checkpoints(result["run_dir"]) == [] and not any("eval_loss" in r for r in records)
    assert [r["step"] for r in records if "loss" in r] == [2, 3]
    assert all(0 <= r["seq_acc"] <= 1 and "token_acc" not in r for r in records if "loss" in r)  # ms-swift's name
    assert records[-1]["last_model_checkpoint"] is None and records[-1]["best_model_checkpoint"] is None


def test_load_best_model_at_end_restores_the_best_checkpoint(tmp_path, capsys):
    # gradient ascent: the eval loss rises, so the first evaluation (step 2) is the best
    trainer, result = run_small(tmp_path, "--max_steps", "6", "--save_steps", "2", "--learning_rate", "-3e-3",
                                "--split_dataset_ratio", "0.25", "--load_best_model_at_end", "true")
    run_dir = result["run_dir"]
    best = os.path.join(run_dir, "checkpoint-2")
    evals = [r for r in lines(run_dir) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4, 6] and evals[0]["eval_loss"] < evals[1]["eval_loss"] < evals[2]["eval_loss"]
    assert result["best_model_checkpoint"] == best and result["best_metric"] == pytest.approx(evals[0]["eval_loss"])
    assert f"Loading best model from {best} (score: {result['best_metric']})." in capsys.readouterr().out
    restored, _ = ckpt.restore(best, trainer.state, with_data=False)
    last, _ = ckpt.restore(os.path.join(run_dir, "checkpoint-6"), trainer.state, with_data=False)
    for ours, theirs, final in zip(jax.tree.leaves(trainer.state.params), jax.tree.leaves(restored.params), jax.tree.leaves(last.params)):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(last.params)))


def test_early_stop_interval_stops_after_n_saves_without_improvement(tmp_path, capsys):
    _, result = run_small(tmp_path, "--max_steps", "10", "--save_steps", "1", "--learning_rate", "-3e-3",
                          "--split_dataset_ratio", "0.25", "--early_stop_interval", "2")
    assert result["global_step"] == 3 and checkpoints(result["run_dir"]) == [1, 2, 3]
    assert "early stop at step 3: loss has not improved for 2 checkpoint saves" in capsys.readouterr().out


def test_early_stop_counts_saves_as_ms_swift_callback():
    stop = EarlyStop(interval=2, greater_is_better=False)
    # the best metric seen at each save: improves, stalls, improves (resets), stalls twice -> stop
    assert [stop.on_save(v) for v in (1.0, 1.0, 0.5, 0.5, 0.5)] == [False, False, False, False, True]
    greater = EarlyStop(interval=1, greater_is_better=True)
    assert [greater.on_save(v) for v in (0.1, 0.2, 0.2)] == [False, False, True]


def test_metric_for_best_model_and_greater_is_better():
    args = args_of("--split_dataset_ratio", "0.1", "--metric_for_best_model", "token_acc")
    assert args.training.greater_is_better is True  # transformers: a metric without "loss" in its name
    best = BestMetric(args.training.metric_for_best_model, args.training.greater_is_better)
    assert [best.update({"eval_loss": 1.0, "eval_token_acc": acc}, s) for s, acc in ((1, 0.2), (2, 0.5), (3, 0.4))] == [True, True, False]
    assert (best.value, best.step) == (0.5, 2)
    with pytest.raises(ValueError, match=r"--metric_for_best_model rouge: the evaluation reports no 'eval_rouge'"):
        BestMetric("rouge", True).update({"eval_loss": 1.0}, 1)
    assert args_of().training.metric_for_best_model == "loss" and args_of().training.greater_is_better is False


@pytest.mark.parametrize("flags, message", [
    (["--split_dataset_ratio", "0.1", "--load_best_model_at_end", "true", "--eval_strategy", "epoch"],
     "--load_best_model_at_end requires --save_strategy and --eval_strategy to match"),
    (["--split_dataset_ratio", "0.1", "--load_best_model_at_end", "true", "--save_steps", "10", "--eval_steps", "4"],
     "--load_best_model_at_end requires --save_steps to be a multiple of --eval_steps, got 10 and 4"),
    (["--save_strategy", "best"], "--save_strategy best saves when an evaluation improves"),
    (["--early_stop_interval", "0"], "--early_stop_interval must be >= 1"),
    (["--bf16", "true", "--fp16", "true"], "--bf16 and --fp16 cannot both be true"),
])
def test_strategy_argument_errors(flags, message):
    with pytest.raises(ValueError, match=message):
        args_of(*flags)


def test_bf16_and_fp16_set_the_compute_dtype(capsys):
    assert args_of("--bf16", "true").model_args.dtype == "bfloat16"
    capsys.readouterr()
    assert args_of("--fp16", "true").model_args.dtype == "bfloat16"
    assert "--fp16 true: JAX has no float16 loss scaling (torch's GradScaler); computing in bfloat16 instead" in capsys.readouterr().err
    assert args_of("--bf16", "false").model_args.dtype == "float32"  # BASE's --dtype float32 stays


def test_save_only_model_checkpoints_resume_only_as_weights(tmp_path):
    _, result = run_small(tmp_path / "a", "--max_steps", "2", "--save_steps", "2", "--save_only_model", "true")
    checkpoint = os.path.join(result["run_dir"], "checkpoint-2")
    assert {"adapter_model.safetensors", "state"} <= set(os.listdir(checkpoint))
    with pytest.raises(ValueError, match="was saved with --save_only_model .* resume it with --resume_only_model true"):
        run_small(tmp_path / "b", "--max_steps", "3", "--resume_from_checkpoint", checkpoint)
    trainer, resumed = run_small(tmp_path / "c", "--max_steps", "3", "--resume_from_checkpoint", checkpoint, "--resume_only_model", "true")
    assert [r["step"] for r in lines(resumed["run_dir"]) if "loss" in r] == [3]
    _, full = run_small(tmp_path / "d", "--max_steps", "2", "--save_steps", "2")
    size = lambda d: sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(d, "state")) for f in fs)
    assert size(checkpoint) < size(os.path.join(full["run_dir"], "checkpoint-2")) / 2  # no Adam moments


def test_unimplemented_flags_say_so_and_beam_search_is_refused(capsys):
    from swift_jax.arguments import GenerationArgs

    args_of("--group_by_length", "true", "--predict_with_generate", "true")
    err = capsys.readouterr().err
    assert "--group_by_length: batches keep the shuffled order" in err
    assert "--predict_with_generate: evaluation reports loss and accuracy, not generated-text metrics" in err
    assert GenerationArgs(num_beams=1).generation_config().max_new_tokens == 512
    with pytest.raises(ValueError, match="--num_beams 4: beam search is not implemented in swift_jax"):
        GenerationArgs(num_beams=4).generation_config()


def test_padding_free_packs_and_packing_length_needs_packing(capsys):
    args = args_of("--padding_free", "true")
    assert args.data.packing is True and "--padding_free true: samples are packed into --max_length rows" in capsys.readouterr().err
    assert args_of("--packing", "true", "--packing_length", "128").data.row_length() == 128
    with pytest.raises(ValueError, match=r"--packing_length 64 sets the length of packed rows: it needs --packing true"):
        args_of("--packing_length", "64")
    with pytest.raises(ValueError, match=r"and at least --max_length \(32\)"):
        args_of("--packing", "true", "--packing_length", "16")
