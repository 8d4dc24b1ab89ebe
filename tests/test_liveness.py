"""One wheel per dataset at a time, across processes and machines sharing a store: the second is told who turns it
(CLI exit 1, the API's FlywheelError) instead of resuming the first one's unfinished run beside it; a dead or stale
holder is taken over.  Real workspaces, real SQLite and PostgreSQL stores, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import llm_flywheel as fw
from llm_flywheel.interfaces.cli import ExitCode, main
from llm_flywheel.pipeline import liveness
from llm_flywheel.pipeline.liveness import LEASE_STALE_S, LeaseHeld, lease, owner_id


def _dead_owner(tag: str) -> str:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    host, boot, _, _ = owner_id(tag).split("|")
    return f"{host}|{boot}|{p.pid}|{tag}"


def _held_by_another_live_process(ws, name):
    """A holder that is alive (this pid) but is not this lease's owner (another tag), freshly refreshed."""
    with ws.store() as s:
        assert s.claim_lease(name, owner_id("someone-else"), stale_after_s=LEASE_STALE_S)


def test_a_second_wheel_on_the_dataset_is_told_who_turns_it(synth_ws):
    _held_by_another_live_process(synth_ws, "wheel:synth")
    out = CliRunner().invoke(main, ["--workspace", str(synth_ws.root), "run", "synth", "--simulated", "--rounds", "1",
                                    "--no-progress"])
    assert out.exit_code == ExitCode.ERROR, out.output
    text = " ".join(out.output.split())
    assert f"another wheel is turning on dataset 'synth' (pid {os.getpid()}" in text and "resumes its run" in text
    assert "Traceback" not in out.output
    with synth_ws.store() as s:
        assert s.wheel_runs("synth") == []  # nothing started, nothing of the other's marked stopped
    ds = fw.Workspace(synth_ws.root).dataset("synth")
    with pytest.raises(fw.FlywheelError, match="another wheel is turning"):
        ds.run(teacher="http://127.0.0.1:9/v1|never-asked", rounds=1, progress=False)


def test_a_lease_of_a_dead_process_is_taken_at_once_a_live_one_never_a_stale_one_after_the_timeout(ws):
    with ws.store() as s:
        assert s.claim_lease("wheel:a", _dead_owner("wheel:a"), stale_after_s=LEASE_STALE_S)
        assert s.claim_lease("wheel:b", "another-host|boot|1|wheel:b", stale_after_s=LEASE_STALE_S)
    with lease(ws, "wheel:a") as me:  # kill -9, then the same command at once
        with ws.store() as s:
            assert s.lease_holder("wheel:a").owner == me
    with ws.store() as s:
        assert s.lease_holder("wheel:a") is None  # released at the end of the block
    with pytest.raises(LeaseHeld, match="another-host"):  # another machine's pid cannot be checked: it may live
        with lease(ws, "wheel:b"):
            pass
    with ws.store() as s:
        s.execute("UPDATE leases SET claimed_at=? WHERE name='wheel:b'", (time.time() - LEASE_STALE_S - 1,))
    with lease(ws, "wheel:b"):  # not refreshed for LEASE_STALE_S: its process died or hung
        pass


def test_the_holder_keeps_its_lease_fresh_while_it_works(ws, monkeypatch):
    monkeypatch.setattr(liveness, "LEASE_REFRESH_S", 0.05)
    with lease(ws, "wheel:x"):
        with ws.store() as s:
            first = s.lease_holder("wheel:x").claimed_at
        time.sleep(0.5)  # a long training step: the heartbeat thread refreshes meanwhile
        with ws.store() as s:
            assert s.lease_holder("wheel:x").claimed_at > first
