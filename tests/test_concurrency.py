"""Adaptive concurrency: the search in a deterministic queueing simulation (fake clock), and the labeller against
a real loopback server that fails when asked too much at once."""

from __future__ import annotations

import asyncio
import heapq
import threading
import time

import pytest

from fault_server import FaultServer, _send, completion
from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.teachers.concurrency import (AdaptiveConcurrency, forget_levels, is_local_url, remember_level,
                                               start_level)
from llm_flywheel.teachers.openai_compat import OpenAICompatTeacher


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def simulate(ctl: AdaptiveConcurrency, clock: Clock, n_calls: int, *, slots: int = 4, work: float = 0.1,
             alpha: float = 0.25, overload_at: int = 8) -> tuple[float, int]:
    """Discrete-event run of ``n_calls`` against a server with ``slots`` FIFO slots whose service time grows with
    the busy slots (1 + alpha (a-1)); a request arriving with more than ``overload_at`` in the system fails fast
    (an overload 5xx).  Returns (successful calls per simulated second, failures)."""

    async def go() -> tuple[float, int]:
        events: list[tuple[float, int, object, bool, float]] = []
        slot_free = [0.0] * slots
        seq = fails = ok = done = started = 0
        while done < n_calls:
            while started < n_calls and ctl.inflight < ctl.limit:
                ticket = await ctl.acquire()
                started += 1
                now = clock.t
                if ctl.inflight > overload_at:
                    lat, good = 0.02, False
                else:
                    i = min(range(slots), key=lambda j: slot_free[j])
                    begin = max(now, slot_free[i])
                    busy = sum(1 for f in slot_free if f > begin)
                    end = begin + work * (1 + alpha * busy)
                    slot_free[i] = end
                    lat, good = end - now, True
                seq += 1
                heapq.heappush(events, (now + lat, seq, ticket, good, lat))
            t, _, ticket, good, lat = heapq.heappop(events)
            clock.t = t
            await ctl.release(ticket, latency_s=lat, ok=good, overload=not good)
            done += 1
            ok += good
            fails += not good
        return ok / clock.t, fails

    return asyncio.run(go())


def test_is_local_url():
    for u in ("http://127.0.0.1:8080/v1", "http://localhost:11434/v1", "http://[::1]:1234/v1", "http://10.0.0.5/v1",
              "http://192.168.1.20:8000/v1", "http://gpu-box.local:8080/v1"):
        assert is_local_url(u), u
    for u in ("https://openrouter.ai/api/v1", "https://api.openai.com/v1", "http://8.8.8.8/v1"):
        assert not is_local_url(u), u


def test_start_level_low_for_local_moderate_for_remote_and_remembered():
    forget_levels()
    assert start_level("http://127.0.0.1:8080/v1", "m", 16) == 2
    assert start_level("https://openrouter.ai/api/v1", "m", 16) == 8
    assert start_level("https://openrouter.ai/api/v1", "m", 4) == 4  # never above the cap
    remember_level("http://127.0.0.1:8080/v1", "m", 5)
    assert start_level("http://127.0.0.1:8080/v1", "m", 16) == 5
    assert start_level("http://127.0.0.1:8080/v1", "m", 3) == 3
    forget_levels()
    assert start_level("http://127.0.0.1:8080/v1", "m", 16) == 2
    # the teacher's own judgement wins: the simulated teacher listens on loopback but stands in for a remote API
    assert start_level("http://127.0.0.1:8080/v1", "simulated/x", 16, local=False) == 8
    assert start_level("https://gpu-box.example/v1", "m", 16, local=True) == 2


def test_adaptive_finds_the_plateau_and_matches_the_best_fixed_level():
    fixed = {}
    for c in (1, 2, 4, 8, 16, 32):
        clk = Clock()
        fixed[c] = simulate(AdaptiveConcurrency(c, adaptive=False, clock=clk), clk, 3000)[0]
    best = max(fixed.values())
    assert fixed[4] > 1.3 * fixed[2] and fixed[32] < 0.8 * best  # the server really has a sweet spot
    clk = Clock()
    ctl = AdaptiveConcurrency(32, start=2, clock=clk)
    rate, fails = simulate(ctl, clk, 3000)
    assert rate >= 0.9 * best
    assert 4 <= ctl.settled <= 8 and ctl.max_limit <= 32
    assert fails < 0.02 * 3000


def test_never_above_the_cap_and_fixed_mode_stays_put():
    clk = Clock()
    ctl = AdaptiveConcurrency(3, start=1, clock=clk)
    simulate(ctl, clk, 1000, slots=16, overload_at=100)  # a server that would take far more
    assert ctl.max_limit == 3 and ctl.settled == 3
    clk = Clock()
    ctl = AdaptiveConcurrency(16, adaptive=False, clock=clk)
    simulate(ctl, clk, 500)
    assert ctl.limit == 16 and ctl.windows == 0


def test_overload_halves_the_level_and_caps_it():
    async def go() -> AdaptiveConcurrency:
        clk = Clock()
        ctl = AdaptiveConcurrency(16, start=8, clock=clk)
        tickets = [await ctl.acquire() for _ in range(8)]
        for t in tickets[:2]:
            clk.t += 0.1
            await ctl.release(t, latency_s=0.1, ok=False, overload=True)
        for t in tickets[2:]:
            await ctl.release(t, count=False)
        return ctl

    ctl = asyncio.run(go())
    assert ctl.limit == 4 and ctl.ceiling == 7 and ctl.decreases == 1


def _crowded_server(limit: int, delay: float = 0.03) -> tuple[FaultServer, dict]:
    """A real HTTP server on 127.0.0.1 that answers 500 "Context size has been exceeded" while more than ``limit``
    requests are being served at once (what llama.cpp does with too many parallel sequences)."""
    state = {"inflight": 0, "max": 0, "exceeded": 0}
    lock = threading.Lock()

    def act(h, body):
        with lock:
            state["inflight"] += 1
            n = state["inflight"]
            state["max"] = max(state["max"], n)
        try:
            time.sleep(delay)
            if n > limit:
                with lock:
                    state["exceeded"] += 1
                _send(h, 500, {"error": {"code": 500, "message": "Context size has been exceeded.",
                                         "type": "server_error"}})
            else:
                _send(h, 200, completion('{"label": "bar", "confidence": 0.9, "reason": "r"}'))
        finally:
            with lock:
                state["inflight"] -= 1

    return FaultServer(default=act), state


@pytest.mark.slow
def test_labeller_backs_off_a_crowded_local_server(synth_ws, synth_task):
    s = synth_ws.store()
    ids = [it.id for it in s.items("synth", limit=150)]
    s.close()
    results = {}
    for name, adaptive in (("fixed", False), ("adaptive", True)):
        forget_levels()
        srv, state = _crowded_server(3)
        with srv:
            t = OpenAICompatTeacher(srv.url, f"m-{name}", api_key_env=None, task=synth_task, logprobs=False)
            r = label_items(synth_ws, "synth", ids, t, LabelConfig(passes=1, tie_break=False, concurrency=16,
                                                                   adaptive=adaptive), progress=False)
        results[name] = (r, dict(state))
    fixed, adaptive = results["fixed"], results["adaptive"]
    assert fixed[1]["max"] > 3 and fixed[0].failed > 50  # sixteen at once: most calls fail
    assert adaptive[1]["max"] <= 16 and adaptive[0].concurrency["adaptive"] is True
    assert adaptive[0].failed * 5 < fixed[0].failed  # the adaptive run learns to stay near 3
    # ... and spends its time there: the level averaged over the run's time stays near the server's limit of 3 (the
    # final level alone can be a probe one or two steps up that the run ended in the middle of)
    changes = adaptive[0].concurrency["changes"]
    ends = [t for t, _, _ in changes[1:]] + [max(adaptive[0].elapsed_s, changes[-1][0])]
    spans = [(end - t, level) for (t, level, _), end in zip(changes, ends)]
    mean_level = sum(d * level for d, level in spans) / max(sum(d for d, _ in spans), 1e-9)
    assert mean_level <= 5, changes
    assert adaptive[0].concurrency["final"] <= 6, changes


def test_a_server_that_says_its_slot_count_is_never_asked_more():
    """Requests beyond llama.cpp's slots only queue there: on a 2-core machine the search climbed to 16 on a
    4-slot llama-server (calls 7x slower, no more of them a second) when windows of long and short emails looked
    like gains.  Its /props slot count is the ceiling."""
    clk = Clock()
    ctl = AdaptiveConcurrency(16, start=4, ceiling=4, clock=clk)
    rate, fails = simulate(ctl, clk, 3000, slots=4, alpha=0.0, overload_at=100)
    assert ctl.max_limit == 4 and fails == 0
    clk2 = Clock()
    best = simulate(AdaptiveConcurrency(4, adaptive=False, clock=clk2), clk2, 3000, slots=4, alpha=0.0,
                    overload_at=100)[0]
    assert rate >= 0.95 * best
    assert AdaptiveConcurrency(16, start=8, ceiling=4).limit == 4  # a learned level above it starts at it
