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
``student_label``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from llm_flywheel.pipeline.calibration import apply_temperature
from llm_flywheel.store.base import Item, Store
from llm_flywheel.core.task import Task
from llm_flywheel.store.workspace import Workspace

logger = logging.getLogger(__name__)

SOURCES = ("student", "teacher", "teacher_failed", "deferred")
RAW_CACHE_SIZE = 10_000
_CHUNK = 900


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


class Cascade:
    """Student + calibrated threshold + (optional) teacher, for one dataset and one model version."""

    def __init__(self, ws: Workspace, dataset: str, task: Task, student: Any, version: str, temperature: float,
                 threshold: float, teacher: Any = None, calibration: dict[str, Any] | None = None) -> None:
        self.ws = ws
        self.dataset = dataset
        self.task = task
        self.student = student
        self.version = version
        self.temperature = float(temperature)
        self.threshold = float(threshold)
        self.teacher = teacher
        self.calibration = calibration or {}
        self.labels: list[str] = list(student.labels)
        if tuple(self.labels) != tuple(task.labels):
            raise CascadeError(f"model {version} predicts {self.labels}, but task {task.name!r} has {list(task.labels)}")
        self._store: Store | None = None
        self._store_lock = threading.Lock()
        self._client: Any = None
        self._raw_cache: dict[str, tuple[str, float]] = {}  # content hash -> teacher (label, confidence), bounded

    @classmethod
    def from_store(cls, ws: Workspace, dataset: str, *, version: str | None = None, teacher: Any = None,
                   runtime: str = "onnx", threshold: float | None = None) -> "Cascade":
        """Build the cascade of ``version`` (None: the promoted model) from its latest calibration report.

        ``threshold`` overrides the calibrated one (an operator's choice; the guarantee then no longer applies).
        """
        from llm_flywheel.pipeline.training import load_student, model_row

        store = ws.store()
        try:
            task = Task.from_json(store.dataset_task_json(dataset))
            version = version or promoted_version(store, dataset)
            row = model_row(store, version)
            if row["dataset"] != dataset:
                raise CascadeError(f"model {version!r} belongs to dataset {row['dataset']!r}, not {dataset!r}")
            cal = store.latest_report("calibration", version)
        finally:
            store.close()
        if cal is None:
            raise CascadeError(f"model {version} has not been calibrated; run `flywheel calibrate {dataset} "
                               f"--version {version} --target-accuracy 0.95` (or --max-teacher-fraction 0.1)")
        student = load_student(ws, version, runtime=runtime)
        if teacher is not None and getattr(teacher, "task", "absent") is None:
            teacher.task = task
        thr = float(cal["threshold"]) if threshold is None else float(threshold)
        return cls(ws, dataset, task, student, version, float(cal["temperature"]), thr, teacher, cal)

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
            if i not in dset:
                a = CascadeAnswer(s_lab, "student", s_conf, s_lab, s_conf, None, self.version, student_ms, it.id,
                                  it.content_hash)
            elif self.teacher is None:
                a = CascadeAnswer(None, "deferred", s_conf, s_lab, s_conf, None, self.version, student_ms, it.id,
                                  it.content_hash)
            else:
                t_lab, t_q = teacher_out.get(it.id, (None, None))
                if t_lab is not None:
                    a = CascadeAnswer(t_lab, "teacher", float(t_q if t_q is not None else 1.0), s_lab, s_conf, t_lab,
                                      self.version, student_ms + teacher_ms, it.id, it.content_hash)
                else:
                    a = CascadeAnswer(s_lab, "teacher_failed", s_conf, s_lab, s_conf, None, self.version,
                                      student_ms + teacher_ms, it.id, it.content_hash)
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

        model = getattr(self.teacher, "model", None)
        have = self._existing_teacher_labels([it.id for it in items], model)
        missing = [it.id for it in items if it.id not in have]
        if missing:
            try:
                label_items(self.ws, self.dataset, missing, self.teacher,
                            LabelConfig(passes=1, concurrency=max(1, concurrency), queue_disagreements=False),
                            progress=progress)
            except Exception as e:  # a teacher outage must not take the cascade down: those answers are flagged
                logger.warning("teacher labelling failed for %d deferred items: %s: %s", len(missing), type(e).__name__, e)
            have.update(self._existing_teacher_labels(missing, model))
        return have

    def _existing_teacher_labels(self, ids: list[int], model: str | None) -> dict[int, tuple[str | None, float | None]]:
        out: dict[int, tuple[str | None, float | None]] = {}
        store = self.ws.store()
        try:
            for s in range(0, len(ids), _CHUNK):
                chunk = ids[s : s + _CHUNK]
                rows = store.query(
                    f"SELECT item_id, label, quality, provenance FROM labels WHERE source='teacher' AND label IS NOT NULL "
                    f"AND item_id IN ({','.join('?' * len(chunk))})", chunk)
                for r in rows:
                    try:
                        prov_model = json.loads(r["provenance"] or "{}").get("model")
                    except (json.JSONDecodeError, AttributeError):
                        prov_model = None
                    if model is None or prov_model in (None, model):
                        out[int(r["item_id"])] = (r["label"], r["quality"])
        finally:
            store.close()
        return out

    # -- raw inputs (serving) --------------------------------------------------------------------------------------
    async def apredict_raw(self, content: Any, *, origin: str = "serve", log: bool = True,
                           content_hash: str | None = None, payload_ref: str | None = None,
                           round: int | None = None) -> CascadeAnswer:
        """Answer one input that is not in the store (a PIL image / image bytes, a text, a feature list).

        The student runs in a worker thread and the teacher call is awaited on the event loop, so a slow teacher
        never blocks other requests.
        """
        t0 = time.perf_counter()
        probs = await asyncio.to_thread(self.student.predict_proba_raw, [content])
        idx, conf = self.student_scores(probs)
        s_lab, s_conf = self.labels[int(idx[0])], float(conf[0])
        if self.accepts(s_conf):
            a = CascadeAnswer(s_lab, "student", s_conf, s_lab, s_conf, None, self.version, 0.0, None, content_hash)
        elif self.teacher is None:
            a = CascadeAnswer(None, "deferred", s_conf, s_lab, s_conf, None, self.version, 0.0, None, content_hash)
        else:
            cached = self._raw_cache.get(content_hash) if content_hash else None
            if cached is None and content_hash:
                cached = await asyncio.to_thread(self._stored_teacher_answer, content_hash)
            if cached is None:  # not paid for yet: ask (awaited, so other requests keep flowing)
                ans = await self._ask_teacher_raw(content)
                if ans is not None and ans.ok and ans.label in self.labels:
                    conf_t = float(ans.confidence) if ans.confidence is not None else 1.0
                    if content_hash:
                        self._remember(content_hash, ans.label, conf_t)
                    cached = (ans.label, conf_t)
            if cached is not None:
                a = CascadeAnswer(cached[0], "teacher", cached[1], s_lab, s_conf, cached[0], self.version, 0.0, None,
                                  content_hash)
            else:
                a = CascadeAnswer(s_lab, "teacher_failed", s_conf, s_lab, s_conf, None, self.version, 0.0, None,
                                  content_hash)
        a.latency_ms = (time.perf_counter() - t0) * 1000
        if log:
            await asyncio.to_thread(self.log_answers, [a], origin=origin, round=round, payload_refs=[payload_ref])
        return a

    def _remember(self, content_hash: str, label: str, conf: float) -> None:
        self._raw_cache[content_hash] = (label, conf)
        if len(self._raw_cache) > RAW_CACHE_SIZE:
            self._raw_cache.pop(next(iter(self._raw_cache)))

    def _stored_teacher_answer(self, content_hash: str) -> tuple[str, float] | None:
        """A final answer of this teacher (any pass, same prompt version) already paid for this exact content."""
        model = getattr(self.teacher, "model", None)
        pv_for = getattr(self.teacher, "prompt_version_for", None)
        if model is None or pv_for is None:
            return None
        with self._store_lock:
            if self._store is None:
                self._store = self.ws.store()
            row = self._store.conn.execute(
                "SELECT label, confidence FROM teacher_answers WHERE content_hash=? AND model=? AND prompt_version=? "
                "AND ok=1 AND label IS NOT NULL ORDER BY pass_index LIMIT 1",
                (content_hash, model, pv_for(self.task))).fetchone()
        if row is None or row["label"] not in self.labels:
            return None
        hit = (str(row["label"]), float(row["confidence"]) if row["confidence"] is not None else 1.0)
        self._remember(content_hash, *hit)
        return hit

    async def _ask_teacher_raw(self, content: Any) -> Any:
        teacher = self.teacher
        if hasattr(teacher, "alabel_raw"):
            if self._client is None and hasattr(teacher, "make_client"):
                self._client = teacher.make_client(64)
            try:
                payload = content
                if isinstance(content, list):  # tabular: the teacher reads a text rendering
                    payload = "Features: " + json.dumps(content)
                return await teacher.alabel_raw(payload, self.task, client=self._client)
            except Exception as e:
                logger.warning("teacher call failed: %s: %s", type(e).__name__, e)
                return None
        logger.warning("teacher %r cannot label raw inputs (no alabel_raw)", teacher)
        return None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- logging ---------------------------------------------------------------------------------------------------
    def log_answers(self, answers: Sequence[CascadeAnswer], *, origin: str, round: int | None = None,
                    payload_refs: Sequence[str | None] | None = None) -> None:
        """Append answers to ``cascade_log`` in one transaction (thread-safe; one connection per cascade)."""
        now = time.time()
        refs = list(payload_refs) if payload_refs is not None else [None] * len(answers)
        rows = [(now, self.dataset, a.item_id, a.content_hash, a.source, a.label, a.confidence, a.student_label,
                 a.student_confidence, a.teacher_label, a.model_version, self.threshold, a.latency_ms, round, origin, ref)
                for a, ref in zip(answers, refs)]
        with self._store_lock:
            if self._store is None:
                self._store = self.ws.store()
            with self._store.transaction() as c:
                c.executemany(
                    "INSERT INTO cascade_log(ts, dataset, item_id, content_hash, source, label, confidence, student_label, "
                    "student_confidence, teacher_label, model_version, threshold, latency_ms, round, origin, payload_ref) "
                    "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def close(self) -> None:
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def describe(self) -> dict[str, Any]:
        """What is serving: for /healthz and the CLI."""
        ch = self.calibration.get("choice") or {}
        return {"dataset": self.dataset, "model_version": self.version, "temperature": self.temperature,
                "threshold": self.threshold, "goal": ch.get("goal"), "target": ch.get("target"),
                "delta": ch.get("delta"), "feasible": ch.get("feasible"),
                "teacher": getattr(self.teacher, "display_name", None) if self.teacher is not None else None,
                "student_kind": getattr(self.student, "kind", None), "modality": self.task.modality}


def summarize(answers: Sequence[CascadeAnswer]) -> dict[str, Any]:
    """Counts by source, teacher fraction and mean latency, for the CLI and reports."""
    n = len(answers)
    by = {s: sum(a.source == s for a in answers) for s in SOURCES}
    return {"n": n, "by_source": by, "teacher_fraction": (n - by["student"]) / n if n else None,
            "mean_latency_ms": float(np.mean([a.latency_ms for a in answers])) if n else None}
