"""Answers ``flywheel serve`` bought, reused by labelling as the first pass: the same teacher is never paid twice for
the same content because one path served it and another labelled it.

Why a module of its own: labelling (online and Batch API) and the served-traffic import both adopt these answers,
and the import also runs labelling, so the shared step sits below both.  A served answer is the teacher's reply to
pass 0's prompt (``TeacherSession.alabel_raw``), stored before it was used, with its cost; it carries no
log-probabilities, so consensus and adaptive passes read its stated confidence, as for any answer without them.
It keeps its real cost, marked ``bought_by = "serve"``: the ledger of what labelling paid leaves it out (serving's
spend is reported apart, in the report's "Served traffic").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llm_flywheel.core.task import Task
from llm_flywheel.store.base import Item
from llm_flywheel.store.serving import ServedAnswer
from llm_flywheel.teachers.base import TeacherAnswer

SERVED_REASON = "bought by flywheel serve"  # the adopted answer's ``reason``: where it came from


def adopt_served_answers(store: Any, task: Task, pairs: list[tuple[int, str, str]], model: str, pv: str,
                         run_id: int | None) -> int:
    """Store each answer serving bought from this teacher and prompt as pass 0 of the item holding that content --
    ``pairs``: (item id, the item's content hash, the hash serving logged) -- where the item has no final pass 0 yet
    (first writer wins); returns how many.  Only answers naming one of the task's labels are taken."""
    answers = store.served_answers(sorted({sh for _, _, sh in pairs}), model, pv)
    if not answers:
        return 0
    have = store.final_answer_keys(model, pv, sorted({ih for _, ih, _ in pairs}))
    n = 0
    for iid, ih, sh in pairs:
        a = answers.get(sh)
        if a is None or (ih, 0) in have or a.label not in task.labels:
            continue
        if store.add_teacher_answer(_as_pass0(iid, ih, model, pv, a), run_id) is not None:
            have.add((ih, 0))
            n += 1
    return n


def adopt_for_items(store: Any, task: Task, items: Sequence[Item], model: str, pv: str, run_id: int | None) -> int:
    """:func:`adopt_served_answers` for store items whose content was served as it is (labelling's case)."""
    return adopt_served_answers(store, task, [(it.id, it.content_hash, it.content_hash) for it in items], model, pv,
                                run_id)


def _as_pass0(item_id: int, content_hash: str, model: str, pv: str, a: ServedAnswer) -> TeacherAnswer:
    return TeacherAnswer(item_id=item_id, content_hash=content_hash, model=model, prompt_version=pv, pass_index=0,
                         ok=True, label=a.label, confidence=a.confidence, tokens_in=a.tokens_in,
                         tokens_out=a.tokens_out, cost_usd=a.cost_usd, latency_s=a.latency_s, reason=SERVED_REASON,
                         bought_by="serve")
