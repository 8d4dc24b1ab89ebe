"""The service under bad input, overload and a failing teacher, through a live uvicorn server on 127.0.0.1: every
bad input a counted 4xx, large images off the event loop, 503 + Retry-After when the queue is full, the teacher's
deadline and circuit breaker, /readyz, the OpenAPI schema per modality, teacher answers stored before use across
cascades, and retention that keeps uncollected feedback."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import io
import time

import httpx
import pytest

from fault_server import FaultServer, free_port, slow, status, ok
from llm_flywheel.interfaces.serve import apply_retention, create_app, parse_prometheus
from llm_flywheel.pipeline.calibration import DEFER_ALL
from llm_flywheel.pipeline.cascade import Cascade
from llm_flywheel.store.serving import CascadeLogRow
from llm_flywheel.teachers.simulated import SimConfig, run_simulated_teacher
from test_cascade import SYNTH_TASK, sim_teacher, trained_calibrated_ws
from test_serve import running

PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def cal_ws(tmp_path_factory):
    return trained_calibrated_ws(tmp_path_factory.mktemp("harden") / "ws")


@pytest.fixture(scope="module")
def pngs(cal_ws):
    ws, _ = cal_ws
    with ws.store() as s:
        items = s.items("synth", split="test", limit=20)
    return [(ws.root / it.blob_path).read_bytes() for it in items]


def _big_png(side: int) -> bytes:
    """A small file that decodes to side x side RGBA pixels (a pixel bomb under the pixel limit)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def _metrics(url):
    return parse_prometheus(httpx.get(f"{url}/metrics").text)


def _fault_teacher(ws, url):
    from llm_flywheel.teachers.registry import teacher_from_spec

    return teacher_from_spec(f"{url}|fault-model", SYNTH_TASK, api_key_env="", workspace=ws)


def test_bad_inputs_are_counted_4xx_never_5xx(cal_ws, pngs):
    ws, _ = cal_ws
    app = create_app(ws, "synth", max_bytes=256 * 1024, max_image_pixels=1_000_000)
    deep = b'{"image_base64": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    bad = [
        (deep, "application/json"),                                # RecursionError in json.loads
        (b"[" * 5000, "application/json"),                         # deep and unterminated
        (b"\xff\xfe garbage", "image/png"),
        (pngs[0][:40], "image/png"),                               # a header, then nothing
        (_big_png(2000), "image/png"),                             # 4 M pixels > the 1 M limit
        (b"\0" * 300_000, "image/png"),                            # over max_bytes
        (b"a ring", "text/plain"),                                 # a text to an image model
        (b"<xml/>", "application/xml"),
        (b'{"text": "a ring"}', "application/json"),
        (b'{"image_base64": "%%%"}', "application/json"),
        (b"", "image/png"),
    ]
    with running(app) as url:
        before = _metrics(url)
        codes = [httpx.post(f"{url}/v1/predict", content=b, headers={"Content-Type": ct}, timeout=30) for b, ct in bad]
        m = _metrics(url)
    assert all(400 <= r.status_code < 500 and r.json()["detail"] for r in codes), [(r.status_code, r.text) for r in codes]
    assert codes[0].status_code == 400 and "nested" in codes[0].json()["detail"]
    assert codes[4].status_code == 413 and "pixels" in codes[4].json()["detail"]
    assert "flywheel serve --max-image-pixels" in codes[4].json()["detail"]  # the 413 names its fix
    assert codes[6].status_code == 415 and codes[7].status_code == 415  # not offered to an image model
    counted = sum(v - before.get(k, 0) for k, v in m.items() if k.startswith("flywheel_request_errors_total"))
    assert counted == len(bad)
    assert not any(k.startswith('flywheel_request_errors_total{code="5') for k in m)


def test_large_images_never_stall_small_requests_or_healthz(cal_ws, pngs):
    """Big images decode on their own single-thread pool: while three of them are being decoded one after the
    other, small requests and /healthz are all answered."""
    ws, _ = cal_ws
    bomb = _big_png(5000)  # 25 M RGBA pixels: hundreds of ms to decode each, under the 40 M default limit
    app = create_app(ws, "synth", heavy_queue=8, log_sample_rate=0.0)
    with running(app) as url, cf.ThreadPoolExecutor(3) as pool:
        heavy = [pool.submit(httpx.post, f"{url}/v1/predict", content=bomb, headers=PNG, timeout=120) for _ in range(3)]
        deadline = time.monotonic() + 60
        while app.state.serve.heavy.admitted == 0:
            assert time.monotonic() < deadline, "the large images never reached the heavy pool"
            time.sleep(0.005)
        small = [httpx.post(f"{url}/v1/predict", content=pngs[i % len(pngs)], headers=PNG, timeout=30)
                 for i in range(10)]
        health = httpx.get(f"{url}/healthz", timeout=30)
        assert not all(h.done() for h in heavy)  # everything small was answered while big images were decoding
        assert all(r.status_code == 200 for r in small) and health.status_code == 200
        assert all(h.result().status_code == 200 for h in heavy)


def test_full_queue_is_503_with_retry_after(cal_ws):
    ws, _ = cal_ws
    bomb = _big_png(5000)
    app = create_app(ws, "synth", heavy_queue=0, log_sample_rate=0.0)
    with running(app) as url, cf.ThreadPoolExecutor(4) as pool:
        rs = list(pool.map(lambda _: httpx.post(f"{url}/v1/predict", content=bomb, headers=PNG, timeout=120), range(4)))
        m = _metrics(url)
    busy = [r for r in rs if r.status_code == 503]
    assert busy and all(r.headers.get("Retry-After") and "busy" in r.json()["detail"] for r in busy)
    assert all(r.status_code in (200, 503) for r in rs) and any(r.status_code == 200 for r in rs)
    assert m['flywheel_request_errors_total{code="503"}'] == len(busy)


def test_teacher_down_opens_the_breaker_and_answers_student_fallback(cal_ws, pngs):
    ws, _ = cal_ws
    teacher = _fault_teacher(ws, f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
    app = create_app(ws, "synth", teacher=teacher, threshold=DEFER_ALL, breaker_failures=2, breaker_cooldown_s=600,
                     deadline_s=20)
    with running(app) as url:
        assert httpx.get(f"{url}/readyz").json()["teacher"]["breaker"] == "closed"
        rs = [httpx.post(f"{url}/v1/predict", content=p, headers=PNG, timeout=60).json() for p in pngs[:5]]
        ready = httpx.get(f"{url}/readyz")
        m = _metrics(url)
    assert [r["source"] for r in rs[:2]] == ["teacher_failed"] * 2  # asked, failed
    assert [r["source"] for r in rs[2:]] == ["student_fallback"] * 3  # breaker open: not asked
    assert all(r["label"] == r["student_label"] for r in rs)
    assert ready.status_code == 200 and ready.json()["teacher"]["breaker"] == "open"  # degraded, still serving
    assert m["flywheel_teacher_breaker_state"] == 2
    assert m['flywheel_requests_total{source="student_fallback"}'] == 3


@pytest.mark.parametrize("reply, first, log", [
    ("moderation", 5, None),
    ("unreadable", 9, "no usable teacher answer for a served input (parse"),
])
def test_a_teacher_that_answers_but_not_usably_does_not_open_the_breaker(cal_ws, pngs, caplog, reply, first, log):
    """OpenRouter declining a flagged input (HTTP 403), or a reply no label can be read from (a malformed JSON
    object): that input is answered by the student (flagged teacher_failed, the log saying why), and the teacher
    stays in use for the next ones -- the teacher is up, so a run of such inputs is not an outage."""
    import logging

    from test_breaker import OPENROUTER_FLAGGED

    ws, _ = cal_ws
    action = status(403, OPENROUTER_FLAGGED) if reply == "moderation" else ok('{"label": "ring", "confid')
    with FaultServer(default=action) as fs, caplog.at_level(logging.WARNING, logger="llm_flywheel.pipeline"):
        app = create_app(ws, "synth", teacher=_fault_teacher(ws, fs.url), threshold=DEFER_ALL, breaker_failures=2,
                         breaker_cooldown_s=600, deadline_s=20)
        with running(app) as url:
            rs = [httpx.post(f"{url}/v1/predict", content=p, headers=PNG, timeout=60).json()
                  for p in pngs[first:first + 4]]
            ready = httpx.get(f"{url}/readyz").json()
    assert [r["source"] for r in rs] == ["teacher_failed"] * 4  # each one asked, none cut off by an open breaker
    assert ready["teacher"]["breaker"] == "closed" and len(fs.requests) >= 4
    assert log is None or log in caplog.text


@pytest.mark.parametrize("on_deadline", ["fallback", "error"])
def test_frozen_teacher_hits_the_deadline(cal_ws, pngs, on_deadline):
    ws, _ = cal_ws
    with FaultServer(default=slow(60)) as fs:
        app = create_app(ws, "synth", teacher=_fault_teacher(ws, fs.url), threshold=DEFER_ALL, deadline_s=0.5,
                         on_deadline=on_deadline, shutdown_grace_s=1)
        with running(app, grace_s=1) as url:
            r = httpx.post(f"{url}/v1/predict", content=pngs[0], headers=PNG, timeout=60)
            m = _metrics(url)
            assert httpx.get(f"{url}/healthz").status_code == 200
    if on_deadline == "fallback":
        assert r.status_code == 200 and r.json()["source"] == "student_fallback"
        assert r.json()["label"] == r.json()["student_label"]
    else:
        assert r.status_code == 504 and "0.5 s deadline" in r.json()["detail"]
        assert m['flywheel_request_errors_total{code="504"}'] == 1
    assert len(fs.requests) >= 1  # the teacher was asked; the shutdown above did not wait for its 60 s


def test_a_bought_answer_is_stored_before_use_and_never_bought_again(cal_ws, pngs):
    ws, _ = cal_ws
    cfg = SimConfig(latency_ms=0, latency_sigma=0.0, rate_429=0.0, malformed_rate=0.0)
    with run_simulated_teacher(ws, "synth", cfg) as turl:
        first = Cascade.from_store(ws, "synth", teacher=sim_teacher(ws, turl), threshold=DEFER_ALL)
        a = asyncio.run(first.apredict_raw(pngs[7], content_hash="same-content-7", log=False, deadline_s=30))
        assert a.source == "teacher"
        with ws.store() as s:
            model, pv = first.teacher.model, first.teacher.prompt_version_for(first.task)
            stored = s.stored_teacher_answer("same-content-7", model, pv)
        assert stored is not None and stored.label == a.label
        # a second cascade (as another process would build it): the store answers, the teacher is not asked
        second = Cascade.from_store(ws, "synth", teacher=sim_teacher(ws, turl), threshold=DEFER_ALL)
        b = asyncio.run(second.apredict_raw(pngs[7], content_hash="same-content-7", log=False, deadline_s=30))
        assert b.source == "teacher" and b.label == a.label
        assert httpx.get(f"{turl}/_stats").json()["requests"] == 1
        first.close()
        second.close()


def test_two_cascades_asked_for_the_same_new_content_at_once_buy_it_once(cal_ws, pngs):
    """Two cascades (as two replicas would build them) both miss the stored answer; the claim in the store makes one
    of them pay and the other read the answer it stored."""
    ws, _ = cal_ws
    cfg = SimConfig(latency_ms=300, latency_sigma=0.0, rate_429=0.0, malformed_rate=0.0)
    with run_simulated_teacher(ws, "synth", cfg) as turl:
        a, b = (Cascade.from_store(ws, "synth", teacher=sim_teacher(ws, turl), threshold=DEFER_ALL) for _ in range(2))

        async def both(h):
            return await asyncio.gather(*(c.apredict_raw(pngs[8], content_hash=h, log=False, deadline_s=30)
                                          for c in (a, b)))

        x, y = asyncio.run(both("same-content-8"))
        assert x.source == y.source == "teacher" and x.label == y.label
        assert httpx.get(f"{turl}/_stats").json()["requests"] == 1
        with ws.store() as s:  # the claim is gone once the answer is stored
            assert s.query("SELECT COUNT(*) AS n FROM served_teacher_claims")[0]["n"] == 0
        a.close()
        b.close()


def test_teacher_claims_one_owner_at_a_time_on_sqlite_and_postgres(tmp_path, pg_url):
    from llm_flywheel.store.base import Store

    key = ("h1", "m", "p1")
    for where in (tmp_path / "claims.db", pg_url):
        with Store(where) as one, Store(where) as two:
            assert one.claim_teacher_purchase(*key, "one", stale_after_s=30)
            assert one.claim_teacher_purchase(*key, "one", stale_after_s=30)  # already its own
            assert not two.claim_teacher_purchase(*key, "two", stale_after_s=30)
            assert one.refresh_teacher_claim(*key, "one") and not two.refresh_teacher_claim(*key, "two")
            time.sleep(0.05)
            assert two.claim_teacher_purchase(*key, "two", stale_after_s=0.01)  # stale: taken over
            assert not one.refresh_teacher_claim(*key, "one")
            one.release_teacher_claim(*key, "one")  # not its claim any more: nothing happens
            assert not one.claim_teacher_purchase(*key, "one", stale_after_s=30)
            two.release_teacher_claim(*key, "two")
            assert one.claim_teacher_purchase(*key, "one", stale_after_s=30)
            # first answer wins; the served-answer cache reads it back
            for label in ("dot", "bar"):
                one.save_served_teacher_answer("h1", "m", "p1", label=label, confidence=0.9, tokens_in=1,
                                               tokens_out=1, cost_usd=0.0, latency_s=0.1)
            assert two.stored_teacher_answer("h1", "m", "p1").label == "dot"
            two.check_writable()

        def race(i: int) -> bool:  # eight processes' worth of connections claim new content at once
            with Store(where) as s:
                return s.claim_teacher_purchase("h2", "m", "p1", f"racer-{i}", stale_after_s=30)

        with cf.ThreadPoolExecutor(8) as ex:
            assert sum(ex.map(race, range(8))) == 1, where


def test_cascade_without_a_store(cal_ws, pngs):
    ws, _ = cal_ws
    student = Cascade.from_store(ws, "synth").student
    casc = Cascade(student, None, threshold=DEFER_ALL)
    a = asyncio.run(casc.apredict_raw(pngs[0]))
    assert a.source == "deferred" and a.label is None and a.student_label in SYNTH_TASK.labels
    b = asyncio.run(Cascade(student, None, threshold=0.0).apredict_raw(pngs[0]))
    assert b.source == "student" and b.label == a.student_label


def test_openapi_says_exactly_what_each_modality_takes(cal_ws, pngs):
    ws, _ = cal_ws
    app = create_app(ws, "synth")
    with running(app) as url:
        body = httpx.get(f"{url}/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
        assert "text/plain" not in body and "image/png" in body and "multipart/form-data" in body
        assert body["application/json"]["schema"]["required"] == ["image_base64"]
        assert body["multipart/form-data"]["schema"]["required"] == ["file"]
        # what is offered is accepted: each declared image type with a PNG body answers 200
        for ctype in ("image/png", "application/octet-stream"):
            assert httpx.post(f"{url}/v1/predict", content=pngs[0], headers={"Content-Type": ctype}).status_code == 200
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200 and ready.json()["store_writable"] and ready.json()["model_loaded"]


def test_retention_ages_out_served_traffic_and_keeps_the_wheels_feedback(tmp_path):
    import os

    from llm_flywheel.store.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    now = time.time()
    old = now - 10 * 86400

    def row(ts, item_id, rnd, ref):
        return CascadeLogRow(ts, "d", item_id, "h", "student", "a", 0.9, "a", 0.9, None, "v1", 0.5, 1.0, rnd,
                             "run" if rnd is not None else "serve", ref)

    refs = [f"exports/served/ab/{i}.png" for i in range(4)]
    for r in refs:
        (ws.root / r).parent.mkdir(parents=True, exist_ok=True)
        (ws.root / r).write_bytes(b"x" * 1000)
        os.utime(ws.root / r, (old, old))
    with ws.store() as s:
        s.log_cascade_rows([row(old, None, None, refs[0]),   # old served request: goes
                            row(old, 7, 1, refs[1]),          # old wheel row of round 1, not collected: kept
                            row(old, 8, 2, refs[2]),          # old wheel row of round 2, collected: kept all the same
                            row(now, None, None, refs[3])])   # new served request: kept
        assert s.mark_feedback_collected("d", 2, "run") == 1
    rep = apply_retention(ws, max_age_days=1)
    assert rep.rows_deleted == 1 and rep.rows_kept_pending == 2 and rep.payloads_deleted == 1
    with ws.store() as s:
        left = s.query("SELECT item_id, payload_ref FROM cascade_log ORDER BY id")
    assert [(r["item_id"], r["payload_ref"]) for r in left] == [(7, refs[1]), (8, refs[2]), (None, refs[3])]
    assert [(ws.root / r).exists() for r in refs] == [False, True, True, True]
    # by bytes: the wheel rows' inputs stay even over the limit; the served one goes (its row stays, without it)
    rep = apply_retention(ws, max_payload_bytes=500)
    assert rep.payloads_deleted == 1 and [(ws.root / r).exists() for r in refs[1:]] == [True, True, False]
    with ws.store() as s:
        assert s.query("SELECT payload_ref FROM cascade_log WHERE item_id IS NULL")[0]["payload_ref"] is None
    # by rows: only served rows count as deletable
    with ws.store() as s:
        s.log_cascade_rows([row(now, None, None, None) for _ in range(5)])
    rep = apply_retention(ws, max_rows=4)
    with ws.store() as s:
        assert s.cascade_log_size() == 4 and len(s.query("SELECT id FROM cascade_log WHERE item_id IS NOT NULL")) == 2


def test_cli_serve_refuses_a_bad_limit_before_listening(cal_ws):
    from click.testing import CliRunner

    from llm_flywheel.interfaces.cli import main

    ws, _ = cal_ws
    r = CliRunner().invoke(main, ["--workspace", str(ws.root), "serve", "synth", "--deadline", "0"])
    assert r.exit_code == 2 and "--deadline must be > 0" in r.output, r.output  # a bad option value, named as typed
    r = CliRunner().invoke(main, ["serve", "--help"])
    assert r.exit_code == 0
    for w in ("--deadline", "--on-deadline", "--breaker-failures", "--queue", "--retention-days", "/readyz"):
        assert w in r.output, w


def test_readyz_is_503_while_the_store_cannot_take_a_write_and_healthz_stays_ok(cal_ws):
    """Another connection holds the store's write lock (SQLite's BEGIN IMMEDIATE, PostgreSQL's advisory lock: the
    store's own transaction on either engine) -> /readyz 503 naming why, /healthz still ok, ready again after."""
    import threading

    ws, _ = cal_ws
    app = create_app(ws, "synth", log_sample_rate=0.0)
    with running(app) as url:
        assert httpx.get(f"{url}/readyz").status_code == 200
        holding, release = threading.Event(), threading.Event()

        def hold() -> None:
            with ws.store() as other, other.transaction():
                holding.set()
                release.wait(60)

        t = threading.Thread(target=hold, daemon=True)
        t.start()
        assert holding.wait(30)
        try:
            r = httpx.get(f"{url}/readyz", timeout=30)
            assert r.status_code == 503 and r.json()["store_writable"] is False and r.json()["store_error"]
            assert httpx.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
        finally:
            release.set()
            t.join(30)
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/readyz", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "never ready again after the lock was released"
            time.sleep(0.1)


def test_a_claim_left_by_a_killed_process_on_this_machine_does_not_hold_up_a_request(cal_ws, pngs):
    """A replica killed mid-purchase leaves its claim.  On the same machine its pid is gone, so the next request for
    that content buys the answer at once -- within a 3 s deadline, not after the 30 s a claim takes to go stale."""
    import subprocess
    import sys

    from llm_flywheel.pipeline.liveness import owner_id

    ws, _ = cal_ws
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host, boot, _, tag = owner_id("serve-killed").split("|")
    cfg = SimConfig(latency_ms=0, latency_sigma=0.0, rate_429=0.0, malformed_rate=0.0)
    with run_simulated_teacher(ws, "synth", cfg) as turl:
        casc = Cascade.from_store(ws, "synth", teacher=sim_teacher(ws, turl), threshold=DEFER_ALL)
        model, pv = casc.teacher.model, casc.teacher.prompt_version_for(casc.task)
        with ws.store() as s:
            assert s.claim_teacher_purchase("left-behind", model, pv, f"{host}|{boot}|{dead.pid}|{tag}",
                                            stale_after_s=30)
        a = asyncio.run(casc.apredict_raw(pngs[9], content_hash="left-behind", log=False, deadline_s=3))
        assert a.source == "teacher" and httpx.get(f"{turl}/_stats").json()["requests"] == 1
        casc.close()
