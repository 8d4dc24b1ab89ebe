"""Two labelling runs over the same items at once pay for each call once: real processes, a real simulated
teacher over HTTP on 127.0.0.1, the store's claims on SQLite and PostgreSQL (the suite's second pass)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

from llm_flywheel.pipeline.label_claims import CLAIM_STALE_S, CallClaims
from llm_flywheel.pipeline.liveness import known_dead, owner_id
from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.teachers.base import TeacherAnswer
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher, sim_stats

SLOW_QUIET = SimConfig(latency_ms=100, malformed_rate=0, rate_429=0)  # every call answers, slowly enough to overlap


def _ids(ws, n):
    with ws.store() as s:
        return [it.id for it in s.items("synth", limit=n)]


def _label_cli(ws, url):
    cmd = [sys.executable, "-c", "from llm_flywheel.interfaces.cli import main; main()", "-w", str(ws.root), "label", "synth", "--split",
           "all", "--limit", "100", "--teacher", f"{url}|{model_id('synth')}", "--concurrency", "4",
           "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})


def test_two_label_commands_at_once_pay_for_each_call_once(synth_ws):
    """`flywheel label` started twice on one workspace: before claims each process listed the same missing calls
    and both paid for all of them (600 tickets: 1,562 calls for 781 answers)."""
    with run_simulated_teacher(synth_ws, "synth", SLOW_QUIET) as url:
        a, b = _label_cli(synth_ws, url), _label_cli(synth_ws, url)
        outs = [p.communicate(timeout=300)[0] for p in (a, b)]
        stats = sim_stats(url)
    assert a.returncode == 0 and b.returncode == 0, outs
    assert max(stats["per_key"].values()) == 1, "a call was paid for twice"
    with synth_ws.store() as s:
        stored = s.query("SELECT COUNT(*) AS n FROM teacher_answers")[0]["n"]
        left = s.query("SELECT COUNT(*) AS n FROM teacher_call_claims")[0]["n"]
    assert stats["completions"] == stored and left == 0  # every call stored once; no claim outlives its run
    assert any("another run bought meanwhile" in o for o in outs), outs  # the runs overlapped and said so


def _other_runs_claim(ws, h, model, pv, pass_index=0):
    """A claim by another run that is alive (this process, another run id): it is not taken over."""
    other = owner_id("run987654")
    with ws.store() as s:
        assert s.claim_teacher_call(h, model, pv, pass_index, other, stale_after_s=CLAIM_STALE_S)
    return other


def _later(fn, delay=0.6):
    t = threading.Thread(target=lambda: (time.sleep(delay), fn()))
    t.start()
    return t


def _label_while_another_run_holds_one_call(ws, task, n, then):
    """Label ``n`` items (1 pass) while another live run holds the first item's call; after 0.6 s that run does
    ``then(store, item, model, prompt_version, owner)``.  Returns (the run's result, calls the teacher got)."""
    ids = _ids(ws, n)
    with run_simulated_teacher(ws, "synth", SimConfig(latency_ms=0, malformed_rate=0, rate_429=0)) as url:
        t = teacher_from_spec(f"{url}|{model_id('synth')}", task)
        pv = t.prompt_version_for(task)
        with ws.store() as s:
            item = s.items("synth", ids=ids[:1])[0]
        other = _other_runs_claim(ws, item.content_hash, t.model, pv)

        def other_run() -> None:
            with ws.store() as s:
                then(s, item, t.model, pv, other)

        th = _later(other_run)
        r = label_items(ws, "synth", ids, t, LabelConfig(passes=1), progress=False)
        th.join()
        return r, sim_stats(url)["completions"]


def test_a_call_another_run_is_making_is_waited_for_and_its_answer_used(synth_ws, synth_task):
    def answers(s, item, model, pv, owner):
        s.add_teacher_answer(TeacherAnswer(item_id=item.id, content_hash=item.content_hash, model=model,
                                           prompt_version=pv, pass_index=0, ok=True, label=synth_task.labels[1],
                                           confidence=0.9))
        s.release_teacher_call_claim(item.content_hash, model, pv, 0, owner)

    r, calls = _label_while_another_run_holds_one_call(synth_ws, synth_task, 3, answers)
    assert r.calls_made == calls == 2 and r.answered_elsewhere == 1 and r.labelled == 3


def test_a_call_whose_run_gave_up_is_made_here(synth_ws, synth_task):
    """The other run's call failed (or it stopped): its claim goes, no answer comes, and this run makes the call."""
    def gives_up(s, item, model, pv, owner):
        s.release_teacher_call_claim(item.content_hash, model, pv, 0, owner)

    r, calls = _label_while_another_run_holds_one_call(synth_ws, synth_task, 2, gives_up)
    assert r.calls_made == calls == 2 and r.answered_elsewhere == 0 and r.labelled == 2


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_claims_of_a_dead_process_are_taken_at_once_and_stale_ones_after_the_timeout(ws):
    """A killed run re-run at once must not wait for its own claims: on this machine a gone pid frees them.  A run
    on another machine cannot be checked, so its claim is taken only once it is stale."""
    host, me = socket.gethostname(), owner_id("run1")
    boot = me.split("|")[1]
    dead = f"{host}|{boot}|{_dead_pid()}|run2"
    elsewhere = f"another-host|{boot}|{os.getpid()}|run3"
    assert known_dead(dead) and not known_dead(me) and not known_dead(elsewhere)
    assert not known_dead(f"{host}|another-boot|{_dead_pid()}|run4")  # a pid of an earlier boot means nothing
    with ws.store() as s:
        for h, owner in (("h-dead", dead), ("h-elsewhere", elsewhere)):
            assert s.claim_teacher_call(h, "m", "p", 0, owner, stale_after_s=CLAIM_STALE_S)
        claims = CallClaims(s, "m", "p", me)
        assert claims.free([("h-dead", 0), ("h-elsewhere", 0), ("h-new", 0)]) == {("h-dead", 0), ("h-new", 0)}
        assert claims.take("h-dead", 0) and not claims.take("h-elsewhere", 0)
        s.execute("UPDATE teacher_call_claims SET claimed_at=? WHERE owner=?", (time.time() - CLAIM_STALE_S - 1,
                                                                               elsewhere))
        assert claims.take("h-elsewhere", 0)
        assert s.teacher_call_claims("m", "p", ["h-dead", "h-elsewhere"]).keys() == {("h-dead", 0), ("h-elsewhere", 0)}
        claims.release_all()
        assert s.teacher_call_claims("m", "p", ["h-dead", "h-elsewhere"]) == {}
