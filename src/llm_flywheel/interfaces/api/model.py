"""``Model`` (a trained student version) and ``Cascade`` (it, calibrated, with a teacher behind it) of the API.

Why apart from ``workspace``: the dataset-level calls (import, label, train, run) and the model-level ones
(evaluate, calibrate, predict) change for different reasons; both stay thin wrappers over the pipeline.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from llm_flywheel.interfaces.api.inputs import Teacher, as_teacher, raw_inputs, register_items
from llm_flywheel.interfaces.api.results import (Answer, Calibration, Evaluation, FlywheelWarning, NotReadyError,
                                                 translate_errors, warn_each)
from llm_flywheel.pipeline.unseen import unseen_categories, unseen_summary


class Model:
    """A trained student version of a dataset."""

    def __init__(self, dataset: Any, version: str) -> None:  # a workspace.Dataset (which imports this module)
        from llm_flywheel.pipeline.training import model_row

        self.dataset, self.version = dataset, version
        with translate_errors(), dataset.workspace._ws.store(readonly=True) as s:
            row = model_row(s, version)
        self.kind: str = row["kind"]
        self.metrics: Mapping[str, Any] = json.loads(row.get("metrics_json") or "{}")
        self._student: Any = None

    def __repr__(self) -> str:
        return f"Model({self.version!r}, kind={self.kind!r})"

    @property
    def val_accuracy(self) -> float | None:
        """Accuracy on the validation labels (teacher labels unless trained with gold validation)."""
        v = self.metrics.get("val_acc")
        return None if v is None else float(v)

    def predict_proba(self, inputs: Sequence[Any]) -> np.ndarray:
        """The student's raw (uncalibrated) probabilities, columns in ``dataset.labels`` order."""
        from llm_flywheel.pipeline.training import load_student

        if self._student is None:
            with translate_errors():
                self._student = load_student(self.dataset.workspace._ws, self.version)
        return np.asarray(self._student.predict_proba_raw(list(raw_inputs(self.dataset.task, inputs))))

    def evaluate(self, split: str = "test") -> Evaluation:
        """Score on ``split``'s gold labels (needs a dataset with gold labels), beside the teacher's accuracy."""
        from llm_flywheel.pipeline.evaluation import evaluate

        with translate_errors():
            rep = evaluate(self.dataset.workspace._ws, self.dataset.name, self.version, split=split)
        return Evaluation.from_report(rep)

    def calibrate(self, *, target_accuracy: float | None = None, max_teacher_fraction: float | None = None,
                  delta: float = 0.1, teacher: Teacher | str | None = None, teacher_parity: bool = False,
                  parity_reference: str = "labels") -> "Cascade":
        """Fit the temperature and choose the threshold on the calib split's labels, for an accuracy goal on the
        answers the student keeps and/or a cap on the share sent to the teacher (default: 0.1); returns the
        cascade (with ``teacher`` answering what the student defers, if given).  ``teacher_parity=True``: the goal
        "cascade accuracy no lower than the teacher's single call", guaranteed at 1 - delta, judged against the
        teacher's independent pass 1: every calib item needs one (``ds.label(teacher, split="calib",
        adaptive=False)``); ``parity_reference="review"``: judged by a person on the calib items where the student
        and the teacher's first answer disagree -- those not reviewed yet are queued (``flywheel review export``)
        and NotReadyError says so."""
        from llm_flywheel.pipeline.calibration import calibrate

        if target_accuracy is None and max_teacher_fraction is None and not teacher_parity:
            max_teacher_fraction = 0.1
        with translate_errors():
            try:
                calibrate(self.dataset.workspace._ws, self.dataset.name, self.version,
                          target_accuracy=target_accuracy, max_teacher_fraction=max_teacher_fraction, delta=delta,
                          teacher_parity=teacher_parity, reference=parity_reference)
            except ValueError as e:
                raise NotReadyError(str(e)) from e
        cascade = self.cascade(teacher)
        warn_each(cascade.calibration.warnings, 2)  # raised where the notebook called calibrate()
        return cascade

    def promote(self) -> None:
        """Make this (calibrated) model the dataset's serving model: the default of every later call, and what a
        running `flywheel serve` swaps in at its next check."""
        from llm_flywheel.pipeline.training import promote_model

        with translate_errors():
            promote_model(self.dataset.workspace._ws, self.dataset.name, self.version)

    def cascade(self, teacher: Teacher | str | None = None) -> "Cascade":
        """The cascade of this model from its latest calibration."""
        return Cascade(self, teacher)


class Cascade:
    """Student answers above the calibrated threshold, the teacher below it."""

    def __init__(self, model: Model, teacher: Teacher | str | None = None) -> None:
        from llm_flywheel.pipeline.cascade import Cascade as _Cascade

        self.model = model
        ds = model.dataset
        t = None if teacher is None else as_teacher(teacher)
        self.teacher = t
        with translate_errors():
            self._c = _Cascade.from_store(ds.workspace._ws, ds.name, version=model.version,
                                          teacher=None if t is None else t.build(ds.task, ds.workspace._ws))
        self.calibration = Calibration.from_report(self._c.calibration)
        self._api: Any = None  # the same cascade over the companion dataset of API inputs

    def __repr__(self) -> str:
        return (f"Cascade({self.model.version!r}, threshold={self.threshold:.3f}, "
                f"teacher={self.teacher.spec if self.teacher else None!r})")

    @property
    def threshold(self) -> float:
        return self._c.threshold

    @property
    def temperature(self) -> float:
        return self._c.temperature

    def predict(self, inputs: Sequence[Any], *, concurrency: int = 16) -> list[Answer]:
        """Answer texts, rows of numbers or images, in order.

        The inputs are kept as items of a companion dataset ``<dataset>.api`` (same task, never split or trained
        on unless you choose to), so a deferred input goes through the labeller like any item: its teacher answer
        is stored before it is used and paid once -- an input the teacher already answered, here or in the
        dataset itself, costs nothing.  Answers are logged to the cascade log (the wheel's feedback)."""
        from dataclasses import replace

        from llm_flywheel.pipeline.cascade import Cascade as _Cascade

        ds = self.model.dataset
        ws = ds.workspace._ws
        raw = raw_inputs(ds.task, inputs)
        if not raw:
            return []
        task = replace(ds.task, name=f"{ds.name}.api")
        keys = register_items(ws, task, raw)
        with ws.store(readonly=True) as s:
            by_key = {it.source_ref: it for it in s.items(task.name)}
        c = self._c
        if self._api is None:
            self._api = _Cascade(c.student, c.teacher, c.threshold, temperature=c.temperature, task=task,
                                 version=c.version, dataset=task.name, ws=ws, calibration=c.calibration)
        with translate_errors():
            out = self._api.predict_items([by_key[k] for k in keys], origin="api",
                                          teacher_concurrency=max(1, concurrency))
        unseen = unseen_categories(self._api, raw)
        note = unseen_summary(unseen)
        if note:  # answered as missing values, with a threshold calibrated without them (pipeline.unseen)
            warnings.warn(FlywheelWarning(note + "; add such rows (ds.add_items) and run the wheel to train on them"),
                          stacklevel=2)
        return [Answer.from_engine(a, u) for a, u in zip(out, unseen)]

    def close(self) -> None:
        self._c.close()
        if self._api is not None:
            self._api.close()
