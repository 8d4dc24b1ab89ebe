"""What a teacher is sent for a text: the stored text, at most :data:`TEXT_MAX_CHARS` characters of it (a Chinese,
Japanese or Korean character counted as four: it is about a token on its own, ``core.scripts.latin_len``).

Why: a folder of documents or a text column can hold a 200 KB file (a thread with its quoted history, a log, a
novel chapter) and a hosted model with a large context takes it whole and bills every token -- 50,000 of them a
pass, on every pass -- where the first pages decide the label.  The student reads far less still (its encoder's
few hundred tokens).  A text within the limit is sent as stored; a longer one is cut to its beginning, marked as
cut, and the answer is noted ``input_truncated``.  ``flywheel label --plan`` prices texts at the length sent.

As for images (:mod:`~llm_flywheel.teachers.images`), the answer cache is keyed by the stored item, not by what is
sent: changing the limit (``$FLYWHEEL_TEACHER_TEXT_MAX_CHARS``; 0 sends every text whole) re-buys nothing.
"""

from __future__ import annotations

from llm_flywheel.core.scripts import head_within, latin_len
from llm_flywheel.teachers.errors import limit_from_env

TEXT_MAX_CHARS = 16_000  # ~4,000 tokens: an email, a review or a news post whole; a 200 KB file its first pages
TEXT_MAX_CHARS_ENV = "FLYWHEEL_TEACHER_TEXT_MAX_CHARS"
CUT_MARK = " …[truncated]"  # the same mark as a cut to fit a server's context (server.fit_text)


def text_max_chars_from_env(environ: object = None) -> int:
    """The limit from ``$FLYWHEEL_TEACHER_TEXT_MAX_CHARS`` (characters; 0 = no limit), else :data:`TEXT_MAX_CHARS`.
    Raises ``TeacherConfigError`` (exit 2) naming the variable for anything but 0 or a whole number >= 200."""
    return limit_from_env(environ, TEXT_MAX_CHARS_ENV, TEXT_MAX_CHARS, 200, "characters", "send texts whole")


def teacher_text(text: str, max_chars: int | None) -> tuple[str, str | None]:
    """``(text as sent, note)``: the text itself within ``max_chars`` (or when it is 0/None), else its first
    ``max_chars`` characters (ending at a word boundary when one is near) and the mark, with the
    ``input_truncated`` note recorded on the answer.  Deterministic: every pass of an item sends the same text."""
    if not over_limit(text, max_chars):
        return text, None
    n = head_within(text, max_chars)
    head = text[:n]
    space = head.rfind(" ", max(0, n - 200))
    cut = (head[:space] if space > 0 else head).rstrip() + CUT_MARK
    wide = ", a CJK character counted as 4" if latin_len(head) > len(head) else ""
    return cut, (f"input_truncated: the item text was cut from {len(text):,} to {len(cut):,} characters "
                 f"(${TEXT_MAX_CHARS_ENV}: a teacher is sent at most {max_chars:,}{wide})")


def over_limit(text: str, max_chars: int | None) -> bool:
    """Whether ``text`` is longer than a teacher is sent (``max_chars`` 0/None: never)."""
    return bool(max_chars) and latin_len(text[: max_chars + 1]) > max_chars


def sent_len(text: str, max_chars: int | None) -> int:
    """How long ``text`` is as a teacher is sent it, in Latin-character equivalents (the unit of token guesses)."""
    if not max_chars:
        return latin_len(text)
    return min(latin_len(text[: max_chars + 1]), max_chars)
