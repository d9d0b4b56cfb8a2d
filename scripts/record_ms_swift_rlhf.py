"""Record ms-swift's preference losses as golden files for tests/test_rlhf_losses.py and tests/test_rlhf_msswift.py.

Runs only in ms-swift's own venv (CI never installs it):

    /opt/msswift/bin/python scripts/record_ms_swift_rlhf.py losses   # -> tests/golden/rlhf_losses.json
    /opt/msswift/bin/python scripts/record_ms_swift_rlhf.py runs [--types dpo simpo ...] [--steps 20] [--reuse_tiny]
                                                           # -> tests/golden/rlhf_tiny/ and rlhf_runs.json
    /opt/msswift/bin/python scripts/record_ms_swift_rlhf.py padded [--types dpo simpo ...]
                                                           # -> tests/golden/rlhf_padded/ and rlhf_padded.json

`runs`: builds a tiny random Qwen2 (hidden 32, 2 layers, the bundled byte-level tokenizer, float32) and a PEFT
LoRA adapter with non-zero B (so policy != reference from step 1), saves both under tests/golden/rlhf_tiny/,
then runs ms-swift's `swift rlhf --rlhf_type T` (in-process, saving its first batch) on CPU for each type on the first rows of the bundled preference data
(swift_jax/assets/preference/, in file order: no shuffling; batch 2, no accumulation, --check_model false,
--adapters the fixed start) and records every step's logged loss and metrics.

`padded`: the same tiny model and LoRA start on 16 generated pairs of varied length (a system prompt and one turn,
40-250 tokens per sequence, tagged so each sequence names its row), batch 4 for 4 steps (one epoch), so every
batch is padded; records each step's logged values, the first batch as ms-swift fed it, and the rows of every
batch (read back from the tokens: ms-swift's CPO/ORPO/KTO/RM trainers draw rows in a seeded random order, and
KTO shuffles its table before it pairs each row with the answer that its KL example borrows).

`losses`: calls ms-swift 4.6's trainer loss code (`DPOTrainer.get_batch_loss_metrics` with every loss type,
MPO weights, rpo_alpha; TRL's `CPOTrainer.cpo_loss` / `ORPOTrainer.odds_ratio_loss` as ms-swift wraps them;
`KTOTrainer.kto_loss`; the reward model's Bradley-Terry loss) on fixed per-sequence log-probs, with a
stand-in `self` that holds only the attributes those methods read; records losses, rewards and metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import types

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden")

# Fixed per-pair inputs (4 pairs): summed log-probs, token counts, and the chosen answers' mean NLL.
POLICY_CHOSEN = [-12.5, -30.25, -7.0, -18.0]
POLICY_REJECTED = [-14.0, -28.0, -9.5, -25.0]
REF_CHOSEN = [-13.0, -29.0, -7.5, -17.0]
REF_REJECTED = [-13.5, -29.5, -8.0, -24.0]
CHOSEN_TOKENS = [5, 12, 3, 8]
REJECTED_TOKENS = [6, 10, 4, 9]
NLL = 1.75

DPO_CASES = [  # (loss_type list, loss_weights, beta, label_smoothing, rpo_alpha, discopop_tau)
    *[([t], None, 0.1, 0.0, None, 0.05) for t in (
        "sigmoid", "hinge", "ipo", "bco_pair", "sppo_hard", "nca_pair", "aot", "aot_unpaired",
        "apo_zero", "apo_down", "exo_pair", "discopop", "sft")],
    (["robust"], None, 0.1, 0.2, None, 0.05),
    (["sigmoid"], None, 0.5, 0.1, None, 0.05),
    (["exo_pair"], None, 0.3, 0.2, None, 0.05),
    (["discopop"], None, 0.2, 0.0, None, 0.5),
    (["sigmoid"], None, 0.1, 0.0, 0.5, 0.05),
    (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], 0.1, 0.0, None, 0.05),
    (["ipo", "hinge"], None, 0.25, 0.0, None, 0.05),
]


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def record_dpo() -> list[dict]:
    from swift.rlhf_trainers.dpo_trainer import DPOTrainer

    try:
        from trl.trainer.utils import RunningMoments
    except ImportError:
        from trl.experimental.bco.bco_trainer import RunningMoments
    out = []
    for loss_types, weights, beta, smoothing, rpo_alpha, tau in DPO_CASES:
        accelerator = types.SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, use_distributed=False)
        model_output = {
            "chosen_logps": t(POLICY_CHOSEN), "rejected_logps": t(POLICY_REJECTED),
            "chosen_completion_token_counts": t(CHOSEN_TOKENS), "rejected_completion_token_counts": t(REJECTED_TOKENS),
            "nll_loss": t(NLL), "mean_chosen_logits": t(0.0), "mean_rejected_logits": t(0.0),
        }
        fake = types.SimpleNamespace(
            accelerator=accelerator, beta=beta, label_smoothing=smoothing, reference_free=False,
            f_divergence_type="reverse_kl", f_divergence_params={}, loss_type=loss_types, loss_weights=weights,
            use_weighting=False, aux_loss_enabled=False, running=RunningMoments(accelerator),
            args=types.SimpleNamespace(rpo_alpha=rpo_alpha, discopop_tau=tau, ld_alpha=None),
        )
        fake.concatenated_forward = lambda model, batch: dict(model_output)
        fake.compute_ref_log_probs = lambda batch: (t(REF_CHOSEN), t(REF_REJECTED))
        fake._get_ipo_sequence_logps = DPOTrainer._get_ipo_sequence_logps
        fake.dpo_loss = types.MethodType(DPOTrainer.dpo_loss, fake)
        loss, metrics = DPOTrainer.get_batch_loss_metrics(fake, None, {}, "train")
        out.append({"loss_type": loss_types, "loss_weights": weights, "beta": beta, "label_smoothing": smoothing,
                    "rpo_alpha": rpo_alpha, "discopop_tau": tau, "loss": float(loss),
                    **{k: float(v) for k, v in metrics.items() if k.startswith("rewards/")}})
    return out


def record_cpo_orpo() -> list[dict]:
    from swift.rlhf_trainers.cpo_trainer import CPOTrainer
    from swift.rlhf_trainers.orpo_trainer import ORPOTrainer

    accelerator = types.SimpleNamespace(device="cpu")
    avg = lambda x, n: t(x) / t(n)
    out = []
    for loss_type, beta, smoothing, gamma in [("sigmoid", 0.1, 0.0, 1.0), ("hinge", 0.1, 0.0, 1.0), ("ipo", 0.1, 0.0, 1.0),
                                              ("simpo", 2.0, 0.0, 1.0), ("simpo", 2.0, 0.1, 0.5)]:
        fake = types.SimpleNamespace(accelerator=accelerator, alpha=0.0, beta=beta, label_smoothing=smoothing,
                                     loss_type=loss_type, simpo_gamma=gamma)
        normalise = loss_type in ("ipo", "simpo")
        c = avg(POLICY_CHOSEN, CHOSEN_TOKENS) if normalise else t(POLICY_CHOSEN)
        r = avg(POLICY_REJECTED, REJECTED_TOKENS) if normalise else t(POLICY_REJECTED)
        losses, cr, rr = CPOTrainer.cpo_loss(fake, c, r)
        out.append({"rlhf_type": "cpo", "loss_type": loss_type, "beta": beta, "label_smoothing": smoothing,
                    "simpo_gamma": gamma, "losses": losses.tolist(), "chosen_rewards": cr.tolist(),
                    "rejected_rewards": rr.tolist()})
    for beta in (0.1, 0.5):
        fake = types.SimpleNamespace(accelerator=accelerator, beta=beta)
        c, r = avg(POLICY_CHOSEN, CHOSEN_TOKENS), avg(POLICY_REJECTED, REJECTED_TOKENS)
        losses, cr, rr, ratio, log_odds = ORPOTrainer.odds_ratio_loss(fake, c, r)
        out.append({"rlhf_type": "orpo", "beta": beta, "loss_without_nll": float(-losses.mean()),
                    "chosen_rewards": cr.tolist(), "rejected_rewards": rr.tolist(), "log_odds_chosen": float(log_odds)})
    return out


def record_kto() -> list[dict]:
    from swift.rlhf_trainers.kto_trainer import KTOTrainer

    labels = [True, False, True, False]
    policy_kl, ref_kl = [-20.0, -31.0, -9.0, -26.0], [-19.5, -31.5, -10.0, -25.0]
    out = []
    for loss_type, beta, dw, uw in [("kto", 0.1, 1.0, 1.0), ("kto", 0.5, 1.33, 0.75), ("apo_zero_unpaired", 0.1, 1.0, 1.0)]:
        accelerator = types.SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x)
        fake = types.SimpleNamespace(accelerator=accelerator, beta=beta, desirable_weight=dw, undesirable_weight=uw,
                                     loss_type=loss_type, calculate_KL=loss_type == "kto")
        pick = lambda xs, want: t([x for x, lab in zip(xs, labels) if lab == want])
        losses, cr, rr, kl = KTOTrainer.kto_loss(
            fake, pick(POLICY_CHOSEN, True), pick(POLICY_CHOSEN, False), t(policy_kl),
            pick(REF_CHOSEN, True), pick(REF_CHOSEN, False), t(ref_kl))
        out.append({"loss_type": loss_type, "beta": beta, "desirable_weight": dw, "undesirable_weight": uw,
                    "labels": labels, "policy_kl": policy_kl, "ref_kl": ref_kl, "loss": float(losses.nanmean()),
                    "kl": float(kl), "chosen_rewards": cr.tolist(), "rejected_rewards": rr.tolist()})
    return out


def record_rm() -> list[dict]:
    chosen, rejected, margin = t([0.5, -0.25, 1.5, 0.0]), t([0.75, -1.0, 0.5, 0.25]), t([0.0, 0.5, 1.0, 0.25])
    out = []
    for use_margin, coef in [(False, None), (True, None), (True, 0.01)]:
        diff = chosen - rejected - (margin if use_margin else 0)
        loss = -F.logsigmoid(diff).mean()  # swift/rlhf_trainers/reward_trainer.py compute_loss, verbatim
        if coef is not None:
            loss = loss + coef * torch.mean((chosen + rejected) ** 2)
        out.append({"margin": margin.tolist() if use_margin else None, "center_rewards_coefficient": coef,
                    "chosen": chosen.tolist(), "rejected": rejected.tolist(), "loss": float(loss)})
    return out


def record_losses() -> None:
    golden = {
        "inputs": {"policy_chosen": POLICY_CHOSEN, "policy_rejected": POLICY_REJECTED, "ref_chosen": REF_CHOSEN,
                   "ref_rejected": REF_REJECTED, "chosen_tokens": CHOSEN_TOKENS, "rejected_tokens": REJECTED_TOKENS,
                   "nll": NLL},
        "dpo": record_dpo(), "cpo_orpo": record_cpo_orpo(), "kto": record_kto(), "rm": record_rm(),
    }
    os.makedirs(GOLDEN, exist_ok=True)
    path = os.path.join(GOLDEN, "rlhf_losses.json")
    with open(path, "w") as f:
        json.dump(golden, f, indent=1)
    print("wrote", path)


TINY = os.path.join(GOLDEN, "rlhf_tiny")
PREFERENCE = os.path.join(ROOT, "swift_jax", "assets", "preference")
TOKENIZER = os.path.join(ROOT, "swift_jax", "assets", "tokenizer")
RUN_FLAGS = [  # ms-swift names; the test rebuilds the first batch from the same values
    "--tuner_type", "lora", "--max_length", "64", "--truncation_strategy", "delete",
    "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
    "--learning_rate", "1e-3", "--lr_scheduler_type", "constant", "--warmup_ratio", "0",
    "--weight_decay", "0.1", "--adam_beta1", "0.9", "--adam_beta2", "0.95", "--max_grad_norm", "1.0",
    "--logging_steps", "1", "--save_steps", "100000", "--seed", "42",
    "--dataset_shuffle", "false", "--train_dataloader_shuffle", "false", "--split_dataset_ratio", "0",
    "--gradient_checkpointing", "false", "--report_to", "none", "--lora_dropout", "0",
    "--model_type", "qwen2", "--template", "chatml", "--check_model", "false", "--torch_dtype", "float32",
    "--dataloader_num_workers", "0", "--eval_strategy", "no", "--use_hf", "true",
]
TYPE_FLAGS = {"dpo": [], "simpo": [], "orpo": [], "cpo": [], "kto": [], "rm": [], "dpo_rpo": ["--rpo_alpha", "0.5"],
              "dpo_ipo": ["--loss_type", "ipo"], "dpo_bco": ["--loss_type", "bco_pair"], "cpo_equal": [], "orpo_equal": []}
# `*_equal`: rows whose chosen and rejected sequences all have one length, so ms-swift's batches carry no padding
# and TRL's CPO/ORPO `logits/*` (the mean of the whole padded logits tensor) is comparable with ours.
EQUAL_LENGTH_ROWS = [{"messages": [{"role": "user", "content": f"Pick {a} or {b}."}, {"role": "assistant", "content": a}],
                      "rejected_response": b} for a, b in zip("ACEGIKMO", "BDFHJLNP")]


def build_tiny() -> tuple[str, str]:
    """The tiny float32 Qwen2 with the bundled tokenizer, and a LoRA adapter with non-zero B, under TINY."""
    import peft
    import shutil
    import transformers

    base, adapter = os.path.join(TINY, "base"), os.path.join(TINY, "adapter")
    shutil.rmtree(TINY, ignore_errors=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=True,
        rms_norm_eps=1e-6, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, torch_dtype="float32")
    model = transformers.Qwen2ForCausalLM(config).float()
    model.save_pretrained(base, safe_serialization=True)
    tokenizer.save_pretrained(base)
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    peft.get_peft_model(model, lora).save_pretrained(adapter)
    return base, adapter


def read_log(output_dir: str) -> list[dict]:
    """The per-step records (loss and metrics) of the newest run's logging.jsonl."""
    import glob

    (path,) = sorted(glob.glob(os.path.join(output_dir, "v*", "logging.jsonl")))[-1:]
    steps = []
    with open(path) as f:
        for record in map(json.loads, f):
            if "loss" in record and "global_step/max_steps" in record:
                step = int(str(record["global_step/max_steps"]).split("/")[0])
                steps.append({"step": step, **{k: v for k, v in record.items() if isinstance(v, (int, float))}})
    return steps


# Runs `swift rlhf` in-process with each trainer's compute_loss wrapped to save its first batch: CPO, ORPO
# and KTO trainers (no DataLoaderMixin in ms-swift) draw batches with the HF Trainer's random sampler even
# with --train_dataloader_shuffle false, so the test needs the rows ms-swift actually used.
DUMP_FIRST_BATCH = """
import json, os, sys
from swift.rlhf_trainers import CPOTrainer, DPOTrainer, KTOTrainer, ORPOTrainer, RewardTrainer
path = os.environ["FIRST_BATCH_JSON"]
batches = []  # with ALL_BATCHES set: every batch, as a list
def wrap(cls):
    original = cls.compute_loss
    def compute_loss(self, model, inputs, *args, **kwargs):
        if not batches or os.environ.get("ALL_BATCHES"):
            batch = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in inputs.items()
                     if hasattr(v, "tolist") or isinstance(v, list)}
            heads = [p for n, p in model.named_parameters() if n.endswith("score.weight") or ".score." in n and n.endswith("weight")]
            if heads and not batches:  # the reward model's value head as it is at step 1 (trained, so the first copy in use)
                batch["score_weight"] = heads[-1].detach().float().tolist()
            batches.append(batch)
            json.dump(batches if os.environ.get("ALL_BATCHES") else batch, open(path, "w"))
        return original(self, model, inputs, *args, **kwargs)
    cls.compute_loss = compute_loss
for cls in (CPOTrainer, DPOTrainer, KTOTrainer, ORPOTrainer, RewardTrainer):
    wrap(cls)
from swift.pipelines import rlhf_main
sys.argv = ["swift"] + sys.argv[1:]
rlhf_main()
"""


def record_runs(types_: list[str], steps: int, workdir: str, reuse: bool = False) -> None:
    import subprocess
    import sys

    base, adapter = (os.path.join(TINY, "base"), os.path.join(TINY, "adapter")) if reuse else build_tiny()
    path = os.path.join(GOLDEN, "rlhf_runs.json")
    golden = json.load(open(path)) if os.path.exists(path) else {}
    golden["flags"] = RUN_FLAGS
    golden.setdefault("steps", steps)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ""}
    for name in types_:
        rlhf_type = name.split("_")[0]
        data = os.path.join(PREFERENCE, "kto.jsonl" if rlhf_type == "kto" else "train.jsonl")
        os.makedirs(workdir, exist_ok=True)
        if name.endswith("_equal"):
            data = os.path.join(workdir, "equal_length.jsonl")
            with open(data, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in EQUAL_LENGTH_ROWS)
        out = os.path.join(workdir, name)
        dump = os.path.join(workdir, f"{name}_first_batch.json")
        if os.path.exists(dump):
            os.remove(dump)
        cmd = [sys.executable, "-c", DUMP_FIRST_BATCH, "--rlhf_type", rlhf_type, "--model", base, "--adapters", adapter,
               "--dataset", f"{data}", "--max_steps", str(steps), "--output_dir", out, *RUN_FLAGS, *TYPE_FLAGS[name]]
        log_path = os.path.join(workdir, f"{name}.log")
        os.makedirs(workdir, exist_ok=True)
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env={**env, "FIRST_BATCH_JSON": dump})
        if proc.returncode != 0:
            golden[name] = {"error": open(log_path).read()[-1500:], "command": cmd[1:]}
            print(f"{name}: FAILED (exit {proc.returncode}), see {log_path}")
            continue
        source = "scripts/record_ms_swift_rlhf.py:EQUAL_LENGTH_ROWS" if name.endswith("_equal") else os.path.relpath(data, ROOT)
        golden[name] = {"extra_flags": TYPE_FLAGS[name], "data": source, "steps": steps,
                        "log": read_log(out), "first_batch": json.load(open(dump))}
        first = golden[name]["log"][0]
        print(f"{name}: {len(golden[name]['log'])} steps, step 1 loss {first['loss']}, margins {first.get('rewards/margins')}")
        with open(path, "w") as f:
            json.dump(golden, f, indent=1)


PADDED = os.path.join(GOLDEN, "rlhf_padded")
PADDED_FLAGS = [*RUN_FLAGS[:RUN_FLAGS.index("--max_length")], "--max_length", "256",
                *RUN_FLAGS[RUN_FLAGS.index("--max_length") + 2:]]
PADDED_FLAGS[PADDED_FLAGS.index("--per_device_train_batch_size") + 1] = "4"
PADDED_TYPES = {"dpo": [], "dpo_rpo": ["--rpo_alpha", "1"], "simpo": [], "orpo": [], "cpo": [], "kto": [], "rm": []}
WORDS = ("alpha beta gamma delta kappa lambda sigma omega river stone cloud light north south green amber quiet "
         "swift bright hollow").split()


def make_padded_rows(n: int = 16) -> tuple[list[dict], list[dict]]:
    """`n` preference rows (system prompt, one question, chosen and rejected answers of varied length; the
    question is tagged `Q<i>:` and the answers `(<i>c)` / `(<i>r)` so a tokenised sequence names its row) and
    their KTO form (row i: its chosen answer, label true, for even i; its rejected answer, label false, else)."""
    import random

    rng = random.Random(0)
    words = lambda lo, hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))
    pairs, kto = [], []
    for i in range(n):
        system = "You are a careful assistant. " * rng.randint(0, 4)
        turn = [{"role": "system", "content": system.strip()}, {"role": "user", "content": f"Q{i}: write {words(1, 8)}"}]
        chosen, rejected = f"({i}c) {words(1, 36)}", f"({i}r) {words(1, 36)}"
        pairs.append({"messages": [*turn, {"role": "assistant", "content": chosen}], "rejected_response": rejected})
        kto.append({"messages": [*turn, {"role": "assistant", "content": rejected if i % 2 else chosen}], "label": i % 2 == 0})
    return pairs, kto


def rows_of(batch: dict, tokenizer) -> dict:
    """The data rows of a recorded batch, read from its tokens' tags: `rows` (each chosen / KTO completion
    sequence's row) and, for KTO, `kl_rows` (the row whose answer each KL sequence borrows)."""
    import re

    def tags(ids, mask, pattern):
        return [int(re.search(pattern, tokenizer.decode([t for t, m in zip(seq, keep) if m])).group(1))
                for seq, keep in zip(ids, mask)]

    if "completion_input_ids" in batch:
        return {"rows": tags(batch["completion_input_ids"], batch["completion_attention_mask"], r"Q(\d+):"),
                "kl_rows": tags(batch["KL_completion_input_ids"], batch["KL_completion_attention_mask"], r"\((\d+)[cr]\)")}
    half = len(batch["input_ids"]) // 2
    return {"rows": tags(batch["input_ids"][:half], batch["attention_mask"][:half], r"Q(\d+):")}


def record_padded(types_: list[str], workdir: str) -> None:
    """Record `swift rlhf` on padded batches of varied length for each type (see the module docstring)."""
    import subprocess
    import sys

    import transformers

    base, adapter = os.path.join(TINY, "base"), os.path.join(TINY, "adapter")
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    os.makedirs(PADDED, exist_ok=True)
    pairs, kto = make_padded_rows()
    for name, rows in (("pairs.jsonl", pairs), ("kto.jsonl", kto)):
        with open(os.path.join(PADDED, name), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    path = os.path.join(GOLDEN, "rlhf_padded.json")
    golden = json.load(open(path)) if os.path.exists(path) else {}
    steps = len(pairs) // int(PADDED_FLAGS[PADDED_FLAGS.index("--per_device_train_batch_size") + 1])
    golden.update(flags=PADDED_FLAGS, steps=steps)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": "", "ALL_BATCHES": "1"}
    for name in types_:
        rlhf_type = name.split("_")[0]
        data = os.path.join(PADDED, "kto.jsonl" if rlhf_type == "kto" else "pairs.jsonl")
        out, dump = os.path.join(workdir, f"padded_{name}"), os.path.join(workdir, f"padded_{name}_batches.json")
        os.makedirs(workdir, exist_ok=True)
        if os.path.exists(dump):
            os.remove(dump)
        cmd = [sys.executable, "-c", DUMP_FIRST_BATCH, "--rlhf_type", rlhf_type, "--model", base, "--adapters", adapter,
               "--dataset", data, "--max_steps", str(steps), "--output_dir", out, *PADDED_FLAGS, *PADDED_TYPES[name]]
        with open(os.path.join(workdir, f"padded_{name}.log"), "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env={**env, "FIRST_BATCH_JSON": dump})
        if proc.returncode != 0:
            raise SystemExit(f"padded {name}: exit {proc.returncode}, see {log.name}")
        batches = json.load(open(dump))
        golden[name] = {"extra_flags": PADDED_TYPES[name], "data": os.path.relpath(data, ROOT), "log": read_log(out),
                        "first_batch": batches[0], "batches": [rows_of(b, tokenizer) for b in batches]}
        first = golden[name]["log"][0]
        print(f"padded {name}: {len(golden[name]['log'])} steps, step 1 loss {first['loss']}, rows {golden[name]['batches'][0]}")
        with open(path, "w") as f:
            json.dump(golden, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["losses", "runs", "padded"])
    parser.add_argument("--types", nargs="+", default=None, help="default: every run of the chosen recording")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workdir", default="/tmp/record_ms_swift_rlhf")
    parser.add_argument("--reuse_tiny", action="store_true", help="keep tests/golden/rlhf_tiny/ (add runs to a recording)")
    args = parser.parse_args()
    if args.what == "losses":
        record_losses()
    elif args.what == "padded":
        record_padded(args.types or list(PADDED_TYPES), args.workdir)
    else:
        record_runs(args.types or list(TYPE_FLAGS), args.steps, args.workdir, args.reuse_tiny)


if __name__ == "__main__":
    main()
