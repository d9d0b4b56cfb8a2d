"""Cached datasets (ms-swift's `export --to_cached_dataset true` / `--cached_dataset`): export checks and saves the
rows once as a `datasets` folder; training from it logs the losses of training from the raw rows; ms-swift's own
cached folders (tests/golden/ms_swift_cached_dataset, recorded by scripts/record_ms_swift_cached_dataset.py) load
and train the same; a bad path is an error naming it."""

import json
import os

import pytest
from tokenizers_for_tests import bundled_tokenizer

from swift_jax.data import DataArgs, DataError, build_data
from swift_jax.export import main as export_main
from swift_jax.train import run_command

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
QUICK = os.path.join(ROOT, "swift_jax", "assets", "quickstart")
GOLDEN = os.path.join(ROOT, "tests", "golden", "ms_swift_cached_dataset")
TRAIN = ["--model", QUICK, "--init_from_scratch", "true", "--dtype", "float32", "--tuner_type", "full",
         "--max_length", "32", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--logging_steps", "1",
         "--report_to", "none", "--max_steps", "3", "--save_steps", "100", "--packing", "true"]


def losses(output_dir) -> dict[int, float]:
    (run,) = os.listdir(output_dir)
    with open(os.path.join(output_dir, run, "logging.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_export_writes_ms_swift_folders_and_training_from_them_logs_the_same_losses(tmp_path, capsys):
    import datasets

    rows = os.path.join(GOLDEN, "rows.jsonl")
    out = str(tmp_path / "cached")
    export_main(["--model", QUICK, "--to_cached_dataset", "true", "--dataset", rows, "--split_dataset_ratio", "0.1",
                 "--max_length", "32", "--output_dir", out])
    assert f"cached_dataset: {out}/train" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["train", "val"]
    assert {"dataset_info.json", "state.json", "data-00000-of-00001.arrow"} <= set(os.listdir(os.path.join(out, "train")))
    train, val = datasets.load_from_disk(f"{out}/train"), datasets.load_from_disk(f"{out}/val")
    assert len(train) + len(val) == 40 and len(val) == 4 and {"messages", "lengths"} <= set(train.column_names)
    assert train[0]["messages"][0]["role"] == "user" and len(train[0]["lengths"]) == 1

    raw = run_command([*TRAIN, "--dataset", rows, "--split_dataset_ratio", "0.1", "--output_dir", str(tmp_path / "raw")])
    cached = run_command([*TRAIN, "--cached_dataset", f"{out}/train", "--cached_val_dataset", f"{out}/val",
                          "--output_dir", str(tmp_path / "from_cache")])
    assert losses(tmp_path / "raw") == losses(tmp_path / "from_cache") and len(losses(tmp_path / "raw")) == 3
    assert raw["eval_loss"] == pytest.approx(cached["eval_loss"], rel=1e-6)


def test_ms_swift_cached_folders_train_as_their_rows(tmp_path):
    """ms-swift 4.6's export of rows.jsonl (its template agrees with ours: chatml) trains as the raw rows do, and
    combines with --dataset (cached rows first)."""
    rows = os.path.join(GOLDEN, "rows.jsonl")
    theirs = os.path.join(GOLDEN, "train")
    tok = bundled_tokenizer()
    args = DataArgs(cached_dataset=[theirs], max_length=64, template="chatml", dataset_shuffle=False)
    raw = DataArgs(dataset=[rows], max_length=64, template="chatml", dataset_shuffle=False)
    for a, b in zip(build_data(args, tok, batch_size=4).train_iterator(num_epochs=1),
                    build_data(raw, tok, batch_size=4).train_iterator(num_epochs=1)):
        assert all((a[k] == b[k]).all() for k in b)
    ours = str(tmp_path / "ours")  # our export of the same rows: ms-swift's token counts
    export_main(["--model", QUICK, "--template", "chatml", "--to_cached_dataset", "true", "--dataset", rows,
                 "--max_length", "64", "--output_dir", ours])
    import datasets

    assert datasets.load_from_disk(f"{ours}/train")["lengths"] == datasets.load_from_disk(theirs)["lengths"]
    both = build_data(DataArgs(cached_dataset=[theirs + "#5"], dataset=[rows], max_length=64, template="chatml"), tok,
                      batch_size=1)
    assert both.stats["num_train_rows"] == 45


@pytest.mark.parametrize("flag", ["--cached_dataset", "--cached_val_dataset"])
def test_a_bad_cached_path_is_an_error_naming_it(tmp_path, flag):
    tok = bundled_tokenizer()
    field = flag[2:]
    missing = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match=f"{flag} {missing}: no such folder; make one with"):
        build_data(DataArgs(dataset=[os.path.join(GOLDEN, "rows.jsonl")], **{field: [missing]}), tok, batch_size=1)
    with pytest.raises(DataError, match=f"{flag} {GOLDEN}: not a cached dataset .* did you mean {GOLDEN}/train"):
        build_data(DataArgs(dataset=[os.path.join(GOLDEN, "rows.jsonl")], **{field: [GOLDEN]}), tok, batch_size=1)


def test_preference_pairs_cache_with_both_lengths_and_train_as_their_rows(tmp_path):
    import datasets

    from swift_jax.rlhf.data import build_preference_data

    rows = os.path.join(ROOT, "swift_jax", "assets", "preference", "train.jsonl")
    out = str(tmp_path / "pairs")
    export_main(["--model", QUICK, "--to_cached_dataset", "true", "--template_mode", "rlhf", "--dataset", rows,
                 "--max_length", "96", "--output_dir", out])
    saved = datasets.load_from_disk(f"{out}/train")
    assert {len(n) for n in saved["lengths"]} == {2} and "rejected_response" in saved.column_names
    tok = bundled_tokenizer()
    cached = build_preference_data(DataArgs(cached_dataset=[f"{out}/train"], max_length=96), tok, "dpo", batch_size=2)
    raw = build_preference_data(DataArgs(dataset=[rows], max_length=96), tok, "dpo", batch_size=2)
    assert cached.stats["num_train_pairs"] == raw.stats["num_train_pairs"] == len(saved)
    for a, b in zip(cached.train_iterator(num_epochs=1), raw.train_iterator(num_epochs=1)):
        assert all((a[k] == b[k]).all() for k in b)
