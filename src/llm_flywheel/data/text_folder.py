"""Text items from a folder of documents, one file each -- how the classic text sets ship (IMDb's ``aclImdb``,
20 Newsgroups, BBC News, SpamAssassin's raw folders) and what ``sklearn.datasets.load_files`` reads.

Layouts understood (as for image folders, :mod:`llm_flywheel.data.image_folder`)::

    docs/billing/1.txt  docs/account/2.txt          labels from folder names (normalised to snake_case)
    docs/train/pos/1_9.txt  docs/test/neg/7_2.txt   the same, with the source's own train/test split
    docs/train/unsup/3_0.txt                        ``unsup``/``unlabelled`` folders: no label, the teacher's to give
    docs/1.txt  docs/2.txt                          unlabelled (needs --task)

A file is a document when its extension is a text one (``.txt``, ``.md``, ``.eml``, ``.html``, ...) or it has none
(``49960``, ``00001.7c53336b...``); how its bytes become text is :func:`llm_flywheel.data.documents.document_text`.
Files beside class folders (aclImdb's ``README``, ``imdb.vocab``, ``urls_pos.txt``) describe the set, they are not
items: they are named in a note and left out.  Other files (a ``.pdf``, a ``.jpg``) are counted by extension.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llm_flywheel.core.task import Task
from llm_flywheel.data.base import Record
from llm_flywheel.data.documents import TEXT_EXTENSIONS, NotTextError, describes_set, document_text, is_document
from llm_flywheel.data.folders import entries, kinds, split_folders, split_note, unwrap, visible_files
from llm_flywheel.data.image_folder import folder_task, normalised_labels
from llm_flywheel.data.table_files import TABLE_SUFFIXES

UNLABELLED_FOLDERS = frozenset({"unsup", "unlabeled", "unlabelled"})  # aclImdb's train/unsup

Found = list[tuple[Path, str | None, str | None]]  # (file, source split, folder label)


@dataclass
class Scan:
    found: Found  # (document, source split, folder label or None)
    loose: list[Path] = field(default_factory=list)  # beside class folders: left out
    other: list[Path] = field(default_factory=list)  # not documents by name
    unlabelled: Counter[str] = field(default_factory=Counter)  # "train/unsup" -> files imported without a label
    bases: list[tuple[Path, str | None]] = field(default_factory=list)  # the folders read, with their source split


def scan(root: Path) -> Scan:
    """The documents under ``root`` with their split and folder label, and what was left out; split and wrapper
    folders as :mod:`llm_flywheel.data.folders` reads them."""
    bases = split_folders(root)
    out = Scan([], bases=bases)
    if bases[0][1] is not None:  # files beside the split folders (aclImdb's README, imdb.vocab)
        out.loose += entries(unwrap(root))[1]
    for base, split in bases:
        classes, here = entries(base)
        if classes:
            out.loose += here
        else:
            out.loose += [f for f in here if describes_set(f.name)]
            here = [f for f in here if not describes_set(f.name)]
            out.found += [(f, split, None) for f in here if is_document(f.name)]
            out.other += [f for f in here if not is_document(f.name)]
        for d in classes:
            label = None if d.name.lower() in UNLABELLED_FOLDERS else d.name
            for f in sorted(visible_files(d)):
                if describes_set(f.name):
                    out.loose.append(f)
                elif not is_document(f.name):
                    out.other.append(f)
                else:
                    out.found.append((f, split, label))
                    if label is None:
                        out.unlabelled[d.relative_to(root).as_posix()] += 1
    out.loose.sort()
    return out


def _scan_notes(root: Path, sc: Scan) -> list[str]:
    notes = []
    if sc.loose:
        names = ", ".join(p.relative_to(root).as_posix() for p in sc.loose[:5]) + (", ..." if len(sc.loose) > 5 else "")
        notes.append(f"{len(sc.loose):,} file(s) that describe the set rather than being items of it left out "
                     f"(beside the class folders, or a README, licence, SpamAssassin's cmds): {names}")
    if sc.other:
        tables = [p for p in sc.other if p.suffix.lower() in TABLE_SUFFIXES]
        notes.append(f"{_other_kinds(sc.other)}; documents are {', '.join(sorted(TEXT_EXTENSIONS))} or files "
                     "without an extension" + (f" -- a table of texts is imported by itself: flywheel data add text "
                                               f"{tables[0]}" if tables else ""))
    for folder, n in sorted(sc.unlabelled.items()):
        notes.append(f"{folder}/: {n:,} file(s) imported without a label (the teacher labels them)")
    return notes + split_note(sc.bases, Counter(s for _, s, _ in sc.found), root)


def _other_kinds(other: list[Path]) -> str:
    return f"{len(other):,} file(s) that are not text documents ignored ({kinds(other)})"


def text_folder_source(path: str | Path, *, task: str | Path | Task | None = None, name: str | None = None,
                       ) -> tuple[Task, Iterator[Record], int, list[str]]:
    """Task, records, count and notes for a folder of text documents.  Notes about the files' contents (how many
    were read as emails, which were not UTF-8) are appended to the returned list as the records are read."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"text folder {root} does not exist or is not a folder")
    sc = scan(root)
    found = sc.found
    notes = _scan_notes(root, sc)
    if not found:
        tables = sorted(p for p in sc.other if p.suffix.lower() in TABLE_SUFFIXES)
        saved = sorted({p.parent.parent if p.parent.parent.joinpath("dataset_dict.json").is_file() else p.parent
                        for p in sc.other if p.suffix.lower() == ".arrow"})
        raise ValueError(f"no text documents under {root} (files with {', '.join(sorted(TEXT_EXTENSIONS))} or no "
                         "extension)" + (f"; {_other_kinds(sc.other)}" if sc.other else "")
                         + (f" -- a table of texts is imported one file at a time: flywheel data add text {tables[0]} "
                            "(the next with the same --name joins it)" if tables else "")
                         + (f" -- a Hugging Face dataset saved with save_to_disk is imported from its own folder: "
                            f"flywheel data add text {saved[0]}" if saved else ""))
    norm = normalised_labels(found)
    t = folder_task(root, norm, task, name, None, modality="text")

    def gen() -> Iterator[Record]:
        read_as: Counter[str] = Counter()
        decoded: list[str] = []
        for f, split, lab in found:
            ref = f.relative_to(root).as_posix()
            try:
                text, kind, how = document_text(f.read_bytes(), f.name)
            except OSError as e:
                yield Record(ref, error=f"cannot read ({type(e).__name__}: {e.strerror or e})", source_split=split)
                continue
            except NotTextError as e:
                yield Record(ref, error=str(e), source_split=split)
                continue
            read_as[kind] += 1
            decoded += how
            if not text:
                yield Record(ref, error="no text (empty file)", source_split=split)
                continue
            yield Record(ref, text=text, source_split=split, gold_label=norm[lab] if lab is not None else None)
        notes.extend(_content_notes(read_as, decoded))

    return t, gen(), len(found), notes


def _content_notes(kinds: Counter[str], decoded: list[str]) -> list[str]:
    out = []
    if kinds["email"]:
        out.append(f"{kinds['email']:,} file(s) read as emails: Subject, From and the body as plain text (at most "
                   "2,000 characters; the transport headers left out)")
    if kinds["html"]:
        out.append(f"{kinds['html']:,} HTML file(s): the text without the tags")
    if decoded:
        out.append(f"{len(decoded):,} file(s) not plain UTF-8, e.g. {decoded[0]}")
    return out
