"""The public Python API: ``import llm_flywheel as fw``.

    ws = fw.Workspace("ws")
    ds = ws.add_dataset("text", "tickets.csv", task="tickets.toml")
    rep = ds.label(fw.teacher("openrouter:google/gemini-2.5-flash"), budget_usd=5)     # LabelReport
    model = ds.train("text-minilm")                                                    # Model
    cascade = model.calibrate(max_teacher_fraction=0.1, teacher=...)                   # Cascade
    cascade.predict(["my printer is on fire"])                                         # [Answer, ...]

and, for Python objects without files, ``fw.DistilledClassifier`` (scikit-learn compatible).
"""

from __future__ import annotations

from llm_flywheel.interfaces.api.inputs import Teacher, teacher
from llm_flywheel.interfaces.api.results import (Answer, Calibration, ClassMetrics, Evaluation, FlywheelError,
                                                 FlywheelWarning, InputError, LabelPlan, LabelReport, NotReadyError,
                                                 RoundReport, RunReport, RunWarning, TeacherError)
from llm_flywheel.interfaces.api.simulate import SimulatedTeacher, simulated_teacher
from llm_flywheel.interfaces.api.model import Cascade, Model
from llm_flywheel.interfaces.api.workspace import Dataset, Workspace

__all__ = [
    "Answer", "Calibration", "Cascade", "ClassMetrics", "Dataset", "DistilledClassifier", "Evaluation",
    "FlywheelError", "FlywheelWarning", "InputError", "LabelPlan", "LabelReport", "Model", "NotReadyError",
    "RoundReport", "RunReport", "RunWarning", "ServedImport",
    "SimulatedTeacher", "Teacher", "TeacherError", "Workspace", "simulated_teacher", "teacher",
]


def __getattr__(name: str) -> object:
    if name == "DistilledClassifier":  # imports scikit-learn: only when asked for
        from llm_flywheel.interfaces.api.estimator import DistilledClassifier

        return DistilledClassifier
    if name == "ServedImport":  # Dataset.add_served's result (its module imports the data adapters' base)
        from llm_flywheel.pipeline.served_import import ServedImport

        return ServedImport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
