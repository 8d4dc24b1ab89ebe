"""Label sweep: how many teacher labels before the student beats the teacher it learned from?

Fashion-MNIST with the **SIMULATED** teacher (~85 % single call), through the product's own code paths:

1. imports the first ``--limit`` images of each source split and makes the stored splits (``--val`` val items,
   test = the source's 10,000 test images);
2. labels a random, *nested* sequence of train items (the first 1,500 are a subset of the first 3,000, ...) plus
   the val split with 2 diverse passes + tie-break (consensus, soft targets, quality), and every test item with
   one call (pass 0) -- the teacher's single-call accuracy is measured on exactly the items the student is;
3. for each label count (train + val), trains the student on those labels (early stopping on the teacher-labelled
   val split, never test), then evaluates on all test items: accuracy with Wilson 95 % CIs, the gold-label ceiling
   (same items, gold labels) and the paired student-minus-teacher difference with its 95 % CI.

The crossover -- the smallest count where the paired CI lies above zero -- is what a user budgeting an LLM
teacher wants to know.  Teacher answers and models are cached in the workspace, so re-running is cheap.

``--recipe NAME:key=value,...`` (repeatable) trains the same student with other hyper-parameters (or, with
``kind=...``, another student kind) on the same labels beside today's defaults, in the same run: each recipe's row
has its own paired difference against the teacher and against the default recipe (same test items).  The gold-label
ceiling is trained for the default recipe only.

``--fixed-passes`` asks every train and val item twice (+ tie-break), as before adaptive passes became the default:
the labels differ, so it wants a workspace of its own.

``--seeds 0,1,2`` runs several label sequences and training seeds one after another and then pools them: each
recipe's students averaged per test item, minus the teacher's single call, paired over the test items (CPU training
is not bit-reproducible, so one seed's difference under ~0.6 pt is noise).

The default recipe trains what the product trains without a student kind (few labelled images: ``image-pair``,
image-cnn and efficientnet-lite0 on the same labels, val log-loss keeps one or their average); ``--student KIND``
pins one kind.

Run:  python benchmarks/bench_label_sweep.py [--counts 1500,3000,6000,12000] [--student image-cnn] [--plot F.png]
      python benchmarks/bench_label_sweep.py --counts 2500 --no-ceiling --seeds 0,1,2 --recipe cnn:kind=image-cnn
      python benchmarks/bench_label_sweep.py --student image-cnn --counts 1500,2500,3000 --recipe steps:min_steps=4000
      python benchmarks/bench_label_sweep.py --counts 2500 --no-ceiling --seeds 0,1,2 \
          --recipe effnet:kind=efficientnet-lite0 --recipe effself:kind=efficientnet-lite0,unlabelled=2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from bench_accuracy import DATASET, fmt, log, prepare
from llm_flywheel.pipeline.evaluation import evaluate, paired_diff_ci
from llm_flywheel.pipeline.training import load_student, train_student
from llm_flywheel.store.workspace import Workspace


def label(ws: Workspace, n_train: int, seed: int, latency_ms: float, fixed_passes: bool = False) -> list[int]:
    """Label the first ``n_train`` of a seeded permutation of train (+ val, 2 passes) and test (1 pass).

    The 2 passes are the product's adaptive passes (a second pass only where the first is unsure) unless
    ``fixed_passes``: then every train and val item is asked twice, as before adaptive passes existed."""
    from llm_flywheel.pipeline.labeling import LabelConfig, label_items
    from llm_flywheel.core.task import Task
    from llm_flywheel.teachers.registry import teacher_from_spec
    from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher

    with ws.store() as store:
        task = Task.from_json(store.dataset_task_json(DATASET))
        train_ids = [it.id for it in store.items(DATASET, split="train")]
        val_ids = [it.id for it in store.items(DATASET, split="val")]
        test_ids = [it.id for it in store.items(DATASET, split="test")]
    if n_train > len(train_ids):
        raise SystemExit(f"only {len(train_ids)} train items; raise --limit")
    order = np.random.default_rng(seed).permutation(train_ids)[:n_train].tolist()
    cfg = SimConfig(latency_ms=latency_ms)
    how = "fixed" if fixed_passes else "adaptive"
    log(f"labelling {n_train} train + {len(val_ids)} val items (2 {how} passes) and {len(test_ids)} test items "
        "(1 call) with the SIMULATED teacher")
    with run_simulated_teacher(ws, DATASET, cfg) as url:
        teacher = teacher_from_spec(f"{url}|{model_id(DATASET, cfg)}", task, api_key_env="")
        cfg2 = LabelConfig(passes=2, concurrency=16, adaptive_passes=not fixed_passes)
        r1 = label_items(ws, DATASET, order + val_ids, teacher, cfg2, progress=False)
        r2 = label_items(ws, DATASET, test_ids, teacher, LabelConfig(passes=1, concurrency=16), progress=False)
    log(f"labelled: calls {r1.calls_made + r2.calls_made}, cached {r1.answers_cached + r2.answers_cached}")
    return order


def parse_recipe(spec: str) -> tuple[str, dict]:
    """``NAME:key=value,key=value`` -> (NAME, hyper-parameters); values are JSON (numbers, true/false) or strings."""
    name, _, body = spec.partition(":")
    hp = {}
    for kv in filter(None, body.split(",")):
        k, _, v = kv.partition("=")
        try:
            hp[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            hp[k.strip()] = v.strip()
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise SystemExit(f"--recipe {spec!r}: expected NAME:key=value,... with a plain NAME")
    return name, hp


def correct_on_test(ws: Workspace, version: str) -> np.ndarray:
    """Per-item correctness of ``version`` on the test split (ONNX Runtime), in item-id order: for paired diffs."""
    from llm_flywheel.core.task import Task

    with ws.store() as store:
        items = [it for it in store.items(DATASET, split="test") if it.gold_label]
        task = Task.from_json(store.dataset_task_json(DATASET))
    y = np.array([task.index(it.gold_label) for it in items])
    return load_student(ws, version).predict_proba(items).argmax(1) == y


def plot(rows: list[dict], path: Path, student: str) -> None:
    """Student, gold ceiling and the teacher's single call (95 % CIs) against the number of teacher labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array([r["labels"] for r in rows])
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for key, name, style in (("student", f"student ({student}) on teacher labels", "-o"),
                             ("ceiling", "same student on gold labels", "--s"),
                             ("teacher_single_call", "teacher, single call", ":^")):
        acc = np.array([100 * r[key]["accuracy"] for r in rows])
        lo = np.array([100 * r[key]["ci95"][0] for r in rows])
        hi = np.array([100 * r[key]["ci95"][1] for r in rows])
        ax.errorbar(x, acc, yerr=[acc - lo, hi - acc], fmt=style, capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:,}" for v in x])
    ax.minorticks_off()
    ax.set_xlabel("teacher labels (train + val)")
    ax.set_ylabel("test accuracy, % (95 % CI)")
    ax.set_title("Fashion-MNIST, simulated teacher: when does the student overtake it?", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chosen_labels(ws: Workspace, order: list[int], n_train: int) -> dict[int, str]:
    """The first ``n_train`` items of a label sequence that have a usable (consensus) teacher label."""
    with ws.store() as store:
        effective = store.effective_labels(DATASET, split="train")
    return {i: effective[i] for i in order[:n_train] if effective.get(i) is not None}


def run_seed(a: argparse.Namespace, ws: Workspace, recipes: list[tuple[str, dict]], counts: list[int],
             seed: int) -> list[dict]:
    """One label sequence and training seed: label (cached), train every recipe at every count (cached by version),
    score on all test items."""
    order = label(ws, counts[-1] - a.val, seed, a.latency_ms, a.fixed_passes)
    rows = []
    for n in counts:
        chosen = chosen_labels(ws, order, n - a.val)
        base_correct = None
        for rname, hp in recipes:
            version = (f"sweep-{a.student or 'default'}-{n}-s{seed}" + ("" if rname == "default" else f"-{rname}")
                       + (f"-{a.tag}" if a.tag else ""))
            with ws.store() as store:
                exists = store.model(version) is not None
            if not exists:
                kw = dict(hp)
                kind = kw.pop("kind", a.student)  # a recipe may name another student kind
                epochs = kw.pop("epochs", a.epochs)
                log(f"training {kind or 'the default candidates'} [{rname}] on {len(chosen)} train labels "
                    f"(+ {a.val} val)")
                tm = train_student(ws, DATASET, kind=kind, labels=chosen, seed=seed, epochs=epochs,
                                   progress=False, version=version, **kw)
                tta = tm.metrics.get("tta") or {}
                log(f"  {tm.student.kind}: {tm.metrics['epochs_run']} epochs, {tm.metrics['train_seconds']} s"
                    + (f" ({tm.metrics['student_choice']})" if tm.metrics.get("student_choice") else "")
                    + "; mirror averaging "
                    f"{'on' if tta.get('used') else 'off'} ({tta.get('why', 'n/a')}"
                    + (f": val {tta['val_acc_single']:.4f} single, {tta['val_acc_mirror_avg']:.4f} averaged)"
                       if "val_acc_single" in tta else ")"))
            ceiling = rname == "default" and not a.no_ceiling
            log(f"evaluating {version} on test" + (" (+ gold-label ceiling)" if ceiling else ""))
            rep = evaluate(ws, DATASET, version, ceiling=ceiling)
            correct = correct_on_test(ws, version)
            with ws.store() as store:
                kind_trained = (store.model(version) or {}).get("kind")
            vs_default = None
            if rname == "default":
                base_correct = correct
            elif base_correct is not None:
                d, lo, hi = paired_diff_ci(correct, base_correct)
                vs_default = {"diff": d, "diff_ci95": [lo, hi]}
            rows.append({"labels": n, "recipe": rname, "kind": kind_trained, "hparams": hp,
                         "train_labels": len(chosen), "seed": seed,
                         "correct": correct,
                         "student": rep["student"], "ceiling": rep.get("ceiling"),
                         "teacher_single_call": rep["teacher_single_call_on_split"], "vs_default": vs_default,
                         "training_label_accuracy": rep.get("training_label_accuracy"), "version": version})
    return rows


def print_seed(a: argparse.Namespace, rows: list[dict], recipes: list[tuple[str, dict]]) -> dict[str, int | None]:
    """One seed's table and crossover per recipe."""
    print()
    print(f"seed {rows[0]['seed']}")
    print(f"Fashion-MNIST, {a.student or 'the default student (what the product trains without a kind)'}, "
          f"SIMULATED teacher; test n = {rows[0]['student']['n']}; labels = train + {a.val} val (2 passes + "
          "tie-break each); 95 % Wilson CIs; differences paired on the same test items")
    print("| labels | recipe | student | gold-label ceiling | teacher single call | student - teacher | "
          "recipe - default | teacher labels learned (train, vs gold) |")
    print("|---|---|---|---|---|---|---|---|")
    crossover: dict[str, int | None] = {name: None for name, _ in recipes}
    for r in rows:
        t = r["teacher_single_call"] or {}
        diff = vs = "-"
        if "student_minus_teacher" in t:
            lo, hi = t["diff_ci95"]
            diff = f"{100 * t['student_minus_teacher']:+.1f} pt [{100 * lo:+.1f}, {100 * hi:+.1f}]"
            if lo > 0 and crossover[r["recipe"]] is None:
                crossover[r["recipe"]] = r["labels"]
        if r["vs_default"]:
            lo, hi = r["vs_default"]["diff_ci95"]
            vs = f"{100 * r['vs_default']['diff']:+.1f} pt [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        print(f"| {r['labels']:,} ({r['train_labels']:,} train) | {r['recipe']} ({r['kind']}) | {fmt(r['student'])} | "
              f"{fmt(r['ceiling'])} | {fmt(t)} | {diff} | {vs} | {fmt(r['training_label_accuracy'])} |")
    for name, hp in recipes:
        c = crossover[name]
        print(f"[{name}{' ' + json.dumps(hp) if hp else ''}] smallest count where the student beats the teacher's "
              f"single call (paired 95 % CI above 0): {f'{c:,}' if c else 'none of ' + a.counts}")
    return crossover


def teacher_correct_on_test(ws: Workspace) -> np.ndarray:
    """The teacher's single call (pass 0) right or wrong per test item, in item-id order (unanswered = wrong)."""
    with ws.store() as store:
        items = [it for it in store.items(DATASET, split="test") if it.gold_label]
        by_model = store.first_answers_by_hash([it.content_hash for it in items])
    answers = max(by_model.values(), key=len) if by_model else {}
    return np.array([answers.get(it.content_hash) == it.gold_label for it in items])


def pooled_diff(corrects: list[np.ndarray], teacher: np.ndarray
                ) -> tuple[float, float, float, float, float, np.ndarray]:
    """(d, lo, hi, lo with the seed spread, hi with it, per-seed d): several seeds' students (right/wrong per test
    item) averaged per item, minus the teacher's single call, paired over the items.  The wider interval adds the
    seed-to-seed spread (label draw, training randomness) as the standard error of the seeds' mean difference --
    the conservative one to quote."""
    mean = np.mean(corrects, axis=0)
    d, lo, hi = paired_diff_ci(mean, teacher.astype(float))
    per = np.array([c.mean() - teacher.mean() for c in corrects])
    spread = per.std(ddof=1) / np.sqrt(len(per)) if len(per) > 1 else 0.0
    se = float(np.hypot((hi - lo) / 2 / 1.959964, spread))
    return d, lo, hi, d - 1.959964 * se, d + 1.959964 * se, per


def print_pooled(rows: list[dict], recipes: list[tuple[str, dict]], counts: list[int], teacher: np.ndarray) -> None:
    """Each recipe's students averaged per test item over the seeds, minus the teacher's single call, paired
    (:func:`pooled_diff`: over the test items alone, and with the seed spread added)."""
    seeds = sorted({r["seed"] for r in rows})
    print(f"\npooled over seeds {', '.join(map(str, seeds))}: the recipe's students averaged per test item minus the "
          "teacher's single call; 95 % CI over the test items, then with the seed spread added")
    print("| labels | recipe | students (mean) | teacher single call | student - teacher, pooled | with seed spread | "
          "per seed |")
    print("|---|---|---|---|---|---|---|")
    for n in counts:
        for name, _ in recipes:
            got = [r["correct"] for r in rows if r["labels"] == n and r["recipe"] == name]
            if len(got) < 2:
                continue
            d, lo, hi, slo, shi, per = pooled_diff(got, teacher)
            print(f"| {n:,} | {name} | {100 * np.mean(got):.1f} % | {100 * teacher.mean():.1f} % | "
                  f"{100 * d:+.1f} pt [{100 * lo:+.1f}, {100 * hi:+.1f}] | [{100 * slo:+.1f}, {100 * shi:+.1f}] | "
                  f"{' / '.join(f'{100 * x:+.1f}' for x in per)} pt |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", default=os.environ.get("BENCH_WS", "/tmp/flywheel-bench-sweep"))
    ap.add_argument("--counts", default="1500,3000,6000,12000", help="student label counts (train + val)")
    ap.add_argument("--val", type=int, default=500, help="val split size (teacher-labelled; counts toward each total)")
    ap.add_argument("--limit", type=int, default=20000, help="first N images of each source split")
    ap.add_argument("--student", default=None, help="student kind of the default recipe (default: what the product "
                    "trains without --student: with few labels image-pair)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=None, help="comma-separated seeds run one after another, then pooled "
                    "(each seed: its own label sequence and training seed)")
    ap.add_argument("--latency-ms", type=float, default=5.0, help="simulated teacher latency (does not affect labels)")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    ap.add_argument("--plot", default=None, help="write a PNG of accuracy vs label count here")
    ap.add_argument("--only", default=None, help="run only these recipes (comma-separated names; 'default' included)")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the gold-label ceiling (one training less per count)")
    ap.add_argument("--fixed-passes", action="store_true", help="ask every train and val item twice (+ tie-break) "
                    "instead of the product's adaptive passes; use its own --workspace (the labels differ)")
    ap.add_argument("--tag", default="", help="appended to every model version: retrains instead of reusing the models "
                    "an earlier run left in the workspace (the teacher's answers stay cached)")
    ap.add_argument("--recipe", action="append", default=[],
                    help="NAME:key=value,... student hyper-parameters trained beside the defaults (repeatable)")
    a = ap.parse_args()
    recipes = [("default", {})] + [parse_recipe(r) for r in a.recipe]
    if a.only:
        recipes = [r for r in recipes if r[0] in a.only.split(",")]
    counts = sorted(int(c) for c in a.counts.split(","))
    if counts[0] <= a.val:
        print(f"every count must exceed --val ({a.val})", file=sys.stderr)
        return 2
    ws = Workspace.open(a.workspace)
    prepare(ws, a.limit, a.val, calib=100, stream=100)
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else [a.seed]
    rows, crossover = [], {}
    for seed in seeds:
        got = run_seed(a, ws, recipes, counts, seed)
        crossover[seed] = print_seed(a, got, recipes)
        rows += got
    if len(seeds) > 1:
        print_pooled(rows, recipes, counts, teacher_correct_on_test(ws))
    if a.out:
        out = [{k: v for k, v in r.items() if k != "correct"} for r in rows]
        Path(a.out).write_text(json.dumps({"rows": out, "crossover": crossover}, indent=2, default=float))
    if a.plot:
        plot([r for r in rows if r["recipe"] == "default"], Path(a.plot), a.student or "default student")
        print(f"plot: {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
