"""The notebook-facing facade: ``Workspace`` -> ``Dataset`` -> ``Model`` -> ``Cascade``, plus ``teacher()``.

Why a facade over the pipeline functions instead of new logic: the CLI, the HTTP service and this API must give the
same answers from the same store, so every method here is a call into the pipeline (``add_dataset``,
``label_items``, ``train_student``, ``calibrate``, ``Cascade.from_store``, ``run_wheel``, ``evaluate``) plus a
conversion of its result into a typed dataclass and of its exceptions into the API's typed errors.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_flywheel.interfaces.api.inputs import (Teacher, as_teacher, dataframe_rows, infer_modality, make_splits_once,
                                                read_paths, register_items)
from llm_flywheel.interfaces.api.model import Model
from llm_flywheel.interfaces.api.results import (FlywheelError, FlywheelWarning, InputError, LabelPlan, LabelReport,
                                                 NotReadyError, RunReport, TeacherError, translate_errors)

if TYPE_CHECKING:
    from llm_flywheel.interfaces.api.simulate import SimulatedTeacher
    from llm_flywheel.pipeline.model_list import ModelInfo, PruneResult
    from llm_flywheel.pipeline.served_import import ServedImport


# --- workspace -------------------------------------------------------------------------------------------------------
class Workspace:
    """A workspace folder (blobs + models + reports) and its store: the same one the CLI uses (``--workspace``).

    ``store``: for a new workspace, where its database lives -- ``postgresql://user@host/db`` to share it between
    machines (default ``<path>/flywheel.db``, or ``$FLYWHEEL_STORE``); an existing workspace keeps its own.
    """

    def __init__(self, path: str | Path = "flywheel-workspace", *, create: bool = True, store: str | None = None) -> None:
        from llm_flywheel.store.records import StoreError
        from llm_flywheel.store.workspace import Workspace as _Ws

        try:
            self._ws = _Ws.open(path, create=create, store=store)
        except (FileNotFoundError, StoreError) as e:
            raise InputError(str(e)) from e
        self.path: Path = self._ws.root

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r})"

    def datasets(self) -> list[str]:
        with self._ws.store(readonly=True) as s:
            return s.dataset_names()

    def dataset(self, name: str) -> "Dataset":
        names = self.datasets()
        if name not in names:
            raise InputError(f"no dataset {name!r} in {self.path} (have: {', '.join(names) or 'none'}); "
                             "add one with ws.add_dataset(...) or ws.add_items(...)")
        return Dataset(self, name)

    def add_dataset(self, adapter: str, path: str | Path | None = None, *, task: str | Path | None = None,
                    name: str | None = None, val: float | int | None = None,
                    calib: float | int | None = None,
                    stream: float | int = 0.2, test: float | int = 0.2, seed: int = 0, progress: bool = True,
                    **options: Any) -> "Dataset":
        """Import files with an adapter (``text``, ``tabular``, ``image-folder``, ``fashion-mnist``, ``cifar5``) and
        make its splits, exactly like ``flywheel data add`` (val/calib None: 5 %, more for a small dataset).
        Re-running adds nothing.  ``progress``: as on every long call, plain lines on stderr (what a notebook
        shows), a bar on a terminal, and then how the file was read (``flywheel data add``'s notes: its
        delimiter or encoding when guessed, the columns used); False is silent.  Rows or files that could not be
        read are a :class:`FlywheelWarning`; the whole report is ``ds.last_import``.  ``options`` as the command's
        flags: ``text_column`` (a name, ``"a,b"`` or a list), ``label_column``, ``split_column``, ``features``,
        ``sheet``; for an image folder ``labels`` (a table of file names and labels) and ``file_column``."""
        from llm_flywheel.data.registry import add_dataset

        with translate_errors():
            try:
                rep = add_dataset(self._ws, adapter, path=path, task=task, as_name=name, val=val, calib=calib,
                                  stream=stream, test=test, seed=seed, progress=progress, **options)
            except ValueError as e:
                raise InputError(str(e)) from e
        if progress:
            for note in [f"{rep.dataset}: {rep.added:,} added, {rep.already_present:,} already present", *rep.notes]:
                print(f"note: {note}", file=sys.stderr)
        if rep.skipped:
            warnings.warn(FlywheelWarning(f"{rep.skipped:,} unreadable rows or files were skipped (first: "
                                          f"{'; '.join(rep.skipped_examples)}); fix them and add the file again "
                                          "(rows already imported are not added twice)"), stacklevel=2)
        ds = Dataset(self, rep.dataset)
        ds.last_import = rep
        return ds

    def add_items(self, name: str, items: Sequence[Any], *, labels: Mapping[str, str] | Sequence[str],
                  gold: Sequence[str | None] | None = None, instructions: str = "", modality: str | None = None,
                  val: float | int | None = None, calib: float | int | None = None, stream: float | int = 0.2,
                  test: float | int | None = None, seed: int = 0) -> "Dataset":
        """Add in-memory items (texts, rows of numbers -- a DataFrame's column names then reach the teacher's prompt
        --, or PIL images / uint8 arrays) as dataset ``name``.

        ``labels``: ``{name: description}`` (descriptions are what the teacher reads) or a list of names.
        ``gold``: known correct labels, kept for measurement only (the teacher never sees them; the simulated
        teacher answers from them).  Identical items are stored once.  Split sizes as :meth:`add_dataset` and
        ``flywheel data add``: val/calib None is 5 % (more for a small dataset), a stream split for the wheel's
        served traffic, and ``test`` None is 20 % when ``gold`` is given (what accuracy is measured on), else none.
        """
        from llm_flywheel.core.task import Task

        descriptions = dict(labels) if isinstance(labels, Mapping) else {str(k): str(k).replace("_", " ") for k in labels}
        items = read_paths(items)  # files as paths: their pictures' bytes, their documents' text
        modality = modality or infer_modality(items)
        items, columns, categorical = dataframe_rows(items)
        with translate_errors():
            try:
                task = Task(name=name, modality=modality, labels=tuple(descriptions), descriptions=descriptions,
                            instructions=instructions, features=columns if modality == "tabular" else (),
                            categorical=categorical if modality == "tabular" else ())
            except ValueError as e:
                raise InputError(str(e)) from e
        bad = sorted({str(g) for g in (gold or []) if g is not None and g not in task.labels})
        if bad:
            raise InputError(f"gold labels {bad[:5]} are not among the labels {list(task.labels)}")
        if name in self.datasets():
            old = Dataset(self, name).task
            if (old.labels, old.modality) != (task.labels, task.modality):
                raise InputError(f"dataset {name!r} already exists with {old.modality} labels {list(old.labels)}; "
                                 "use the same labels to add items to it, or another name")
            if old.features and (old.features, old.categorical) != (task.features, task.categorical):
                raise InputError(f"dataset {name!r} holds rows of the columns {list(old.features)}; these rows have "
                                 f"{list(task.features)}: add rows with the same columns, or use another name")
        register_items(self._ws, task, items, gold=gold)
        if test is None:
            test = _auto_test(gold is not None and any(g is not None for g in gold))
        make_splits_once(self._ws, name, val=val, calib=calib, stream=stream, test=test, seed=seed)
        return Dataset(self, name)


def _auto_test(has_gold: bool) -> float:
    """The test share of in-memory items: ``flywheel data add``'s where gold labels give accuracy something to be
    measured against, none where nothing could be measured on it."""
    from llm_flywheel.core.splits import SplitSpec

    return SplitSpec().test if has_gold else 0.0


# --- dataset ---------------------------------------------------------------------------------------------------------
class Dataset:
    """One dataset of a workspace: label it, train on it, turn the wheel on it."""

    def __init__(self, workspace: Workspace, name: str) -> None:
        self.workspace, self.name = workspace, name
        self.last_import: Any = None  # the data.ImportReport of the add_dataset call that returned it
        from llm_flywheel.core.task import Task

        with workspace._ws.store(readonly=True) as s:
            self.task = Task.from_json(s.dataset_task_json(name))

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, {self.task.modality}, labels={list(self.task.labels)})"

    @property
    def labels(self) -> tuple[str, ...]:
        return self.task.labels

    @property
    def modality(self) -> str:
        return self.task.modality

    def simulated_teacher(self, *, accuracy: float = 0.85, seed: int = 0, latency_ms: float = 0.0,
                          rate_429: float = 0.0, malformed_rate: float = 0.0) -> "SimulatedTeacher":
        """A SIMULATED teacher on 127.0.0.1 answering from this dataset's gold labels through an error model
        (``accuracy`` is a parameter, not a finding): for demos and tests without an API key.  Use it in a ``with``
        block or call ``.close()``."""
        from llm_flywheel.teachers.simulated import SimConfig
        from llm_flywheel.interfaces.api.simulate import start_simulated

        cfg = SimConfig(accuracy=accuracy, seed=seed, latency_ms=latency_ms, rate_429=rate_429,
                        malformed_rate=malformed_rate)
        try:
            return start_simulated(self.workspace._ws, self.name, cfg, contextlib.ExitStack())
        except ValueError as e:
            raise InputError(f"{e}; import the dataset with a label column (gold labels) to simulate a teacher") from e

    def resplit(self, *, val: float | int | None = None, calib: float | int | None = None,
                stream: float | int = 0.2, test: float | int | None = None, seed: int = 0) -> dict[str, int]:
        """Make the splits again with other sizes (``flywheel data add ... --resplit``), e.g. a larger calib split
        when a warning asks for one; refused once the dataset has labels or models.  ``test`` None: 20 % when the
        items have gold labels, else none (as :meth:`Workspace.add_items`); a source's own test split stays test.
        Returns the new counts."""
        from llm_flywheel.data.registry import check_resplit_allowed
        from llm_flywheel.pipeline.splits import SplitSpec, make_splits

        with translate_errors(), self.workspace._ws.store() as s:
            try:
                check_resplit_allowed(s, self.name)
                if test is None:
                    test = _auto_test(any(g is not None for g in s.gold_by_hash(self.name).values()))
                make_splits(s, self.name, SplitSpec(val=val, calib=calib, stream=stream, test=test, seed=seed),
                            force=True)
            except ValueError as e:
                raise InputError(str(e)) from e
        return self.splits()

    def add_served(self, teacher: Teacher | str | None = None, *, deferred_only: bool = False,
                   limit: int | None = None, progress: bool = False) -> "ServedImport":
        """Bring what ``flywheel serve`` answered for this dataset back into it: the inputs the service kept join
        the train split, and with ``teacher`` (the one serving used) the answers serving bought become their
        labels (stored as labelling's first pass, so nothing is bought twice).  ``deferred_only``: only the inputs
        the cascade deferred; ``limit``: at most this many new inputs (deferred first, then the most requested).
        Calls no teacher; a re-run adds only what is new.  ``run(teacher, add_served="all")`` does this first.
        Returns a :class:`~llm_flywheel.pipeline.served_import.ServedImport`."""
        from llm_flywheel.pipeline.served_import import import_served

        built = as_teacher(teacher).build(self.task, self.workspace._ws) if teacher is not None else None
        with translate_errors():
            return import_served(self.workspace._ws, self.name, built, deferred_only=deferred_only, limit=limit,
                                 progress=progress)

    def splits(self) -> dict[str, int]:
        """Items per split (train / val / calib / stream / test)."""
        from llm_flywheel.pipeline.splits import split_counts

        with self.workspace._ws.store(readonly=True) as s:
            return {k: v for k, v in split_counts(s, self.name).items() if k}

    def _item_ids(self, split: str | Sequence[str] | None, limit: int | None) -> list[int]:
        with self.workspace._ws.store(readonly=True) as s:
            items = s.items(self.name, split=None if split in (None, "all") else split, limit=limit)
        if not items:
            raise InputError(f"no items in {self.name!r} split {split!r} (splits: {self.splits()})")
        return [it.id for it in items]

    def _label_args(self, teacher: Teacher | str, split: Any, limit: int | None, **cfg: Any) -> tuple[Any, ...]:
        from llm_flywheel.pipeline.labeling import LabelConfig

        t = as_teacher(teacher)
        ids = self._item_ids(split, limit)
        try:
            config = LabelConfig(**cfg)
        except ValueError as e:
            raise InputError(str(e)) from e
        return ids, t.build(self.task, self.workspace._ws), config

    def plan(self, teacher: Teacher | str, *, split: str | Sequence[str] | None = ("train", "val", "calib"),
             limit: int | None = None, passes: int = 2, budget_usd: float | None = None,
             max_calls: int | None = None, tie_break: bool = True, adaptive: bool = True) -> LabelPlan:
        """What :meth:`label` with the same arguments would cost, without making a call (with ``adaptive``,
        ``calls_needed`` is the fixed-k upper bound), online and through the Batch API (``est_cost_batch_usd``)."""
        from llm_flywheel.pipeline.batch_plan import plan_both

        ids, built, cfg = self._label_args(teacher, split, limit, passes=passes, budget_usd=budget_usd,
                                           max_calls=max_calls, tie_break=tie_break, adaptive_passes=adaptive)
        with translate_errors():
            try:
                return LabelPlan.from_plan(plan_both(self.workspace._ws, self.name, ids, built, cfg))
            except ValueError as e:
                raise InputError(str(e)) from e

    def label(self, teacher: Teacher | str, *, split: str | Sequence[str] | None = ("train", "val", "calib"),
              limit: int | None = None, passes: int = 2, budget_usd: float | None = None,
              max_calls: int | None = None, concurrency: int = 16, tie_break: bool = True,
              adaptive: bool = True, batch: bool = False, batch_price_ratio: float = 0.5,
              batch_wait_s: float | None = None, batch_poll_s: float = 30.0, progress: bool = True) -> LabelReport:
        """Ask the teacher for labels (``passes`` diverse passes + a tie-break where they disagree), caching every
        answer before it is used: re-running costs nothing, a killed run resumes, ``budget_usd`` is never exceeded.
        Default: the train, val and calib splits (the test split stays for measurement).  ``adaptive`` (for
        ``passes >= 2``): every pass for a calibration sample, then later passes only where the first answer is
        less certain than a cutoff learnt from that sample; ``adaptive=False`` asks every item ``passes`` times.
        ``batch=True``: the same requests through the provider's Batch API, billed at about ``batch_price_ratio`` of
        the online price and answered within 24 h, its status polled every ``batch_poll_s``; ``batch_wait_s`` stops
        waiting (the batch keeps running:
        ``report.batches_pending``, and the next call collects it without submitting it again)."""
        from llm_flywheel.pipeline.batch_labeling import BatchConfig, label_items_batch
        from llm_flywheel.pipeline.labeling import label_items

        ids, built, cfg = self._label_args(teacher, split, limit, passes=passes, concurrency=concurrency,
                                           budget_usd=budget_usd, max_calls=max_calls, tie_break=tie_break,
                                           adaptive_passes=adaptive)
        with translate_errors():
            if batch:
                try:
                    bcfg = BatchConfig(price_ratio=batch_price_ratio, wait_s=batch_wait_s, poll_s=batch_poll_s)
                except ValueError as e:
                    raise InputError(str(e)) from e
                res = label_items_batch(self.workspace._ws, self.name, ids, built, cfg, bcfg, progress=progress)
            else:
                res = label_items(self.workspace._ws, self.name, ids, built, cfg, progress=progress)
        report = LabelReport.from_result(self.name, res)
        report.warn()  # shown where the notebook called label()
        return report

    def cancel_batches(self, teacher: Teacher | str, *, wait_s: float = 600.0, progress: bool = True) -> LabelReport:
        """Cancel this teacher's Batch API jobs still running: the answers they had finished are stored (they are
        billed), the rest is asked by the next :meth:`label` (online, or ``batch=True`` again).  For labels now
        instead of within 24 h; ``report.batches_pending``: still cancelling after ``wait_s`` (call again)."""
        from llm_flywheel.pipeline.batch_cancel import cancel_open_batches
        from llm_flywheel.teachers.batch import BatchAPIError

        built = as_teacher(teacher).build(self.task, self.workspace._ws)
        with translate_errors():
            try:
                res = cancel_open_batches(self.workspace._ws, self.name, built, wait_s=wait_s, progress=progress)
            except BatchAPIError as e:
                raise TeacherError(f"could not cancel the open batches at {built.base_url}: {e}") from e
        return LabelReport.from_result(self.name, res)

    def train(self, kind: str | None = None, *, seed: int = 0, epochs: int | None = None, soft: bool = True,
              progress: bool = True, **hparams: Any) -> "Model":
        """Train a student (``text-minilm``, ``text-tfidf``, ``tabular-hgb``, ``image-cnn``, ``efficientnet-lite0``,
        ``image-pair``; default per modality and label count) on the labelled train split; returns the new model
        version.  ``unlabelled=2``: self-training on twice as many unlabelled train items (kept only if val prefers
        it); image students take ``tta=True/False`` to force mirror averaging (default: decided on val where the
        task allows mirrors)."""
        from llm_flywheel.pipeline.training import train_student

        with translate_errors():
            try:
                tm = train_student(self.workspace._ws, self.name, kind=kind, seed=seed, epochs=epochs, soft=soft,
                                   progress=progress, **hparams)
            except ValueError as e:
                raise InputError(str(e)) from e
        return Model(self, tm.version)

    def model(self, version: str | None = None) -> "Model":
        """A trained model by version; default: the promoted one, else the newest."""
        from llm_flywheel.pipeline.training import latest_version

        with translate_errors(), self.workspace._ws.store(readonly=True) as s:
            return Model(self, version or latest_version(s, self.name))

    def models(self) -> list["ModelInfo"]:
        """The dataset's model versions, newest first: what each was trained on, its latest calibration, and which
        one serves (``serving``; :class:`~llm_flywheel.pipeline.model_list.ModelInfo`)."""
        from llm_flywheel.pipeline.model_list import list_models

        with translate_errors():
            return list_models(self.workspace._ws, self.name)

    def prune_models(self, *, keep: int = 3) -> "PruneResult":
        """Delete the files of the model versions nothing needs (rows, metrics and calibrations stay): kept are the
        serving one, the newest ``keep`` students, the newest reference and any of an unfinished wheel run."""
        from llm_flywheel.pipeline.model_list import prune_models

        with translate_errors():
            return prune_models(self.workspace._ws, self.name, keep=keep)

    def run(self, teacher: Teacher | str, *, rounds: int = 3, target_accuracy: float | None = None,
            max_teacher_fraction: float | None = None, progress: bool = True, **options: Any) -> RunReport:
        """Turn the wheel ``rounds`` times (select -> label -> train -> calibrate -> promote -> serve the stream ->
        feedback).  Give a cascade goal: ``target_accuracy`` and/or ``max_teacher_fraction`` (default 0.1).
        ``options`` are ``WheelConfig`` fields (``seed_labels``, ``per_round_budget``, ``policy``, ...;
        ``add_served="all"`` or ``"deferred"`` first imports what ``flywheel serve`` kept, as :meth:`add_served`
        with this teacher; ``first_round="random"`` keeps round 1's random share where a serving student would
        choose its new items; ``teacher_parity=True, parity_reference="review", reviewer=fn``: ``fn(items)`` returns
        ``{item id: label}`` for the calib disagreements parity needs a person for).  A re-run with the same settings
        resumes the unfinished run."""
        from llm_flywheel.pipeline.flywheel import run_wheel
        from llm_flywheel.pipeline.wheel_config import WheelStopped

        t = as_teacher(teacher)
        if target_accuracy is None and max_teacher_fraction is None:
            max_teacher_fraction = 0.1
        with translate_errors():
            try:
                res = run_wheel(self.workspace._ws, self.name, teacher=t.build(self.task, self.workspace._ws),
                                rounds=rounds, target_accuracy=target_accuracy,
                                max_teacher_fraction=max_teacher_fraction, progress=progress, **options)
            except WheelStopped as e:
                if getattr(e, "kind", "") == "busy":  # nothing of this call's was run, so nothing to resume
                    raise FlywheelError(str(e)) from e
                kind = TeacherError if getattr(e, "kind", "") == "teacher" else NotReadyError
                raise kind(f"{e} (everything paid for is stored: fix the cause and call run() again to resume)") from e
            except (TypeError, ValueError) as e:
                raise InputError(str(e)) from e
        report = RunReport.from_wheel(res)
        report.warn(stacklevel=2)  # where the user called run()
        return report
