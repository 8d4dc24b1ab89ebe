"""`flywheel evaluate`: a model scored on a split's gold labels, beside the teacher and the gold-label ceiling."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from llm_flywheel.core.stats import pct
from llm_flywheel.interfaces.cli import (
    Ctx,
    console,
    no_progress_option,
    pass_ctx,
    progress_enabled,
)
from llm_flywheel.interfaces.cli.commands import open_dataset
from llm_flywheel.interfaces.report.evaluation_plots import draw_evaluation
from llm_flywheel.store.base import StoreError
from llm_flywheel.students.base import StudentError


def _ci(d: dict | None) -> str:
    if not d:
        return "-"
    lo, hi = d["ci95"]
    return f"{100 * d['accuracy']:.1f}%  [{100 * lo:.1f}, {100 * hi:.1f}]  n={d['n']}"


def _pt(diff: float, ci: list[float]) -> str:
    """An accuracy difference in points with its 95 % CI."""
    return f"{100 * diff:+.1f} pt [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


@click.command()
@click.argument("dataset")
@click.option("--version", "-V", "version", default=None, help="Model version (default: the serving model -- the promoted student, else the newest student; a gold-trained reference model only when named).")
@click.option("--split", default="test", show_default=True,
              type=click.Choice(["test", "val", "calib", "stream", "train"]), help="Split whose gold labels score the model.")
@click.option("--ceiling", is_flag=True,
              help="Also train the same student on the same items with GOLD labels and show it beside (the cost of teacher noise).")
@click.option("--runtime", type=click.Choice(["onnx", "torch"]), default="onnx", show_default=True,
              help="Runtime used for predictions.")
@click.option("--out", "out_dir", type=click.Path(), default=None, help="Folder for evaluation.json and the PNGs.")
@no_progress_option
@pass_ctx
def evaluate(ctx: Ctx, dataset: str, version: str | None, split: str, ceiling: bool, runtime: str, out_dir: str | None,
             no_progress: bool) -> None:
    """Score a model on a split's gold labels: accuracy with 95% CI, per-class P/R/F1, confusion matrix and
    reliability PNGs, ECE -- beside the teacher's own accuracy and (with --ceiling) the gold-label ceiling."""
    from pathlib import Path

    from llm_flywheel.pipeline.evaluation import evaluate as run_eval
    from llm_flywheel.pipeline.training import serving_version

    ws = open_dataset(ctx, dataset)
    try:
        if version is None:
            store = ws.store()
            try:
                version = serving_version(store, dataset)
            finally:
                store.close()
        rep = run_eval(ws, dataset, version, split=split, ceiling=ceiling, runtime=runtime,
                       out_dir=Path(out_dir) if out_dir else None, progress=progress_enabled(no_progress))
    except (StudentError, StoreError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    draw_evaluation(rep)
    t = Table(title=f"{version} on {dataset}/{split} (gold labels)")
    t.add_column("who")
    t.add_column("accuracy  [95% CI]")
    t.add_column("note")
    s = rep["student"]
    ece = f"ECE {s['ece']:.3f}"
    if s.get("ece_after_temperature") is not None:
        ece += f"; after T = {s['temperature']:.2f} (calib): {s['ece_after_temperature']:.3f}"
    t.add_row(f"student ({rep['kind']}, {runtime})", _ci(s), ece)
    for name, te, note in (("teacher (consensus)", rep.get("teacher_on_split"), ""),
                           ("teacher (single call)", rep.get("teacher_single_call_on_split"), "pass 0; ")):
        if not te:
            if name == "teacher (consensus)":
                t.add_row(name, "-", "the teacher labelled no items of this split")
            continue
        note += f"coverage {pct(te['coverage'])}"
        if "student_minus_teacher" in te:
            note += f"; student - teacher {_pt(te['student_minus_teacher'], te['diff_ci95'])}"
        t.add_row(name, _ci(te), note)
    if rep.get("training_label_accuracy"):
        t.add_row("teacher labels the student learned from", _ci(rep["training_label_accuracy"]), "train split, vs gold")
    c = rep.get("ceiling")
    if c:
        t.add_row("gold-label ceiling", _ci(c), f"student - ceiling {_pt(c['student_minus_ceiling'], c['diff_ci95'])}")
    console.print(t)
    pc = Table(title="per class")
    for col in ("label", "precision", "recall", "F1", "support"):
        pc.add_column(col)
    for r in rep["per_class"]:
        pc.add_row(r["label"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    console.print(pc)
    if rep.get("reliability_after_temperature_png"):
        console.print(f"reliability after temperature: {rep['reliability_after_temperature_png']}")
    key = f" (classes: {rep['confusion_key']})" if rep.get("confusion_key") else ""
    console.print(f"confusion matrix: {rep['confusion_png']}{escape(key)}\nreliability plot: {rep['reliability_png']}\n"
                  f"report: {rep['json']}")
