"""Label Studio round trip against a REAL Label Studio server (PyPI ``label-studio``, in its own venv ``.venv-ls``).

The server is started on 127.0.0.1 with a temporary data directory, a user and a legacy token; the flywheel side
authenticates with a Personal Access Token created through the API (the default kind since 1.18), the "person"
annotates with the legacy token through the same endpoints the labelling UI calls.  ``make label-studio`` installs
the server; in CI (``CI=true``) a missing server fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fault_server import free_port
from procs import die_with_parent
from click.testing import CliRunner

from llm_flywheel.interfaces.cli import main
from llm_flywheel.pipeline.labeling import LabelConfig, label_items
from llm_flywheel.pipeline.labelstudio import LabelStudio, LabelStudioError, label_config
from llm_flywheel.pipeline.splits import SplitSpec, make_splits
from llm_flywheel.core.task import Task
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher

ROOT = Path(__file__).resolve().parents[1]
LEGACY = "f1ywhee1legacytok3n0000000000000000000000"
STARTUP_S = 300  # a fresh data dir runs ~200 Django migrations: ~1 min on 2 idle cores, more on a busy machine


def _label_studio_bin() -> str | None:
    for cand in (os.environ.get("LABEL_STUDIO_BIN"), str(ROOT / ".venv-ls" / "bin" / "label-studio"),
                 shutil.which("label-studio")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """(url, personal access token, legacy token) of a fresh Label Studio; stopped at the end of the module."""
    exe = _label_studio_bin()
    if exe is None:
        msg = "Label Studio is not installed: run `make label-studio` (creates .venv-ls)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    data = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data), DJANGO_DB="sqlite", LATEST_VERSION_CHECK="false",
               COLLECT_ANALYTICS="false", SENTRY_DSN="", FRONTEND_SENTRY_DSN="")
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen(
        [exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port), "--data-dir", str(data),
         "--username", "reviewer@example.com", "--password", "not-a-real-secret-1", "--user-token", LEGACY,
         "--enable-legacy-api-token"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"label-studio exited with {proc.returncode}:\n{(data / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"label-studio not up after {STARTUP_S} s:\n{(data / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        r = httpx.post(f"{url}/api/token/", headers={"Authorization": f"Token {LEGACY}"}, timeout=30)
        assert r.status_code in (200, 201), r.text
        pat = r.json()["token"]
        yield url, pat, LEGACY
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def reviewed_ws(synth_ws, synth_task):
    """synth with splits, 160 train items labelled by a noisy simulated teacher (2 passes), and a trained student."""
    from llm_flywheel.pipeline.training import train_student

    ws = synth_ws
    with ws.store() as s:
        make_splits(s, "synth", SplitSpec(val=40, calib=40, stream=40, seed=0))
        ids = [it.id for it in s.items("synth", split="train")][:160]
    cfg = SimConfig(latency_ms=0, malformed_rate=0, rate_429=0, accuracy=0.6, pass_correlation=0.2)
    with run_simulated_teacher(ws, "synth", cfg) as url:
        t = teacher_from_spec(f"{url}|{model_id('synth')}", synth_task, api_key_env="")
        label_items(ws, "synth", ids, t, LabelConfig(passes=2), progress=False)
    train_student(ws, "synth", kind="image-cnn", epochs=2, progress=False)
    return ws


def _snapshot(ws):
    with ws.store() as s:
        return (s.query("SELECT item_id, source, label, provenance, updated_at FROM labels ORDER BY item_id, source"),
                s.query("SELECT item_id, label, reviewer, note, created_at FROM reviews ORDER BY id"),
                s.query("SELECT item_id, resolved_at FROM review_queue ORDER BY item_id"))


@pytest.mark.slow  # Label Studio's start-up (~1 min of migrations) dominates
def test_push_annotate_pull_retrain_against_real_label_studio(label_studio, reviewed_ws, synth_task, monkeypatch):
    url, pat, legacy = label_studio
    ws = reviewed_ws
    runner = CliRunner()
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", pat)  # the canary: must never be written anywhere
    with ws.store() as s:
        gold = {it.id: it.gold_label for it in s.items("synth")}
        split = {it.id: it.split for it in s.items("synth")}
        queued = s.review_candidates("synth")
    assert queued, "the noisy teacher must leave disagreements to review"

    res = runner.invoke(main, ["-w", str(ws.root), "review", "push", "synth", "--label-studio", url])
    assert res.exit_code == 0, res.output
    assert "created project" in " ".join(res.output.split())
    person = LabelStudio(url, legacy)
    project = [p for p in person.projects() if p["title"] == "llm-flywheel review: synth"]
    assert len(project) == 1
    pid = project[0]["id"]
    # the generated labelling config is the task's: one image, the four labels
    cfg = person.project(pid)["label_config"]
    assert '<Image name="image" value="$image"' in cfg and all(f'value="{lab}"' in cfg for lab in synth_task.labels)
    tasks = person.export(pid, all_tasks=True)
    assert len(tasks) == len(queued)
    values = [t["data"]["review_value"] for t in sorted(tasks, key=lambda t: t["id"])]
    assert values == sorted(values, reverse=True)  # uploaded most valuable first
    t0 = tasks[0]
    assert t0["data"]["image"].startswith("data:image/png;base64,")  # no shared disk needed
    assert t0["data"]["dataset"] == "synth" and t0["data"]["teacher_model"].startswith("simulated/")
    assert "gold" not in json.dumps(t0["data"])  # reviewers do not see gold labels
    preds = person.request("GET", "/api/predictions", params={"task": t0["id"]})
    versions = sorted(p["model_version"].split()[0] for p in preds)
    assert versions == ["student", "teacher"], preds

    # pushing again reuses the project and uploads nothing twice
    res = runner.invoke(main, ["-w", str(ws.root), "review", "push", "synth", "--label-studio", url])
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "using project" in out and "uploaded 0 task(s)" in out, out
    assert len(person.export(pid, all_tasks=True)) == len(tasks)

    # a person labels the first 12 tasks correctly; one task is annotated twice: wrong first, right later
    by_item = {t["data"]["item_id"]: t["id"] for t in tasks}
    done = sorted(by_item)[:12]
    twice = done[0]
    wrong = next(lab for lab in synth_task.labels if lab != gold[twice])
    person.annotate(by_item[twice], synth_task, wrong)
    time.sleep(0.05)
    for iid in done:
        person.annotate(by_item[iid], synth_task, gold[iid])
    # a skipped task is not a label
    skip_item = sorted(by_item)[12]
    person.request("POST", f"/api/tasks/{by_item[skip_item]}/annotations", json={"result": [], "was_cancelled": True})

    res = runner.invoke(main, ["-w", str(ws.root), "review", "pull", "synth"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "13 annotated task(s); 12 item(s) got a human label" in out and "13 new annotation(s)" in out, out
    assert "1 cancelled/empty" in out, out
    with ws.store() as s:
        eff = s.effective_labels("synth")
        humans = s.human_labels("synth")
        history = s.review_history(twice)
        open_queue = {r["id"] for r in s.review_candidates("synth")}
    assert humans == {i: gold[i] for i in done}  # the latest annotation wins ...
    assert all(eff[i] == gold[i] for i in done)  # ... and outranks the teacher
    assert [h["label"] for h in history] == [wrong, gold[twice]]  # ... with both in history
    assert all("label studio" in h["note"] and h["reviewer"] for h in history)
    assert not open_queue & set(done) and skip_item in open_queue

    before = _snapshot(ws)
    res = runner.invoke(main, ["-w", str(ws.root), "review", "pull", "synth"])
    assert res.exit_code == 0 and "0 item(s) got a human label" in " ".join(res.output.split()), res.output
    assert _snapshot(ws) == before  # pulling twice changes nothing

    # an annotation edited later in Label Studio: its new answer becomes the label, the old one stays in history
    item = done[1]
    ann = [a for a in person.export(pid) if a["id"] == by_item[item]][0]["annotations"][0]
    other = next(lab for lab in synth_task.labels if lab != gold[item])
    person.update_annotation(ann["id"], synth_task, other)
    res = runner.invoke(main, ["-w", str(ws.root), "review", "pull", "synth"])
    assert res.exit_code == 0 and "1 item(s) got a human label" in " ".join(res.output.split()), res.output
    with ws.store() as s:
        assert s.human_labels("synth")[item] == other
        assert [h["label"] for h in s.review_history(item)] == [gold[item], other]

    # a retrain uses the human labels
    from llm_flywheel.pipeline.training import train_student

    tm = train_student(ws, "synth", kind="image-cnn", epochs=1, progress=False)
    want = {i: gold[i] for i in done if split[i] == "train"} | ({item: other} if split[item] == "train" else {})
    used = json.loads((tm.path / "train_ids.json").read_text())  # trained on + the 10 % holdout (val has no labels)
    seen = {int(i): lab for part in ("train", "val") for i, lab in used[part].items() if int(i) in want}
    assert seen == want and want
    trained = [int(i) for i in used["train"] if int(i) in want]
    assert tm.metrics["label_sources"]["human"] == len(trained) > 0

    # the token was never written: not in the workspace, not in any output
    for f in ws.root.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert pat.encode() not in data and legacy.encode() not in data, f


def test_label_config_for_text_and_bad_token(label_studio):
    url, pat, legacy = label_studio
    task = Task(name="spam", modality="text", labels=("spam", "ham"),
                descriptions={"spam": "unsolicited <bulk> mail", "ham": "wanted mail"}, instructions="Is it spam?")
    cfg = label_config(task)
    assert '<Text name="text" value="$text"/>' in cfg and 'hint="unsolicited &lt;bulk&gt; mail"' in cfg
    with LabelStudio(url, legacy) as person:  # Label Studio itself accepts the generated config
        p = person.create_project("config check", cfg)
        assert person.project(p["id"])["label_config"].count("<Choice ") == 2
    with pytest.raises(LabelStudioError) as e:
        LabelStudio(url, "0" * 40).whoami()
    assert "401" in str(e.value) and "0" * 40 not in str(e.value)
    with pytest.raises(LabelStudioError) as e:
        LabelStudio(url, pat[:-4] + "abcd").whoami()  # a PAT with a broken signature
    assert "Personal Access Token" in str(e.value) and pat[:-4] not in str(e.value)


def test_push_without_token_or_server_is_a_clear_error(synth_ws, monkeypatch):
    """No Label Studio needed: the errors come before any request, or from a closed port."""
    runner = CliRunner()
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    res = runner.invoke(main, ["-w", str(synth_ws.root), "review", "push", "synth", "--label-studio", "http://127.0.0.1:9"])
    assert res.exit_code != 0 and "LABEL_STUDIO_API_KEY" in " ".join(res.output.split())
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "canary-token-123")
    res = runner.invoke(main, ["-w", str(synth_ws.root), "review", "push", "synth", "--label-studio", f"http://127.0.0.1:{free_port()}"])
    out = " ".join(res.output.split())
    assert res.exit_code != 0 and "cannot reach Label Studio" in out and "canary-token-123" not in out
    res = runner.invoke(main, ["-w", str(synth_ws.root), "review", "pull", "synth"])
    assert res.exit_code != 0 and "push first" in " ".join(res.output.split())
