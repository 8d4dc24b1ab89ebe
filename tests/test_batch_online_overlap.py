"""A call is bought online or through a Batch API submission, never both: an online run leaves the calls an open
batch carries to it, and a batch run leaves the calls an online run is making to that run.  Real simulated teacher
on 127.0.0.1 (its /v1/batches too), real store (SQLite, and PostgreSQL in the suite's second pass)."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid

from click.testing import CliRunner

from llm_flywheel.interfaces.cli import main
from llm_flywheel.pipeline.batch_labeling import BatchConfig, label_items_batch
from llm_flywheel.pipeline.label_claims import CLAIM_STALE_S
from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.pipeline.liveness import owner_id
from llm_flywheel.store.batches import BatchLine
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher, sim_stats

QUIET = {"latency_ms": 0, "malformed_rate": 0, "rate_429": 0}
ONE = LabelConfig(passes=1)


def _items(ws, n):
    with ws.store() as s:
        return s.items("synth", limit=n)


def _teacher(url, task):
    return teacher_from_spec(f"{url}|{model_id('synth')}", task, backoff_base=0.01)


def test_online_run_leaves_calls_of_an_open_batch_to_it_and_the_batch_run_collects_them(synth_ws, synth_task):
    """Before: `flywheel label` beside a batch still running listed the batch's calls as missing and paid for them
    online; the batch's answers, collected later, were paid a second time."""
    w = ["-w", str(synth_ws.root)]
    with run_simulated_teacher(synth_ws, "synth", SimConfig(**QUIET, batch_latency_s=0.5)) as url:
        t = _teacher(url, synth_task)
        ids = [it.id for it in _items(synth_ws, 30)]
        first = label_items_batch(synth_ws, "synth", ids[:20], t, ONE, BatchConfig(poll_s=0.05, wait_s=0),
                                  progress=False)
        assert first.batches_pending == 1 and first.calls_made == 0
        spec = f"{url}|{model_id('synth')}"
        online = CliRunner().invoke(main, [*w, "label", "synth", "--split", "all", "--limit", "30", "--teacher", spec,
                                           "--passes", "1", "--no-progress"], env={"COLUMNS": "200"})
        assert sim_stats(url)["completions"] == 10  # only the 10 items no batch carries were bought online
        info = CliRunner().invoke(main, [*w, "data", "info", "synth"], env={"COLUMNS": "200"})
        assert "open Batch API jobs: 1 (20 requests;" in " ".join(info.output.split()), info.output
        collect = label_items_batch(synth_ws, "synth", ids, t, ONE, BatchConfig(poll_s=0.05), progress=False)
        stats = sim_stats(url)
    assert online.exit_code == 5, online.output  # work is left, as for a batch still running
    out = " ".join(online.output.split())
    assert "calls in an open Batch API job (paid when it is collected) │ 20" in out  # the plan printed first
    assert "calls left to an open Batch API job" in out, out
    assert "Batch API submission that is not collected yet" in out and "flywheel label synth --batch" in out
    assert collect.batches_resumed == 1 and collect.batches_submitted == 0 and collect.calls_made == 20
    assert collect.labelled == 30 and max(stats["per_key"].values()) == 1  # every call paid once
    after = json.loads(CliRunner().invoke(main, [*w, "data", "info", "synth", "--json"]).output)
    assert after["synth"]["open_batches"] == []


def test_online_run_skips_a_call_a_batch_recorded_after_the_run_listed_its_jobs(synth_ws, synth_task):
    """The run lists its jobs at the start; a batch recorded meanwhile is seen at the moment of paying."""
    items = _items(synth_ws, 6)
    last = items[-1]
    with run_simulated_teacher(synth_ws, "synth", SimConfig(latency_ms=150, malformed_rate=0, rate_429=0)) as url:
        t = _teacher(url, synth_task)
        pv = t.prompt_version_for(synth_task)

        def batch_elsewhere() -> None:
            time.sleep(0.3)
            with synth_ws.store() as s:
                s.add_batch_submission(submission=uuid.uuid4().hex, dataset="synth", base_url=t.base_url,
                                       model=t.model, prompt_version=pv,
                                       lines=[BatchLine(f"{last.id}:0", last.id, last.content_hash, 0)],
                                       price_ratio=0.5, reserved_usd=None, run_id=None)

        th = threading.Thread(target=batch_elsewhere)
        th.start()
        r = label_items(synth_ws, "synth", [it.id for it in items], t, LabelConfig(passes=1, concurrency=1,
                                                                                  adaptive=False), progress=False)
        th.join()
        calls = sim_stats(url)["completions"]
    assert r.in_open_batch == 1 and r.calls_made == calls == 5 and r.labelled == 5 and r.unlabelled == 1
    assert [w["code"] for w in r.warnings] == ["in_open_batch"]


def test_batch_run_leaves_a_call_an_online_run_is_making_to_it(synth_ws, synth_task):
    items = _items(synth_ws, 8)
    busy = items[0]
    with run_simulated_teacher(synth_ws, "synth", SimConfig(**QUIET, batch_latency_s=0.2)) as url:
        t = _teacher(url, synth_task)
        pv = t.prompt_version_for(synth_task)
        with synth_ws.store() as s:  # a live online run (this process, another run id) is making one call
            assert s.claim_teacher_call(busy.content_hash, t.model, pv, 0, owner_id("run424242"),
                                        stale_after_s=CLAIM_STALE_S)
        r = label_items_batch(synth_ws, "synth", [it.id for it in items], t, ONE, BatchConfig(poll_s=0.05),
                              progress=False)
        with synth_ws.store() as s:
            submitted = {(ln["content_hash"], ln["pass_index"]) for ln in s.query("SELECT * FROM teacher_batch_lines")}
            left = s.query("SELECT owner FROM teacher_call_claims")
    assert (busy.content_hash, 0) not in submitted and len(submitted) == 7 == r.calls_made
    assert [row["owner"] for row in left] == [owner_id("run424242")]  # the batch run's own claims are gone


def test_claiming_many_calls_takes_free_and_dead_ones_only(synth_ws):
    dead = "otherhost|boot|1|run1"
    with synth_ws.store() as s:
        assert s.claim_teacher_call("a", "m", "pv", 0, owner_id("run1"), stale_after_s=CLAIM_STALE_S)
        assert s.claim_teacher_call("b", "m", "pv", 0, dead, stale_after_s=CLAIM_STALE_S)
        got = s.claim_teacher_calls("m", "pv", [("a", 0), ("b", 0), ("c", 0), ("c", 1)], owner_id("batch2"),
                                    stale_after_s=CLAIM_STALE_S, is_dead=lambda o: o == dead)
    assert got == {("b", 0), ("c", 0), ("c", 1)}


def test_cancel_batches_keeps_what_the_batch_answered_and_asks_the_rest_now(synth_ws, synth_task):
    """A user who needs the labels now: `--cancel-batches` cancels the running batch at the provider, stores the
    lines it had answered (billed) and asks only the others online."""
    w = ["-w", str(synth_ws.root)]
    with run_simulated_teacher(synth_ws, "synth", SimConfig(**QUIET, batch_latency_s=2.0)) as url:
        t = _teacher(url, synth_task)
        ids = [it.id for it in _items(synth_ws, 30)]
        first = label_items_batch(synth_ws, "synth", ids, t, ONE, BatchConfig(poll_s=0.05, wait_s=0), progress=False)
        assert first.batches_pending == 1
        time.sleep(1.0)  # about half of its lines answered
        spec = f"{url}|{model_id('synth')}"
        out = CliRunner().invoke(main, [*w, "label", "synth", "--split", "all", "--limit", "30", "--teacher", spec,
                                        "--passes", "1", "--cancel-batches", "--batch-poll-s", "0.05", "--no-progress", "--json"],
                                 env={"COLUMNS": "200"})
        stats = sim_stats(url)
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    m = re.search(r"cancelled 1 open batch\(es\): kept (\d+) answer\(s\)", text)
    assert m, text
    kept = int(m.group(1))
    js = json.loads(out.output[out.output.rindex('{\n  "calls_made"'):])
    assert js["calls_made"] == 30 - kept and js["labelled"] == 30 and js["in_open_batch"] == 0
    assert max(stats["per_key"].values()) == 1  # no call paid twice
    with synth_ws.store() as s:
        assert s.open_batches(t.model, t.prompt_version_for(synth_task)) == []


def test_cancelling_a_batch_that_finished_meanwhile_collects_all_of_it(synth_ws, synth_task):
    """The provider refuses to cancel a batch that has ended (400): its answers are collected, none lost."""
    from llm_flywheel.pipeline.batch_cancel import cancel_open_batches

    with run_simulated_teacher(synth_ws, "synth", SimConfig(**QUIET, batch_latency_s=0.3)) as url:
        t = _teacher(url, synth_task)
        ids = [it.id for it in _items(synth_ws, 12)]
        assert label_items_batch(synth_ws, "synth", ids, t, ONE, BatchConfig(poll_s=0.05, wait_s=0),
                                 progress=False).batches_pending == 1
        time.sleep(0.6)  # it completes at the provider; nobody has collected it
        r = cancel_open_batches(synth_ws, "synth", t, poll_s=0.05, progress=False)
        again = label_items(synth_ws, "synth", ids, t, ONE, progress=False)
    assert r.batches_resumed == 1 and r.calls_made == 12 and r.lines_failed == 0 and r.batches_pending == 0
    assert again.calls_made == 0 and again.answers_cached == 12
