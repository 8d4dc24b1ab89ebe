"""``DistilledClassifier``: a scikit-learn classifier whose labels come from an LLM teacher.

``fit(X)`` takes *unlabelled* inputs (texts, rows of numbers, or images): the teacher labels them (k diverse passes,
cached, within ``budget_usd``), a small student is trained on those labels, and a cascade is calibrated on a held-out
part so that ``predict`` answers with the student where it is confident enough and asks the teacher otherwise.

Why it keeps a workspace: every paid answer is stored before it is used, so refitting, predicting the same inputs
again, or re-running a fit that was killed costs nothing twice.  The workspace is a temporary folder (deleted with
the estimator, carried inside a pickle) unless ``workspace=`` names a folder to keep.  Each distinct training set is
its own dataset in that workspace (named after a fingerprint of the inputs and labels), so a refit on other data
starts from scratch while teacher answers are still shared through the cache.
"""

from __future__ import annotations

import hashlib
import io
import math
import shutil
import tarfile
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from llm_flywheel.interfaces.api.results import (Calibration, InputError, LabelReport, NotReadyError, TeacherError,
                                                 translate_errors, warn_each)
from llm_flywheel.interfaces.api.simulate import label_names
from llm_flywheel.interfaces.api.inputs import (Teacher, as_teacher, infer_modality, item_key, make_splits_once,
                                             read_paths, register_items, text_columns)

_CASCADES: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()  # estimator -> engine Cascade
# (kept outside the estimator's __dict__: predicting must not change the estimator, as scikit-learn requires)

MIN_SAMPLES = 3  # one item each for train, val and calib
TEACHER_WEIGHT_FLOOR = 0.6  # a teacher-answered row gives its label at least this probability (argmax = its label)


class DistilledClassifier(ClassifierMixin, BaseEstimator):
    """Distil an LLM teacher into a small student behind a calibrated cascade, in memory.

    Parameters
    ----------
    teacher : str or Teacher
        Teacher spec (``"openrouter:google/gemini-2.5-flash"``, ``"http://127.0.0.1:8000/v1|MODEL"``) or
        ``fw.teacher(...)``.
    labels : dict or list
        ``{class: description}`` (descriptions are what the teacher reads) or a list of classes.  ``classes_`` are
        these classes, sorted.
    student : str, optional
        ``text-tfidf`` / ``text-minilm`` / ``tabular-hgb`` / ``image-cnn`` / ``efficientnet-lite0`` /
        ``image-pair``; default per input.
    student_params : dict, optional
        Hyper-parameters of the student (e.g. ``{"epochs": 5}`` for image students).
    instructions : str
        What the teacher is asked to do (e.g. "Classify this support ticket.").
    passes : int
        Teacher passes per item (diverse prompts; a tie-break pass where they disagree).
    budget_usd, max_calls : optional
        Caps on what one ``fit`` may spend on the teacher (cached answers are free).
    target_accuracy, max_teacher_fraction, delta
        The cascade's goal (see ``Model.calibrate``); default: at most 10 % of inputs go to the teacher.
    defer_to_teacher : bool
        ``predict`` asks the teacher where the student is unsure (False: the student answers everything).
    workspace : str, optional
        Folder to keep the store, models and cache in (default: a temporary folder).
    val_size, calib_size : float
        Shares of ``X`` held out for early stopping and for calibrating the cascade.
    progress : bool
        Labelling and training progress on stderr during ``fit`` (plain lines in a notebook); False: silent.
    """

    def __init__(self, teacher: str | Teacher | None = None, labels: Mapping[Any, str] | Sequence[Any] | None = None,
                 *, student: str | None = None, student_params: Mapping[str, Any] | None = None, instructions: str = "", passes: int = 2,
                 budget_usd: float | None = None, max_calls: int | None = None,
                 target_accuracy: float | None = None, max_teacher_fraction: float | None = 0.1, delta: float = 0.1,
                 defer_to_teacher: bool = True, workspace: str | None = None, dataset: str = "distilled",
                 val_size: float = 0.1, calib_size: float = 0.2, concurrency: int = 16, seed: int = 0,
                 progress: bool = True) -> None:
        self.teacher = teacher
        self.labels = labels
        self.student = student
        self.student_params = student_params
        self.instructions = instructions
        self.passes = passes
        self.budget_usd = budget_usd
        self.max_calls = max_calls
        self.target_accuracy = target_accuracy
        self.max_teacher_fraction = max_teacher_fraction
        self.delta = delta
        self.defer_to_teacher = defer_to_teacher
        self.workspace = workspace
        self.dataset = dataset
        self.val_size = val_size
        self.calib_size = calib_size
        self.concurrency = concurrency
        self.seed = seed
        self.progress = progress

    # -- sklearn plumbing ------------------------------------------------------------------------------------------
    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.input_tags.string = True
        tags.input_tags.allow_nan = False
        tags.target_tags.required = False  # the teacher supplies the labels: y must be None
        return tags

    def __getstate__(self) -> dict[str, Any]:
        """A pickle carries a temporary workspace inside it (models + cached teacher answers), not its path."""
        state = {k: v for k, v in self.__dict__.items() if k != "_tmp_finalizer"}
        if getattr(self, "_owns_workspace", False) and getattr(self, "workspace_", None):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                tar.add(self.workspace_, arcname=".")
            state["_ws_archive"] = buf.getvalue()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        archive = state.pop("_ws_archive", None)
        self.__dict__.update(state)
        if archive is not None:
            root = self._new_tmp()
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
                tar.extractall(root, filter="data")
            self.workspace_ = root

    def _new_tmp(self) -> str:
        root = tempfile.mkdtemp(prefix="flywheel-estimator-")
        self._tmp_finalizer = weakref.finalize(self, shutil.rmtree, root, True)
        self._owns_workspace = True
        return root

    # -- input handling --------------------------------------------------------------------------------------------
    def _inputs(self, X: Any, *, reset: bool) -> tuple[str, list[Any]]:
        """(modality, list of inputs); tabular input goes through scikit-learn's validation (shape, dtype, NaN)."""
        if isinstance(X, str):
            raise InputError("X must be a sequence of inputs (e.g. a list of texts), not one string")
        if hasattr(X, "iloc") and getattr(X, "ndim", 2) == 1:  # a pandas Series of texts
            X = X.tolist()
        X = read_paths(X)  # files as paths: their pictures' bytes, their documents' text
        modality = self.modality_ if not reset else None
        if modality is None:
            try:
                modality = infer_modality(X) if len(X) else "tabular"
            except TypeError:
                modality = "tabular"
            except InputError:
                modality = "tabular"
        if modality == "tabular":
            text = text_columns(X)  # from the dtypes: no row is read
            if text:  # InputError is a ValueError: scikit-learn's contract for a bad X holds
                raise InputError(f"DistilledClassifier takes numbers, as scikit-learn estimators do; column(s) "
                                 f"{', '.join(text)} hold text: encode them first (e.g. an OrdinalEncoder in a "
                                 "Pipeline), or use ws.add_items(df, ...), which keeps them as categories")
            Xv = validate_data(self, X, reset=reset, dtype=np.float64)
            return modality, list(Xv)
        if reset and hasattr(self, "n_features_in_"):
            del self.n_features_in_
        items = list(X)
        if not items:
            raise InputError("X is empty (0 samples)")
        if modality == "text" and not all(isinstance(x, str) for x in items):
            raise InputError("text input must contain only str items")
        return modality, items

    # -- fit -------------------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: None = None) -> "DistilledClassifier":
        """Have the teacher label ``X``, train the student, calibrate the cascade.  ``y`` must be None: the labels
        come from the teacher (to learn from labels you already have, use a plain classifier)."""
        if y is not None:
            raise InputError("DistilledClassifier is labelled by its teacher: call fit(X) without y")
        return self._fit(X, self.teacher, self.labels)

    def _fit_inputs(self, X: Any) -> tuple[str, list[Any]]:
        """Validated training inputs: (modality, items); refuses fewer than ``MIN_SAMPLES``."""
        modality, items = self._inputs(X, reset=True)
        n = len(items)
        if n < MIN_SAMPLES:
            raise InputError(f"DistilledClassifier needs at least {MIN_SAMPLES} samples (train, val, calib), got "
                             f"{n} sample{'s' if n != 1 else ''}; n_samples = {n}")
        return modality, items

    def _fit(self, X: Any, teacher: Any, labels: Any) -> "DistilledClassifier":
        """``fit`` with an explicit teacher and class list (tests hand in a simulator per training set here)."""
        from llm_flywheel.store.workspace import Workspace as _Ws

        modality, items = self._fit_inputs(X)
        if teacher is None:
            raise InputError("give teacher=, e.g. DistilledClassifier(teacher='openrouter:google/gemini-2.5-flash', "
                             "labels={...}) or fw.teacher('http://127.0.0.1:8000/v1|MODEL')")
        if not labels or len(labels) < 2:
            raise InputError("give labels= with at least 2 classes, e.g. labels={'spam': 'unsolicited advertising', "
                             "'ham': 'a normal email'}")
        t = as_teacher(teacher)
        keys = [item_key(modality, x)[0] for x in items]
        classes, names, task = self._task(modality, labels, keys)
        n_uniq = len(set(keys))
        val, calib = max(1, round(self.val_size * n_uniq)), max(1, round(self.calib_size * n_uniq))
        if n_uniq - val - calib < 1:
            raise InputError(f"only {n_uniq} distinct samples: not enough for train, val ({val}) and calib ({calib}); "
                             "give more samples")
        root = self._workspace_root()
        # A temporary workspace is self-contained (SQLite inside the folder) so pickling the estimator carries it
        # whole; a workspace the user named keeps whatever store it was made with.
        own = getattr(self, "_owns_workspace", False)
        ws = _Ws.open(root, store=str(Path(root) / "flywheel.db") if own else None)
        register_items(ws, task, items)
        make_splits_once(ws, task.name, val=val, calib=calib, stream=0, test=0, seed=self.seed)
        by_key = self._items_by_key(ws, task.name)
        ids = sorted({by_key[k].id for k in keys})
        version, cal = self._label_train_calibrate(ws, task, ids, t, len(items))
        self.workspace_ = root
        self.dataset_ = task.name
        self.version_ = version
        self.modality_ = modality
        self.teacher_ = t
        self.classes_ = np.asarray(classes) if not isinstance(classes[0], str) else np.asarray(classes, dtype=object)
        self._names = [names[c] for c in classes]
        self.calibration_ = self._fit_fixes(Calibration.from_report(cal), n_uniq)
        warn_each(self.calibration_.warnings, 3)  # raised where the notebook called fit()
        _CASCADES.pop(self, None)
        return self

    def _fit_fixes(self, cal: Calibration, n_uniq: int) -> Calibration:
        """A calib part too small to spend the teacher budget, fixed in this estimator's own terms: the shared
        warning names `flywheel data add --calib`, which a notebook that called fit() never ran."""
        from dataclasses import replace

        from llm_flywheel.core.thresholds import min_calib_to_defer

        need = min_calib_to_defer(self.max_teacher_fraction or 1.0, self.delta)
        if not need:
            return cal
        fix = (f"fit() on at least {math.ceil(need / self.calib_size)} distinct samples, or calib_size="
               f"{math.ceil(100 * need / n_uniq) / 100:g} (the calib part needs {need} of them), or a larger delta"
               if need < n_uniq else f"fit() on more samples (the calib part alone needs {need}), or a larger delta")
        return replace(cal, warnings=tuple(replace(w, fix=fix) if w.code == "budget_defers_nothing" else w
                                           for w in cal.warnings))

    def _task(self, modality: str, labels: Any, keys: list[str]) -> tuple[list[Any], dict[Any, str], Any]:
        """(sorted classes, class -> label name, Task).  The dataset is named after a fingerprint of the inputs and
        the task, so the same training set is the same dataset (resume, cache) and another one starts afresh."""
        from llm_flywheel.core.task import Task

        try:
            classes = sorted(labels)
        except TypeError:
            classes = list(labels)
        names = label_names(classes)
        desc = dict(labels) if isinstance(labels, Mapping) else {}
        descriptions = {names[c]: str(desc.get(c) or str(c).replace("_", " ")) for c in classes}
        fp = hashlib.sha256(repr((sorted(set(keys)), sorted(descriptions.items()), self.instructions, modality,
                                  self.val_size, self.calib_size, self.seed)).encode()).hexdigest()[:12]
        with translate_errors():
            try:
                columns = getattr(self, "feature_names_in_", None) if modality == "tabular" else None
                task = Task(name=f"{self.dataset}-{fp}", modality=modality, labels=tuple(descriptions),
                            descriptions=descriptions, instructions=self.instructions,
                            features=tuple(str(c) for c in columns) if columns is not None else ())
            except ValueError as e:
                raise InputError(str(e)) from e
        return classes, names, task

    def _workspace_root(self) -> str:
        """``workspace=`` if given; else this estimator's temporary folder (a refit reuses its cache)."""
        if self.workspace is not None:
            self._owns_workspace = False
            return str(Path(self.workspace).resolve())
        if getattr(self, "_owns_workspace", False) and getattr(self, "workspace_", None):
            return str(self.workspace_)
        return self._new_tmp()

    def _label_train_calibrate(self, ws: Any, task: Any, ids: list[int], t: Teacher, n: int) -> tuple[str, Any]:
        """Teacher labels for ``ids`` -> a student on the train part -> the cascade calibrated on the calib part."""
        from llm_flywheel.pipeline.calibration import calibrate
        from llm_flywheel.pipeline.labeling import LabelConfig, label_items
        from llm_flywheel.pipeline.training import train_student

        try:
            cfg = LabelConfig(passes=self.passes, concurrency=self.concurrency, budget_usd=self.budget_usd,
                              max_calls=self.max_calls)
        except ValueError as e:
            raise InputError(str(e)) from e
        with translate_errors():
            rep = label_items(ws, task.name, ids, t.build(task, ws), cfg, progress=self.progress)
        self.label_report_ = LabelReport.from_result(task.name, rep)
        stopped = f"; labelling stopped early: {rep.stopped_reason}" if rep.stopped_reason else ""
        if rep.stopped_reason and not rep.labelled:
            if rep.stopped_reason == "fatal_error":
                raise TeacherError(f"the teacher cannot be used ({', '.join(sorted(rep.errors)) or 'fatal error'}): "
                                   f"check its URL, model and API key variable ({t.spec})")
            raise NotReadyError(f"the teacher labelled nothing{stopped}; raise budget_usd / max_calls (answers "
                                "already paid for are cached)")
        with ws.store(readonly=True) as s:
            train_labels = s.effective_labels(task.name, split="train")
        idset = set(ids)
        train_labels = {i: lab for i, lab in train_labels.items() if i in idset}
        if not train_labels:
            raise NotReadyError(f"the teacher gave no usable label for the training items ({rep.failed} failed "
                                f"calls{stopped}); raise budget_usd / max_calls or check the teacher, then fit again "
                                "(answers so far are cached)")
        with translate_errors():
            try:
                tm = train_student(ws, task.name, kind=self.student, labels=train_labels, seed=self.seed,
                                   progress=self.progress, **dict(self.student_params or {}))
                cal = calibrate(ws, task.name, tm.version, target_accuracy=self.target_accuracy,
                                max_teacher_fraction=self.max_teacher_fraction, delta=self.delta)
            except ValueError as e:
                raise NotReadyError(f"{e} (with {n} samples{stopped}; give more samples, a larger calib_size or "
                                    "a larger budget)") from e
        return tm.version, cal

    @staticmethod
    def _items_by_key(ws: Any, name: str) -> dict[str, Any]:
        with ws.store(readonly=True) as s:
            return {it.source_ref: it for it in s.items(name)}

    # -- predict ---------------------------------------------------------------------------------------------------
    def _get_cascade(self, ws: Any) -> Any:
        from llm_flywheel.pipeline.cascade import Cascade as _Cascade

        c = _CASCADES.get(self)
        if c is None or c.ws.root != ws.root or c.version != self.version_:
            with translate_errors():
                c = _Cascade.from_store(ws, self.dataset_, version=self.version_)
                if self.defer_to_teacher:
                    c.teacher = self.teacher_.build(c.task, ws)
            _CASCADES[self] = c
        return c

    def _store_items(self, X: Any) -> tuple[Any, Any, list[Any]]:
        """(cascade, task, store items) for inputs ``X``; inputs never seen are added to the workspace first."""
        from llm_flywheel.core.task import Task
        from llm_flywheel.store.workspace import Workspace as _Ws

        check_is_fitted(self)
        _, items = self._inputs(X, reset=False)
        ws = _Ws.open(self.workspace_)
        keys = [item_key(self.modality_, x)[0] for x in items]
        with ws.store(readonly=True) as s:
            task = Task.from_json(s.dataset_task_json(self.dataset_))
        by_key = self._items_by_key(ws, self.dataset_)
        new = {k: x for k, x in zip(keys, items) if k not in by_key}
        if new:
            register_items(ws, task, list(new.values()))
            by_key = self._items_by_key(ws, self.dataset_)
        return self._get_cascade(ws), task, [by_key[k] for k in keys]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities in ``classes_`` order: the student's calibrated probabilities where it answers; where the
        teacher answered, its label gets max(teacher confidence, 0.6), mixed with the student's for the rest."""
        from llm_flywheel.pipeline.calibration import apply_temperature

        casc, task, store_items = self._store_items(X)
        with translate_errors():
            probs = apply_temperature(np.asarray(casc.student.predict_proba(store_items)), casc.temperature)
            answers = (casc.predict_items(store_items, origin="predict", teacher_concurrency=self.concurrency)
                       if self.defer_to_teacher else [])
        for i, a in enumerate(answers):
            if a.source == "teacher" and a.label in task.labels:
                w = max(float(a.confidence or 0.0), TEACHER_WEIGHT_FLOOR)
                onehot = np.zeros(len(task.labels))
                onehot[task.labels.index(a.label)] = 1.0
                probs[i] = w * onehot + (1 - w) * probs[i]
        order = [task.labels.index(nm) for nm in self._names]  # store label order -> classes_ order
        return probs[:, order]

    def predict(self, X: Any) -> np.ndarray:
        """The cascade's answer per input, as values of ``classes_``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def predict_answers(self, X: Any) -> list[Any]:
        """Who answered what: one :class:`~llm_flywheel.interfaces.api.results.Answer` per input, labels as class values
        (``source`` is ``student``, ``teacher``, ``teacher_failed`` or -- with ``defer_to_teacher=False`` --
        ``deferred``)."""
        from llm_flywheel.interfaces.api.results import Answer

        casc, _, store_items = self._store_items(X)
        back = dict(zip(self._names, self.classes_.tolist()))
        out = []
        with translate_errors():
            answers = casc.predict_items(store_items, origin="predict", teacher_concurrency=self.concurrency)
        for a in answers:
            out.append(Answer(back.get(a.label) if a.label else None, a.source, float(a.confidence),
                              back.get(a.student_label), float(a.student_confidence),
                              back.get(a.teacher_label) if a.teacher_label else None, a.model_version,
                              float(a.latency_ms)))
        return out
