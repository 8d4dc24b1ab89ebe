"""The shared torch training loop: every torch student (image networks, the text heads) gets the same recipe --
AdamW, a cosine schedule after a short warm-up, soft targets, per-item weights, early stopping on the validation
split, channels-last image batches on CPU -- and the same progress output.

Why its own module: the Student protocol (``base``) is what the pipeline needs; this is only what torch students
share, and it grows with the recipe.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from llm_flywheel.core.throttle import LineThrottle
from llm_flywheel.students.base import StudentError, set_torch_threads, softmax


def fit_torch(
    model: Any,
    x_train: Any,
    q_train: np.ndarray,
    w_train: np.ndarray | None,
    x_val: Any,
    y_val: np.ndarray,
    *,
    augment: Callable[[Any, Any], Any] | None,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    patience: int,
    seed: int,
    progress: bool,
    desc: str,
    eval_batch: int = 256,
    mixup: float = 0.0,
) -> dict[str, Any]:
    """Train ``model`` (a torch module mapping a float batch to logits) on in-memory tensors.

    ``q_train`` are target distributions (see :func:`targets_matrix`); ``w_train`` per-item weights (label quality).
    The epoch with the best **validation** accuracy is kept (ties: lower val loss); training stops after
    ``patience`` epochs without improvement.  With no validation items the last epoch is kept.
    ``mixup`` > 0 trains on convex mixes of pairs of items and of their targets (Beta(mixup, mixup) weights).
    Returns a history dict; the model is left holding the selected weights, in eval mode.
    """
    import torch

    set_torch_threads()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = len(q_train)
    if n == 0:
        raise StudentError("no training items")
    model.to(memory_format=_memory_format(x_train))
    q = torch.from_numpy(np.asarray(q_train, dtype=np.float32))
    w = torch.from_numpy(np.asarray(w_train if w_train is not None else np.ones(n), dtype=np.float32))
    opt, sched = _cosine_adamw(model, lr, weight_decay, epochs, max(1, math.ceil(n / batch_size)))
    keeper = _BestEpoch(np.asarray(y_val, dtype=int), patience)
    history: list[dict[str, float]] = []
    t0 = time.time()
    bar = _Bar(progress, desc, epochs)
    try:
        for epoch in range(epochs):
            rec: dict[str, float] = {"epoch": epoch + 1, "train_loss": _train_epoch(
                model, x_train, q, w, augment, batch_size, g, opt, sched, mixup)}
            if len(keeper.y_val):
                rec.update(keeper.score(model, predict_torch(model, x_val, eval_batch), epoch + 1))
            history.append(rec)
            bar.advance(rec)
            if keeper.exhausted():
                break
    finally:
        bar.close()
        model.to(memory_format=torch.contiguous_format)  # what is saved and exported is the ordinary layout
    best_epoch = keeper.restore(model) or len(history)
    model.eval()
    best = keeper.best
    return {
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "best_val_acc": best[0] if best else None,
        "best_val_loss": -best[1] if best else None,
        "history": history,
        "train_seconds": round(time.time() - t0, 2),
        "n_train": int(n),
        "n_val": int(len(keeper.y_val)),
    }


def _cosine_adamw(model: Any, lr: float, weight_decay: float, epochs: int, steps_per_epoch: int) -> tuple[Any, Any]:
    """AdamW over the trainable parameters with a one-epoch linear warm-up (at most 10 % of the run), then cosine."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * steps_per_epoch)
    warmup = min(steps_per_epoch, total // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * t))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def _train_epoch(model: Any, x: Any, q: Any, w: Any, augment: Callable[[Any, Any], Any] | None, batch_size: int,
                 g: Any, opt: Any, sched: Any, mixup: float = 0.0) -> float:
    """One pass over the shuffled training set: quality-weighted cross-entropy against the target distributions
    (mixed pairwise when ``mixup`` > 0).  Returns the mean training loss."""
    import torch
    import torch.nn.functional as F

    model.train()
    n = len(q)
    perm = torch.randperm(n, generator=g)
    tot_loss, seen = 0.0, 0
    for s in range(0, n, batch_size):
        idx = perm[s : s + batch_size]
        if len(idx) < 2 and n >= 2:
            continue  # BatchNorm cannot train on a batch of one
        xb = augment(x[idx], g) if augment is not None else x[idx]
        xb = xb.contiguous(memory_format=_memory_format(xb))
        qb, wb = q[idx], w[idx]
        if mixup > 0:
            lam = float(torch.distributions.Beta(mixup, mixup).sample())
            lam = max(lam, 1 - lam)  # the first item dominates: its weight and augmentation stay meaningful
            p = torch.randperm(len(idx), generator=g)
            xb, qb, wb = lam * xb + (1 - lam) * xb[p], lam * qb + (1 - lam) * qb[p], lam * wb + (1 - lam) * wb[p]
        per = -(qb * F.log_softmax(model(xb), dim=1)).sum(dim=1)
        loss = (per * wb).sum() / wb.sum().clamp_min(1e-8)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        tot_loss += float(loss.detach()) * len(idx)
        seen += len(idx)
    return tot_loss / max(seen, 1)


class _BestEpoch:
    """Early stopping on the validation split: keeps the weights of the epoch with the best (accuracy, -loss)."""

    def __init__(self, y_val: np.ndarray, patience: int) -> None:
        self.y_val, self.patience = y_val, patience
        self.best: tuple[float, float] | None = None
        self.state: dict[str, Any] | None = None
        self.epoch, self.since = -1, 0

    def score(self, model: Any, logits: np.ndarray, epoch: int) -> dict[str, float]:
        pv, y = softmax(logits), self.y_val
        rec = {"val_acc": float((pv.argmax(1) == y).mean()),
               "val_loss": float(-np.log(np.clip(pv[np.arange(len(y)), y], 1e-12, None)).mean())}
        key = (rec["val_acc"], -rec["val_loss"])
        if self.best is None or key > self.best:
            self.best, self.state, self.epoch, self.since = key, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            self.since += 1
        return rec

    def exhausted(self) -> bool:
        return bool(len(self.y_val)) and self.since >= self.patience

    def restore(self, model: Any) -> int | None:
        """Load the best epoch's weights into ``model``; its 1-based epoch, or None without validation."""
        if self.state is None:
            return None
        model.load_state_dict(self.state)
        return self.epoch


def _memory_format(x: Any) -> Any:
    """Channels-last for image batches: oneDNN's CPU convolutions train 1.3x (image-cnn) and 1.9x (EfficientNet's
    depthwise convolutions) faster in that layout (``benchmarks/bench_train_speed.py``)."""
    import torch

    return torch.channels_last if x.dim() == 4 else torch.contiguous_format


def predict_torch(model: Any, x: Any, batch: int = 256) -> np.ndarray:
    """Logits for an in-memory float tensor, in eval mode, without gradients."""
    import torch

    model.eval()
    fmt = _memory_format(x)  # the batches only: the model keeps its layout (the convolutions follow the input's)
    outs = []
    with torch.inference_mode():
        for s in range(0, len(x), batch):
            outs.append(model(x[s : s + batch].contiguous(memory_format=fmt)).float().numpy())
    if not outs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outs)


class _Bar:
    """A rich progress bar over epochs that shows the latest val accuracy (silent when disabled).

    Not a terminal (logs, CI, pipes): plain lines, at most one per tenth of the epochs or per 10 s, and the last
    epoch on close -- a 200-epoch head that stops early otherwise fills a log with a line an epoch."""

    PLAIN_EVERY_S = 10.0

    def __init__(self, enabled: bool, desc: str, total: int) -> None:
        self.p = None
        self.plain = enabled and not sys.stderr.isatty()
        self.desc, self.total, self.t0, self.done = desc, total, time.time(), 0
        self.last_line: str | None = None  # the latest epoch's line, not printed yet
        self.throttle = LineThrottle(self.PLAIN_EVERY_S)
        if enabled and not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), transient=False,
            )
            self.p.start()
            self.t = self.p.add_task(desc, total=total, info="")

    def advance(self, rec: dict[str, float]) -> None:
        self.done += 1
        if self.plain:
            now = time.time()
            val = f", val_acc {rec['val_acc']:.3f}" if "val_acc" in rec else ""
            self.last_line = (f"{self.desc}: epoch {self.done}/{self.total}, loss {rec['train_loss']:.3f}{val}, "
                              f"{now - self.t0:.0f}s")
            if self.throttle.due(self.done, self.total, now):
                self._print_plain(now)
        if self.p is not None:
            info = f"loss {rec['train_loss']:.3f}" + (f" val_acc {rec['val_acc']:.3f}" if "val_acc" in rec else "")
            self.p.update(self.t, advance=1, info=info)

    def _print_plain(self, now: float) -> None:
        print(self.last_line, file=sys.stderr, flush=True)
        self.last_line = None
        self.throttle.printed(self.done, self.total, now)

    def close(self) -> None:
        if self.plain and self.last_line is not None:  # stopped early between two printed lines
            self._print_plain(time.time())
        if self.p is not None:
            self.p.stop()
