"""A document posted to ``flywheel serve`` as a file is read as the folder import read it: a raw email sent as a
multipart ``file`` or as ``message/rfc822`` is the same input (the same hash, so the same cached answer) as its
imported copy; a text posted as it is stays as it is.  Real parts: a folder of raw emails imported through the API,
the simulated teacher on 127.0.0.1, a trained tf-idf student, the FastAPI app under uvicorn."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import httpx
import pytest

import llm_flywheel as lf
from llm_flywheel.interfaces.serve import create_app
from test_serve import running

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from _data import tickets  # noqa: E402


def _email(i: int, text: str) -> bytes:
    return (f"From desk{i}@example.org  Thu Aug 22 12:36:23 2002\nReturn-Path: <desk{i}@example.org>\n"
            f"Received: from relay (relay [10.0.0.1])\n\tby mx; Thu, 22 Aug 2002 12:36:23 +0100\n"
            f"From: desk{i}@example.org\nSubject: ticket {i}\nContent-Type: text/plain; charset=iso-8859-1\n\n"
            f"{text}\n").encode("latin-1", "replace")


@pytest.fixture(scope="module")
def served_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("mail")
    texts, topics = tickets(240, seed=3)
    for i, (text, topic) in enumerate(zip(texts, topics)):
        (root / "desk" / topic).mkdir(parents=True, exist_ok=True)
        (root / "desk" / topic / f"{i:05d}.{hashlib.md5(text.encode()).hexdigest()}").write_bytes(_email(i, text))
    ws = lf.Workspace(root / "ws")
    ds = ws.add_dataset("text", root / "desk", val=30, calib=60)
    t = ds.simulated_teacher(accuracy=0.9)
    ds.label(t, progress=False)
    ds.train("text-tfidf", progress=False).calibrate(max_teacher_fraction=0.3)
    with ws._ws.store(readonly=True) as s:
        stored = {it.source_ref: it for it in s.items(ds.name)}
    yield ws, ds, root / "desk", stored
    t.close()


def test_a_raw_email_posted_as_a_file_is_its_imported_copy(served_folder):
    ws, ds, desk, stored = served_folder
    path = sorted((desk / "billing").iterdir())[0]
    item = stored[path.relative_to(desk).as_posix()]
    assert item.text.startswith("Subject: ticket") and "Received:" not in item.text  # reduced at import
    raw = path.read_bytes()
    with running(create_app(ws._ws, ds.name, seed=0)) as url:
        as_file = httpx.post(f"{url}/v1/predict", files={"file": (path.name, raw, "application/octet-stream")})
        as_mail = httpx.post(f"{url}/v1/predict", content=raw, headers={"Content-Type": "message/rfc822"})
        as_text = httpx.post(f"{url}/v1/predict", json={"text": item.text})
        raw_text = httpx.post(f"{url}/v1/predict", json={"text": raw.decode("latin-1")})
        pdf = ("scan.pdf", b"%PDF-1.4\n\x00\x01\x02", "application/pdf")
        binary = httpx.post(f"{url}/v1/predict", files={"file": pdf})
        empty_form = httpx.post(f"{url}/v1/predict", files={"other": ("x.txt", b"hello", "text/plain")})
        spec = httpx.get(f"{url}/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    for r in (as_file, as_mail, as_text, raw_text):
        assert r.status_code == 200, r.text
    h = item.content_hash[:16]
    assert as_file.json()["input_hash"] == as_mail.json()["input_hash"] == as_text.json()["input_hash"] == h
    assert raw_text.json()["input_hash"] != h  # a text is taken as sent: the headers are part of it
    assert binary.status_code == 422 and "binary content" in binary.text and "scan.pdf" in binary.text
    assert empty_form.status_code == 422 and "'file' (a document)" in empty_form.text
    assert "message/rfc822" in spec and set(spec["multipart/form-data"]["schema"]["properties"]) == {"text", "file"}
