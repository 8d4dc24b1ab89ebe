"""One document file's text: the one rule for a folder of text files (``data.text_folder``) and for
``flywheel predict`` on such files, so a file scored later finds its imported item (and cached answer) by hash.

- Plain text (``.txt``, ``.md``, a file without an extension as 20 Newsgroups and Reuters ship them): decoded
  (UTF-8, else UTF-16 by its mark, else Windows-1252: :func:`llm_flywheel.data.table_files.decode_as`), surrounding
  whitespace stripped -- the same text in a CSV cell and in a file is one item.
- An email (``.eml``, or a file that opens with mail or news headers: SpamAssassin's raw folders, 20 Newsgroups):
  Subject and From, then the body as plain text, at most :data:`EMAIL_MAX_CHARS` characters.  The transport headers
  (``Received:``, ``X-...``) are most of a raw message; they cost teacher tokens and tell a student nothing.
- HTML: the tags stripped.
- Anything holding NUL bytes (a PDF or Word file renamed, an image) is not text: an error, never garbage sent to a
  paid teacher.
"""

from __future__ import annotations

import email
import email.policy
import html
import re
from pathlib import Path
from typing import Any

from llm_flywheel.data.table_files import decode_as

EMAIL_MAX_CHARS = 2000
TEXT_EXTENSIONS = frozenset({".txt", ".text", ".md", ".rst", ".eml", ".html", ".htm"})

_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]+>", re.S | re.I)
_WS = re.compile(r"[ \t\r\f\v]+")
_BLANK = re.compile(r"\n\s*\n+")
_HEADER = re.compile(r"^[A-Za-z][A-Za-z0-9-]*:[ \t]")
# a header block is mail only with one of these (an article's "Title:" and "Date:" lines are not; they would be lost)
_KEY_HEADERS = frozenset({"from", "received", "return-path", "message-id", "newsgroups", "delivered-to"})


# files that travel with a corpus and are not one of its documents: SpamAssassin's ``cmds`` (its renames) in every
# class folder, a README or licence anywhere
NOT_DOCUMENTS = frozenset({"cmds", "readme", "license", "licence", "copying", "makefile"})


class NotTextError(ValueError):
    """The file is not a text document (binary content)."""


def is_document(name: str) -> bool:
    """Whether a file name reads as a text document: a text extension, or none -- 20 Newsgroups' ``49960``,
    SpamAssassin's ``00001.7c53336b...`` (a "suffix" with digits is not an extension)."""
    dot = name.rfind(".")
    if dot <= 0:
        return True
    ext = name[dot:].lower()
    return ext in TEXT_EXTENSIONS or not ext[1:].isalpha() or len(ext) > 6


def describes_set(name: str) -> bool:
    """A README, licence or SpamAssassin's ``cmds``: a file about the corpus, not one of its documents."""
    return Path(name).stem.lower() in NOT_DOCUMENTS


def is_item_document(name: str) -> bool:
    """A document that is an item of its folder: the folder import's rule, and ``flywheel predict``'s on folders."""
    return is_document(name) and not describes_set(name)


def html_to_text(s: str) -> str:
    return html.unescape(_TAG.sub(" ", s))


def _tidy(s: str) -> str:
    s = _WS.sub(" ", s.replace("\u00a0", " "))
    return _BLANK.sub("\n\n", "\n".join(line.strip() for line in s.splitlines())).strip()


def _part_text(part: Any) -> str:
    try:
        return str(part.get_content())
    except (LookupError, ValueError, AssertionError, AttributeError, TypeError):  # unknown charset, broken encoding
        raw = part.get_payload(decode=True)
        return raw.decode("latin-1", errors="replace") if isinstance(raw, bytes) else str(raw or "")


def email_text(raw: str | bytes, max_chars: int = EMAIL_MAX_CHARS) -> str:
    """Subject + From + the body as plain text (HTML stripped), whitespace tidied, at most ``max_chars``.  Bytes
    are parsed as mail is sent (each part decoded by its own charset)."""
    msg = (email.message_from_bytes(raw, policy=email.policy.default) if isinstance(raw, bytes)
           else email.message_from_string(raw, policy=email.policy.default))
    subject = str(msg.get("Subject", "") or "").strip()
    sender = str(msg.get("From", "") or "").strip()
    body = ""
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
    except (LookupError, ValueError, AttributeError, TypeError):
        part = None
    if part is not None:
        body = _part_text(part)
        if part.get_content_subtype() == "html":
            body = html_to_text(body)
    elif not msg.is_multipart():
        body = _part_text(msg)
    else:  # no text part at all (attachments only): keep what is readable
        body = " ".join(_part_text(p) for p in msg.walk() if p.get_content_maintype() == "text")
    head = "\n".join(x for x in (f"Subject: {subject}" if subject else "", f"From: {sender}" if sender else "") if x)
    text = _tidy(head + "\n\n" + body)
    return text[:max_chars].rstrip()


def looks_like_email(head: bytes) -> bool:
    """Whether a file opens with a mail/news header block: an mbox ``From `` line, or two or more ``Name: value``
    lines (continuations allowed) up to the first blank line, one of them a header every message has."""
    lines = head[:8192].decode("latin-1").splitlines()
    if lines and lines[0].startswith("From ") and len(lines) > 1 and _HEADER.match(lines[1]):
        return True
    names = []
    for line in lines[:80]:
        if not line.strip():
            break
        if line[0] in " \t" and names:
            continue
        if not _HEADER.match(line):
            return False
        names.append(line.split(":", 1)[0].lower())
    return len(names) >= 2 and bool(_KEY_HEADERS & set(names))


def document_text(raw: bytes, name: str) -> tuple[str, str, list[str]]:
    """(text, kind, notes) of a document file's bytes; ``kind`` is ``text``, ``email`` or ``html`` and ``notes``
    say how it was decoded when it was not plain UTF-8.  Raises :class:`NotTextError` for binary content; the text
    may be empty (the caller decides)."""
    if b"\x00" in raw[:8192] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise NotTextError("not a text file (binary content)")
    ext = name[name.rfind("."):].lower() if "." in name else ""
    if ext == ".eml" or looks_like_email(raw):
        return email_text(raw.split(b"\n", 1)[1] if raw.startswith(b"From ") else raw), "email", []
    text, notes, _ = decode_as(raw, name)
    if ext in (".html", ".htm"):
        return _tidy(html_to_text(text)), "html", notes
    return text.strip(), "text", notes
