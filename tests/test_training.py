"""train_student / load_student through the store: labels, soft targets, val handling, files, models row, CLI."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from helpers_students import split_synth, write_teacher_labels
from llm_flywheel.interfaces.cli import main
from llm_flywheel.students.base import StudentError
from llm_flywheel.students.onnx_runtime import OnnxStudent
from llm_flywheel.pipeline.training import latest_version, load_student, train_student


@pytest.fixture
def labelled_ws(synth_ws):
    split_synth(synth_ws)
    write_teacher_labels(synth_ws, "synth", flip=0.1)
    return synth_ws


def test_train_student_writes_versioned_model(labelled_ws):
    ws = labelled_ws
    tm = train_student(ws, "synth", kind="image-cnn", width=16, epochs=3, progress=False)
    for f in ("weights.pt", "meta.json", "model.onnx", "train_ids.json", "metrics.json"):
        assert (tm.path / f).exists(), f
    meta = json.loads((tm.path / "meta.json").read_text())
    assert meta["kind"] == "image-cnn" and meta["labels"] == ["bar", "ring", "cross", "dot"]
    assert meta["preprocessing"]["size"] == 28 and "torch" in meta["version_info"]
    m = tm.metrics
    assert m["val_labels"] == "holdout"  # the val split has no labels yet -> 10 % of the train labels, recorded
    assert m["n_train"] + m["n_val"] == 300 and m["label_sources"]["soft_rows"] == m["n_train"]
    assert m["onnx_max_abs_diff"] < 1e-4
    r = tm.report  # the typed view of the same record
    assert (r.val_labels, r.n_train, r.n_val, r.epochs_run) == ("holdout", m["n_train"], m["n_val"], m["epochs_run"])
    assert r.onnx_max_abs_diff == m["onnx_max_abs_diff"] and r.best_epoch <= r.epochs_run <= 3
    store = ws.store()
    try:
        row = store.query("SELECT * FROM models WHERE version=?", (tm.version,))[0]
        assert row["dataset"] == "synth" and row["kind"] == "image-cnn" and row["path"] == f"models/{tm.version}"
        assert latest_version(store, "synth") == tm.version
        test = store.items("synth", split="test")
    finally:
        store.close()
    onnx = load_student(ws, tm.version)
    torch_s = load_student(ws, tm.version, runtime="torch")
    assert isinstance(onnx, OnnxStudent)
    np.testing.assert_allclose(onnx.predict_proba(test), torch_s.predict_proba(test), atol=1e-4)
    np.testing.assert_allclose(torch_s.predict_proba(test), tm.student.predict_proba(test), atol=1e-6)


def test_val_split_labels_used_and_test_never(labelled_ws):
    ws = labelled_ws
    write_teacher_labels(ws, "synth", split="val", seed=1)
    tm = train_student(ws, "synth", kind="image-cnn", width=16, epochs=2, progress=False)
    assert tm.metrics["val_labels"] == "store" and tm.metrics["n_val"] == 60
    ids = json.loads((tm.path / "train_ids.json").read_text())
    store = ws.store()
    try:
        test_ids = {it.id for it in store.items("synth", split="test")}
        val_ids = {it.id for it in store.items("synth", split="val")}
    finally:
        store.close()
    assert not ({int(i) for i in ids["train"]} & (test_ids | val_ids))
    with pytest.raises(StudentError, match="test split"):
        train_student(ws, "synth", kind="image-cnn", width=16, labels={i: "bar" for i in list(test_ids)[:5]}, progress=False)


def test_self_training_uses_only_unlabelled_train_items_and_keeps_what_val_prefers(synth_ws, monkeypatch):
    """unlabelled=1: a second student learns the first one's predictions on as many unlabelled *train* items as
    there are labelled ones (never val/calib/stream/test); the saved model is whichever scores higher on val."""
    from llm_flywheel.pipeline import self_training

    split_synth(synth_ws)
    write_teacher_labels(synth_ws, "synth", split="val", seed=1)
    store = synth_ws.store()
    try:
        train = store.items("synth", split="train")
        others = {it.id for it in store.items("synth") if it.split != "train"}
    finally:
        store.close()
    labels = {it.id: it.gold_label for it in train[:80]}
    seen: dict[str, list] = {}
    real = self_training.self_train

    def spy(first, hist, build, items, y, q, w, val, y_val, pool):
        seen["pool"], seen["q"], seen["w"] = [it.id for it in pool], q, w
        return real(first, hist, build, items, y, q, w, val, y_val, pool)

    monkeypatch.setattr("llm_flywheel.pipeline.training.self_train", spy)
    tm = train_student(synth_ws, "synth", kind="image-cnn", labels=labels, width=8, epochs=2, seed=4, progress=False,
                       unlabelled=1.0, export_onnx=False)
    st = tm.metrics["self_training"]
    assert st["pool"] == len(seen["pool"]) == 80 and len(set(seen["pool"])) == 80
    assert not set(seen["pool"]) & (set(labels) | others)  # unlabelled train items only
    assert seen["q"].shape == (80, 4) and seen["w"].shape == (80,)
    assert st["used"] is (st["val_second"] > st["val_first"]) and 0.25 <= st["mean_pool_confidence"] <= 1.0
    assert st["extra_seconds"] > 0
    chosen_val = st["val_second"] if st["used"] else st["val_first"]
    assert tm.metrics["val_acc"] == pytest.approx(chosen_val, abs=1e-4)  # the saved model is the one val kept
    assert train_student(synth_ws, "synth", kind="image-cnn", labels=labels, width=8, epochs=1, progress=False,
                         export_onnx=False).metrics["self_training"] is None  # off by default
    with pytest.raises(ValueError, match="unlabelled must be >= 0"):
        train_student(synth_ws, "synth", kind="image-cnn", labels=labels, unlabelled=-1, progress=False)


def test_val_acc_is_that_of_the_served_network_mirror_averaged_or_not(labelled_ws):
    """The model's val score is the network it serves: mirror-averaged where that was chosen (what promotion and the
    self-training choice compare), else the best epoch's; None without val items."""
    from llm_flywheel.pipeline.self_training import val_score

    on = {"best_val_acc": 0.5, "tta": {"used": True, "val_acc_single": 0.5, "val_acc_mirror_avg": 0.6}}
    assert val_score(on) == 0.6
    assert val_score({**on, "tta": {**on["tta"], "used": False}}) == 0.5
    assert val_score({"best_val_acc": None, "tta": {"used": False, "why": "no val items to decide on"}}) is None
    write_teacher_labels(labelled_ws, "synth", split="val", seed=1)
    tm = train_student(labelled_ws, "synth", kind="image-cnn", width=8, epochs=2, progress=False, export_onnx=False,
                       augment={"flip": True}, tta=True)
    assert tm.metrics["tta"]["used"] is True and tm.metrics["val_acc"] == tm.metrics["tta"]["val_acc_mirror_avg"]


def test_human_label_outranks_teacher_and_sets_hard_target(labelled_ws):
    ws = labelled_ws
    store = ws.store()
    try:
        item = store.items("synth", split="train")[0]
        teacher = store.query("SELECT label FROM labels WHERE item_id=? AND source='teacher'", (item.id,))[0]["label"]
        other = next(lab for lab in ("bar", "ring", "cross", "dot") if lab != teacher)
        store.execute("INSERT INTO labels(item_id, source, label, quality, soft_json, status, provenance, updated_at) "
                      "VALUES(?,?,?,?,?,?,?,?)", (item.id, "human", other, 1.0, None, "human", "{}", time.time()))
    finally:
        store.close()
    tm = train_student(ws, "synth", kind="image-cnn", width=16, epochs=1, progress=False, val_labels="holdout", seed=5)
    ids = json.loads((tm.path / "train_ids.json").read_text())
    got = ids["train"].get(str(item.id)) or ids["val"].get(str(item.id))
    assert got == other
    assert tm.metrics["label_sources"]["human"] + (1 if str(item.id) in ids["val"] else 0) == 1


def test_corrupt_soft_json_falls_back_to_hard_label(labelled_ws):
    ws = labelled_ws
    store = ws.store()
    try:
        store.execute("UPDATE labels SET soft_json='{not json' WHERE item_id IN (SELECT id FROM items WHERE split='train' LIMIT 20)")
    finally:
        store.close()
    tm = train_student(ws, "synth", kind="image-cnn", width=16, epochs=1, progress=False)
    assert tm.metrics["label_sources"]["soft_rows"] <= tm.metrics["n_train"] - 15


def test_no_labels_is_a_clear_error(synth_ws):
    split_synth(synth_ws)
    with pytest.raises(StudentError, match="no labelled train items"):
        train_student(synth_ws, "synth", progress=False)
    with pytest.raises(StudentError, match="no model version"):
        load_student(synth_ws, "nope")


def test_cli_train_and_evaluate(labelled_ws):
    runner = CliRunner()
    r = runner.invoke(main, ["-w", str(labelled_ws.root), "train", "synth", "--epochs", "2", "--kind", "image-cnn"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["-w", str(labelled_ws.root), "evaluate", "synth"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["-w", str(labelled_ws.root), "train", "--help"])
    assert "soft targets" in r.output or "--no-soft" in r.output
    r = runner.invoke(main, ["-w", str(labelled_ws.root), "train", "nosuch"])
    assert r.exit_code != 0 and "not in this workspace" in r.output
    r = runner.invoke(main, ["-w", str(labelled_ws.root), "train", "synth", "--epochs", "1", "--mirror", "on"])
    assert r.exit_code != 0 and "flip = true" in r.output  # the synth task does not declare mirrors harmless
    r = runner.invoke(main, ["-w", str(labelled_ws.root), "train", "synth", "--unlabelled", "-1"])
    assert r.exit_code != 0 and "unlabelled must be >= 0" in r.output
    r = runner.invoke(main, ["-w", str(labelled_ws.root), "train", "synth", "--epochs", "1", "--unlabelled", "1"])
    assert r.exit_code == 0, r.output
    assert "self-training" in r.output and "every train" in r.output and "mirror averaging" in r.output
    assert "candidate" in r.output  # no --kind: both image students were fitted, and the seconds say so


def test_few_labelled_images_train_the_pair_and_val_log_loss_keeps_one_network_or_both(labelled_ws):
    """With no kind and few labelled images the default is image-pair: the fast CNN and the pretrained network on the
    same labels; the lowest val log-loss among each alone and their average is kept, and only what is kept is saved,
    exported (one ONNX graph per network, checked against torch) and recorded with every candidate's scores."""
    from llm_flywheel.students.image_pair import ImagePairStudent

    tm = train_student(labelled_ws, "synth", epochs=1, progress=False, seed=2)
    m = tm.metrics
    assert tm.student.kind == "image-pair" and tm.version.startswith("synth-image-pair-")
    cands = m["candidates"]  # each network alone and the average, with the scores the choice was made on
    assert [c["kind"] for c in cands] == ["image-cnn", "efficientnet-lite0", "average"]
    losses = [c["val_logloss"] for c in cands]
    kept = cands[losses.index(min(losses))]["kind"]  # the first of equals
    assert [c["kept"] for c in cands] == [c["kind"] == kept for c in cands]
    assert m["student_choice"] == "kept on val log-loss: " + ", ".join(f"{c['kind']} {c['val_logloss']:.3f}"
                                                                        for c in cands)
    assert m["val_acc"] == cands[losses.index(min(losses))]["val_acc"]
    assert all(c["seconds"] > 0 for c in cands[:2]) and cands[2]["seconds"] is None  # the average fits nothing
    assert set(m["members"]) == {"image-cnn", "efficientnet-lite0"}  # both fitted: each one's epochs on record
    members = ["image-cnn", "efficientnet-lite0"] if kept == "average" else [kept]
    saved = sorted(p.name for p in (tm.path / "members").iterdir())
    assert saved == sorted(members) and all((tm.path / "members" / k / "model.onnx").exists() for k in members)
    assert m["onnx_max_abs_diff"] < 1e-4
    with labelled_ws.store() as s:
        assert s.model(tm.version)["kind"] == "image-pair"
        test = s.items("synth", split="test")
    torch_p = load_student(labelled_ws, tm.version, runtime="torch").predict_proba(test)
    onnx = load_student(labelled_ws, tm.version)
    assert isinstance(onnx, ImagePairStudent) and all(isinstance(x, OnnxStudent) for x in onnx.members.values())
    np.testing.assert_allclose(onnx.predict_proba(test), torch_p, atol=1e-4)
    np.testing.assert_allclose(tm.student.predict_proba(test), torch_p, atol=1e-6)
    from llm_flywheel.pipeline.evaluation import evaluate

    ceiling = evaluate(labelled_ws, "synth", tm.version, ceiling=True)["ceiling"]["version"]  # same kind and seed
    with labelled_ws.store() as s:
        row = s.model(ceiling)
    assert row["kind"] == "image-pair" and row["role"] == "reference"
    assert json.loads(row["meta_json"])["hparams"]["seed"] == json.loads((tm.path / "meta.json").read_text())[
        "hparams"]["seed"]


def test_the_pair_forced_to_average_serves_the_mean_of_its_networks(labelled_ws, tmp_path):
    """The average is the members' mean probability, on stored items and raw images alike; it survives save/load
    and its logits are the log of that mean (softmax gives it back)."""
    from llm_flywheel.students.image import ImageStudent
    from llm_flywheel.students.image_pair import ImagePairStudent
    from llm_flywheel.students.registry import build_student, load_student_dir
    from llm_flywheel.core.task import Task

    with labelled_ws.store() as s:
        task = Task.from_json(s.dataset_task_json("synth"))
        train = s.items("synth", split="train")[:120]
        test = s.items("synth", split="test")[:20]
    y = np.array([task.index(it.gold_label) for it in train])
    pair = build_student("image-pair", task, labelled_ws, epochs=1, seed=3)
    history = pair.fit(train, y, [], np.zeros(0, int))  # no val: both kept, averaged
    assert history["kept"] == "average" and "no val items" in history["choice"]
    p = np.mean([m.predict_proba(test) for m in pair.members.values()], axis=0)
    np.testing.assert_allclose(pair.predict_proba(test), p, atol=1e-6)
    raw = [(labelled_ws.root / it.blob_path).read_bytes() for it in test]
    np.testing.assert_allclose(pair.predict_proba_raw(raw), p, atol=1e-6)
    np.testing.assert_allclose(np.exp(pair.predict_logits(test)), p, rtol=1e-5, atol=1e-7)
    pair.save(tmp_path / "m")
    pair.export_onnx(tmp_path / "m" / "model.onnx")
    again = load_student_dir(tmp_path / "m", labelled_ws, runtime="torch")
    assert isinstance(again, ImagePairStudent) and all(isinstance(m, ImageStudent) for m in again.members.values())
    assert again.hp["seed"] == 3
    np.testing.assert_allclose(again.predict_proba(test), p, atol=1e-5)
    np.testing.assert_allclose(load_student_dir(tmp_path / "m", labelled_ws).predict_proba(test), p, atol=1e-4)
    with pytest.raises(StudentError, match="setting of one network only"):
        build_student("image-pair", task, labelled_ws, width=8)
    with pytest.raises(StudentError, match="unknown hyper-parameter"):
        build_student("image-pair", task, labelled_ws, nonsense=1)


