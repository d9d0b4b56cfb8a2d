"""Run ms-swift's own example scripts under `swift-jax` and write a table of what runs.

    python scripts/ms_swift_examples.py --examples /tmp/ms-swift-src/examples -j 2
    python scripts/ms_swift_examples.py --examples /tmp/ms-swift-src/examples --only 'train/lora_sft*'

(`git -C <ms-swift clone> archive HEAD examples | tar -x -C /tmp/ms-swift-src` gives the folder.) Every .sh
file under examples/{train,infer,export,deploy,eval,sampler} (not megatron, ascend, ray, notebook) is recorded
with its launchers stubbed (scripts/examples_rewrite.py); each `swift <cmd> ...` in it runs as `swift-jax
<cmd> ...` with only the models (tiny local ones), datasets (tiny local files of the right shape, `#N` kept
and capped) and sizes (steps, lengths, batches) swapped, in order, in one folder per script, so that an infer
or export after a training finds that training's output. `NPROC_PER_NODE` runs as one process (JAX uses
every local device from one process). A `swift deploy` counts as run once its server answers
`/v1/models` (on a free port); it is stopped when the script's other commands are done.

Per script: ran / stopped at an argument (the command line was refused) / failed later (the first error
line) / out of scope (the reason). Writes `--out` (markdown, default docs/ms_swift_examples.md) and the same
as json next to it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from examples_rewrite import Command, classify, record, rewrite  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
IN_SCOPE = ("train", "infer", "export", "deploy", "eval", "sampler")
SKIPPED_DIRS = ("megatron", "ascend", "ray", "notebook")
# The command line was refused: tyro's error box ("For full helptext"), the `swift-jax` command's own, or
# a task's argument check (`error: --flag ...`, before any work).
ARGUMENT_ERROR = re.compile(r"For full helptext|unknown command '")
TYRO_BOX = re.compile(r"╭─ (?P<title>[^─]+?) ─+╮\n(?P<body>(?:│.*\n)*?)│ ─{5,}", re.M)
# An exception line, or swift-jax's `error: ...` (which may follow a progress bar on the same line).
ERROR_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Exit|Interrupt)\b.*|(?<![\w-])error: .*")
STATUSES = ("ran", "argument", "failed", "out of scope")
SHOWN = {"argument": "stopped at an argument", "failed": "failed later"}


def example_scripts(examples: str, only: str | None) -> list[str]:
    """The in-scope .sh files under `examples`, relative to it, sorted; `only` is an fnmatch pattern."""
    found = []
    for top in IN_SCOPE:
        for dirpath, dirnames, files in os.walk(os.path.join(examples, top)):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
            found += [os.path.relpath(os.path.join(dirpath, f), examples) for f in files if f.endswith(".sh")]
    return sorted(p for p in found if only is None or fnmatch.fnmatch(p, only) or only in p)


def first_error(text: str) -> str:
    """The line that says what went wrong: tyro's refusal (for unrecognized options, just the flag names), else
    the last exception line of a traceback, else the last non-empty line."""
    box = TYRO_BOX.search(text)
    if box:
        body = " ".join(ln.strip("│ ") for ln in box["body"].splitlines())
        if box["title"] == "Unrecognized options":
            return "unrecognized options: " + " ".join(re.findall(r"--[\w-]+", body))
        return f"{box['title']}: {body}"[:300]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [m.group(0) for m in map(ERROR_LINE.search, lines) if m]
    return (errors[-1] if errors else (lines[-1] if lines else "no output"))[:300]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(cmd: list[str], env: dict, cwd: str, port: int, timeout: float) -> tuple[subprocess.Popen, dict]:
    """Start a `swift-jax deploy`; ran once GET /v1/models answers, else the output of its exit."""
    log = open(os.path.join(cwd, f"deploy-{port}.log"), "w+")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
            return proc, {"status": "ran"}
        except OSError:
            time.sleep(2)
    if proc.poll() is None:
        proc.kill()
    log.seek(0)
    return proc, _result(proc.wait(), log.read(), timed_out=proc.returncode is None or time.time() >= deadline)


def _result(rc: int, output: str, timed_out: bool = False) -> dict:
    if rc == 0 and not timed_out:
        return {"status": "ran"}
    if timed_out:
        return {"status": "failed", "error": "timed out", "tail": output[-2000:]}
    error = first_error(output)
    status = "argument" if ARGUMENT_ERROR.search(output) or error.startswith("error: --") else "failed"
    return {"status": status, "error": error, "tail": output[-2000:]}


def reclassify(row: dict) -> dict:
    """`row` with a failed command's status and error derived again from the output it recorded (a table
    written by an older version of this script; a refusal stays one)."""
    for c in row["commands"]:
        if c.get("status") == "failed" and c.get("error") != "timed out":
            c.update(_result(1, c["tail"]))
            return {**row, "status": c["status"], "error": c["error"]}
    return row


def run_script(rel: str, examples: str, work: str, assets, env: dict, timeout: float) -> dict:
    """Record, rewrite and run one example script; its row of the table."""
    cwd = os.path.join(work, "runs", rel.removesuffix(".sh").replace("/", "__"))
    shutil.rmtree(cwd, ignore_errors=True)
    os.makedirs(cwd)
    os.symlink(os.path.abspath(examples), os.path.join(cwd, "examples"))
    commands = [classify(c) for c in record(os.path.join(examples, rel), cwd=cwd)]
    row = {"script": rel, "commands": []}
    if not any(c.sub for c in commands):
        reasons = sorted({c.reason for c in commands}) or ["no command (the script only has comments)"]
        return {**row, "status": "out of scope", "error": "; ".join(reasons),
                "commands": [{"argv": c.call.argv, "reason": c.reason} for c in commands]}
    servers, result = [], {"status": "ran"}
    try:
        for c in commands:
            if c.sub is None:
                row["commands"].append({"argv": c.call.argv, "reason": c.reason})
                continue
            result = run_command(c, assets, cwd, env, timeout, servers)
            row["commands"].append({"argv": c.call.argv, "env": c.call.env, "rewritten": result.pop("cmd"),
                                    "processes": c.processes, **result})
            if result["status"] != "ran":
                break
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
    return {**row, "status": result["status"], "error": result.get("error", "")}


def run_command(c: Command, assets, cwd: str, env: dict, timeout: float, servers: list) -> dict:
    """Run one in-scope command (a deploy is left serving in `servers`); {"status", "error", "cmd", ...}."""
    try:
        args = rewrite(c, assets, cwd)
    except subprocess.CalledProcessError as e:  # building the stand-in adapter failed
        return {"status": "failed", "error": "building the tiny adapter failed: " + first_error(e.stderr.decode()),
                "cmd": []}
    cmd = [os.path.join(os.path.dirname(sys.executable), "swift-jax"), c.sub, *args]
    run_env = {**env, **c.call.env}
    if c.sub == "deploy":
        port = _free_port()  # the example's port may be taken (or served by a parallel example)
        if "--port" in cmd:
            del cmd[cmd.index("--port"):cmd.index("--port") + 2]
        cmd += ["--port", str(port)]
        proc, result = _serve(cmd, run_env, cwd, port, timeout)
        servers.append(proc)
        return {**result, "cmd": cmd}
    try:
        out = subprocess.run(cmd, env=run_env, cwd=cwd, input="Who are you?\n", capture_output=True, text=True,
                             timeout=timeout)
        return {**_result(out.returncode, out.stdout + out.stderr), "cmd": cmd}
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode() + (e.stderr or b"").decode() if isinstance(e.stdout, bytes) else ""
        return {**_result(1, text, timed_out=True), "cmd": cmd}


def git_commit() -> str:
    out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    return out.stdout.strip() + ("+changes" if dirty else "")


def totals(rows: list[dict]) -> dict:
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    in_scope = len(rows) - counts["out of scope"]
    return {**counts, "in_scope": in_scope, "pass_rate": round(100 * counts["ran"] / max(in_scope, 1), 1)}


def categories(rows: list[dict]) -> list[tuple[str, int, list[str]]]:
    """(category, scripts, examples) of the failures, most scripts first: each refused flag (a script that
    stopped at several counts under each), each refusal, each error line with paths and numbers blanked."""
    found: dict[str, list[str]] = {}
    for r in rows:
        err = r.get("error", "")
        if r["status"] == "argument" and err.startswith("unrecognized options: "):
            keys = [f"unrecognized option `{f}`" for f in err.split(": ", 1)[1].split()]
        elif r["status"] in ("argument", "failed"):
            key = re.sub(r"(/[\w.+-]+)+/?", "<path>", err)
            keys = [re.sub(r"\b\d+(\.\d+)?\b", "N", key)[:160]]
        else:
            continue
        for k in keys:
            found.setdefault(k, []).append(r["script"])
    return sorted(((k, len(v), v) for k, v in found.items()), key=lambda t: (-t[1], t[0]))


def compact(row: dict, work: str) -> dict:
    """`row` for the committed json: the rewritten commands with `swift-jax` and `<work>` for local paths,
    output tails cut to their last 800 characters, the original argv left to the script itself."""
    def short(text: str) -> str:
        return text.replace(work, "<work>")

    commands = []
    for c in row["commands"]:
        c = {k: v for k, v in c.items() if k != "argv" or "rewritten" not in c}
        if "rewritten" in c:
            c["rewritten"] = ["swift-jax", *map(short, c["rewritten"][1:])] if c["rewritten"] else []
        if "tail" in c:  # tyro's box lines padded with spaces and rules: collapsed
            c["tail"] = re.sub(r" {3,}", "  ", re.sub(r"─{5,}", "─────", short(c["tail"])))[-800:]
        commands.append(c)
    return {**row, "error": short(row.get("error", "")), "commands": commands}


def write_table(rows: list[dict], path: str, meta: dict) -> None:
    """The markdown table at `path` and the rows as json at the same path with `.json`."""
    t = totals(rows)
    lines = [
        "# ms-swift's examples under swift-jax",
        "",
        f"swift-jax commit `{meta['commit']}`, ms-swift examples from `{meta['examples']}`, {meta['date']}, "
        f"timeout {meta['timeout']:.0f} s a command. Made by `{meta['command']}`.",
        "",
        f"**{t['ran']} of {t['in_scope']} in-scope scripts run ({t['pass_rate']}%)**; {t['argument']} stopped at an "
        f"argument, {t['failed']} failed later; {t['out of scope']} out of scope.",
        "",
        "Each `swift ...` command of a script ran as `swift-jax ...` with only the models, datasets and sizes swapped "
        "(README, \"Running ms-swift's examples\"); a script ran when all its in-scope commands did, else its row "
        "gives the first one that stopped: *stopped at an argument* (the command line or an argument check refused "
        "it), *failed later* (its first error line). The rewritten commands and their outputs' tails are in "
        "`ms_swift_examples.json`.",
        "",
        "| script | status | first error / reason |",
        "|---|---|---|",
    ]
    for r in rows:
        err = r.get("error", "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{r['script']}` | {SHOWN.get(r['status'], r['status'])} | {err} |")
    lines += ["", "## Failures by category", "", "| scripts | category | e.g. |", "|---|---|---|"]
    for key, n, scripts in categories(rows):
        key = key.replace("|", "\\|")
        lines.append(f"| {n} | {key} | `{scripts[0]}` |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(path.removesuffix(".md") + ".json", "w") as f:
        head = json.dumps({"meta": meta, "totals": t}, indent=1, ensure_ascii=False)
        body = ",\n".join(json.dumps(compact(r, meta["work"]), ensure_ascii=False) for r in rows)
        f.write(head[:-2] + ',\n "rows": [\n' + body + "\n]}\n")  # one line a script


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", required=True, help="ms-swift's examples folder")
    p.add_argument("--work", default="/tmp/ms_swift_examples", help="tiny models, data and one run folder a script")
    p.add_argument("--only", help="run the scripts matching this fnmatch pattern (or containing this text); an "
                   "existing table at --out keeps its other rows")
    p.add_argument("-j", "--jobs", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600, help="seconds a command")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "ms_swift_examples.md"))
    p.add_argument("--resume", action="store_true", help="keep the rows a cut-short run left in --out.partial.jsonl")
    p.add_argument("--table_only", action="store_true", help="rewrite --out's markdown from its json, run nothing")
    a = p.parse_args()
    if a.table_only:
        old = json.load(open(a.out.removesuffix(".md") + ".json"))
        return write_table([reclassify(r) for r in old["rows"]], a.out, old["meta"])
    from examples_assets import build_assets

    commit = git_commit()  # what runs, before any later commit
    os.makedirs(a.work, exist_ok=True)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "JAX_COMPILATION_CACHE_DIR": os.path.join(a.work, "xla_cache"), "PYTHONUNBUFFERED": "1"}
    assets = build_assets(a.work, env)
    scripts = example_scripts(a.examples, a.only)
    partial_path = a.out + ".partial.jsonl"  # rows as they finish, so that a cut-short run can --resume
    rows = {}
    if a.resume and os.path.exists(partial_path):
        rows = {r["script"]: r for r in map(json.loads, open(partial_path)) if r["script"] in scripts}
    partial = open(partial_path, "a" if a.resume else "w")
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        todo = [s for s in scripts if s not in rows]
        futures = [pool.submit(run_script, s, a.examples, a.work, assets, env, a.timeout) for s in todo]
        for fut in concurrent.futures.as_completed(futures):
            r = fut.result()
            rows[r["script"]] = r
            partial.write(json.dumps(r, ensure_ascii=False) + "\n")
            partial.flush()
            print(f"{len(rows)}/{len(scripts)} {r['status']:<12} {r['script']}  {r.get('error', '')[:150]}", flush=True)
    partial.close()
    meta = {"commit": commit, "examples": os.path.abspath(a.examples), "work": os.path.abspath(a.work), "timeout": a.timeout,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python scripts/ms_swift_examples.py " + " ".join(sys.argv[1:])}
    previous = os.path.exists(a.out.removesuffix(".md") + ".json") and a.only
    if previous:  # a subset rerun updates its rows of the existing table
        old = json.load(open(a.out.removesuffix(".md") + ".json"))
        rows = {**{r["script"]: r for r in old["rows"]}, **rows}
        meta["command"] = old["meta"]["command"] + f"; rows of {a.only!r} rerun at {meta['commit']}"
    ordered = [rows[s] for s in sorted(rows)]
    write_table(ordered, a.out, meta)
    os.remove(partial_path)
    print(json.dumps(totals(ordered)))


if __name__ == "__main__":
    main()
