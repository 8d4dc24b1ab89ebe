"""`flywheel predict --engine ray` on a local Ray cluster the test starts (2 CPUs on 127.0.0.1).

What is proven: every item gets the same answer as the local engine; a worker process killed with SIGKILL mid-run
is replaced and the run completes, with every item logged once and no teacher answer bought twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from ports import free_port
from test_cascade import sim_teacher, trained_calibrated_ws

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.alone]  # a Ray cluster: run_passes.py
ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

from llm_flywheel.pipeline.cascade import Cascade
from llm_flywheel.pipeline.predict_files import answer_inputs
from llm_flywheel.pipeline.predict_ray import (
    RayPredictConfig,
    TeacherRef,
    predict_with_ray,
)
from llm_flywheel.teachers.simulated import (
    SimConfig,
    serve_app,
    sim_stats,
    simulated_app,
)

QUIET = SimConfig(latency_ms=0, rate_429=0.0, malformed_rate=0.0)


@pytest.fixture(scope="module")
def cal_ws(tmp_path_factory):
    return trained_calibrated_ws(tmp_path_factory.mktemp("ray") / "ws")


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        yield
    finally:
        ray.shutdown()


def _median_threshold(ws, split: str) -> float:
    """A threshold that sends about half of the split to the teacher, so both paths of the cascade are taken."""
    import numpy as np

    casc = Cascade.from_store(ws, "synth")
    try:
        with ws.store() as s:
            items = s.items("synth", split=split)
        _, conf = casc.student_scores(casc.student.predict_proba(items))
    finally:
        casc.close()
    return float(np.median(conf))


def _log_rows(ws, ids):
    with ws.store() as s:
        marks = ",".join("?" * len(ids))
        return [tuple(r) for r in s.query(f"SELECT item_id, source, label FROM cascade_log WHERE origin='predict' "
                                          f"AND item_id IN ({marks})", list(ids))]


def test_ray_answers_equal_the_local_engine(cal_ws, cluster, tmp_path):
    import pyarrow.parquet as pq

    ws, version = cal_ws
    thr = _median_threshold(ws, "stream")
    with serve_app(simulated_app(ws, "synth", QUIET)) as root:
        url = f"{root}/v1"
        teacher = sim_teacher(ws, url)
        out = tmp_path / "stream.parquet"
        res = predict_with_ray(ws, "synth", split="stream", threshold=thr, teacher=TeacherRef.of(teacher),
                               config=RayPredictConfig(workers=2, batch_size=7, parquet=out), keep_answers=True)
        paid = sim_stats(url)["requests"]
        casc = Cascade.from_store(ws, "synth", teacher=sim_teacher(ws, url), threshold=thr)
        with ws.store() as s:
            items = s.items("synth", split="stream")
        local = casc.predict_items(items, log=False)
        casc.close()
        assert sim_stats(url)["requests"] == paid  # the local run found every deferred answer cached
    assert res.n == res.answered == len(items) == 40 and res.errors == 0 and res.version == version
    assert 0 < res.by_source["student"] < 40 and res.by_source["teacher"] > 0  # both paths taken
    by_item = {a.item_id: a for a in res.answers}
    for a in local:
        r = by_item[a.item_id]
        assert (r.label, r.source, r.student_label, r.teacher_label, r.content_hash) == \
            (a.label, a.source, a.student_label, a.teacher_label, a.content_hash), a.item_id
        assert r.confidence == pytest.approx(a.confidence, abs=1e-5)
    deferred = {a.content_hash for a in local if a.source != "student"}
    assert paid == len(deferred) == res.teacher_calls
    logged = _log_rows(ws, [it.id for it in items])
    assert sorted(logged) == sorted((a.item_id, a.source, a.label) for a in local)  # once per item
    table = pq.read_table(out).to_pylist()
    assert sorted((r["item_id"], r["label"], r["source"]) for r in table) == \
        sorted((a.item_id, a.label, a.source) for a in local)
    assert not list(tmp_path.glob("*.partial"))


def test_ray_over_a_folder_of_files_equals_the_local_engine(cal_ws, cluster, tmp_path):
    ws, _ = cal_ws
    with ws.store() as s:
        items = s.items("synth", split="test", limit=5)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for k, it in enumerate(items):
        (tmp_path / "in" / ("sub" if k % 2 else "") / f"{it.id}.png").write_bytes((ws.root / it.blob_path).read_bytes())
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    files = sorted(p for p in (tmp_path / "in").rglob("*") if p.is_file())
    with serve_app(simulated_app(ws, "synth", QUIET)) as root:
        url = f"{root}/v1"
        res = predict_with_ray(ws, "synth", files=files, threshold=0.9999, teacher=TeacherRef.of(sim_teacher(ws, url)),
                               config=RayPredictConfig(workers=2, batch_size=2, log=False), keep_answers=True)
        paid = sim_stats(url)["requests"]
        casc = Cascade.from_store(ws, "synth", teacher=sim_teacher(ws, url), threshold=0.9999)
        local = asyncio.run(answer_inputs(casc, files, log=False))
        casc.close()
        assert sim_stats(url)["requests"] == paid  # bought once, by the Ray workers, stored by content hash
    assert paid == 5 and res.by_source["teacher"] == 5  # every readable file deferred and answered once
    assert res.n == 6 and res.answered == 5 and res.errors == 1
    got = {Path(a.path).name: a for a in res.answers}
    for f, a in zip(files, local):
        r = got[f.name]
        if isinstance(a, Exception):
            assert r.error is not None and "cannot read image input" in r.error
        else:
            assert (r.label, r.source, r.student_label, r.teacher_label, r.content_hash) == \
                (a.label, a.source, a.student_label, a.teacher_label, a.content_hash)


class Gate:
    """ASGI wrapper in front of the simulated teacher: the test can hold new chat requests, see when none is in
    flight, and kill a worker then.  A request whose caller died while held is dropped unanswered (and uncounted,
    as a provider would not bill a request it never processed)."""

    def __init__(self, app) -> None:
        self.app, self.open, self.lock = app, threading.Event(), threading.Lock()
        self.open.set()
        self.in_flight = self.dropped = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            return await self.app(scope, receive, send)
        msgs = [await receive()]
        while msgs[-1]["type"] == "http.request" and msgs[-1].get("more_body"):
            msgs.append(await receive())
        while True:
            with self.lock:  # passing the gate and counting as in flight is one step
                if self.open.is_set():
                    self.in_flight += 1
                    break
            await asyncio.sleep(0.01)
        try:
            try:
                m = await asyncio.wait_for(receive(), 0.05)
                if m["type"] == "http.disconnect":
                    self.dropped += 1
                    return
                msgs.append(m)
            except TimeoutError:
                pass
            queue = list(msgs)

            async def replay():
                return queue.pop(0) if queue else await receive()

            await self.app(scope, replay, send)
        finally:
            with self.lock:
                self.in_flight -= 1

    def hold(self) -> None:
        """Hold new requests and wait until none is in flight (each one's answer had time to be stored)."""
        with self.lock:
            self.open.clear()
        for _ in range(2):  # again after a pause: an answer just sent must reach its caller and be stored
            while True:
                with self.lock:
                    if not self.in_flight:
                        break
                time.sleep(0.01)
            time.sleep(0.5)


def test_a_worker_killed_mid_run_loses_and_repays_nothing(cal_ws, cluster):
    ws, _ = cal_ws
    with ws.store() as s:
        items = s.items("synth", split="test")
    gate = Gate(simulated_app(ws, "synth", SimConfig(latency_ms=100, rate_429=0.0, malformed_rate=0.0)))
    with serve_app(gate) as root:
        url = f"{root}/v1"
        seen: list = []
        box: dict = {}

        def run():
            try:
                box["res"] = predict_with_ray(
                    ws, "synth", split="test", threshold=0.9999, teacher=TeacherRef.of(sim_teacher(ws, url)),
                    config=RayPredictConfig(workers=2, batch_size=10, teacher_concurrency=4), progress=seen.append,
                    keep_answers=True)
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                box["err"] = e

        t = threading.Thread(target=run)
        t.start()
        deadline = time.monotonic() + 120
        while not (seen and seen[-1].done >= 20) and t.is_alive():  # some batches done, most still to come
            assert time.monotonic() < deadline, "no batch finished"
            time.sleep(0.05)
        assert t.is_alive(), box
        gate.hold()  # hold new teacher calls; those in flight finish and are stored
        victim = seen[-1].worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        time.sleep(1.0)
        gate.open.set()
        t.join(timeout=150)
        assert not t.is_alive(), "the run did not finish after the kill"
        assert "err" not in box, box.get("err")
        requests = sim_stats(url)["requests"]
    res = box["res"]
    assert res.n == res.answered == len(items) == 100 and res.errors == 0
    assert victim in res.worker_pids and len(res.worker_pids) >= 2
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)
    logged = _log_rows(ws, [it.id for it in items])
    assert len(logged) == 100 and len({r[0] for r in logged}) == 100  # every item answered once in the store
    deferred = {a.content_hash for a in res.answers if a.source != "student"}
    with ws.store() as s:
        n_answers = s.query("SELECT COUNT(*) FROM teacher_answers a JOIN items i ON i.id=a.item_id "
                            "WHERE i.split='test'")[0][0]
        # the test images an earlier test answered as files were bought by the serving path: reused, not re-bought
        reused = s.query("SELECT COUNT(*) FROM teacher_answers a JOIN items i ON i.id=a.item_id "
                         "WHERE i.split='test' AND a.bought_by='serve'")[0][0]
    assert deferred and requests == res.teacher_calls == len(deferred) - reused  # nothing bought twice
    assert n_answers == len(deferred)


def test_cli_engine_ray_prints_progress_and_writes_parquet(cal_ws, cluster, tmp_path):
    from llm_flywheel.interfaces.cli import main

    ws, _ = cal_ws
    out = tmp_path / "p.parquet"
    r = CliRunner().invoke(main, ["--workspace", str(ws.root), "predict", "synth", "--split", "stream",
                                  "--engine", "ray", "--batch-size", "15", "--parquet", str(out), "--no-log",
                                  "--json", "--show", "0"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert len(rows) == 40 and {x["source"] for x in rows} <= {"student", "deferred"}
    assert "predict (ray): 40/40 items" in r.output and "items/s" in r.output and out.exists()
    # with --parquet and no --json the answers stay in the file (a big run is not held in memory): counts printed
    r = CliRunner().invoke(main, ["--workspace", str(ws.root), "predict", "synth", "--split", "stream", "--engine",
                                  "ray", "--parquet", str(out), "--no-log"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    import pyarrow.parquet as pq

    n_deferred = sum(x["source"] == "deferred" for x in rows)
    assert pq.read_table(out).num_rows == 40 and "items: 40" in r.output
    assert (f"answered by deferred: {n_deferred}" in r.output) == (n_deferred > 0)
    for opt in (["--parquet", str(out)], ["--workers", "3"]):  # Ray's options without --engine ray
        r = CliRunner().invoke(main, ["--workspace", str(ws.root), "predict", "synth", "--split", "stream", *opt])
        assert r.exit_code == 2 and "--engine ray" in r.output
    with ws.store() as s:
        runs = s.query("SELECT status, config_json FROM runs WHERE kind='predict' ORDER BY id")
    assert runs[-1]["status"] == "done" and json.loads(runs[-1]["config_json"])["engine"] == "ray"


def test_a_cluster_address_nothing_answers_at_fails_fast(cal_ws, tmp_path):
    """A wrong --ray-address is exit 1 naming the address within seconds (ray.init alone retries for minutes)."""

    from llm_flywheel.interfaces.cli import main

    ws, _ = cal_ws
    port = free_port()
    r = CliRunner().invoke(main, ["--workspace", str(ws.root), "predict", "synth", "--split", "stream", "--engine",
                                  "ray", "--ray-address", f"127.0.0.1:{port}"])
    assert r.exit_code == 1 and f"127.0.0.1:{port}" in r.output and "ray start --head" in r.output


def test_items_of_one_content_share_a_batch():
    """Copies of one content go to one worker's batch (one labelling call asks a content once), whatever their
    position; every item is in exactly one batch and batches stay near the asked size."""
    from llm_flywheel.pipeline.predict_ray import _chunks

    keyed = [(f"h{i % 7 if i % 3 == 0 else i}", 100 + i) for i in range(60)]
    chunks = _chunks(keyed, 8, "item_ids")
    where = {}
    for c, ch in enumerate(chunks):
        assert len(ch["indexes"]) == len(ch["item_ids"]) and len(ch["indexes"]) < 8 + 10
        for k, ref in zip(ch["indexes"], ch["item_ids"]):
            assert keyed[k][1] == ref
            where.setdefault(keyed[k][0], set()).add(c)
    assert sorted(k for ch in chunks for k in ch["indexes"]) == list(range(60))
    assert all(len(cs) == 1 for cs in where.values())
    assert len(chunks) >= 60 // (8 + 10)


def test_a_worker_that_cannot_start_fails_the_run_with_its_reason(cal_ws, cluster, tmp_path):
    """The worker's own error is the message (not Ray's actor boilerplate), the run is recorded as failed and no
    Parquet file (nor a partial one) is left behind."""
    from llm_flywheel.pipeline.predict_ray import RayPredictError

    ws, _ = cal_ws
    out = tmp_path / "never.parquet"
    with pytest.raises(RayPredictError, match="cannot read teacher spec 'no-such-spec'"):
        predict_with_ray(ws, "synth", split="stream", teacher=TeacherRef("no-such-spec"),
                         config=RayPredictConfig(workers=1, batch_size=20, parquet=out))
    assert not list(tmp_path.iterdir())
    with ws.store() as s:
        assert s.query("SELECT status FROM runs WHERE kind='predict' ORDER BY id DESC LIMIT 1")[0]["status"] == "failed"


def test_workers_are_told_where_the_store_is_but_not_its_password(monkeypatch):
    from llm_flywheel.pipeline.ray_env import env_for_ray

    env = {"FLYWHEEL_STORE": "postgresql://fw:s3cret@db.internal:5432/flywheel?schema={workspace}",
           "OPENROUTER_API_KEY": "k", "PGPASSWORD": "s3cret", "PATH": "/bin", "AZURE_OPENAI_API_KEY": "k"}
    assert env_for_ray(env) == {"FLYWHEEL_STORE": "postgresql://fw@db.internal:5432/flywheel?schema={workspace}"}
    del env["FLYWHEEL_STORE"]
    assert env_for_ray(env) == {}
    # a Serve replica builds its teacher from the spec: `azure:` / `ollama:` need their endpoints there too
    env |= {"AZURE_OPENAI_ENDPOINT": "https://my-resource.openai.azure.com",
            "OLLAMA_BASE_URL": "http://me:pw@gpu-box:11434/v1"}
    assert env_for_ray(env) == {"AZURE_OPENAI_ENDPOINT": "https://my-resource.openai.azure.com",
                                "OLLAMA_BASE_URL": "http://me@gpu-box:11434/v1"}
