"""Matplotlib figures for the report, returned as PNG bytes so the HTML can embed them (one self-contained file).

Why bytes, not files: the report must open anywhere (mailed, archived) without a folder of images beside it.
Every function takes plain numbers/lists (what the store's JSON reports hold), never a model.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers/CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


# fonts that draw Chinese, Japanese and Korean, used as fallbacks when installed (matplotlib's own DejaVu Sans does
# not have those letters); the report's HTML text is drawn by the browser, which has them
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK KR", "Source Han Sans SC", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "Droid Sans Fallback", "AR PL UMing CN")


@functools.lru_cache(maxsize=1)
def _drawable_codepoints() -> frozenset[int]:
    """Characters the plots can draw: DejaVu Sans plus any installed CJK font, which becomes a fallback."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    installed = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    fallbacks = [name for name in CJK_FONTS if name in installed]
    if fallbacks:
        plt.rcParams["font.sans-serif"] = ["DejaVu Sans", *fallbacks, *plt.rcParams["font.sans-serif"]]
    paths = [font_manager.findfont("DejaVu Sans"), *(installed[name] for name in fallbacks)]
    return frozenset(cp for path in paths for cp in FT2Font(path).get_charmap())


def tick_labels(labels: Sequence[str]) -> tuple[list[str], str | None]:
    """(tick labels a plot can draw, the key a caption gives): the class names themselves, or -- when the fonts
    lack a letter of one (a Chinese label without a CJK font) -- their numbers 1..n and ``"1 = 发票, 2 = 密码"``."""
    cps = _drawable_codepoints()
    if all(ord(ch) in cps for lab in labels for ch in str(lab)):
        return list(labels), None
    return [str(i + 1) for i in range(len(labels))], ", ".join(f"{i + 1} = {lab}" for i, lab in enumerate(labels))


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _err(values: Sequence[float | None], cis: Sequence[Sequence[float] | None]) -> np.ndarray:
    lo, hi = [], []
    for v, ci in zip(values, cis):
        if v is None or not ci:
            lo.append(0.0), hi.append(0.0)
        else:
            lo.append(max(0.0, v - ci[0])), hi.append(max(0.0, ci[1] - v))
    return np.array([lo, hi])


def rounds_plot(rounds: Sequence[dict[str, Any]], teacher_accuracy: float | None = None) -> bytes:
    """Per-round student and cascade accuracy (95 % CI bars) and the teacher fraction."""
    r = [d["round"] for d in rounds]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for key, name, marker in (("student_accuracy", "student", "o"), ("cascade_accuracy", "cascade", "s")):
        vals = [d.get(key) for d in rounds]
        if all(v is None for v in vals):
            continue
        cis = [d.get(f"{key}_ci") for d in rounds]
        ax.errorbar(r, [np.nan if v is None else v for v in vals], yerr=_err(vals, cis), marker=marker, capsize=4, label=name)
    if teacher_accuracy is not None:
        ax.axhline(teacher_accuracy, color="grey", ls="--", label="teacher (single call)")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy on test (gold)")
    ax.set_xticks(r)
    ax2 = ax.twinx()
    tf = [d.get("teacher_fraction") for d in rounds]
    ax2.bar(r, [0 if v is None else v for v in tf], alpha=0.2, color="tab:red", width=0.4, label="teacher fraction")
    ax2.set_ylabel("fraction sent to teacher", color="tab:red")
    ax2.set_ylim(0, max(0.3, max([v or 0 for v in tf] + [0]) * 1.3))
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=8)
    ax.set_title("The wheel, round by round")
    return _png(fig)


def confusion_plot(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> bytes:
    """Row-normalised confusion matrix with counts (class numbers on the axes where the fonts lack a label's
    letters: :func:`tick_labels`)."""
    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    ticks = tick_labels(labels)[0]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.55 * n), 0.8 + 0.5 * n))  # wide enough for the title
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), ticks, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), ticks, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=6, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def reliability_plot(bins: Sequence[dict[str, float]], ece: float | None, title: str) -> bytes:
    """Reliability diagram: mean confidence vs accuracy per confidence bin (bar width ~ bin)."""
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    conf = [b["confidence"] for b in bins if b.get("n")]
    acc = [b["accuracy"] for b in bins if b.get("n")]
    cnt = [b["n"] for b in bins if b.get("n")]
    if conf:
        sizes = 20 + 200 * np.asarray(cnt) / max(cnt)
        ax.scatter(conf, acc, s=sizes, alpha=0.7)
        ax.plot(conf, acc, lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("calibrated confidence")
    ax.set_ylabel("accuracy (gold)")
    ax.set_title(title + (f"  ECE={ece:.3f}" if ece is not None else ""), fontsize=9)
    return _png(fig)


def cascade_curve_plot(curve: dict[str, Sequence[float]], threshold: float | None) -> bytes:
    """Accuracy and teacher fraction as the confidence threshold moves (test split, gold reference)."""
    t = np.asarray(curve["threshold"])
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    ax.plot(t, curve["cascade_accuracy"], label="cascade accuracy")
    est = np.asarray(curve.get("cascade_accuracy_est") or [], dtype=float)
    exact = np.asarray(curve["cascade_accuracy"], dtype=float)
    if est.size == t.size and np.isnan(exact).any() and not np.isnan(est).all():
        # where the teacher was not asked, only an estimate exists: drawn dashed, starting at the last exact point
        show = np.isnan(exact)
        last = np.flatnonzero(~show)
        if last.size:
            show[last[-1]] = True
        ax.plot(t[show], est[show], ls="--", color="tab:blue", alpha=0.6,
                label="cascade, estimated (teacher not asked)")
    if "accepted_accuracy" in curve:
        ax.plot(t, curve["accepted_accuracy"], label="accuracy on accepted", ls=":")
    ax.set_xlabel("confidence threshold")
    ax.set_ylabel("accuracy")
    ax2 = ax.twinx()
    ax2.plot(t, curve["teacher_fraction"], color="tab:red", label="teacher fraction")
    ax2.set_ylabel("teacher fraction", color="tab:red")
    if threshold is not None:
        ax.axvline(threshold, color="black", lw=1, ls="--", label=f"chosen {threshold:.3f}")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    ax.set_title("Cascade: accuracy vs teacher fraction", fontsize=9)
    return _png(fig)


def cost_plot(cost_teacher_1k: float, cost_cascade_1k: float, student_1k: float | None = None,
              ratio: float | None = None) -> bytes:
    """Cost per 1,000 items: teacher everywhere vs the cascade (student compute shown inside the cascade bar)."""
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.bar(["teacher everywhere", "cascade"], [cost_teacher_1k, cost_cascade_1k], color=["tab:grey", "tab:green"])
    if student_1k is not None:
        ax.bar(["cascade"], [student_1k], color="tab:olive", label="student compute")
        ax.legend(fontsize=8)
    for i, v in enumerate([cost_teacher_1k, cost_cascade_1k]):
        ax.text(i, v, f"${v:.4f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("USD per 1,000 items")
    # ``ratio`` None: the comparison says why there is no ratio (e.g. nothing was deferred on a small stream)
    ax.set_title("Cost per 1,000 items" + (f" ({ratio:.1f}x cheaper)" if ratio else " (ratio n/a, see the text)"),
                 fontsize=9)
    return _png(fig)


def per_class_plot(labels: Sequence[str], values: Sequence[float | None], title: str) -> bytes:
    """Per-class accuracy bars (teacher quality)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    ax.bar(range(len(labels)), [0 if v is None else v for v in values], color="tab:purple")
    ax.set_xticks(range(len(labels)), tick_labels(labels)[0], rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy vs gold")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def parity_plot(curve: Sequence[dict[str, Any]], teacher_accuracy: float | None,
                teacher_ci: Sequence[float] | None, parity_round: int | None) -> bytes:
    """Cascade accuracy on gold test (95 % CI bars) against the cumulative teacher spend when it was measured, with
    the teacher's single-call accuracy (and its interval) as the bar to reach."""
    pts = [p for p in curve if p.get("accuracy") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    if pts:
        x = [p["spend_usd"] for p in pts]
        y = [p["accuracy"] for p in pts]
        ax.errorbar(x, y, yerr=_err(y, [p.get("accuracy_ci") for p in pts]), marker="s", capsize=4, label="cascade")
        for p in pts:
            ax.annotate(f"r{p['round']}", (p["spend_usd"], p["accuracy"]), textcoords="offset points", xytext=(6, -10),
                        fontsize=7)
        hit = [p for p in pts if p["round"] == parity_round]
        if hit:
            ax.scatter([hit[0]["spend_usd"]], [hit[0]["accuracy"]], s=160, facecolors="none", edgecolors="tab:green",
                       linewidths=2, label=f"parity: ${hit[0]['spend_usd']:.2f}", zorder=5)
    if teacher_accuracy is not None:
        ax.axhline(teacher_accuracy, color="grey", ls="--", label="teacher (single call)")
        if teacher_ci:
            ax.axhspan(teacher_ci[0], teacher_ci[1], color="grey", alpha=0.15)
    ax.set_xlim(left=0)
    ax.set_xlabel("cumulative teacher spend (USD)")
    ax.set_ylabel("accuracy on test (gold)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Spend to parity: cascade accuracy vs teacher spend", fontsize=9)
    return _png(fig)


def served_plot(series: Sequence[dict[str, Any]], bucket_s: int, sources: Sequence[str]) -> bytes:
    """Served answers per day (or hour), stacked by source, with the share the student did not answer alone."""
    import datetime as dt

    x = np.arange(len(series))
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    bottom = np.zeros(len(series))
    for src in sources:
        v = np.array([d.get(src, 0) for d in series], dtype=float)
        if v.any():
            ax.bar(x, v, bottom=bottom, label=src, width=0.8)
            bottom += v
    fmt = "%m-%d" if bucket_s >= 86_400 else "%d %Hh"
    step = max(1, len(series) // 12)
    ax.set_xticks(x[::step])
    ax.set_xticklabels([dt.datetime.fromtimestamp(d["start"], dt.timezone.utc).strftime(fmt) for d in series][::step],
                       fontsize=7, rotation=45)
    ax.set_ylabel("answers per day" if bucket_s >= 86_400 else "answers per hour")
    ax2 = ax.twinx()
    ax2.plot(x, [d["deferred_fraction"] for d in series], color="black", marker=".", label="not the student alone")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("share not answered by the student alone")
    ax.set_ylim(0, max(1.0, float(bottom.max())) * 1.3)  # room for the legend above the bars
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=7, ncol=3)
    return _png(fig)


def history_plot(rows: Sequence[dict[str, Any]]) -> bytes:
    """Run by run: the last round's student and cascade accuracy on gold test (95 % CI bars) and the teacher's
    cumulative spend."""
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for key, label, off in (("student_accuracy", "student", -0.06), ("cascade_accuracy", "cascade", 0.06)):
        pts = [(i + off, r[key], r.get(f"{key}_ci")) for i, r in enumerate(rows) if r.get(key) is not None]
        if pts:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            err = np.array([[y - ci[0], ci[1] - y] if ci else [0.0, 0.0] for _, y, ci in pts]).T
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{label} (gold test)")
    ax.set_xticks(x)
    ax.set_xticklabels([f"run {r['run_id']}" for r in rows], fontsize=7, rotation=45)
    ax.set_ylabel("accuracy")
    ax2 = ax.twinx()
    ax2.plot(x, np.cumsum([r["teacher_cost_usd"] for r in rows]), color="black", ls="--", marker=".",
             label="teacher $ (cumulative)")
    ax2.set_ylabel("teacher USD, cumulative")
    ax2.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=7)
    return _png(fig)
