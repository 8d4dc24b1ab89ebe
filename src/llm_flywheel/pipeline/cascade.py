"""The cascade: answer with the student when its calibrated confidence clears the threshold, else ask the teacher.

Why this shape: the student is cheap and fast, the teacher is right more often but costs money and seconds.  The
temperature and threshold come from the model's stored calibration report (fitted on the calib split), so the
serving rule is exactly the one whose accuracy/budget was guaranteed there.  Every answer says who gave it
(``student`` | ``teacher`` | ``teacher_failed`` | ``deferred``), with what confidence and which model version, and
is logged to ``cascade_log`` -- the feedback the wheel learns from.  A deferred store item is labelled through
:func:`llm_flywheel.pipeline.labeling.label_items` (one pass), so the teacher's answer is cached *before* it is used and
becomes a free new label for the next round.

Sources: ``teacher_failed`` = the teacher was asked but gave no usable label (the answer falls back to the student's
guess, flagged); ``deferred`` = below threshold but no teacher configured (label None, the student's guess is in
``student_label``); ``student_fallback`` = below threshold, but the teacher did not answer before the request's
deadline or its circuit breaker is open (the student's guess, flagged; see :mod:`.cascade_guard`).

A cascade needs no store to answer raw inputs: ``Cascade(student, teacher, threshold)``.  With a workspace
(:meth:`Cascade.from_store`) a teacher answer bought for a raw input is stored before it is used, so no process
pays twice for the same content, and answers are logged as feedback.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from llm_flywheel.core.task import Task
from llm_flywheel.pipeline.calibration import apply_temperature
from llm_flywheel.pipeline.cascade_guard import ON_DEADLINE, DeadlineExceeded, RawTeacherCalls, TeacherBreaker
from llm_flywheel.store.base import Item, Store
from llm_flywheel.store.serving import CascadeLogRow
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.teachers.base import Teacher

logger = logging.getLogger(__name__)

SOURCES = ("student", "teacher", "teacher_failed", "deferred", "student_fallback")


class CascadeError(RuntimeError):
    """A cascade that cannot be built (no model, never calibrated, ...); the message says what to run."""


@dataclass
class CascadeAnswer:
    label: str | None
    source: str  # see SOURCES
    confidence: float  # calibrated student confidence, or the teacher label's quality when the teacher answered
    student_label: str
    student_confidence: float
    teacher_label: str | None
    model_version: str
    latency_ms: float
    item_id: int | None = None
    content_hash: str | None = None
    threshold: float | None = None  # the threshold it was decided by (a service may swap models between answers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def promoted_version(store: Store, dataset: str) -> str:
    """The serving model of ``dataset`` (:func:`llm_flywheel.pipeline.training.serving_version`: the promoted student, else
    the newest student, never a gold-trained reference model); raises CascadeError when there is none."""
    from llm_flywheel.students.base import StudentError
    from llm_flywheel.pipeline.training import serving_version

    try:
        return serving_version(store, dataset)
    except StudentError as e:
        raise CascadeError(str(e)) from None


def _modality_of(student: Any) -> str:
    kind = str(getattr(student, "modality", None) or getattr(student, "kind", "") or "")
    for m in ("image", "text", "tabular"):
        if kind.startswith(m):
            return m
    raise CascadeError(f"cannot tell the modality of student kind {kind!r}; pass task=Task(...)")


class _SharedStore:
    """One lazily opened store connection and its lock, shared by a cascade and the ones made from it."""

    def __init__(self) -> None:
        self.store: Store | None = None
        self.lock = threading.Lock()


def _load_model(ws: Workspace, dataset: str, version: str | None, runtime: str) -> tuple[Task, str, Any, dict[str, Any]]:
    """(task, version, student, its latest calibration report) of ``version`` (None: the serving model)."""
    from llm_flywheel.pipeline.training import calibrated_model, load_student

    store = ws.store()
    try:
        task = Task.from_json(store.dataset_task_json(dataset))
        version = version or promoted_version(store, dataset)
        _, cal = calibrated_model(store, dataset, version, CascadeError)
    finally:
        store.close()
    return task, version, load_student(ws, version, runtime=runtime), cal


class Cascade:
    """Student + calibrated threshold + (optional) teacher, for one dataset and one model version.

    ``Cascade(student, teacher, threshold)`` answers raw inputs with no store (teacher answers are then cached in
    memory only and nothing is logged); :meth:`from_store` adds the workspace: calibration, stored teacher
    answers, the cascade log and :meth:`predict_items` over store items.
    """

    def __init__(self, student: Any, teacher: Teacher | None = None, threshold: float = 0.5, *,
                 temperature: float = 1.0, task: Task | None = None, version: str = "", dataset: str | None = None,
                 ws: Workspace | None = None, calibration: dict[str, Any] | None = None,
                 breaker: TeacherBreaker | None = None) -> None:
        self.student = student
        self.labels: list[str] = list(student.labels)
        self.task = task or Task(name=dataset or "cascade", modality=_modality_of(student), labels=tuple(self.labels))
        self.dataset = dataset or self.task.name
        self.version = version
        self.temperature = float(temperature)
        self.threshold = float(threshold)
        self.teacher = teacher
        self.ws = ws
        self.calibration = calibration or {}
        self.breaker = breaker or TeacherBreaker()
        if tuple(self.labels) != tuple(self.task.labels):
            raise CascadeError(f"model {version} predicts {self.labels}, but task {self.task.name!r} has "
                               f"{list(self.task.labels)}")
        self._conn = _SharedStore()  # shared with the cascades :meth:`with_model` makes
        self._raw = RawTeacherCalls(teacher, self.task, ws, self._db if ws is not None else None, self.breaker)
        self._runtime, self._threshold_override = "onnx", None  # how :meth:`reload` loads the next model

    @classmethod
    def from_store(cls, ws: Workspace, dataset: str, *, version: str | None = None, teacher: Teacher | None = None,
                   runtime: str = "onnx", threshold: float | None = None,
                   breaker: TeacherBreaker | None = None) -> "Cascade":
        """Build the cascade of ``version`` (None: the promoted model) from its latest calibration report.

        ``threshold`` overrides the calibrated one (an operator's choice; the guarantee then no longer applies).
        """
        task, version, student, cal = _load_model(ws, dataset, version, runtime)
        thr = float(cal["threshold"]) if threshold is None else float(threshold)
        casc = cls(student, teacher, thr, temperature=float(cal["temperature"]), task=task, version=version,
                   dataset=dataset, ws=ws, calibration=cal, breaker=breaker)
        casc._runtime, casc._threshold_override = runtime, threshold
        return casc

    def with_model(self, student: Any, *, version: str, temperature: float, threshold: float,
                   calibration: dict[str, Any]) -> "Cascade":
        """This cascade with another student and calibration, sharing its teacher side (calls in flight, breaker,
        cached answers) and store connection: what a service swaps in when a new model is promoted."""
        if tuple(student.labels) != tuple(self.task.labels):
            raise CascadeError(f"model {version} predicts {list(student.labels)}, but task {self.task.name!r} has "
                               f"{list(self.task.labels)}")
        new = copy.copy(self)
        new.student, new.labels, new.version = student, list(student.labels), version
        new.temperature, new.threshold, new.calibration = float(temperature), float(threshold), calibration
        return new

    def reload(self, version: str | None = None) -> "Cascade":
        """:meth:`with_model` for ``version`` (None: the dataset's serving model now) as stored: its student and
        latest calibration (an operator's threshold override stays)."""
        if self.ws is None:
            raise CascadeError("this cascade has no workspace; build it with Cascade.from_store(ws, dataset)")
        _, version, student, cal = _load_model(self.ws, self.dataset, version, self._runtime)
        thr = float(cal["threshold"]) if self._threshold_override is None else float(self._threshold_override)
        return self.with_model(student, version=version, temperature=float(cal["temperature"]), threshold=thr,
                               calibration=cal)

    @contextlib.contextmanager
    def _db(self) -> Iterator[Store]:
        """The cascade's one connection, held under its lock (thread-safe)."""
        if self.ws is None:
            raise CascadeError("this cascade has no workspace; build it with Cascade.from_store(ws, dataset)")
        with self._conn.lock:
            if self._conn.store is None:
                self._conn.store = self.ws.store()
            yield self._conn.store

    @property
    def teacher_calls_in_flight(self) -> int:
        return self._raw.in_flight

    # -- the decision --------------------------------------------------------------------------------------------
    def student_scores(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated (predicted index, confidence) for raw student probabilities."""
        cal = apply_temperature(probs, self.temperature)
        return cal.argmax(axis=1), cal.max(axis=1)

    def accepts(self, confidence: float) -> bool:
        return confidence >= self.threshold

    # -- store items (batch) -------------------------------------------------------------------------------------
    def predict_items(self, items: Sequence[Item], *, origin: str = "predict", round: int | None = None,
                      log: bool = True, teacher_concurrency: int = 16, progress: bool = False,
                      batch_size: int = 512) -> list[CascadeAnswer]:
        """Answer store items: the student in batches, the deferred ones by the teacher (cached, one pass).

        The teacher's answers go through ``label_items`` so they are stored before use and become labels.  Items
        the teacher already labelled (same model) are not asked again.  Every answer is logged to ``cascade_log``
        unless ``log`` is False (e.g. measurement on the test split).
        """
        items = list(items)
        if not items:
            return []
        t0 = time.perf_counter()
        probs, unreadable = self._student_probs(items, batch_size)
        idx, conf = self.student_scores(probs)
        conf[unreadable] = 0.0  # the student could not read these: always deferred
        student_ms = (time.perf_counter() - t0) * 1000 / len(items)
        deferred = [i for i, c in enumerate(conf) if unreadable[i] or not self.accepts(float(c))]
        teacher_out: dict[int, tuple[str | None, float | None]] = {}
        teacher_ms = 0.0
        if deferred and self.teacher is not None:
            t1 = time.perf_counter()
            teacher_out = self._teacher_labels([items[i] for i in deferred], teacher_concurrency, progress)
            teacher_ms = (time.perf_counter() - t1) * 1000 / len(deferred)
        answers: list[CascadeAnswer] = []
        dset = set(deferred)
        for i, it in enumerate(items):
            s_lab, s_conf = ("" if unreadable[i] else self.labels[int(idx[i])]), float(conf[i])
            a = CascadeAnswer(s_lab, "student", s_conf, s_lab, s_conf, None, self.version, student_ms, it.id,
                              it.content_hash, self.threshold)
            if i in dset and self.teacher is None:
                a.label, a.source = None, "deferred"
            elif i in dset:
                t_lab, t_q = teacher_out.get(it.id, (None, None))
                a.latency_ms = student_ms + teacher_ms
                if t_lab is not None:
                    a.label, a.source, a.confidence, a.teacher_label = t_lab, "teacher", float(t_q if t_q is not None else 1.0), t_lab
                else:
                    a.source = "teacher_failed"
            answers.append(a)
        if log:
            self.log_answers(answers, origin=origin, round=round)
        return answers

    def _student_probs(self, items: list[Item], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Student probabilities; a batch that fails (e.g. a corrupt blob) is retried item by item and the items
        the student cannot read are flagged (deferred with student_label "") instead of failing the whole call."""
        k = len(self.labels)
        out = np.full((len(items), k), 1.0 / k)
        bad = np.zeros(len(items), dtype=bool)
        for s in range(0, len(items), batch_size):
            chunk = items[s : s + batch_size]
            try:
                out[s : s + len(chunk)] = self.student.predict_proba(chunk)
                continue
            except Exception as e:
                logger.warning("student failed on a batch (%s: %s); retrying item by item", type(e).__name__, e)
            for j, it in enumerate(chunk):
                try:
                    out[s + j] = self.student.predict_proba([it])[0]
                except Exception as e:
                    logger.warning("student cannot read item %s: %s: %s", it.id, type(e).__name__, e)
                    bad[s + j] = True
        return out, bad

    def _teacher_labels(self, items: list[Item], concurrency: int, progress: bool) -> dict[int, tuple[str | None, float | None]]:
        """item id -> (teacher label, quality), asking the teacher (one pass, cached) only where needed."""
        from llm_flywheel.pipeline.labeling import LabelConfig, label_items

        assert self.teacher is not None
        model = self.teacher.model
        have = self._existing_teacher_labels([it.id for it in items], model)
        missing = [it.id for it in items if it.id not in have]
        if missing:
            try:
                rep = label_items(self.ws, self.dataset, missing, self.teacher,
                                  LabelConfig(passes=1, concurrency=max(1, concurrency), queue_disagreements=False),
                                  progress=progress)
                for why in ([rep.stopped_message] if rep.stopped_message else []) + [
                        f"{w['message']} -- fix: {w['fix']}" for w in rep.warnings]:  # else the flags come unexplained
                    logger.warning("teacher for %d deferred items: %s", len(missing), why)
            except Exception as e:  # a teacher outage must not take the cascade down: those answers are flagged
                logger.warning("teacher labelling failed for %d deferred items: %s: %s", len(missing), type(e).__name__, e)
            have.update(self._existing_teacher_labels(missing, model))
        return have

    def _existing_teacher_labels(self, ids: list[int], model: str | None) -> dict[int, tuple[str | None, float | None]]:
        with self._db() as store:
            return store.teacher_labels_for(ids, model)

    # -- raw inputs (serving) --------------------------------------------------------------------------------------
    def limit_teacher(self, *, cap: Any = None, concurrency: int | None = None) -> None:
        """Cap the teacher's spend and calls at once on raw inputs (see ``RawTeacherCalls.limit``); shared with the
        cascades :meth:`with_model` makes."""
        self._raw.limit(cap=cap, concurrency=concurrency)

    def student_guess(self, content: Any) -> tuple[str, float]:
        """The student's calibrated (label, confidence) for one raw input (CPU work: run it off the event loop)."""
        return self.student_guesses([content])[0]

    def student_guesses(self, contents: Sequence[Any]) -> list[tuple[str, float]]:
        """:meth:`student_guess` for many inputs in one student call (a batch is what ONNX Runtime is fast at)."""
        idx, conf = self.student_scores(self.student.predict_proba_raw(list(contents)))
        return [(self.labels[int(i)], float(c)) for i, c in zip(idx, conf)]

    async def apredict_raw(self, content: Any, *, origin: str = "serve", log: bool = True,
                           content_hash: str | None = None, payload_ref: str | None = None,
                           round: int | None = None, deadline_s: float | None = None,
                           on_deadline: str = "fallback") -> CascadeAnswer:
        """Answer one input that is not in the store (a PIL image / image bytes, a text, a feature list).

        The student runs in a worker thread and the teacher call is awaited on the event loop, so a slow teacher
        never blocks other requests.  ``deadline_s`` bounds the wait for the teacher (see :meth:`adecide`).
        """
        t0 = time.perf_counter()
        s_lab, s_conf = await asyncio.to_thread(self.student_guess, content)
        left = None if deadline_s is None else deadline_s - (time.perf_counter() - t0)
        a = await self.adecide(content, s_lab, s_conf, content_hash=content_hash, deadline_s=left,
                               on_deadline=on_deadline)
        a.latency_ms = (time.perf_counter() - t0) * 1000
        if log and self.ws is not None:
            await asyncio.to_thread(self.log_answers, [a], origin=origin, round=round, payload_refs=[payload_ref])
        return a

    async def adecide(self, content: Any, s_lab: str, s_conf: float, *, content_hash: str | None = None,
                      deadline_s: float | None = None, on_deadline: str = "fallback") -> CascadeAnswer:
        """The cascade's answer given the student's guess: the student's, or the teacher's (stored before use).

        The teacher is not called while its breaker is open; when it has not answered within ``deadline_s`` the
        answer is the student's, marked ``student_fallback`` (``on_deadline='error'``: :class:`DeadlineExceeded`).
        A call cut off by the deadline keeps running in the background, so what it buys is still stored.
        """
        if on_deadline not in ON_DEADLINE:
            raise ValueError(f"on_deadline must be one of {ON_DEADLINE}, got {on_deadline!r}")
        a = CascadeAnswer(s_lab, "student", s_conf, s_lab, s_conf, None, self.version, 0.0, None, content_hash,
                          self.threshold)
        if self.accepts(s_conf):
            return a
        if self.teacher is None:
            a.label, a.source = None, "deferred"
            return a
        got = await self._raw.answer(content, content_hash, deadline_s)
        if got is None:
            if on_deadline == "error":
                raise DeadlineExceeded(f"the teacher did not answer within {deadline_s:.3g} s"
                                       if deadline_s is not None else
                                       "the teacher is not being called (breaker open, or spend cap reached)")
            a.source = "student_fallback"
        elif got[0] is not None and got[0] in self.labels:
            a.label, a.source, a.confidence, a.teacher_label = got[0], "teacher", got[1], got[0]
        else:
            a.source = "teacher_failed"
        return a

    async def aclose(self) -> None:
        """Cancel teacher calls still running in the background and close the teacher's connections."""
        await self._raw.aclose()

    # -- logging ---------------------------------------------------------------------------------------------------
    def log_answers(self, answers: Sequence[CascadeAnswer], *, origin: str, round: int | None = None,
                    payload_refs: Sequence[str | None] | None = None) -> None:
        """Append answers to ``cascade_log`` in one transaction (thread-safe; one connection per cascade)."""
        now = time.time()
        refs = list(payload_refs) if payload_refs is not None else [None] * len(answers)
        rows = [CascadeLogRow(now, self.dataset, a.item_id, a.content_hash, a.source, a.label, a.confidence,
                              a.student_label, a.student_confidence, a.teacher_label, a.model_version,
                              self.threshold if a.threshold is None else a.threshold,
                              a.latency_ms, round, origin, ref) for a, ref in zip(answers, refs)]
        with self._db() as store:
            store.log_cascade_rows(rows)

    def close(self) -> None:
        with self._conn.lock:
            if self._conn.store is not None:
                self._conn.store.close()
                self._conn.store = None

    def describe(self) -> dict[str, Any]:
        """What is serving: for /healthz and the CLI."""
        ch = self.calibration.get("choice") or {}
        return {"dataset": self.dataset, "model_version": self.version, "temperature": self.temperature,
                "threshold": self.threshold, "goal": ch.get("goal"), "target": ch.get("target"),
                "delta": ch.get("delta"), "feasible": ch.get("feasible"),
                "teacher": self.teacher.display_name if self.teacher is not None else None,
                "student_kind": getattr(self.student, "kind", None), "modality": self.task.modality}


def summarize(answers: Sequence[CascadeAnswer]) -> dict[str, Any]:
    """Counts by source, teacher fraction and mean latency, for the CLI and reports."""
    n = len(answers)
    by = {s: sum(a.source == s for a in answers) for s in SOURCES}
    return {"n": n, "by_source": by, "teacher_fraction": (n - by["student"]) / n if n else None,
            "mean_latency_ms": float(np.mean([a.latency_ms for a in answers])) if n else None}
