"""Which writing system texts are in: enough to choose a text student and to guess what a text costs in tokens
(pure; the standard library's Unicode names).

Why: ``text-minilm``'s encoder (all-MiniLM-L6-v2) learnt English; on Chinese poetry it trails a TF-IDF student
that reads characters by 14-16 points (``bench_text_students.py``).  A newcomer with their own non-English texts
should get the student that can read them without knowing to ask.  And a Chinese, Japanese or Korean character is
about a token on its own where English takes about four characters to one, so a price or a length limit counted in
plain characters is four times too low for those scripts (:func:`latin_len`).
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

SAMPLE_TEXTS = 200
SAMPLE_CHARS = 400


def letter_scripts(texts: Sequence[str]) -> Counter[str]:
    """Letters per script (the first word of a letter's Unicode name: LATIN, CJK, CYRILLIC, HANGUL, ...) over an
    evenly spaced sample of ``texts`` (their first characters)."""
    step = max(1, len(texts) // SAMPLE_TEXTS)
    counts: Counter[str] = Counter()
    for text in list(texts)[::step][:SAMPLE_TEXTS]:
        for ch in str(text)[:SAMPLE_CHARS]:
            if ch.isalpha():
                name = unicodedata.name(ch, "")
                if name:
                    counts[name.split(" ", 1)[0]] += 1
    return counts


def non_latin_share(texts: Sequence[str]) -> tuple[float, str | None]:
    """(share of letters not in the Latin script, the most common other script); (0.0, None) without letters."""
    counts = letter_scripts(texts)
    total = sum(counts.values())
    others = {k: v for k, v in counts.items() if k != "LATIN"}
    if not total or not others:
        return 0.0, None
    return sum(others.values()) / total, max(others, key=lambda k: others[k])


# Han ideographs (with their radicals, strokes, punctuation and compatibility forms), kana and hangul: each is about
# one token for a multilingual tokenizer and more for an English one (SmolLM2-135M: 1.7 tokens per Chinese
# character, 4.6 English characters per token, measured with llama.cpp's /tokenize; see README).
WIDE = re.compile("[\u1100-\u11ff\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\ufe30-\ufe4f"
                  "\uff00-\uffef\U00020000-\U0003ffff]")
WIDE_WEIGHT = 4  # a wide character counts as this many Latin ones: about a token each


def latin_len(text: str) -> int:
    """The length of ``text`` in Latin-character equivalents: each CJK/kana/hangul character counts
    :data:`WIDE_WEIGHT`.  Token guesses (about 4 per token) and the limit on what a teacher is sent use it, so a
    16,000-character limit is about 4,000 tokens in Chinese as in English."""
    return len(text) + (WIDE_WEIGHT - 1) * len(WIDE.findall(text))


def head_within(text: str, limit: int) -> int:
    """How many leading characters of ``text`` fit in ``limit`` Latin-character equivalents (:func:`latin_len`)."""
    if limit <= 0:
        return 0
    wide = [m.start() for m in WIDE.finditer(text, 0, limit)]
    lo, hi = 0, min(len(text), limit)
    while lo < hi:  # the largest n with latin_len(text[:n]) <= limit (it grows with n)
        mid = (lo + hi + 1) // 2
        if mid + (WIDE_WEIGHT - 1) * bisect.bisect_left(wide, mid) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo
