"""A photo's EXIF orientation (``data.images``): the import stores it upright, the student reads it upright, and the
same file has one content hash whichever way it arrives."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from llm_flywheel.data import load_image
from llm_flywheel.data.images import orientation, upright_bytes
from llm_flywheel.data.registry import add_dataset
from llm_flywheel.students.image_pixels import to_pil

# what a viewer shows for each EXIF orientation of the stored pixels R (the EXIF 2.3 table)
SHOWN = {1: lambda r: r, 2: np.fliplr, 3: lambda r: np.rot90(r, 2), 4: np.flipud, 5: lambda r: np.rot90(r, 1)[::-1],
         6: lambda r: np.rot90(r, -1), 7: lambda r: np.rot90(r, -1)[::-1], 8: lambda r: np.rot90(r, 1)}


def encode(arr: np.ndarray, fmt: str, turn: int | None) -> bytes:
    im = Image.fromarray(arr)
    buf = io.BytesIO()
    kw = {"quality": 100} if fmt == "JPEG" else {}
    if turn is not None:
        exif = im.getexif()
        exif[0x0112] = turn
        kw["exif"] = exif.tobytes()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def stored_pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)  # not square, not symmetric


@pytest.mark.parametrize("turn", range(1, 9))
def test_every_orientation_is_shown_as_a_viewer_shows_it(turn):
    raw = stored_pixels()
    data = encode(raw, "PNG", turn)  # lossless, so the pixels can be compared exactly
    up = upright_bytes(data)
    assert (up is data) == (turn == 1)
    with Image.open(io.BytesIO(up)) as im:
        assert orientation(im) == 1 and ("exif" in im.info) == (turn == 1)  # a turned one loses its EXIF block
        assert np.array_equal(np.asarray(im), SHOWN[turn](raw))
    assert np.array_equal(np.asarray(to_pil(data)), SHOWN[turn](raw))  # the student reads it upright too
    assert upright_bytes(up) is up and upright_bytes(data) == up  # idempotent and deterministic


def test_a_turned_jpeg_stays_a_jpeg_and_a_broken_exif_block_is_no_error():
    data = encode(stored_pixels(), "JPEG", 6)
    up = upright_bytes(data)
    with Image.open(io.BytesIO(up)) as im:
        assert im.format == "JPEG" and im.size == (12, 20) and orientation(im) == 1
    assert upright_bytes(encode(stored_pixels(), "JPEG", 77)) is not None  # an orientation off the table: as stored


def test_the_import_stores_a_photo_upright_once(ws, tmp_path):
    """An image folder holding a turned JPEG: the stored blob is the upright picture (its hash the item's), the
    teacher is sent exactly those bytes, and importing the folder again adds nothing."""
    raw = stored_pixels()
    folder = tmp_path / "photos"
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
    turned = encode(raw, "JPEG", 6)
    (folder / "cat" / "phone.jpg").write_bytes(turned)
    (folder / "dog" / "plain.png").write_bytes(encode(raw[::-1], "PNG", None))
    rep = add_dataset(ws, "image-folder", path=folder, progress=False)
    assert rep.added == 2
    with ws.store() as s:
        item = next(it for it in s.items("photos") if it.source_ref == "cat/phone.jpg")
    blob = (ws.root / item.blob_path).read_bytes()
    assert blob == upright_bytes(turned) and item.content_hash == hashlib.sha256(blob).hexdigest()
    assert item.blob_path.endswith(".jpg") and load_image(ws, item.blob_path).size == (12, 20)
    assert add_dataset(ws, "image-folder", path=folder, progress=False).added == 0


def test_the_python_api_keys_a_photo_by_its_upright_picture(tmp_path):
    """``ws.add_items`` with a turned photo as bytes: stored upright; predicting the same bytes finds the same item
    (one cache key), as does the upright picture itself."""
    from llm_flywheel.interfaces.api.inputs import item_key

    turned = encode(stored_pixels(), "JPEG", 8)
    key, payload = item_key("image", turned)
    assert payload == upright_bytes(turned) and item_key("image", payload)[0] == key
    with Image.open(io.BytesIO(turned)) as im:
        im.load()
        pil_key, pil_payload = item_key("image", im)
    with Image.open(io.BytesIO(pil_payload)) as im:
        assert im.size == (12, 20) and orientation(im) == 1


def test_flywheel_predict_reads_a_file_as_the_import_stores_it(tmp_path):
    """``flywheel predict photos/``: a turned file is read (and hashed, so its cached answers apply) as the upright
    picture the import stored."""
    from llm_flywheel.core.task import Task
    from llm_flywheel.pipeline.predict_files import read_input

    turned = encode(stored_pixels(), "JPEG", 6)
    (tmp_path / "phone.jpg").write_bytes(turned)
    content, digest = read_input(tmp_path / "phone.jpg", Task(name="p", modality="image", labels=("a", "b")))
    assert content == upright_bytes(turned) and digest == hashlib.sha256(content).hexdigest()
