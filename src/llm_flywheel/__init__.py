"""llm-flywheel: an LLM teaches, a small student learns, a calibrated cascade serves, feedback turns the wheel.

The public Python API (``import llm_flywheel as fw``; see the README's "Python" section)::

    ws = fw.Workspace("ws")                                   # a workspace folder, the same the CLI uses
    ds = ws.add_dataset("text", "tickets.csv", task="tickets.toml")
    report = ds.label(fw.teacher("openrouter:google/gemini-2.5-flash"), budget_usd=5)
    cascade = ds.train("text-minilm").calibrate(max_teacher_fraction=0.1)
    fw.DistilledClassifier(teacher=..., labels={...}).fit(texts).predict(texts)

Names are imported on first use, so ``import llm_flywheel`` stays fast (no numpy, torch or scikit-learn).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llm_flywheel._version import __version__

_API = (
    "Answer", "Calibration", "Cascade", "ClassMetrics", "Dataset", "DistilledClassifier", "Evaluation",
    "FlywheelError", "FlywheelWarning", "InputError", "LabelPlan", "LabelReport", "Model", "NotReadyError",
    "RoundReport", "RunReport", "RunWarning", "ServedImport", "SimulatedTeacher", "Teacher", "TeacherError",
    "Workspace", "simulated_teacher", "teacher",
)
__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # for editors and type checkers
    from llm_flywheel.interfaces.api import (Answer, Calibration, Cascade, ClassMetrics, Dataset, Evaluation,
                      FlywheelError, FlywheelWarning, InputError, LabelPlan, LabelReport, Model, NotReadyError,
                      RoundReport, RunReport, RunWarning, SimulatedTeacher, Teacher, TeacherError, Workspace,
                      simulated_teacher, teacher)
    from llm_flywheel.interfaces.api.estimator import DistilledClassifier
    from llm_flywheel.pipeline.served_import import ServedImport


def __getattr__(name: str) -> Any:
    if name in _API:
        from llm_flywheel.interfaces import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llm_flywheel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
