"""Any camera's format in (``data.images.storable_bytes``): HEIC (iPhone) and AVIF are imported -- they used to be
ignored as "other extensions" -- and stored as JPEG, WebP/GIF/BMP as PNG, the formats teacher APIs and llama.cpp
read; import, ``flywheel predict`` and the Python API give one file one stored picture and one hash; files that are
no image by extension are counted in the import notes."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from llm_flywheel.data import load_image
from llm_flywheel.data.base import encode_png
from llm_flywheel.data.images import storable_bytes, upright_bytes
from llm_flywheel.data.registry import add_dataset
from test_image_orientation import encode  # a picture in a format, with an EXIF orientation when asked

FORMATS = {"HEIF": ".heic", "AVIF": ".avif", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "JPEG": ".jpg",
           "PNG": ".png"}
STORED = {"HEIF": ".jpg", "AVIF": ".jpg", "WEBP": ".png", "GIF": ".png", "BMP": ".png", "JPEG": ".jpg", "PNG": ".png"}


def picture(seed: int = 0, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.zeros((*size, 3), np.uint8)
    a[: size[0] // 2] = (200, 40, 40)  # red top half: kept through lossy coding
    a[size[0] // 2:] = (30, 60, 200)
    return np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_is_stored_as_png_or_jpeg_deterministically(fmt):
    data = encode(picture(), fmt, None)
    stored, suffix = storable_bytes(data)
    assert suffix == STORED[fmt] and storable_bytes(data) == (stored, suffix)
    with Image.open(io.BytesIO(stored)) as im:
        assert im.format == ("JPEG" if suffix == ".jpg" else "PNG") and im.size == (64, 48)
        top, bottom = np.asarray(im.convert("RGB"))[5, 5], np.asarray(im.convert("RGB"))[40, 5]
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]  # the picture, not a blank or a wrong channel
    if fmt in ("JPEG", "PNG"):
        assert stored == data  # kept byte for byte
    if fmt in ("WEBP", "GIF", "BMP"):  # as imports always stored them: their hashes and cached answers stay
        with Image.open(io.BytesIO(data)) as im:
            assert stored == encode_png(im.convert("RGB") if im.mode not in ("L", "RGB") else im)


def test_a_turned_avif_is_stored_upright_and_a_heic_comes_upright_from_libheif():
    arr = picture(1)
    for fmt in ("AVIF", "HEIF"):
        stored, _ = storable_bytes(encode(arr, fmt, 6))
        with Image.open(io.BytesIO(stored)) as im:
            assert im.size == (48, 64), fmt  # 64x48 shown turned a quarter: 48 wide, 64 high
            assert int(im.getexif().get(0x0112, 1)) == 1


def test_a_folder_of_phone_formats_is_imported_and_other_files_are_counted(ws, tmp_path):
    folder = tmp_path / "pets"
    for i, label in enumerate(("cat", "dog")):
        (folder / label).mkdir(parents=True)
        for j, fmt in enumerate(FORMATS):
            (folder / label / f"{j}{FORMATS[fmt]}").write_bytes(encode(picture(10 * i + j), fmt, None))
        (folder / label / "IMG_0001.DNG").write_bytes(b"raw sensor data")
        (folder / label / "clip.mov").write_bytes(b"video")
    (folder / "cat" / ".DS_Store").write_bytes(b"hidden")
    rep = add_dataset(ws, "image-folder", path=folder, progress=False)
    assert rep.added == 2 * len(FORMATS) and rep.skipped == 0
    assert any(n.startswith("4 file(s) without an image extension ignored (2 .dng, 2 .mov)") for n in rep.notes), \
        rep.notes
    with ws.store() as s:
        items = {it.source_ref: it for it in s.items("pets")}
    for fmt, ext in FORMATS.items():
        item = items[f"cat/{list(FORMATS).index(fmt)}{ext}"]
        blob = (ws.root / item.blob_path).read_bytes()
        assert item.blob_path.endswith(STORED[fmt]) and item.content_hash == hashlib.sha256(blob).hexdigest()
        assert blob == storable_bytes((folder / item.source_ref).read_bytes())[0]
        assert load_image(ws, item.blob_path).size == (64, 48)


def test_a_folder_with_no_image_extension_says_what_it_found(ws, tmp_path):
    (tmp_path / "raw" / "a").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "raw" / "a" / f"{i}.CR2").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"no image files .* under .*raw; 3 file\(s\) without an image extension "
                                         r"ignored \(3 .cr2\)"):
        add_dataset(ws, "image-folder", path=tmp_path / "raw", progress=False)


def test_predict_and_the_python_api_read_a_heic_as_the_import_stores_it(tmp_path):
    from llm_flywheel.core.task import Task
    from llm_flywheel.interfaces.api.inputs import item_key
    from llm_flywheel.pipeline.predict_files import read_input

    heic = encode(picture(3), "HEIF", None)
    (tmp_path / "IMG_0002.HEIC").write_bytes(heic)
    stored = storable_bytes(heic)[0]
    content, digest = read_input(tmp_path / "IMG_0002.HEIC", Task(name="p", modality="image", labels=("a", "b")))
    assert content == stored and digest == hashlib.sha256(stored).hexdigest()
    key, payload = item_key("image", heic)
    assert payload == stored and item_key("image", stored)[0] == key
    assert upright_bytes(stored) == stored
