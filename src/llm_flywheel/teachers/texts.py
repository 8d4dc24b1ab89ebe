"""What a teacher is sent for a text: the stored text, at most :data:`TEXT_MAX_CHARS` characters of it.

Why: a folder of documents or a text column can hold a 200 KB file (a thread with its quoted history, a log, a
novel chapter) and a hosted model with a large context takes it whole and bills every token -- 50,000 of them a
pass, on every pass -- where the first pages decide the label.  The student reads far less still (its encoder's
few hundred tokens).  A text within the limit is sent as stored; a longer one is cut to its beginning, marked as
cut, and the answer is noted ``input_truncated``.  ``flywheel label --plan`` prices texts at the length sent.

As for images (:mod:`~llm_flywheel.teachers.images`), the answer cache is keyed by the stored item, not by what is
sent: changing the limit (``$FLYWHEEL_TEACHER_TEXT_MAX_CHARS``; 0 sends every text whole) re-buys nothing.
"""

from __future__ import annotations

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
    if not max_chars or len(text) <= max_chars:
        return text, None
    head = text[:max_chars]
    space = head.rfind(" ", max_chars - 200)
    cut = (head[:space] if space > 0 else head).rstrip() + CUT_MARK
    return cut, (f"input_truncated: the item text was cut from {len(text):,} to {len(cut):,} characters "
                 f"(${TEXT_MAX_CHARS_ENV}: a teacher is sent at most {max_chars:,})")
