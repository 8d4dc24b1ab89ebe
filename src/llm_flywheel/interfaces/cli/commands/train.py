"""`flywheel train` and `flywheel models` (`flywheel evaluate` lives in commands/evaluate.py)."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from llm_flywheel.interfaces.cli import Ctx, console, no_progress_option, pass_ctx, progress_enabled
from llm_flywheel.interfaces.cli.commands import open_dataset
from llm_flywheel.core.stats import pct
from llm_flywheel.store.base import StoreError
from llm_flywheel.students.base import StudentError
from llm_flywheel.students.registry import STUDENT_KINDS


@click.command()
@click.argument("dataset")
@click.option("--kind", "-k", type=click.Choice(sorted(STUDENT_KINDS)), default=None,
              help="Student kind (default: image-cnn for images -- with at most 3,000 labelled train images "
                   "image-pair: image-cnn and efficientnet-lite0, val keeps one or their average --, tabular-hgb "
                   "for tables; for text text-minilm and text-tfidf, the one val prefers -- text-tfidf alone when "
                   "most letters are not Latin).")
@click.option("--epochs", type=int, default=None, help="Maximum epochs (early stopping on the val split may stop sooner).")
@click.option("--no-soft", is_flag=True, help="Train on hard consensus labels instead of the teacher's pass distribution.")
@click.option("--no-weights", is_flag=True, help="Do not weight items by label quality (pass agreement x confidence).")
@click.option("--val-labels", type=click.Choice(["auto", "store", "gold", "holdout"]), default="auto", show_default=True,
              help="Validation labels for early stopping: the val split's labels (auto falls back to a 10% train holdout), "
                   "or the val split's gold labels (gold; recorded in the metrics).")
@click.option("--size", type=int, default=None, help="Image students: input resolution in pixels.")
@click.option("--lr", type=float, default=None, help="Learning rate.")
@click.option("--batch-size", type=int, default=None, help="Batch size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (training is deterministic per seed).")
@click.option("--mirror", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Image students: average predictions over the image and its mirror. auto: only where the task declares "
                   "mirrors label-preserving and the val split scores it higher (it doubles inference compute).")
@click.option("--unlabelled", type=float, default=0.0, show_default=True,
              help="Self-training: a second student also learns the first one's predictions on this many unlabelled "
                   "train items per labelled one; kept only if it scores higher on val (at 2: about 4x the training "
                   "time). 0 = off.")
@click.option("--label-issues", is_flag=True,
              help="Instead of training: find likely label errors with k-fold out-of-fold probabilities + cleanlab "
                   "and add them to the review queue.")
@click.option("--folds", type=int, default=5, show_default=True, help="Folds for --label-issues.")
@no_progress_option
@pass_ctx
def train(ctx: Ctx, dataset: str, kind: str | None, epochs: int | None, no_soft: bool, no_weights: bool, val_labels: str,
          size: int | None, lr: float | None, batch_size: int | None, seed: int, mirror: str, unlabelled: float,
          label_issues: bool, folds: int, no_progress: bool) -> None:
    """Train a student on DATASET's labelled train split; saves weights, meta.json and model.onnx as a new version.

    Labels are the teacher's consensus (human corrections outrank it); by default the student learns the teacher's
    pass distribution (soft targets) weighted by label quality, and the epoch is chosen on the val split only.
    """
    ws = open_dataset(ctx, dataset)
    hp = {k: v for k, v in {"size": size, "lr": lr, "batch_size": batch_size}.items() if v is not None}
    if mirror != "auto":
        hp["tta"] = mirror == "on"
    try:
        if label_issues:
            from llm_flywheel.pipeline.noise import find_label_issues

            if epochs is not None:
                hp["epochs"] = epochs
            console.print(f"finding label issues in [bold]{dataset}[/] with {folds}-fold out-of-fold probabilities ...")
            ids = find_label_issues(ws, dataset, kind=kind, folds=folds, queue=True, seed=seed,
                                    progress=progress_enabled(no_progress), **hp)
            with ws.store() as store:
                _print_label_issues(dataset, ids, store.latest_report("label_issues", dataset) or {})
            return
        from llm_flywheel.pipeline.training import train_student

        tm = train_student(ws, dataset, kind=kind, soft=not no_soft, weight_by_quality=not no_weights, seed=seed,
                           epochs=epochs, val_labels=val_labels, progress=progress_enabled(no_progress),
                           unlabelled=unlabelled, **hp)
    except (StudentError, StoreError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    _print_trained(tm)
    with ws.store() as store:
        promoted = store.serving_version(dataset, promoted_only=True)
    if promoted and promoted != tm.version:  # calibrate/predict/serve default to the promoted one, not this
        console.print(f"the serving model of {dataset} is still {promoted} (promoted); to serve this one: "
                      f"`flywheel calibrate {dataset} --version {tm.version}`, then "
                      f"`flywheel promote {dataset} {tm.version}`")


def _print_label_issues(dataset: str, ids: list[int], rep: dict) -> None:
    t = Table(title=f"label issues in {dataset}")
    for col in ("flagged", "of", "queued", "precision vs gold", "base error rate"):
        t.add_column(col)
    g = rep.get("gold_check") or {}
    t.add_row(str(len(ids)), str(rep.get("n")), str(rep.get("queued", 0)), pct(g.get("precision")),
              pct(g.get("label_error_rate")))
    console.print(t)
    console.print(f"method: {rep.get('method')}; review them with `flywheel review`")


def _print_trained(tm) -> None:  # a pipeline.training.TrainedModel (imported lazily: torch is slow to import)
    m = tm.metrics
    # say against what the val number is measured: teacher labels are not the truth
    val_name = {"gold": "accuracy on gold val labels", "holdout": "agreement with teacher labels (10 % train holdout)"
                }.get(str(m.get("val_labels")), "agreement with teacher labels on val")
    t = Table(title=f"trained {tm.version}")
    t.add_column("metric")
    t.add_column("value")
    for key, val in (
        ("kind", tm.student.kind + (f" -- {m['student_choice']}" if m.get("student_choice") else "")),
        (val_name, pct(m.get("val_acc"))), ("val labels", m.get("val_labels")),
        ("train items", m.get("n_train")), ("val items", m.get("n_val")), ("label sources", m.get("label_sources")),
        ("soft targets", m.get("soft")), ("quality weights", m.get("weight_by_quality")),
        ("epochs run / best", _epochs_text(m)), ("seconds", _seconds_text(m)),
        ("pretrained", m.get("pretrained") or "no"), ("mirror averaging", _mirror_text(m.get("tta"))),
        ("self-training", _self_training_text(m.get("self_training"))), ("ONNX max |diff|", m.get("onnx_max_abs_diff")),
        ("saved to", str(tm.path)),
    ):
        t.add_row(key, str(val))
    console.print(t)


def _epochs_text(m: dict) -> str:
    """Epochs run / best; each network's for a pair of them (image-pair)."""
    members = m.get("members")
    if not members:
        return f"{m.get('epochs_run')} / {m.get('best_epoch')}"
    return ", ".join(f"{k} {x.get('epochs_run')} / {x.get('best_epoch')}" for k, x in members.items())


def _seconds_text(m: dict) -> str:
    """The kept student's fitting time, and every candidate's when the data chose between kinds (an average of
    fitted networks costs no fitting of its own)."""
    c = [x for x in m.get("candidates") or () if x.get("seconds") is not None]
    return str(m.get("train_seconds")) + ("" if not c else " (fitting every candidate: "
                                          + ", ".join(f"{x['kind']} {x['seconds']:.0f} s" for x in c) + ")")


def _mirror_text(t: dict | None) -> str:
    if not t:
        return "n/a"
    scores = (f"; val {pct(t['val_acc_single'])} single, {pct(t['val_acc_mirror_avg'])} averaged"
              if "val_acc_single" in t else "")
    return f"{'on' if t.get('used') else 'off'} ({t.get('why')}{scores})"


def _self_training_text(st: dict | None) -> str:
    if not st:
        return "off"
    if not st["pool"]:
        return "nothing to learn from: every train item is labelled"
    if st["val_second"] is None:
        return "skipped: no val items to choose between the two students"
    kept = "kept" if st["used"] else "not kept (val preferred the first student)"
    return (f"{st['pool']:,} unlabelled items; val {pct(st['val_first'])} -> {pct(st['val_second'])}, {kept}; "
            f"+{st.get('extra_seconds', 0):.0f} s")


@click.command()
@click.argument("dataset")
@click.option("--prune", is_flag=True,
              help="Delete the files of the versions nothing needs (their rows, metrics and calibrations stay): kept "
                   "are the serving one, the newest --keep students, the newest reference, and any of an unfinished "
                   "wheel run.")
@click.option("--keep", type=click.IntRange(0), default=3, show_default=True, help="With --prune: students kept.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@pass_ctx
def models(ctx: Ctx, dataset: str, prune: bool, keep: int, as_json: bool) -> None:
    """DATASET's model versions, newest first: what each was trained on, its calibration, and which one serves
    (the default of calibrate, predict and serve; `flywheel promote` changes it)."""
    import json

    from llm_flywheel.pipeline.model_list import list_models, prune_models

    ws = open_dataset(ctx, dataset)
    if prune:
        res = prune_models(ws, dataset, keep=keep)
        if as_json:
            click.echo(json.dumps(res.to_dict(), indent=2))
            return
        console.print(f"removed the files of {len(res.removed)} version(s), {res.freed_bytes / 1e6:,.1f} MB freed"
                      + "".join(f"\n  {v}" for v in res.removed), highlight=False)
    infos = list_models(ws, dataset)
    if as_json:
        click.echo(json.dumps([m.to_dict() for m in infos], indent=2))
        return
    if not infos:
        console.print(f"no model of {dataset} yet: `flywheel train {dataset}` (or `flywheel run {dataset}`)")
        return
    console.print(f"[bold]{escape(dataset)}[/]: {len(infos)} model version(s), newest first")
    for m in infos:
        status = ("  [bold green]serving[/]" if m.serving else "  reference (gold labels)" if m.role == "reference"
                  else "")
        status += "" if m.on_disk else "  [dim]files removed[/]"
        val = "val –" if m.val_agreement is None else (
            f"val {pct(m.val_agreement)}" + (" (gold)" if m.val_labels == "gold" else ""))
        cal = (f"threshold {m.threshold:.3f} ({pct(m.teacher_fraction)} to teacher)"
               if m.calibrated and m.threshold is not None else "not calibrated")
        labels = f"{m.labels:,} labels" if m.labels is not None else "labels –"
        where = f"round {m.round}, " if m.round else ""
        size = f", {m.size_bytes / 1e3:,.0f} kB" if m.on_disk else ""
        console.print(f"  {m.version}{status}\n    {where}{labels}, {val}, {cal}{size}", highlight=False)
    console.print(f"val: agreement with the val split's teacher labels. Accuracy on gold test: `flywheel evaluate "
                  f"{escape(dataset)} --version V`; serve another: `flywheel promote {escape(dataset)} V`",
                  highlight=False)
