"""The wheel's settings: :class:`WheelConfig`, the sizing rule for sizes left out, and the checks that warn where a
given size does not fit the dataset.

Why apart from the loop: sizing is pure arithmetic on split counts, testable without a store or a teacher, and the
settings are what a resumed run must match.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from llm_flywheel.core.cost import DEFAULT_CPU_USD_PER_HOUR
from llm_flywheel.core.splits import AUTO_FLOOR
from llm_flywheel.core.thresholds import min_calib_to_defer
from llm_flywheel.pipeline.feedback import POLICIES

DEFAULT_MAX_TEACHER_FRACTION = 0.1
"""The default cascade goal: at most 10 % of items go to the teacher.  A budget is always feasible; an accuracy
target measured against teacher labels is not (it cannot exceed the teacher's own accuracy)."""

AUTO_SHARE_CAP = 500  # items: the most the sizing rule labels in one share (seed set, one round's selection)
AUTO_STREAM_CAP = 1000  # items: the most the sizing rule serves from the stream per round
SMALL_CALIB = AUTO_FLOOR["calib"]  # fewer calib items than this: the threshold rests on little evidence (a warning)


def auto_sizes(n_train: int, n_stream: int, rounds: int, passes: int) -> dict[str, int]:
    """The sizes the wheel uses when they are not given -- derived from the dataset, never assumed big.

    The rule: the train pool is cut into ``rounds + 1`` equal shares; round 1 labels one share at random (at most
    500 items) and every later round selects one share (at most 500 items, ``x passes`` teacher calls), so the
    pool is never used up before the last round and one share stays unlabelled for selection to choose from.  The
    stream split is divided evenly over the rounds (at most 1,000 items per round), so every round serves new
    traffic and the last round's teacher fraction -- what the cost model uses -- is always measured.
    """
    share = min(AUTO_SHARE_CAP, max(1, n_train // (rounds + 1)))
    return {"seed_labels": share, "per_round_budget": share * passes,
            "stream_per_round": min(AUTO_STREAM_CAP, n_stream // max(rounds, 1))}


FIRST_ROUND = ("auto", "random")
"""How round 1 picks its ``seed_labels`` train items.  ``random``: a seeded random share (a dataset's first run has
no student to choose with).  ``auto``: the same, unless the dataset already has a serving student (an earlier run,
or ``flywheel train`` + ``promote``); then that student chooses by ``policy``, as every later round does -- a re-run
(the nightly job) buys the items the deployed model is least sure about instead of a random share."""


class WheelStopped(RuntimeError):
    """The wheel stopped on a known condition; ``kind``: 'teacher' (a fatal teacher error), 'budget' (a cap was
    reached), 'no_labels' (nothing to train on) or 'busy' (another wheel is turning on the dataset).  Everything
    paid for is stored: fix the cause and re-run -- the round resumes from the stage that stopped."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class WheelConfig:
    """Knobs of one wheel run.  Sizes are item counts; ``None`` for val/calib/test means the whole split, and for
    ``seed_labels``, ``per_round_budget`` and ``stream_per_round`` the sizing rule of :func:`auto_sizes`."""

    rounds: int = 3
    seed_labels: int | None = None  # random items of the train pool labelled in round 1 (None: auto_sizes)
    val_labels: int | None = 500  # at most this many validation items labelled (promotion + early stopping)
    calib_labels: int | None = 1000  # at most this many calibration items labelled (temperature + threshold)
    per_round_budget: int | None = None  # teacher calls on actively selected items per round >= 2 (None: auto_sizes)
    passes: int = 2  # teacher passes per labelled training item (consensus)
    adaptive_passes: bool = True  # later passes only where the first is unsure (False: every item asked `passes` times)
    student_hints: bool = True  # ... judged also by the promoted student's agreement with pass 0 (label_adaptive)
    batch: bool = False  # label through the provider's Batch API at its batch price (stream deferrals stay online)
    batch_poll_s: float = 30.0  # seconds between batch status polls
    policy: str = "margin"  # margin | entropy | qbc | random
    first_round: str = "auto"  # auto: round 1 selects by `policy` when the dataset already has a serving student
    committee: int = 3  # model versions in the query-by-committee
    candidate_pool: int | None = 20000  # unlabelled items scored per selection (a random sample of the pool)
    stream_per_round: int | None = None  # unseen stream items served through the cascade per round (None: auto_sizes)
    test_limit: int | None = None  # test items measured (None = all)
    student_kind: str | None = None
    epochs: int | None = None
    unlabelled: float = 0.0  # self-training: unlabelled train items per labelled one (0: off; see train_student)
    student_hparams: dict[str, Any] = field(default_factory=dict)  # passed to the student (e.g. {"width": 16})
    target_accuracy: float | None = None  # threshold goal: accuracy on accepted items ...
    max_teacher_fraction: float | None = None  # ... and/or a teacher budget
    teacher_parity: bool = False  # ... and/or cascade accuracy no lower than the teacher's single call (guaranteed)
    parity_reference: str = "labels"  # who judges parity: "labels" (the teacher's pass 1) or "review" (a person, on
    #                                   the calib items where the student and pass 0 disagree; see calib_inputs)
    delta: float = 0.1
    audit_rate: float = 0.03
    concurrency: int = 16
    seed: int = 0
    cpu_usd_per_hour: float = DEFAULT_CPU_USD_PER_HOUR
    teacher_usd_per_hour: float | None = None  # price of the teacher's machine when it reports no token price
    gold_ceiling: bool = True  # train the same student on the same items with gold labels at the end
    add_served: str | None = None  # first import what `flywheel serve` kept: "all" or "deferred" (None: only warn)
    add_served_limit: int | None = None  # ... at most this many new inputs per run (None: all)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        if self.passes < 1:
            raise ValueError("passes must be >= 1")
        for name in ("seed_labels", "per_round_budget", "stream_per_round", "unlabelled"):
            if not (getattr(self, name) or 0) >= 0:  # also NaN
                raise ValueError(f"{name} must be >= 0")
        if self.first_round not in FIRST_ROUND:
            raise ValueError(f"first_round {self.first_round!r}: choose one of {', '.join(FIRST_ROUND)}")
        if self.add_served not in (None, "all", "deferred"):
            raise ValueError(f"add_served {self.add_served!r}: choose 'all', 'deferred' or None")
        if self.add_served_limit is not None and self.add_served_limit < 0:
            raise ValueError("add_served_limit must be >= 0")
        if self.parity_reference not in ("labels", "review"):
            raise ValueError(f"parity_reference {self.parity_reference!r}: choose 'labels' or 'review'")
        if self.parity_reference == "review" and not self.teacher_parity:
            raise ValueError("parity_reference='review' judges the teacher-parity goal: add --teacher-parity")
        if self.teacher_parity and self.target_accuracy is not None:
            raise ValueError("give either --target-accuracy or --teacher-parity, not both")
        if self.target_accuracy is None and self.max_teacher_fraction is None and not self.teacher_parity:
            object.__setattr__(self, "max_teacher_fraction", DEFAULT_MAX_TEACHER_FRACTION)

    def resume_key(self) -> dict[str, Any]:
        """The settings that must match for a re-run to continue an unfinished run: all but those that change no
        round (:data:`NOT_BINDING`: rounds may grow or shrink, the end-of-run gold ceiling may be added or skipped,
        polling may be faster, served traffic may be imported first)."""
        return without_unbinding(asdict(self))


NOT_BINDING = ("rounds", "gold_ceiling", "batch_poll_s", "add_served", "add_served_limit", "first_round")


ADDED_LATER: dict[str, Any] = {"unlabelled": 0.0, "student_hints": True, "parity_reference": "labels"}
"""Settings newer than runs already stored: absent from a stored key means this value, so an unfinished run of an
older version still resumes."""


def without_unbinding(key: dict[str, Any]) -> dict[str, Any]:
    """A resume key without the settings a resumed run may change (stored keys of older runs included)."""
    return {k: v for k, v in {**ADDED_LATER, **key}.items() if k not in NOT_BINDING}


def warning(code: str, message: str, fix: str) -> dict[str, str]:
    """A loud warning as stored with the run (terminal summary, report and summary.json show it with its fix)."""
    return {"code": code, "message": message, "fix": fix}


@dataclass
class Sizing:
    """The sizes a run uses (the config with the rule's values filled in) and the warnings they raise."""

    config: WheelConfig
    sizes: dict[str, Any]
    warnings: list[dict[str, str]]


def plan_sizes(cfg: WheelConfig, n: dict[str, int], n_val: int, n_calib: int) -> Sizing:
    """Fill the sizes left to the rule (:func:`auto_sizes`) and warn where a given size does not fit the data.

    ``n``: items per split; ``n_val`` / ``n_calib``: how many of them will be labelled."""
    auto = auto_sizes(n["train"], n["stream"], cfg.rounds, cfg.passes)
    given = {k: getattr(cfg, k) for k in auto}
    cfg = replace(cfg, **{k: v for k, v in auto.items() if given[k] is None})
    sizes = {"splits": n, "auto": sorted(k for k in auto if given[k] is None), "seed_labels": cfg.seed_labels,
             "per_round_budget": cfg.per_round_budget, "stream_per_round": cfg.stream_per_round,
             "val_labels": n_val, "calib_labels": n_calib}
    return Sizing(cfg, sizes, _size_warnings(cfg, n))


def _larger_calib_fix(n: dict[str, int], need: int) -> str:
    """Advice that fits the dataset: a count only when the dataset can give it and keep a train pool (a 311-item
    dataset was told `--calib 400`, which `data add` refuses); for a small one, at least the calib items a teacher
    budget needs to defer anything (``need``; a 150-item dataset was told `--calib 0.25`: 30 items, which defer
    nothing)."""
    total = sum(n.values())
    fits = SMALL_CALIB * 2 <= 0.3 * total  # leaves the other splits most of the data
    quarter = 0.25 * (total - n.get("test", 0))  # `--calib 0.25` is a share of the items outside test
    size = f"{SMALL_CALIB * 2}" if fits else "0.25" if quarter >= need else f"{need}"
    return (f"give the dataset a larger calib split before labelling (`flywheel data add ... --calib {size} --resplit`; "
            f"Python: `ds.resplit(calib={size})`; once it has labels, import it again under a new `--name` with "
            f"that --calib: teacher answers are cached by content, so relabelling it is free)"
            + ("" if fits else f"; with {total} items, more data helps most"))


def _size_warnings(cfg: WheelConfig, n: dict[str, int]) -> list[dict[str, str]]:
    out = []
    if n["calib"] < SMALL_CALIB:
        # the calib items a teacher budget needs to defer anything (the default budget's, under an accuracy goal)
        need = min_calib_to_defer(cfg.max_teacher_fraction or DEFAULT_MAX_TEACHER_FRACTION, cfg.delta)
        never = bool(cfg.max_teacher_fraction and need and n["calib"] < need)
        budget = ("too few for the teacher budget to defer anything: the cascade will not ask the teacher" if never
                  else "the teacher budget is met conservatively")
        out.append(warning("small_calib",
                           f"the calib split has only {n['calib']} items: the threshold rests on little evidence "
                           f"({budget}; an accuracy goal is rarely provable)",
                           _larger_calib_fix(n, need or SMALL_CALIB)))
    for k, split in (("val_labels", "val"), ("calib_labels", "calib")):
        asked = getattr(cfg, k)
        # the defaults (500 / 1,000) are caps that small splits are expected to fall under; a given size is not
        if asked is not None and asked > n[split] and asked != WheelConfig.__dataclass_fields__[k].default:
            flag = f"--{k.replace('_', '-')}"
            out.append(warning(f"capped_{split}", f"{flag} {asked} asked for more items than the {split} split has "
                               f"({n[split]}); using all {n[split]}",
                               f"{flag} {n[split]}, or a larger {split} split (`flywheel data add ... --{split} N`)"))
    need = cfg.rounds * cfg.stream_per_round
    if n["stream"] == 0:
        out.append(warning("no_stream", "the stream split is empty: the cascade serves no traffic, so no teacher "
                           "fraction is measured on new items (cost figures fall back to the test split)",
                           "give the dataset a stream split (`flywheel data add ... --stream 0.2`)"))
    elif need > n["stream"]:
        out.append(warning("stream_short",
                           f"{cfg.rounds} rounds x --stream-per-round {cfg.stream_per_round} need {need:,} stream items "
                           f"but the stream split has {n['stream']:,}: "
                           + _short_rounds(n["stream"], cfg.stream_per_round, cfg.rounds),
                           f"--stream-per-round {n['stream'] // cfg.rounds} (or leave it out: it is derived from the "
                           "dataset)"))
    used = cfg.seed_labels + (cfg.rounds - 1) * (cfg.per_round_budget // cfg.passes)
    if used > n["train"]:
        out.append(warning("pool_short",
                           f"--seed-labels {cfg.seed_labels} + {cfg.rounds - 1} rounds x "
                           f"{cfg.per_round_budget // cfg.passes} selected items need {used:,} train items but the "
                           f"pool has {n['train']:,}: later rounds have nothing left to select",
                           "leave --seed-labels / --per-round-budget out (they are derived from the dataset) or "
                           "give smaller values"))
    return out


def _short_rounds(n_stream: int, per_round: int, rounds: int) -> str:
    """Which rounds a too-large --stream-per-round starves, in words."""
    full, rest = divmod(n_stream, per_round)
    parts = []
    if rest:
        parts.append(f"round {full + 1} serves only {rest}")
        full += 1
    if full < rounds:
        parts.append(f"round{'s' if rounds - full > 1 else ''} {full + 1}{f'-{rounds}' if rounds - full > 1 else ''} "
                     f"serve{'' if rounds - full > 1 else 's'} none (no teacher fraction, no cost figures)")
    return " and ".join(parts)
