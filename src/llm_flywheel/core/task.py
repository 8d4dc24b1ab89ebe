"""Task definitions: what the teacher is asked and what the student predicts.

A task is a small TOML file so that a user can version it beside their data::

    name = "fashion-mnist"
    modality = "image"                 # image | text | tabular
    instructions = "Classify the clothing item in this 28x28 grayscale photo."

    [labels]
    t_shirt_top = "T-shirt or top: short-sleeved upper-body garment"
    trouser = "Trousers: two separate legs"

    [prices]                           # optional, USD per 1M tokens, used when the provider reports no cost
    input_per_mtok = 0.30
    output_per_mtok = 2.50

    [augment]                          # optional, image tasks: how training images may be varied
    flip = true                        # horizontal mirror (default false: wrong for digits, text, handedness)
    rotate = 5                         # degrees, +-

Augmentation is declared by the task because only the task knows what keeps a label true: a mirrored shirt is
still a shirt, a mirrored "7" is not a digit.  Defaults are modality-appropriate and conservative
(:data:`DEFAULT_AUGMENT`: small zoom/shift/brightness, no flips, no rotation).

Label *names* are what the student predicts and what goes in the store; descriptions help the teacher.
"""

from __future__ import annotations

import json
import re
import unicodedata
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

MODALITIES = ("image", "text", "tabular")

DEFAULT_AUGMENT: dict[str, dict[str, Any]] = {
    "image": {"flip": False, "vflip": False, "rotate": 0.0, "shift": 0.1, "zoom": 0.1, "color": 0.15},
}
"""Training-time augmentation per modality; a task's ``[augment]`` table overrides single keys.
flip/vflip: random horizontal/vertical mirror; rotate: max degrees either way; shift: max fraction of the side;
zoom: max crop-in fraction of the side; color: max relative brightness/contrast change.  Text and tabular: none."""

_AUGMENT_LIMITS = {"rotate": (0.0, 180.0), "shift": (0.0, 0.5), "zoom": (0.0, 0.5), "color": (0.0, 1.0)}
def _word(ch: str) -> bool:
    """A letter, a combining mark or a digit of any script (Unicode categories L, M, N): what a label is made of.
    Why not ``[a-z0-9]``: a Chinese, Greek or Hindi label ("打印机", "ψυχή", "हिन्दी") has no ASCII letter and was
    dropped whole -- a CSV labelled in its own language read as unlabelled."""
    return unicodedata.category(ch)[0] in "LMN"


def normalise_label(name: str) -> str:
    """Folder names / label cells -> the task's label form: ``"Sweet Pepper"`` -> ``sweet_pepper``, ``"打印机"``
    -> ``打印机``: lower case (NFC), every run of other characters one ``_``."""
    text = unicodedata.normalize("NFC", name.strip().lower())  # "é" typed as one character or as e + accent
    return "_".join("".join(ch if _word(ch) else " " for ch in text).split())


_ID_LABEL = re.compile(r"^(?:(?:label|class|cat|category|type|c|l)_?)?\d+$")  # 0, 1, label_1, class_3


def unreadable_labels(task: "Task") -> list[str]:
    """The task's labels when every one is only an id -- ``0``/``1``, ``label_1`` -- and is described by nothing
    more (the description is the name): a teacher reading them cannot know what they mean and would be paid to
    guess.  Datasets exported with integer class ids (Hugging Face's ``ClassLabel``) arrive like this.  Empty
    when any label carries a word."""
    def bare(lab: str) -> bool:
        desc = normalise_label(str(task.descriptions.get(lab) or lab))
        return bool(_ID_LABEL.match(lab)) and (desc == lab or bool(_ID_LABEL.match(desc)))

    return list(task.labels) if task.labels and all(bare(lab) for lab in task.labels) else []


def valid_label(lab: str) -> bool:
    """Letters, marks, digits and ``_``, in lower case, starting with a letter or digit (as :func:`normalise_label`
    writes them; ``[a-z0-9][a-z0-9_]*`` for ASCII, as before)."""
    return (bool(lab) and unicodedata.category(lab[0])[0] in "LN" and lab == lab.lower()
            and all(ch == "_" or _word(ch) for ch in lab))


class TaskError(ValueError):
    """A task file that cannot be used; the message says which field and why."""


@dataclass(frozen=True)
class Task:
    name: str
    modality: str
    labels: tuple[str, ...]
    descriptions: dict[str, str] = field(default_factory=dict)
    instructions: str = ""
    input_per_mtok: float | None = None
    output_per_mtok: float | None = None
    augment: dict[str, Any] = field(default_factory=dict, hash=False)  # the task's [augment] table as declared
    # A table's feature columns, in the order of every item's values: the teacher is told what the numbers are
    # (an LLM cannot label "[14.2, 1.7, ...]" without names).  Empty: not known (in-memory rows, older datasets).
    features: tuple[str, ...] = ()
    # Those of ``features`` whose values are categories (strings: a plan, a country), not numbers.
    categorical: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate(self)

    def augmentation(self) -> dict[str, Any]:
        """The augmentation to train with: the modality's defaults, overridden by the task's ``[augment]``."""
        return {**DEFAULT_AUGMENT.get(self.modality, {}), **self.augment}

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        return self.labels.index(label)

    def to_json(self) -> str:
        d = asdict(self)
        d["labels"] = list(self.labels)
        for key in ("features", "categorical"):
            if getattr(self, key):
                d[key] = list(getattr(self, key))
            else:
                del d[key]  # a task without them is stored exactly as before they existed
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Task":
        d = json.loads(text)
        d["labels"] = tuple(d["labels"])
        d["features"] = tuple(d.get("features") or ())
        d["categorical"] = tuple(d.get("categorical") or ())
        return cls(**d)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, origin: str = "task") -> "Task":
        unknown = set(d) - {"name", "modality", "instructions", "labels", "prices", "augment"}
        if unknown:
            raise TaskError(f"{origin}: unknown key(s) {sorted(unknown)}; allowed: name, modality, instructions, labels, "
                            f"prices, augment")
        for key in ("name", "modality", "labels"):
            if key not in d:
                raise TaskError(f"{origin}: missing required key {key!r}")
        labels = d["labels"]
        if isinstance(labels, list):
            dup = sorted({str(k) for k in labels if labels.count(k) > 1})
            if dup:
                raise TaskError(f"{origin}: duplicate label(s) {dup}; labels must be unique")
            descriptions = {str(k): str(k).replace("_", " ") for k in labels}
        elif isinstance(labels, dict):
            descriptions = {str(k): str(v) for k, v in labels.items()}
        else:
            raise TaskError(f"{origin}: 'labels' must be a table of label = \"description\" or a list of names")
        prices = d.get("prices", {}) or {}
        if not isinstance(prices, dict) or set(prices) - {"input_per_mtok", "output_per_mtok"}:
            raise TaskError(f"{origin}: [prices] takes input_per_mtok and output_per_mtok (USD per million tokens)")
        try:
            return cls(
                name=str(d["name"]),
                modality=str(d["modality"]),
                labels=tuple(descriptions),
                descriptions=descriptions,
                instructions=str(d.get("instructions", "")),
                input_per_mtok=_opt_float(prices.get("input_per_mtok")),
                output_per_mtok=_opt_float(prices.get("output_per_mtok")),
                augment=dict(d.get("augment") or {}),
            )
        except TaskError as e:
            raise TaskError(f"{origin}: {e}") from None


def _opt_float(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TaskError(f"price {v!r} is not a number") from None
    if f < 0:
        raise TaskError(f"price {v!r} is negative")
    return f


def _validate(t: Task) -> None:
    if not t.name or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", t.name):
        raise TaskError(f"name {t.name!r}: use letters, digits, '-', '_' or '.'")
    if t.modality not in MODALITIES:
        raise TaskError(f"modality {t.modality!r}: must be one of {', '.join(MODALITIES)}")
    if len(t.labels) < 2:
        raise TaskError(f"needs at least 2 labels, got {len(t.labels)}")
    if len(set(t.labels)) != len(t.labels):
        raise TaskError("labels must be unique")
    for lab in t.labels:
        if not valid_label(lab):
            slug = normalise_label(str(lab))  # what image folders and label columns map names to
            raise TaskError(f"label {lab!r}: use lower-case letters, digits and '_' (e.g. "
                            f"{slug if valid_label(slug) else 'sweet_pepper'!r}); the description can keep the "
                            "wording the teacher should read")
    _validate_augment(t.modality, t.augment)
    if t.features and t.modality != "tabular":
        raise TaskError(f"feature names are for tabular tasks, not {t.modality}")
    if set(t.categorical) - set(t.features):
        raise TaskError(f"categorical column(s) {sorted(set(t.categorical) - set(t.features))} are not among the "
                        f"features {list(t.features)}")


def _validate_augment(modality: str, aug: Any) -> None:
    if not isinstance(aug, dict):
        raise TaskError("[augment] must be a table, e.g. [augment] flip = false, rotate = 5")
    if not aug:
        return
    allowed = DEFAULT_AUGMENT.get(modality)
    if allowed is None:
        raise TaskError(f"[augment]: {modality} tasks take no augmentation (image tasks only)")
    unknown = set(aug) - set(allowed)
    if unknown:
        raise TaskError(f"[augment]: unknown key(s) {sorted(unknown)}; allowed: {', '.join(allowed)}")
    for k, v in aug.items():
        if isinstance(allowed[k], bool):
            if not isinstance(v, bool):
                raise TaskError(f"[augment] {k} = {v!r}: use true or false")
        else:
            lo, hi = _AUGMENT_LIMITS[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= float(v) <= hi:
                raise TaskError(f"[augment] {k} = {v!r}: a number from {lo:g} to {hi:g}")


def load_task(path: str | Path) -> Task:
    """Load and validate a task TOML file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskError(f"task file {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise TaskError(f"{p}: not valid TOML: {e}") from None
    return Task.from_dict(data, origin=str(p))


def builtin_task(name: str) -> Task:
    """Built-in tasks shipped in ``llm_flywheel/tasks/<name>.toml``."""
    try:
        text = resources.files("llm_flywheel").joinpath("tasks", f"{name}.toml").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskError(f"no built-in task {name!r}; built-ins: {', '.join(builtin_task_names())}") from None
    return Task.from_dict(tomllib.loads(text), origin=f"built-in task {name}")


def builtin_task_names() -> list[str]:
    folder = resources.files("llm_flywheel").joinpath("tasks")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))
