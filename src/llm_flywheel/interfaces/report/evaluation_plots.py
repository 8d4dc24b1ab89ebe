"""The PNGs of a student evaluation (confusion matrix, reliability before/after temperature).

Why here and not in the pipeline: ``pipeline.evaluation.evaluate`` returns data; drawing is an interface's job,
so the CLI (and any report) calls :func:`draw_evaluation` on the returned report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llm_flywheel.interfaces.report import plots


def _write(data: bytes, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def draw_evaluation(report: dict[str, Any], out_dir: Path | None = None) -> dict[str, Any]:
    """Write the evaluation's PNGs next to its JSON (or into ``out_dir``); adds their paths to ``report``."""
    out = Path(out_dir or report["out_dir"])
    title = report.get("title", report.get("version", ""))
    labels = tuple(report["labels"])
    report["confusion_png"] = _write(plots.confusion_plot(np.asarray(report["confusion"]), labels, title),
                                     out / "confusion.png")
    report["confusion_key"] = plots.tick_labels(labels)[1]  # "1 = 发票, ..." when the fonts could only number them
    report["reliability_png"] = _write(plots.reliability_plot(report["reliability"], report["student"]["ece"], title),
                                       out / "reliability.png")
    if report.get("reliability_after_temperature") is not None:
        s = report["student"]
        report["reliability_after_temperature_png"] = _write(
            plots.reliability_plot(report["reliability_after_temperature"], s["ece_after_temperature"],
                                   f"{title}, T = {s['temperature']:.2f} (fitted on calib)"),
            out / "reliability_after_temperature.png")
    return report
