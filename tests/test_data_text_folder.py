"""A folder of text documents as `flywheel data add text FOLDER`: IMDb's aclImdb layout (train/test, class folders,
an unsup folder, files that describe the set), SpamAssassin's raw folders (hashed names, mbox headers, latin-1,
cmds), binary files refused, and `flywheel predict` reading a file as the import stored it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_flywheel.core.task import TaskError
from llm_flywheel.data.base import stored_task
from llm_flywheel.data.documents import document_text, email_text, is_document, looks_like_email
from llm_flywheel.data.registry import DatasetError, add_dataset
from llm_flywheel.interfaces.cli import main
from llm_flywheel.pipeline.predict_files import read_input
from llm_flywheel.store.workspace import Workspace

REVIEWS = {"pos": "a wonderful film, moving and funny, the cast is superb", "neg": "dull plot, wooden acting, a waste"}


def acl_imdb(root: Path) -> Path:
    for split in ("train", "test"):
        for lab, text in REVIEWS.items():
            (root / split / lab).mkdir(parents=True)
            for i in range(6):
                (root / split / lab / f"{i}_{8 if lab == 'pos' else 2}.txt").write_text(f"{text} ({split} {i})\n")
    (root / "train" / "unsup").mkdir()
    for i in range(5):
        (root / "train" / "unsup" / f"{i}_0.txt").write_text(f"an unlabelled review number {i}")
    (root / "README").write_text("Large Movie Review Dataset v1.0\n")
    (root / "imdb.vocab").write_text("the\nand\n")
    (root / "train" / "labeledBow.feat").write_text("0 0:9 1:1\n")
    (root / "train" / "urls_pos.txt").write_text("http://www.imdb.com/title/tt0453418/usercomments\n" * 6)
    return root


def raw_email(i: int, spam: bool) -> bytes:
    body = "WIN CASH NOW, click here \xa3\xa3\xa3" if spam else "Caf\xe9 at ten tomorrow, see the notes"
    return (f"From a{i}@x.org  Thu Aug 22 12:36:23 2002\nReturn-Path: <a{i}@x.org>\n"
            f"Received: from relay (relay [10.0.0.1])\n\tby mx; Thu, 22 Aug 2002 12:36:23 +0100\nFrom: a{i}@x.org\n"
            f"Subject: {'offer' if spam else 'meeting'} {i}\nContent-Type: text/plain; charset=iso-8859-1\n\n"
            f"{body} {i}\n").encode("latin-1")


def spam_assassin_raw(root: Path) -> Path:
    for group, spam in (("easy_ham", False), ("spam", True)):
        (root / group).mkdir(parents=True)
        for i in range(6):
            raw = raw_email(i, spam)
            (root / group / f"{i:05d}.{hashlib.md5(raw).hexdigest()}").write_bytes(raw)
        (root / group / "cmds").write_text("mv 00001.317e78fa8ee2f54cd4890fdc09ba8176 00001.abc\n")
    (root / "spam" / "scan.pdf").write_bytes(b"%PDF-1.4\n\x00\x01\x02")
    (root / "spam" / "00099.0123abcd").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    return root


def test_acl_imdb_layout_labels_splits_unsup_and_what_is_left_out(ws, tmp_path):
    root = acl_imdb(tmp_path / "aclImdb")
    rep = add_dataset(ws, "text", path=root, progress=False)
    assert rep.dataset == "aclImdb" and (rep.seen, rep.added, rep.skipped) == (29, 29, 0)
    with ws.store() as s:
        items = {it.source_ref: it for it in s.items("aclImdb")}
    assert items["train/pos/0_8.txt"].gold_label == "pos" and items["test/neg/3_2.txt"].gold_label == "neg"
    assert items["train/pos/0_8.txt"].text == f"{REVIEWS['pos']} (train 0)"  # the file's newline stripped
    assert {items[f"test/pos/{i}_8.txt"].split for i in range(6)} == {"test"}  # the source's own test split
    assert items["train/unsup/0_0.txt"].gold_label is None and items["train/unsup/0_0.txt"].split != "test"
    assert not any(ref.startswith(("README", "imdb.vocab", "train/urls", "train/labeledBow")) for ref in items)
    notes = " ".join(rep.notes)
    assert "4 file(s) that describe the set" in notes and "train/urls_pos.txt" in notes and "README" in notes
    assert "train/unsup/: 5 file(s) imported without a label" in notes
    # a file scored later is the item the import stored: same text, same hash, its cached answers found
    with ws.store() as s:
        task = stored_task(s, "aclImdb")
    text, h = read_input(root / "train" / "pos" / "0_8.txt", task)
    assert (text, h) == (items["train/pos/0_8.txt"].text, items["train/pos/0_8.txt"].content_hash)
    assert add_dataset(ws, "text", path=root, progress=False).added == 0


def test_spam_assassin_raw_folders_are_read_as_emails(ws, tmp_path):
    root = spam_assassin_raw(tmp_path / "corpus")
    rep = add_dataset(ws, "text", path=root, as_name="mail", progress=False)
    assert (rep.added, rep.skipped) == (12, 1)
    assert "00099.0123abcd: not a text file (binary content)" in " ".join(rep.skipped_examples)
    with ws.store() as s:
        items = list(s.items("mail"))
    ham = next(it for it in items if it.source_ref.startswith("easy_ham/00000."))
    assert ham.gold_label == "easy_ham"
    # the transport headers are gone, the latin-1 body decoded by its charset (the reduction of the npm corpus)
    assert ham.text == "Subject: meeting 0\nFrom: a0@x.org\n\nCafé at ten tomorrow, see the notes 0"
    assert ham.text == email_text(raw_email(0, False).split(b"\n", 1)[1])
    assert not any(it.source_ref.endswith(("cmds", ".pdf")) for it in items)
    notes = " ".join(rep.notes)
    assert "easy_ham/cmds" in notes and "1 file(s) that are not text documents ignored (1 .pdf)" in notes
    assert "12 file(s) read as emails" in notes


def test_documents_rules():
    assert is_document("49960") and is_document("00001.7c53336b37003a9286aba55d2945844c") and is_document("a.TXT")
    assert not is_document("scan.pdf") and not is_document("photo.jpg") and not is_document("data.csv")
    assert looks_like_email(b"From: a@b\nSubject: hi\nOrganization: x\n\nbody")  # a 20 Newsgroups post
    assert not looks_like_email(b"Title: a review\nDate: 2002-08-22\n\nbody")  # headers-like, not mail
    assert not looks_like_email(b"The film was fine: nothing more.\n")
    assert document_text("Grüße\r\n".encode("cp1252"), "a.txt")[0] == "Grüße"
    assert document_text(b"<p>Hello <b>world</b></p><script>x()</script>", "a.html")[:2] == ("Hello world", "html")
    with pytest.raises(ValueError, match="binary"):
        document_text(b"%PDF\x00\x00", "a.txt")


def test_flat_folder_needs_a_task_and_column_flags_are_refused(ws, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        (flat / f"{i}.txt").write_text(f"text {i}")
    with pytest.raises(TaskError, match="--task"):
        add_dataset(ws, "text", path=flat, progress=False)
    with pytest.raises(DatasetError, match="--text-column: for a data file"):
        add_dataset(ws, "text", path=flat, text_column="body", progress=False)
    (tmp_path / "pdfs").mkdir()
    (tmp_path / "pdfs" / "a.pdf").write_bytes(b"%PDF")
    with pytest.raises(ValueError, match="no text documents under .*1 .pdf"):
        add_dataset(ws, "text", path=tmp_path / "pdfs", progress=False)


def test_cli_imports_a_folder_and_a_binary_file_is_no_predict_input(tmp_path):
    root = acl_imdb(tmp_path / "aclImdb")
    w = str(tmp_path / "w")
    r = CliRunner().invoke(main, ["-w", w, "data", "add", "text", str(root), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "29 added" in r.output and "without a label" in r.output
    with Workspace.open(tmp_path / "w").store() as s:
        assert s.item_count("aclImdb") == 29
    with Workspace.open(tmp_path / "w").store() as s:
        task = stored_task(s, "aclImdb")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "report.pdf").write_bytes(b"%PDF-1.7\n\x00\xff")
    with pytest.raises(ValueError, match="binary"):  # a PDF is never decoded as Windows-1252 and paid for
        read_input(tmp_path / "new" / "report.pdf", task)


def test_20_newsgroups_split_folders_and_a_split_column_spelt_testing(ws, tmp_path):
    for split in ("20news-bydate-train", "20news-bydate-test"):
        for group in ("rec.autos", "sci.space"):
            (tmp_path / "news" / split / group).mkdir(parents=True)
            for i in range(4):
                (tmp_path / "news" / split / group / str(50000 + i)).write_text(
                    f"From: x{i}@y.edu\nSubject: {group} {split} {i}\nOrganization: U\nLines: 1\n\nAbout {group}.\n")
    rep = add_dataset(ws, "text", path=tmp_path / "news", progress=False)
    with ws.store() as s:
        items = list(s.items("news"))
    assert {it.gold_label for it in items} == {"rec_autos", "sci_space"}
    assert {it.source_ref.split("/")[0] for it in items if it.split == "test"} == {"20news-bydate-test"}
    notes = " ".join(rep.notes)
    assert "20news-bydate-test/ as test (8)" in notes and "16 file(s) read as emails" in notes
    (tmp_path / "rows.csv").write_text("text,label,split\n" + "".join(
        f"row {i},{'a' if i % 2 else 'b'},{'Testing' if i < 4 else 'training'}\n" for i in range(20)))
    add_dataset(ws, "text", path=tmp_path / "rows.csv", split_column="split", progress=False)
    with ws.store() as s:
        test = sorted(it.source_ref for it in s.items("rows") if it.split == "test")
    assert test == [f"rows.csv:{i}" for i in (2, 3, 4, 5)]


def test_a_cross_post_in_two_class_folders_is_counted_as_a_gold_conflict(ws, tmp_path):
    for group in ("a", "b"):
        (tmp_path / "d" / group).mkdir(parents=True)
        for i in range(5):
            (tmp_path / "d" / group / f"{i}.txt").write_text(f"post {i} in {group}")
        (tmp_path / "d" / group / "x.txt").write_text("the same post, sent to both groups")
    rep = add_dataset(ws, "text", path=tmp_path / "d", progress=False)
    assert (rep.added, rep.duplicates, rep.gold_conflicts) == (12, 1, 1)
    assert "1 of them with another gold label than their copy" in " ".join(rep.notes)
    with ws.store() as s:
        copies = [it for it in s.items("d") if it.source_ref.endswith("x.txt")]
    assert len({it.split for it in copies}) == 1 and {it.gold_label for it in copies} == {"a", "b"}


def test_predict_reads_from_a_folder_what_the_import_would(tmp_path):
    from llm_flywheel.pipeline.predict_files import expand_inputs

    root = spam_assassin_raw(tmp_path / "corpus")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._x").write_bytes(b"\x00\x05")
    found, left = expand_inputs([root], "text")
    assert {p.name for p in left} == {"cmds", "scan.pdf"}
    assert len(found) == 13 and all("__MACOSX" not in p.parts for p in found)  # 12 emails + one binary (an error)
    found, left = expand_inputs([root, root / "spam" / "scan.pdf"], "image")  # a file named is kept, to fail loudly
    assert [p.name for p in found] == ["scan.pdf"] and len(left) == 16


def test_left_out_files_are_counted_by_kind_one_way_everywhere():
    from llm_flywheel.data.folders import kinds

    files = [Path(n) for n in ("a.PDF", "b.pdf", "c.jpg", "cmds", "README", "d.csv", "e.arrow", "f.zip", "g.7z",
                               "h.mov")]
    assert kinds(files[:6]) == "2 .pdf, 2 without an extension, 1 .jpg, 1 .csv"
    assert kinds(files) == "2 .pdf, 2 without an extension, 1 .jpg, 1 .csv, 1 .arrow, 1 .zip, 2 other"
    assert kinds([]) == ""
