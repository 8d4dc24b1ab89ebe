"""Which writing system texts are in: enough to choose a text student (pure; the standard library's Unicode names).

Why: ``text-minilm``'s encoder (all-MiniLM-L6-v2) learnt English; on Chinese poetry it trails a TF-IDF student
that reads characters by 14-16 points (``bench_text_students.py``).  A newcomer with their own non-English texts
should get the student that can read them without knowing to ask.
"""

from __future__ import annotations

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
