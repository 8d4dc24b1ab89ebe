"""`flywheel serve` follows the promoted model: a model the wheel promotes is answered with without a restart, a
model named at startup stays, and a promoted model that cannot be served yet is retried while the old one serves.
A live uvicorn server on 127.0.0.1, real trained students, the real store."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time

import httpx
import pytest

from llm_flywheel.interfaces.serve import create_app, parse_prometheus
from llm_flywheel.pipeline.calibration import calibrate
from llm_flywheel.pipeline.training import train_student
from test_cascade import trained_calibrated_ws
from test_serve import running


@pytest.fixture(scope="module")
def three_models(tmp_path_factory):
    """(ws, A, B, C): A and B calibrated, C trained only."""
    ws, a = trained_calibrated_ws(tmp_path_factory.mktemp("follow") / "ws", epochs=1)
    b = train_student(ws, "synth", kind="image-cnn", width=8, epochs=1, progress=False, seed=1).version
    calibrate(ws, "synth", b, max_teacher_fraction=0.2, delta=0.1)
    c = train_student(ws, "synth", kind="image-cnn", width=8, epochs=1, progress=False, seed=2).version
    with ws.store() as s:
        png = (ws.root / s.items("synth", split="test", limit=1)[0].blob_path).read_bytes()
    return ws, a, b, c, png


def _promote(ws, version):
    with ws.store() as s:
        s.promote("synth", version)


def _ask(url, png):
    r = httpx.post(f"{url}/v1/predict", content=png, headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _until(url, png, version, timeout_s=30.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if _ask(url, png)["model_version"] == version:
            return
        time.sleep(0.05)
    pytest.fail(f"the service never answered with {version}")


def test_a_newly_promoted_model_is_served_without_a_restart(three_models):
    ws, a, b, _, png = three_models
    _promote(ws, a)
    app = create_app(ws, "synth", follow_promoted_s=0.1)
    with running(app) as url:
        assert _ask(url, png)["model_version"] == a
        with cf.ThreadPoolExecutor(4) as pool:  # traffic keeps flowing through the swap
            load = [pool.submit(_ask, url, png) for _ in range(40)]
            _promote(ws, b)
            _until(url, png, b)
            answers = [f.result() for f in load]  # every request answered (200), by one model or the other
        assert {d["model_version"] for d in answers} <= {a, b}
        for d in answers:  # a request's threshold belongs to the model that answered it
            assert d["threshold"] == pytest.approx(_threshold(ws, d["model_version"]))
        health = httpx.get(f"{url}/healthz").json()
        metrics = parse_prometheus(httpx.get(f"{url}/metrics").text)
        app.state.serve.feedback.flush()
    assert health["model_version"] == b and metrics["flywheel_model_swaps_total"] == 1
    assert metrics[f'flywheel_model_info{{version="{b}",dataset="synth"}}'] == 1
    with ws.store() as s:  # the feedback log says which model and threshold decided each answer
        rows = s.query("SELECT model_version, threshold FROM cascade_log WHERE origin='serve'")
    assert {r["model_version"] for r in rows} == {a, b}
    assert all(r["threshold"] == pytest.approx(_threshold(ws, r["model_version"])) for r in rows)


def _threshold(ws, version):
    with ws.store() as s:
        return float(s.latest_report("calibration", version)["threshold"])


def test_a_model_named_at_startup_stays(three_models):
    ws, a, b, _, png = three_models
    _promote(ws, a)
    app = create_app(ws, "synth", version=a, follow_promoted_s=0.05)
    with running(app) as url:
        _promote(ws, b)
        time.sleep(0.5)
        assert _ask(url, png)["model_version"] == a and app.state.serve.swaps == 0


def test_a_promoted_model_not_yet_calibrated_waits_while_the_old_one_serves(three_models, caplog):
    ws, a, _, c, png = three_models
    _promote(ws, a)
    app = create_app(ws, "synth", follow_promoted_s=0.05)
    with caplog.at_level(logging.WARNING, logger="llm_flywheel.interfaces.serve.follow"), running(app) as url:
        _promote(ws, c)
        time.sleep(0.6)  # about ten checks
        assert _ask(url, png)["model_version"] == a
        warned = [r for r in caplog.records if c in r.getMessage()]
        assert len(warned) == 1 and "cannot be served yet" in warned[0].getMessage()  # said once, not every check
        calibrate(ws, "synth", c, max_teacher_fraction=0.2, delta=0.1)
        _until(url, png, c)


def test_promote_takes_only_a_calibrated_student_of_the_dataset_and_says_what_it_replaced(three_models):
    from click.testing import CliRunner

    import llm_flywheel as fw
    from llm_flywheel.interfaces.cli import main

    ws, a, b, _, _ = three_models
    c = train_student(ws, "synth", kind="image-cnn", width=8, epochs=1, progress=False, seed=3).version  # uncalibrated
    _promote(ws, a)
    run = CliRunner().invoke
    out = run(main, ["-w", str(ws.root), "promote", "synth", c])
    assert out.exit_code == 1 and f"flywheel calibrate synth --version {c}" in " ".join(out.output.split())
    out = run(main, ["-w", str(ws.root), "promote", "synth", "no-such-model"])
    assert out.exit_code == 1 and "no model version 'no-such-model'" in out.output
    out = run(main, ["-w", str(ws.root), "promote", "synth", b])
    assert out.exit_code == 0 and f"promoted {b} (was {a})" in " ".join(out.output.split())
    with ws.store() as s:
        assert s.serving_version("synth") == b
    fw.Workspace(ws.root).dataset("synth").model(a).promote()  # the same from Python
    with ws.store() as s:
        assert s.serving_version("synth") == a
    with pytest.raises(fw.NotReadyError, match="not calibrated"):
        fw.Workspace(ws.root).dataset("synth").model(c).promote()


def test_train_says_when_the_new_model_is_not_the_one_served(three_models):
    from click.testing import CliRunner

    from llm_flywheel.interfaces.cli import main

    ws, a, _, _, _ = three_models
    _promote(ws, a)
    out = CliRunner().invoke(main, ["-w", str(ws.root), "train", "synth", "--epochs", "1", "--no-progress"])
    text = " ".join(out.output.split())
    assert out.exit_code == 0, out.output
    assert f"the serving model of synth is still {a} (promoted)" in text and "flywheel promote synth" in text
