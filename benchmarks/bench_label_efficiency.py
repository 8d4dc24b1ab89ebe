"""Can a student trained on <= 1,500 noisy teacher labels beat the teacher?  Three remedies, measured.

Issue 4 asks for a student that beats the (simulated) teacher's single-call accuracy on Fashion-MNIST with at most
1,500 teacher labels.  ``bench_accuracy.py`` shows the plain recipe falls ~1 point short, and that the student's own
*gold-label* ceiling at that label count is barely above the teacher.  This benchmark measures the standard remedies
that use what is free -- the 58,500 unlabelled training images -- or that remove label noise:

* ``supervised``: the image-cnn recipe of the product (soft targets from 2 passes + tie-break), and the same on gold
  labels (the ceiling);
* ``distill``: an ensemble of ``--ensemble`` supervised students labels ``--pool`` unlabelled images (sharpened
  averaged probabilities) and one student is trained on labelled + pseudo-labelled items (self-training);
* ``fixmatch``: consistency training (weak-augment pseudo-label at confidence >= ``--tau``, strong-augment
  prediction), EMA weights, warm-started from the supervised student, ``--steps`` steps;
* ``cleanlab``: 5-fold out-of-fold probabilities + confident learning; flagged items dropped or down-weighted.

It works on raw arrays (no workspace) so each arm costs only training time; labels come from the *same* error model
the simulated teacher server uses (:class:`llm_flywheel.teachers.simulated.ErrorModel`), so the noise is the
benchmark's.  Model choice uses the teacher-labelled val items only; test is the full 10,000-image test split.

Run:  python benchmarks/bench_label_efficiency.py --methods supervised,distill,fixmatch,cleanlab
      (on 2 CPU cores: supervised ~2 min, distill ~8 min, fixmatch ~0.3 s/step, cleanlab ~5 min)
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import numpy as np

from bench_accuracy import log
from llm_flywheel.data.fashion_mnist import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from llm_flywheel.pipeline.evaluation import accuracy_ci
from llm_flywheel.students.base import set_torch_threads, softmax, targets_matrix
from llm_flywheel.students.torch_fit import fit_torch, predict_torch
from llm_flywheel.students.image import _augment, _build_net
from llm_flywheel.teachers.simulated import ErrorModel, SimConfig

DATA = Path("/usr/share/datasets/fashion-mnist")
NAMES = ("t_shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")


def load() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found: apt-get install dataset-fashion-mnist")

    def images(name: str) -> np.ndarray:
        return read_idx(DATA / name, IMAGES_MAGIC)[:, None].astype(np.float32)

    def labels(name: str) -> np.ndarray:
        return read_idx(DATA / name, LABELS_MAGIC).astype(int)

    return (images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz"),
            images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz"))


class Teacher:
    """Two diverse passes + a tie-break pass, as ``label_items`` does; soft target = the two passes' distribution."""

    def __init__(self) -> None:
        class _Task:
            labels = NAMES

        self.em = ErrorModel(_Task(), SimConfig())  # type: ignore[arg-type]

    def one(self, key: str, gold: int, variant: str) -> int:
        return NAMES.index(self.em.answer(key, NAMES[gold], variant)[0])

    def label(self, keys: list[str], gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hard, soft = np.zeros(len(keys), int), np.zeros((len(keys), len(NAMES)), np.float32)
        for i, (k, g) in enumerate(zip(keys, gold)):
            a, b = self.one(k, g, "0"), self.one(k, g, "1")
            soft[i, a] += 0.5
            soft[i, b] += 0.5
            hard[i] = a if a == b else self.one(k, g, "2")
        return hard, soft


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="supervised,distill,cleanlab")
    ap.add_argument("--n-train", type=int, default=1350)
    ap.add_argument("--val", type=int, default=150)
    ap.add_argument("--pool", type=int, default=20000, help="unlabelled images used by distill / fixmatch")
    ap.add_argument("--ensemble", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2000, help="fixmatch steps")
    ap.add_argument("--tau", type=float, default=0.95)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.n_train + a.val > 1500:
        print("n-train + val must be <= 1500", file=sys.stderr)
        return 2
    import torch
    import torch.nn.functional as F

    set_torch_threads()
    xtr, ytr, xte, yte = load()
    perm = np.random.default_rng(a.seed).permutation(len(ytr))
    li, vi = perm[: a.n_train], perm[a.n_train : a.n_train + a.val]
    pi = perm[a.n_train + a.val : a.n_train + a.val + a.pool]
    teacher = Teacher()
    yl, ql = teacher.label([f"train-{i}" for i in li], ytr[li])
    yv, _ = teacher.label([f"train-{i}" for i in vi], ytr[vi])
    y0 = np.array([teacher.one(f"test-{i}", g, "0") for i, g in enumerate(yte)])
    xl, xv, xp, xt = (torch.from_numpy(x) for x in (xtr[li], xtr[vi], xtr[pi], xte))
    results: list[tuple[str, np.ndarray]] = [("teacher, single call (pass 0)", y0 == yte)]
    log(f"{len(li)} train + {len(vi)} val teacher labels ({100 * (yl == ytr[li]).mean():.1f} % correct), "
        f"pool {len(pi)}, test {len(yte)}")

    def train(x, q, w, seed: int, epochs: int = a.epochs):
        net, _ = _build_net("image-cnn", len(NAMES), 1, 28, (0.5,), (0.25,), False, width=32)
        fit_torch(net, x, q, w, xv, yv, augment=_augment(28, True), epochs=epochs, batch_size=64, lr=3e-3,
                  weight_decay=5e-4, patience=8, seed=seed, progress=False, desc="")
        return net

    def probs(net, x) -> np.ndarray:
        return softmax(predict_torch(net, x))

    def record(name: str, p: np.ndarray) -> None:
        correct = p.argmax(1) == yte
        acc, lo, hi = accuracy_ci(correct)
        results.append((name, correct))
        log(f"{name}: {100 * acc:.2f} % [{100 * lo:.1f}, {100 * hi:.1f}]")

    q0 = targets_matrix(yl, len(NAMES), ql, 0.05)
    methods = a.methods.split(",")
    base = train(xl, q0, None, a.seed)
    if "supervised" in methods:
        record("supervised, teacher soft labels", probs(base, xt))
        record("supervised, gold labels (ceiling)", probs(train(xl, targets_matrix(ytr[li], 10, None, .05), None, a.seed), xt))
    if "distill" in methods:
        nets = [base] + [train(xl, q0, None, a.seed + s) for s in range(1, a.ensemble)]
        record(f"ensemble of {a.ensemble} (not a small student)", np.mean([probs(n, xt) for n in nets], axis=0))
        pool_p = np.mean([probs(n, xp) for n in nets], axis=0)
        qp = softmax(np.log(np.clip(pool_p, 1e-8, 1)) / 0.5)  # sharpen, T = 0.5
        net = train(torch.cat([xl, xp]), np.concatenate([q0, qp]), None, a.seed + 100, epochs=max(1, a.epochs // 2))
        record(f"self-training: ensemble pseudo-labels on {len(pi)} unlabelled", probs(net, xt))
    if "fixmatch" in methods:
        record(f"fixmatch {a.steps} steps", probs(fixmatch(base, xl, q0, xp, xv, yv, a, torch, F), xt))
    if "cleanlab" in methods:
        from cleanlab.filter import find_label_issues

        oof = np.zeros((len(yl), len(NAMES)), np.float32)
        folds = np.random.default_rng(a.seed + 1).permutation(np.arange(len(yl)) % 5)
        for f in range(5):
            tr, te = torch.from_numpy(folds != f), torch.from_numpy(folds == f)
            oof[folds == f] = probs(train(xl[tr], q0[folds != f], None, a.seed + f), xl[te])
        issues = find_label_issues(yl, oof, filter_by="prune_by_noise_rate")
        wrong = yl != ytr[li]
        log(f"cleanlab flagged {issues.sum()}: precision {(wrong[issues]).mean():.2f}, recall "
            f"{(issues & wrong).sum() / max(1, wrong.sum()):.2f}")
        keep = ~issues
        record("cleanlab: flagged dropped", probs(train(xl[torch.from_numpy(keep)], q0[keep], None, a.seed), xt))
        record("cleanlab: flagged weight 0.2", probs(train(xl, q0, np.where(issues, 0.2, 1.0).astype(np.float32), a.seed), xt))

    from llm_flywheel.pipeline.evaluation import paired_diff_ci

    print(f"\nFashion-MNIST, {len(li) + len(vi)} teacher labels, SIMULATED teacher, test n = {len(yte)}; "
          "95 % Wilson CI; diff vs teacher is paired")
    print("| method | accuracy | vs teacher single call |")
    print("|---|---|---|")
    for name, c in results:
        acc, lo, hi = accuracy_ci(c)
        d, dlo, dhi = paired_diff_ci(c, results[0][1])
        print(f"| {name} | {100 * acc:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] | "
              f"{100 * d:+.1f} pt [{100 * dlo:+.1f}, {100 * dhi:+.1f}] |")
    return 0


def fixmatch(start, xl, q0, xp, xv, yv, a, torch, F):
    """FixMatch (Sohn et al. 2020) on CPU: pseudo-label weak views above ``tau``, fit strong views; EMA weights;
    the EMA with the best val accuracy (checked every 250 steps, the warm start included) is returned."""
    net = copy.deepcopy(start)
    ema = copy.deepcopy(start)
    weak = _augment(28, True)
    g = torch.Generator().manual_seed(a.seed + 7)

    def strong(x):
        n = x.shape[0]
        s = 1 - (torch.rand(n, generator=g) * 2 - 1) * 0.2
        r = (torch.rand(n, generator=g) * 2 - 1) * 0.35
        sh = (torch.rand(n, generator=g) * 2 - 1) * 0.3
        fx = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        th = torch.zeros(n, 2, 3)
        th[:, 0, 0], th[:, 0, 1] = s * torch.cos(r) * fx, -s * torch.sin(r) + sh
        th[:, 1, 0], th[:, 1, 1] = s * torch.sin(r), s * torch.cos(r)
        th[:, :, 2] = (torch.rand(n, 2, generator=g) * 2 - 1) * 0.2
        x = F.grid_sample(x, F.affine_grid(th, list(x.shape), align_corners=False), align_corners=False)
        c = 1 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * 0.5
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - m) * c + m + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * 40
        cy, cx = torch.randint(0, 28, (n,), generator=g), torch.randint(0, 28, (n,), generator=g)
        ii = torch.arange(28)
        hole = ((ii.view(1, 28, 1) - cy.view(n, 1, 1)).abs() < 5) & ((ii.view(1, 1, 28) - cx.view(n, 1, 1)).abs() < 5)
        return x.masked_fill(hole.unsqueeze(1), 0.0).clamp(0, 255)

    def val(m) -> float:
        return float((predict_torch(m, xv).argmax(1) == yv).mean())

    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / a.steps)))
    qt, b, mu = torch.from_numpy(q0), 64, 3
    best, best_state = val(start), copy.deepcopy(start.state_dict())
    for step in range(a.steps):
        li = torch.randint(0, len(xl), (b,), generator=g)
        xu = xp[torch.randint(0, len(xp), (b * mu,), generator=g)]
        net.eval()
        with torch.no_grad():
            conf, pl = F.softmax(net(weak(xu, g)), 1).max(1)
        net.train()
        logits = net(torch.cat([weak(xl[li], g), strong(xu)]))
        loss_l = -(qt[li] * F.log_softmax(logits[:b], 1)).sum(1).mean()
        loss_u = (F.cross_entropy(logits[b:], pl, reduction="none") * (conf >= a.tau).float()).mean()
        opt.zero_grad()
        (loss_l + loss_u).backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, pn in zip(ema.state_dict().values(), net.state_dict().values()):
                pe.mul_(0.99).add_(pn, alpha=0.01) if pe.dtype.is_floating_point else pe.copy_(pn)
        if (step + 1) % 250 == 0:
            v = val(ema)
            log(f"  fixmatch step {step + 1}: mask {(conf >= a.tau).float().mean():.2f}, EMA val {v:.3f}")
            if v >= best:
                best, best_state = v, copy.deepcopy(ema.state_dict())
    ema.load_state_dict(best_state)
    return ema


if __name__ == "__main__":
    sys.exit(main())
