"""Why every pass keeps its own wording in the system message: prompt layouts vs label quality on a local server.

A local server spends most of a call reading the prompt.  Passes that shared everything up to and including the item
-- putting what makes a later pass different *after* the item -- would let llama.cpp reuse the item's cache, and
against ``llama-server`` (defaults, SmolLM2-135M, 160 SpamAssassin emails, 2 passes + tie-breaks) such a layout was
measured 2.18x faster than the pre-change client (today's layout: 1.21x).  But SmolLM2 is at chance on spam, so that
run says nothing about quality.  This benchmark asks a task SmolLM2 *can* do -- 200 templated one-line reviews,
positive or negative -- and labels them with k = 2 passes plus a tie-break pass where they disagree, each item's
passes one after another on one of 4 workers, in four layouts:

* ``per-pass``  -- today's: each pass its own system message (wording and label order), the item as the user message;
* ``tail``      -- pass 0's system message for every pass; a later pass adds a short "second look" instruction and its
  label order after the item;
* ``wording-after`` -- pass 0's system message for every pass; a later pass repeats its whole wording after the item;
* ``same``      -- one prompt for every pass: only the temperature differs.

Pass 0 is the same request in all four.  It prints each pass's accuracy against the gold labels, the two passes'
agreement and the consensus accuracy (majority of the answers, pass 0 breaking ties), with Wilson intervals.

    python benchmarks/bench_prompt_layout.py                  # needs `make llm-server-cpp`; about 6 minutes

Measured (2 idle cores, 2026-11-26), consensus accuracy vs gold: per-pass 83.0 % [77.2, 87.6]; tail 71.5 % [64.9, 77.3];
wording-after 78.0 % [71.8, 83.2]; same 78.5 % [72.3, 83.6].  Pass 1 alone: 79.5 % per-pass vs 61.5-76.0 % shared.
(An earlier run of the same design: 86.0 / 63.0 / 79.5 / 77.5 % -- sampled passes vary by a few points between runs;
the tail's loss does not.)  The shared-prefix layouts make the later passes worse, so their speed is not worth it
and the client keeps ``per-pass``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path

import httpx
from bench_local_server import DEFAULT_SERVER_BIN, llama_server  # benchmarks/ is on sys.path

from llm_flywheel.core.stats import wilson_interval
from llm_flywheel.core.task import Task
from llm_flywheel.teachers.prompts import (
    LABEL_ONLY_WORDINGS,
    label_order,
    pass_variant,
    response_format,
    response_schema,
    system_prompt,
)

TASK = Task(name="sentiment", modality="text", labels=("positive", "negative"),
            descriptions={"positive": "the writer liked it", "negative": "the writer disliked it"},
            instructions="Is this short review positive or negative?")
SUBJECTS = ["The movie", "This phone", "The food", "Our hotel room", "The service", "This book", "The concert",
            "My new laptop", "The tour guide", "This coffee"]
POSITIVE = ["was wonderful and I loved it", "exceeded all my expectations", "made me really happy",
            "was excellent, highly recommended", "was a delight from start to finish",
            "was great value and worked perfectly"]
NEGATIVE = ["was awful and I hated it", "was a complete waste of money", "made me really angry",
            "was terrible, avoid it", "broke after one day", "was boring and disappointing"]
LAYOUTS = ("per-pass", "tail", "wording-after", "same")


def reviews(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        y = "positive" if i % 2 == 0 else "negative"
        out.append((f"{rng.choice(SUBJECTS)} {rng.choice(POSITIVE if y == 'positive' else NEGATIVE)}.", y))
    return out


def messages(layout: str, text: str, p: int) -> list[dict[str, str]]:
    """(system, user) of pass ``p`` in ``layout``; pass 0 is the client's label-only request in every layout."""
    shared = system_prompt(TASK, 0, reason=False)
    lines = "\n".join(f"- {lab}: {TASK.descriptions[lab]}" for lab in label_order(TASK, p))
    own = LABEL_ONLY_WORDINGS[pass_variant(p)["wording"]].format(instructions=TASK.instructions, label_list=lines)
    if layout == "per-pass" or p == 0:
        system, user = system_prompt(TASK, p, reason=False), text
    elif layout == "tail":
        system, user = shared, (text + "\n\n---\nSecond look: read the input again and weigh the most similar classes "
                                f"before deciding. The classes, in another order: {', '.join(label_order(TASK, p))}. "
                                "Answer with the same JSON.")
    elif layout == "wording-after":
        system, user = shared, text + "\n\n---\nNow classify the input above again. " + own
    else:
        system, user = shared, text
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


async def label(layout: str, url: str, items: list[tuple[str, str]], workers: int) -> tuple[float, dict]:
    """k = 2 + a tie-break where the passes disagree, each item's passes in a row on one worker."""
    got: dict[tuple[int, int], str | None] = {}
    queue = [(i, 0) for i in reversed(range(len(items)))]
    fmt = response_format("json_schema", response_schema(TASK, reason=False))
    async with httpx.AsyncClient(timeout=600) as c:
        async def worker() -> None:
            while queue:
                i, p = queue.pop()
                body = {"model": "m", "messages": messages(layout, items[i][0], p), "max_tokens": 60,
                        "temperature": pass_variant(p)["temperature"], "cache_prompt": True, "response_format": fmt}
                r = await c.post(url + "/chat/completions", json=body)
                try:
                    got[(i, p)] = json.loads(r.json()["choices"][0]["message"]["content"])["label"]
                except (ValueError, KeyError, TypeError):
                    got[(i, p)] = None
                if p == 0 or (p == 1 and got[(i, 0)] != got[(i, 1)]):
                    queue.append((i, p + 1))
        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return time.monotonic() - t0, got


def consensus(votes: list[str | None]) -> str | None:
    said = [v for v in votes if v is not None]
    return max(set(said), key=lambda v: (said.count(v), v == votes[0])) if said else None


def ci(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{k / n:.1%} [{lo:.1%}, {hi:.1%}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--server-bin", type=Path,
                    default=DEFAULT_SERVER_BIN)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_prompt_layout"))
    a = ap.parse_args()
    items = reviews(a.n, a.seed)
    a.workdir.mkdir(parents=True, exist_ok=True)
    print("| layout | wall s | calls | pass 0 acc | pass 1 acc | passes agree | consensus acc |\n|---|---|---|---|---|---|---|")
    for layout in a.layouts.split(","):
        with llama_server(a.server_bin, a.workdir / f"{layout}.log", []) as url:  # llama-server's own defaults
            wall, got = asyncio.run(label(layout, url, items, a.workers))
        n = len(items)
        acc = [sum(got.get((i, p)) == items[i][1] for i in range(n)) for p in (0, 1)]
        agree = sum(got.get((i, 0)) == got.get((i, 1)) for i in range(n))
        cons = sum(consensus([got.get((i, p)) for p in (0, 1, 2)]) == items[i][1] for i in range(n))
        print(f"| {layout} | {wall:.1f} | {len(got)} | {ci(acc[0], n)} | {ci(acc[1], n)} | {ci(agree, n)} | "
              f"{ci(cons, n)} |", flush=True)


if __name__ == "__main__":
    main()
