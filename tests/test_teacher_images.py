"""What a teacher is sent for an image (``teachers.images``): a stored picture within 1,568 pixels a side byte for
byte; a phone-sized photo scaled down (a JPEG as a JPEG), once per item however many passes ask; the limit from
``$FLYWHEEL_TEACHER_IMAGE_MAX_SIDE``; and the simulated teacher still knows a scaled picture's item."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from fault_server import FaultServer
from llm_flywheel.core.task import Task
from llm_flywheel.data.registry import add_dataset
from llm_flywheel.teachers.errors import TeacherConfigError
from llm_flywheel.teachers.images import IMAGE_MAX_SIDE, image_max_side_from_env, teacher_image
from llm_flywheel.teachers.openai_compat import OpenAICompatTeacher, run_sync


def photo(w: int, h: int, fmt: str = "JPEG", seed: int = 0, mode: str = "RGB", grain: int = 0) -> bytes:
    """A smooth picture (a gradient and a yellow disc) with a sensor's ``grain`` of noise."""
    yy, xx = np.mgrid[:h, :w]
    a = np.stack([xx * 255 // w, yy * 255 // h, np.full((h, w), 90 + 20 * seed)], -1)
    a[(xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (min(w, h) / 4) ** 2] = (240, 240, 30)
    if grain:
        a = a + np.random.default_rng(seed).integers(-grain, grain + 1, a.shape)
    a = np.clip(a, 0, 255).astype(np.uint8)
    im = Image.fromarray(a).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def size_of(data: bytes) -> tuple[int, int, str]:
    with Image.open(io.BytesIO(data)) as im:
        return (*im.size, im.format)


def test_a_picture_within_the_limit_is_sent_as_stored():
    for data in (photo(1568, 1000), photo(640, 480, "PNG")):
        assert teacher_image(data, IMAGE_MAX_SIDE)[0] is data
    big = photo(3000, 2000)
    assert teacher_image(big, 0) == (big, "image/jpeg") and teacher_image(big, None)[0] is big


@pytest.mark.parametrize("w,h,fmt,mode", [(4032, 3024, "JPEG", "RGB"), (3024, 4032, "JPEG", "L"),
                                          (2400, 1600, "PNG", "RGBA")])
def test_a_large_picture_is_scaled_to_the_limit_keeping_its_shape_and_kind(w, h, fmt, mode):
    data = photo(w, h, fmt, mode=mode, grain=6)
    sent, mime = teacher_image(data, IMAGE_MAX_SIDE)
    sw, sh, sfmt = size_of(sent)
    assert max(sw, sh) == IMAGE_MAX_SIDE and abs(sw / sh - w / h) < 0.01
    assert (sfmt, mime) == (("JPEG", "image/jpeg") if fmt == "JPEG" else ("PNG", "image/png"))
    assert len(sent) < len(data) / 2 and teacher_image(data, IMAGE_MAX_SIDE) == (sent, mime)  # deterministic
    with Image.open(io.BytesIO(sent)) as im:  # the disc is still there, in the middle, bright against the corner
        rgb = im.convert("RGB")
        centre, corner = rgb.getpixel((sw // 2, sh // 2)), rgb.getpixel((5, 5))
    assert sum(centre) > sum(corner) + 150 and (mode == "L" or centre[2] < 90)


def test_a_png_that_would_grow_when_scaled_is_sent_as_stored():
    """A palette PNG (a chart, a flat drawing) comes out larger as a scaled RGB PNG: the stored one is smaller."""
    data = photo(2000, 1000, "PNG", mode="P")
    assert teacher_image(data, IMAGE_MAX_SIDE) == (data, "image/png")


def test_the_limit_comes_from_the_environment_and_bad_values_name_the_variable(monkeypatch):
    assert image_max_side_from_env({}) == IMAGE_MAX_SIDE
    assert image_max_side_from_env({"FLYWHEEL_TEACHER_IMAGE_MAX_SIDE": "0"}) == 0
    assert image_max_side_from_env({"FLYWHEEL_TEACHER_IMAGE_MAX_SIDE": " 2048 "}) == 2048
    for bad in ("big", "-1", "12", "1e3"):
        with pytest.raises(TeacherConfigError, match=r"\$FLYWHEEL_TEACHER_IMAGE_MAX_SIDE must be .* or 0"):
            image_max_side_from_env({"FLYWHEEL_TEACHER_IMAGE_MAX_SIDE": bad})
    monkeypatch.setenv("FLYWHEEL_TEACHER_IMAGE_MAX_SIDE", "1024")
    assert OpenAICompatTeacher("http://127.0.0.1:9/v1", "m", api_key_env=None).image_max_side == 1024
    assert OpenAICompatTeacher("http://127.0.0.1:9/v1", "m", api_key_env=None, image_max_side=0).image_max_side == 0


@pytest.fixture()
def photos_ws(ws, tmp_path):
    folder = tmp_path / "photos"
    for i, label in enumerate(("sunny", "cloudy")):
        (folder / label).mkdir(parents=True)
        for j in range(6):
            w, h = (2400, 1800) if j % 2 else (800, 600)
            (folder / label / f"IMG_{j}.jpg").write_bytes(photo(w, h, seed=i + 2 * j))
    add_dataset(ws, "image-folder", path=folder, progress=False, val=2, calib=2, stream=0, test=2)
    return ws


def test_the_client_sends_a_phone_photo_scaled_and_a_small_one_as_stored(photos_ws):
    ws = photos_ws
    with ws.store() as s:
        items = s.items("photos")
        task = Task.from_json(s.dataset_task_json("photos"))
    big = next(it for it in items if size_of((ws.root / it.blob_path).read_bytes())[0] == 2400)
    small = next(it for it in items if size_of((ws.root / it.blob_path).read_bytes())[0] == 800)
    with FaultServer() as srv:
        t = OpenAICompatTeacher(srv.url, "fault-model", api_key_env=None, task=task, capability_cache=False,
                                image_max_side=1568)
        for it, p in ((big, 0), (big, 1), (small, 0)):
            run_sync(t.alabel_one(it, task, ws, pass_index=p))
    sent = []
    for r in srv.requests:
        url = r["body"]["messages"][1]["content"][1]["image_url"]["url"]
        head, b64 = url.split(",", 1)
        sent.append((head, base64.b64decode(b64)))
    assert sent[0] == sent[1]  # both passes: one scaled picture
    assert sent[0][0] == "data:image/jpeg;base64" and size_of(sent[0][1]) == (1568, 1176, "JPEG")
    assert len(sent[0][1]) < len((ws.root / big.blob_path).read_bytes()) / 1.5  # (2400 / 1568)^2 = 2.3x the pixels
    assert sent[2][1] == (ws.root / small.blob_path).read_bytes()


def test_the_simulated_teacher_knows_a_scaled_photo_as_its_item(photos_ws):
    """Labelling a folder of phone photos through the simulated teacher: every request is recognised (none is an
    unknown item), and the answers are the ones the same teacher gives for the full-size picture."""
    from llm_flywheel.pipeline.labeling import label_items
    from llm_flywheel.teachers.registry import teacher_from_spec
    from llm_flywheel.teachers.simulated import model_id, run_simulated_teacher, sim_stats

    ws = photos_ws
    with ws.store() as s:
        task = Task.from_json(s.dataset_task_json("photos"))
        items = s.items("photos")
    labels = {}
    for side in (1568, 0):
        with run_simulated_teacher(ws, "photos") as url:
            teacher = teacher_from_spec(f"{url}|{model_id('photos')}", task, api_key_env="", image_max_side=side)
            answers = run_sync(_label_once(teacher, task, ws, items))
            stats = sim_stats(url)
        assert stats["unknown_items"] == 0 and stats["completions"] == len(items)
        labels[side] = answers
    assert labels[1568] == labels[0]


async def _label_once(teacher, task, ws, items):
    async with teacher.session(task, ws=ws) as s:
        out = [await s.alabel(it, pass_index=0) for it in items]
    return {a.item_id: a.label for a in out}
