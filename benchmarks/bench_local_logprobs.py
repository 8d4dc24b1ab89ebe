"""Is a local server's label probability worth anything?  Certainty from llama.cpp's logprobs, before and after.

llama.cpp reports token log-probabilities from the model's distribution *before* the JSON grammar.  The client used
to add up the log-probabilities of the label's tokens as reported, so a label the grammar forced carried the mass of
every word the model would rather have written: SmolLM2's labels scored -2 to -55, and a label spelt in pieces
("n" "ega" "t" "ive") looked as unlikely as a wrong one.  Now the client asks for the 20 best alternatives of each
token and reads the label's probability *among the task's labels* (``teachers.parsing.label_share``).

This benchmark labels N templated one-line reviews (positive / negative, gold known; SmolLM2-135M gets roughly
three in four right) with the real client against a fresh ``llama-server`` (its own defaults), every item asked
k = 2 passes plus a tie-break (``LabelConfig(adaptive_passes=False)``), and then scores the same stored answers
three ways: the label's share among the labels (now), the sum of its tokens' reported log-probabilities (before,
recomputed from the stored tokens) and the verbalised confidence.  Per way, with 95 % intervals:

* pass 0's certainty as a predictor of pass 0 being right: ECE and AUROC (bootstrap over items);
* the consensus against gold: accuracy (Wilson), ECE and AUROC of its quality;
* what asking for the alternatives costs: pass-0 requests with and without ``top_logprobs``, side by side in
  alternating blocks against the same server;
* adaptive passes replayed on the stored answers (``--draws`` random calibration samples of ``--sample`` items,
  the client's own cutoff rule at its default target): of the items outside the sample, the share answered by
  pass 0 alone, the calls saved against k = 2 + tie-breaks, and the change in their accuracy (mean and 5th
  percentile over draws).

    python benchmarks/bench_local_logprobs.py            # needs `make llm-server-cpp`; about 5 minutes on 2 cores

Measured (2 idle cores, 2026-11-26, two runs): pass 0's AUROC 0.609 / 0.602 now, 0.481 / 0.485 before, 0.561 / 0.539
verbalised; the consensus quality's AUROC 0.863 / 0.902 now, 0.682 / 0.694 before, 0.623 / 0.684 verbalised; the
alternatives cost x1.002 in calls/s; no adaptive-pass cutoff qualifies for SmolLM2 with any of the three.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bench_labeling import _auroc  # benchmarks/ is on sys.path
from bench_local_server import DEFAULT_SERVER_BIN, MODEL_ALIAS, llama_server
from bench_prompt_layout import NEGATIVE, POSITIVE
from bench_prompt_layout import SUBJECTS as LAYOUT_SUBJECTS

from llm_flywheel.core.consensus import answer_probability, consensus
from llm_flywheel.core.stats import reliability, wilson_interval
from llm_flywheel.core.task import Task
from llm_flywheel.data.base import Record, register
from llm_flywheel.pipeline.label_adaptive import first_pass, learn_cutoff
from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.openai_compat import TOP_LOGPROBS
from llm_flywheel.teachers.parsing import label_logprob
from llm_flywheel.teachers.registry import teacher_from_spec

TASK = Task(name="reviews", modality="text", labels=("positive", "negative"),
            descriptions={"positive": "the writer liked it", "negative": "the writer disliked it"},
            instructions="Is this short review positive or negative?")
OPENERS = ["", "Honestly, ", "Overall, ", "I have to say ", "To be fair, ", "In short, ", "Frankly, ", "Well, "]
SUBJECTS = [s[0].lower() + s[1:] for s in LAYOUT_SUBJECTS]  # "the movie", after an opener
WAYS = ("share", "raw", "verbalised")  # now, before, no logprobs


def reviews(n: int, seed: int) -> list[Record]:
    """N distinct reviews, half positive, drawn without replacement (960 exist)."""
    combos = [(o, s, p, lab) for lab, phrases in (("positive", POSITIVE), ("negative", NEGATIVE))
              for o in OPENERS for s in SUBJECTS for p in phrases]
    rng = random.Random(seed)
    pos = rng.sample([c for c in combos if c[3] == "positive"], n // 2)
    neg = rng.sample([c for c in combos if c[3] == "negative"], n - n // 2)
    out = []
    for i, (o, s, p, lab) in enumerate(pos + neg):
        text = f"{o}{s} {p}."
        out.append(Record(f"review:{i}", text=text[0].upper() + text[1:], gold_label=lab))
    return out


def stored_answers(ws: Workspace) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """content_hash -> final answers, each with ``raw_logprob`` (before: the label tokens' sum), and the gold."""
    import json

    with ws.store() as s:  # a benchmark reads the store's tables directly
        rows = s.query("SELECT a.id, a.content_hash, a.pass_index, a.label, a.confidence, a.label_logprob, "
                       "a.logprobs_json, a.error_kind, i.gold_label FROM teacher_answers a "
                       "JOIN items i ON i.content_hash = a.content_hash WHERE a.ok = 1 ORDER BY a.pass_index")
    answers: dict[str, list[dict[str, Any]]] = {}
    gold: dict[str, str] = {}
    for r in rows:
        a = dict(r)
        toks = [{"token": t, "logprob": lp} for t, lp in json.loads(a.pop("logprobs_json") or "[]")]
        a["raw_logprob"] = label_logprob(toks, a["label"]) if a["label"] else None
        gold[a["content_hash"]] = a.pop("gold_label")
        answers.setdefault(a["content_hash"], []).append(a)
    return answers, gold


def as_way(answers: Mapping[str, Sequence[Mapping[str, Any]]], way: str) -> tuple[dict[str, list[dict]], bool]:
    """The answers as one way reads them, and whether that way uses logprobs."""
    if way == "verbalised":
        return {h: [dict(a) for a in ans] for h, ans in answers.items()}, False
    key = "label_logprob" if way == "share" else "raw_logprob"
    return {h: [{**a, "label_logprob": a[key]} for a in ans] for h, ans in answers.items()}, True


def boot(fn: Any, n: int, draws: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    vals = np.array([fn(rng.integers(0, n, n)) for _ in range(draws)])
    return fn(np.arange(n)), float(np.nanpercentile(vals, 2.5)), float(np.nanpercentile(vals, 97.5))


def certainty_scores(answers: Mapping[str, Sequence[Mapping[str, Any]]], gold: Mapping[str, str],
                     use: bool) -> dict[str, tuple[float, float, float]]:
    """Pass 0's certainty against pass 0 being right, and the consensus quality against the consensus being right."""
    p0, r0, q, rc, right = [], [], [], [], 0
    for h, ans in answers.items():
        first = first_pass(ans, TASK.labels, use)
        if first is not None and first[0] is not None:
            p0.append(first[1])
            r0.append(first[0] == gold[h])
        c = consensus(ans, TASK.labels, use_logprobs=use)
        if c is not None and c.label is not None:
            q.append(c.quality)
            rc.append(c.label == gold[h])
            right += c.label == gold[h]
    p0a, r0a, qa, rca = np.array(p0), np.array(r0), np.array(q), np.array(rc)
    lo, hi = wilson_interval(right, len(rc))
    return {
        "pass0_ece": boot(lambda i: reliability(p0a[i], r0a[i])[0], len(p0a)),
        "pass0_auroc": boot(lambda i: _auroc(p0a[i], r0a[i]), len(p0a)),
        "consensus_acc": (right / len(rc), lo, hi),
        "consensus_ece": boot(lambda i: reliability(qa[i], rca[i])[0], len(qa)),
        "consensus_auroc": boot(lambda i: _auroc(qa[i], rca[i]), len(qa)),
    }


def replay(answers: Mapping[str, Sequence[Mapping[str, Any]]], gold: Mapping[str, str], use: bool, sample_n: int,
           draws: int, target: float) -> dict[str, Any]:
    """Adaptive passes replayed on answers that have every pass: per draw, a calibration sample learns the cutoff;
    outside it, items at or above the cutoff keep pass 0's label (1 call), the others the full consensus."""
    hashes = sorted(answers)
    full = {h: consensus(answers[h], TASK.labels, use_logprobs=use) for h in hashes}
    skip_share, saved, d_acc = [], [], []
    rng = random.Random(0)
    for _ in range(draws):
        sample = set(rng.sample(hashes, sample_n))
        choice, _ = learn_cutoff(answers, sample, TASK.labels, 2, target, use)
        rest = [h for h in hashes if h not in sample]
        calls_fixed = sum(len(answers[h]) for h in rest)
        calls = right_a = right_f = skipped = 0
        for h in rest:
            first = first_pass(answers[h], TASK.labels, use)
            fixed = full[h].label if full[h] is not None else None
            right_f += fixed == gold[h]
            if choice.cutoff is not None and first is not None and first[0] is not None and first[1] >= choice.cutoff:
                calls, skipped, right_a = calls + 1, skipped + 1, right_a + (first[0] == gold[h])
            else:
                calls, right_a = calls + len(answers[h]), right_a + (fixed == gold[h])
        skip_share.append(skipped / len(rest))
        saved.append(1 - calls / calls_fixed)
        d_acc.append((right_a - right_f) / len(rest))
    return {"skipped": float(np.mean(skip_share)), "saved": float(np.mean(saved)),
            "d_acc": float(np.mean(d_acc)), "d_acc_p5": float(np.percentile(d_acc, 5)),
            "cutoff_found": float(np.mean([s > 0 for s in skip_share]))}


async def alternatives_cost(url: str, teacher: Any, recs: list[Record], blocks: int = 8) -> dict[str, float]:
    """calls/s of pass-0 requests with and without ``top_logprobs``, in alternating blocks on 4 connections."""
    import httpx

    def body(text: str, top: bool) -> dict[str, Any]:
        b = teacher._body(TASK, text, 0)
        return b if top else {k: v for k, v in b.items() if k != "top_logprobs"}

    spent = {True: 0.0, False: 0.0}
    size = len(recs) // blocks
    async with httpx.AsyncClient(timeout=600) as c:
        for blk in range(blocks):
            for top in ((True, False) if blk % 2 == 0 else (False, True)):
                queue = [r.text for r in recs[blk * size:(blk + 1) * size]]

                async def worker(top: bool = top, queue: list[str] = queue) -> None:
                    while queue:
                        (await c.post(url + "/chat/completions", json=body(queue.pop(), top))).raise_for_status()
                t0 = time.monotonic()
                await asyncio.gather(*(worker() for _ in range(4)))
                spent[top] += time.monotonic() - t0
    n = size * blocks
    return {"top": n / spent[True], "none": n / spent[False], "calls": n}


def fmt(t: tuple[float, float, float], pct: bool = False) -> str:
    f = 100 if pct else 1
    return f"{t[0] * f:.{1 if pct else 3}f} [{t[1] * f:.{1 if pct else 3}f}, {t[2] * f:.{1 if pct else 3}f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=int, default=150, help="calibration items per replayed draw")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--server-bin", type=Path, default=DEFAULT_SERVER_BIN)
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench_local_logprobs_"))
    ws = Workspace.open(work / "ws")
    register(ws, TASK, reviews(a.n, a.seed), progress=False)
    with ws.store() as s:
        ids = [it.id for it in s.items(TASK.name)]
    with llama_server(a.server_bin, work / "server.log", []) as url:  # llama-server's own defaults
        teacher = teacher_from_spec(f"{url}|{MODEL_ALIAS}", TASK, api_key_env="")
        t0 = time.monotonic()
        res = label_items(ws, TASK.name, ids, teacher, LabelConfig(passes=2, adaptive_passes=False), progress="plain")
        wall = time.monotonic() - t0
        speed = asyncio.run(alternatives_cost(url, teacher, reviews(240, a.seed + 1)))
    print(f"\n{len(ids)} reviews, {res.calls_made} calls in {wall:.0f} s ({res.calls_made / wall:.2f} calls/s), "
          f"k = 2 + tie-breaks, llama-server defaults, SmolLM2-135M; workspace {work}")
    print(f"asking {TOP_LOGPROBS} alternatives a token: {speed['top']:.3f} calls/s, without them {speed['none']:.3f} "
          f"calls/s ({speed['calls']} pass-0 calls each, 8 alternating blocks): x{speed['top'] / speed['none']:.3f}\n")
    answers, gold = stored_answers(ws)
    target = LabelConfig().agreement_target
    print("| certainty from | pass 0: ECE | pass 0: AUROC | consensus acc. vs gold | consensus ECE | consensus AUROC "
          f"| adaptive replay (target {target}): items on pass 0 alone | calls saved "
          "| accuracy change (mean; 5th pct) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for way in WAYS:
        ans, use = as_way(answers, way)
        sc = certainty_scores(ans, gold, use)
        rp = replay(ans, gold, use, a.sample, a.draws, target)
        src = {answer_probability(x, 2, use)[1] for v in ans.values() for x in v}
        print(f"| {way} ({'/'.join(sorted(src))}) | {fmt(sc['pass0_ece'])} | {fmt(sc['pass0_auroc'])} | "
              f"{fmt(sc['consensus_acc'], True)} | {fmt(sc['consensus_ece'])} | {fmt(sc['consensus_auroc'])} | "
              f"{100 * rp['skipped']:.1f} % (a cutoff in {100 * rp['cutoff_found']:.0f} % of draws) | "
              f"{100 * rp['saved']:.1f} % | {100 * rp['d_acc']:+.2f}; {100 * rp['d_acc_p5']:+.2f} pt |", flush=True)


if __name__ == "__main__":
    main()
