"""Figures of a report (matplotlib, Agg backend), returned as PNG ``data:`` URIs.

Every function builds one figure, encodes it and closes it, so rendering a report with many
tasks never accumulates open figures.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: reports render on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

DPI = 110
TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#ff7f0e"
BEST_COLOR = "#2ca02c"
# Per-task metrics plotted from history.json, in this order; "loss" is the weighted batch
# average and only shown when the exact per-epoch "xent" is absent.
PREFERRED_METRICS = ("xent", "accuracy")
MAX_LABELLED_CLASSES = 60  # confusion matrices with more classes get index ticks, not names


def png_uri(fig, tight: bool = False) -> str:
    """Encode ``fig`` as a PNG data URI and close it.

    Args:
        fig: a matplotlib figure (already laid out with ``tight_layout``).
        tight: crop to the drawn content (costs a second draw; for figures with colour bars or
            rotated labels, where ``tight_layout`` leaves margins).
    """
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if tight else None, pad_inches=0.05)
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def split_history(history: Sequence[Mapping], task_names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Which history keys belong to which task.

    Keys are ``<task>_<metric>`` (and ``val_`` + that); a key goes to the *longest* task name it
    starts with, so that task ``up`` does not claim ``upcolor_accuracy``.

    Returns:
        ``{task: {metric: key}}`` for training keys (validation keys are ``"val_" + key``);
        keys of no task are under ``""`` (``loss``, ``masked_loss``, ...).
    """
    keys: list[str] = []
    for epoch in history:
        keys += [k for k in epoch if k not in keys and not k.startswith("val_") and k not in ("epoch", "time_s")]
    by_length = sorted(task_names, key=len, reverse=True)
    out: dict[str, dict[str, str]] = {t: {} for t in task_names}
    out[""] = {}
    for key in keys:
        owner = next((t for t in by_length if key.startswith(t + "_")), "")
        metric = key[len(owner) + 1:] if owner else key
        out[owner][metric] = key
    return out


def metrics_to_plot(metrics: Mapping[str, str]) -> list[str]:
    """The metric names of one task worth plotting (see ``PREFERRED_METRICS``)."""
    chosen = [m for m in PREFERRED_METRICS if m in metrics]
    if "xent" not in metrics and "loss" in metrics:
        chosen.insert(0, "loss")
    chosen += [m for m in metrics if m not in chosen and m != "loss" and m not in PREFERRED_METRICS]
    return chosen


def _series(history: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i, e in enumerate(history):
        v = e.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(e.get("epoch", i + 1))
            ys.append(float(v))
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def curve_panel(history: Sequence[Mapping], key: str, title: str, best_epoch: int | None = None,
                validation: bool = True) -> str | None:
    """One metric over epochs, training vs validation, the epoch early stopping kept marked.

    One small figure per metric (rather than one wide figure per task) so that the page can lay
    panels out in a grid: several per row on a desktop, one per row on a phone, legible on both.
    The colours are explained once on the page (no legend inside the axes, where it hides lines).

    Args:
        history: ``history.json`` (per-epoch dicts with ``epoch``).
        key: training key (the validation key is ``"val_" + key``).
        title: panel title.
        best_epoch: the epoch the run kept (a dashed vertical line), or ``None``.
        validation: also draw the validation series (``False`` where it means nothing, see
            ``meaningless_validation``).

    Returns:
        A PNG data URI, or ``None`` when neither series has a value.
    """
    keys = ((key, TRAIN_COLOR), ("val_" + key, VAL_COLOR)) if validation else ((key, TRAIN_COLOR),)
    series = [(_series(history, k), color) for k, color in keys]
    if not any(len(x) for (x, _), _ in series):
        return None
    fig, ax = plt.subplots(figsize=(3.6, 2.4))
    for (x, y), color in series:
        if len(x):
            ax.plot(x, y, marker="o", markersize=3, color=color)
    if best_epoch is not None:
        ax.axvline(best_epoch, color=BEST_COLOR, linestyle="--", linewidth=1.3)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.ticklabel_format(axis="y", useOffset=False)  # "+2.944" above the axis reads as a value
    ax.grid(alpha=0.3)
    if "accuracy" in key:
        ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    return png_uri(fig)


def meaningless_validation(history: Sequence[Mapping], key: str) -> bool:
    """Whether the validation series of ``key`` is 0 at every epoch: the identity task's
    classification accuracy and cross-entropy on validation people, who are not among the
    training classes (0 by construction, not a result)."""
    _, y = _series(history, "val_" + key)
    return len(y) > 0 and bool(np.all(y == 0))


def same_series(history: Sequence[Mapping], a: str, b: str, rtol: float = 1e-3) -> bool:
    """Whether keys ``a`` and ``b`` (and their ``val_`` versions) hold the same values
    (then plotting both only repeats a panel)."""
    for pa, pb in ((a, b), ("val_" + a, "val_" + b)):
        (xa, ya), (xb, yb) = _series(history, pa), _series(history, pb)
        if len(xa) != len(xb) or not np.allclose(ya, yb, rtol=rtol, equal_nan=True):
            return False
    return True


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` counts, rows = true class, columns = predicted; ``-1`` / out-of-range skipped."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    keep = (y_true >= 0) & (y_true < num_classes) & (y_pred >= 0) & (y_pred < num_classes)
    flat = y_true[keep] * num_classes + y_pred[keep]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_figure(counts: np.ndarray, classes: Sequence[str], title: str) -> str:
    """Confusion matrix coloured by row share (recall per class), annotated with counts."""
    k = len(classes)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    size = min(2.2 + 0.42 * k, 14.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.92))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(k), [str(c) for c in classes], rotation=45 if k > 3 else 0,
                      ha="right" if k > 3 else "center", fontsize=8 if k <= 20 else 6)
        ax.set_yticks(range(k), [f"{c} ({n})" for c, n in zip(classes, rows[:, 0])], fontsize=8 if k <= 20 else 6)
    else:  # names would overlap: class indices, the per-class table names them
        title += f" (classes 0-{k - 1} in label order)"
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("true (labelled images)", fontsize=9)
    if k <= 25:  # beyond that the numbers overlap and the colours say enough
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7 if k <= 12 else 5,
                            color="white" if share[i, j] > 0.55 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return png_uri(fig, tight=True)


def scatter_figure(y_true: np.ndarray, y_pred: np.ndarray, title: str, max_points: int = 5000) -> str | None:
    """A regression task's predicted values against the true ones (labelled rows only), with the
    diagonal of perfect predictions; at most ``max_points`` points (an even sample), None when no
    row is labelled."""
    keep = np.isfinite(y_true) & np.isfinite(y_pred)
    y_true, y_pred = y_true[keep], y_pred[keep]
    if not len(y_true):
        return None
    if len(y_true) > max_points:
        pick = np.linspace(0, len(y_true) - 1, max_points).astype(int)
        y_true, y_pred = y_true[pick], y_pred[pick]
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    # true values are often whole numbers (a year): jitter them a little so that the points show
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(y_true)) if np.all(y_true == np.round(y_true)) else 0
    ax.scatter(y_true + jitter, y_pred, s=9, alpha=0.45, color="#2b6cb0", edgecolors="none")
    low, high = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    pad = 0.05 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="#888", lw=1, ls="--", label="predicted = true")
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("true", fontsize=9)
    ax.set_ylabel("predicted", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"{title} ({len(y_true)} images)", fontsize=10)
    fig.tight_layout()
    return png_uri(fig, tight=True)


def baseline_figure(overview: pd.DataFrame) -> str | None:
    """Horizontal bars: accuracy of each task beside its majority-class baseline.

    Args:
        overview: ``mtl.report.tables.task_overview`` frame.
    """
    df = overview.dropna(subset=["accuracy"])
    if not len(df):
        return None
    n = len(df)
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.36 * n))
    y = np.arange(n)
    palette = {"yes": "#2ca02c", "partly": "#e0a100", "no": "#d62728"}
    colors = [palette.get(v, "#7f7f7f") for v in df["verdict"]]
    ax.barh(y, df["accuracy"], height=0.6, color=colors, alpha=0.85)
    ax.scatter(df["majority"], y, marker="|", s=260, color="black", linewidths=2, zorder=3)
    for yi, acc, base in zip(y, df["accuracy"], df["majority"]):
        # right of both the bar and the baseline tick, so that neither hides the number
        right = max(acc, base) if np.isfinite(base) else acc
        ax.text(min(right + 0.015, 0.93), yi, f"{100 * acc:.0f}%", va="center", fontsize=7)
    ax.set_yticks(y, df["task"], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("validation accuracy", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    # hand-made entries: the bars' colour is the verdict, not "accuracy"
    handles = [Patch(color=palette["yes"], alpha=0.85, label="accuracy, learned"),
               Patch(color=palette["partly"], alpha=0.85, label="partly"),
               Patch(color=palette["no"], alpha=0.85, label="not"),
               Line2D([], [], color="black", marker="|", linestyle="none", markersize=12, markeredgewidth=2,
                      label="majority baseline")]
    ax.legend(handles=handles, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    fig.tight_layout()
    return png_uri(fig, tight=True)


def cmc_figure(curves: Mapping[str, Sequence[float]], max_rank: int = 50) -> str | None:
    """CMC curves (rank-k accuracy against k), one line per ranking ("plain", "re-ranked", ...)."""
    curves = {k: np.asarray(v, dtype=float)[:max_rank] for k, v in curves.items() if v is not None and len(v)}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    for name, cmc in curves.items():
        ax.plot(np.arange(1, len(cmc) + 1), cmc, marker="o", markersize=2.5, label=name)
    ax.set_xlabel("rank k", fontsize=9)
    ax.set_ylabel("matched within top k", fontsize=9)
    ax.set_ylim(min(0.0, min(float(c.min()) for c in curves.values())), 1.01)
    ax.set_xlim(0.5, max(len(c) for c in curves.values()) + 0.5)
    ax.xaxis.get_major_locator().set_params(integer=True)  # ranks are whole numbers
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    ax.set_title("CMC", fontsize=10)
    fig.tight_layout()
    return png_uri(fig, tight=True)


def trials_figure(trials: pd.DataFrame, objective: str, direction: str | None = None,
                  label: str | None = None) -> str | None:
    """Objective per trial in trial order, with the running best.

    Args:
        trials: one row per trial, in the order they ran.
        objective: the column holding the objective.
        direction: ``max`` / ``maximize`` or anything else (minimise).
        label: axis label (default: the column name).
    """
    values = pd.to_numeric(trials[objective], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(values).any():
        return None
    maximize = str(direction).lower() in ("max", "maximize")
    numbers = pd.to_numeric(trials["trial"], errors="coerce").to_numpy(dtype=float) if "trial" in trials else None
    # the trial numbers of trials.csv (what the console and the table say), else the row order
    x = numbers if numbers is not None and np.isfinite(numbers).all() else np.arange(1, len(values) + 1)
    filled = np.where(np.isfinite(values), values, -np.inf if maximize else np.inf)
    best = np.maximum.accumulate(filled) if maximize else np.minimum.accumulate(filled)
    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    ax.plot(x, values, "o", markersize=4, label=label or objective)
    ax.step(x, np.where(np.isfinite(best), best, np.nan), where="post", color=BEST_COLOR, label="best so far")
    if "majority_baseline" in trials:
        base = pd.to_numeric(trials["majority_baseline"], errors="coerce").dropna()
        if len(base):
            ax.axhline(float(base.iloc[0]), color="black", linestyle=":", linewidth=1.2, label="majority baseline")
    ax.set_xlabel("trial", fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(label or objective, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png_uri(fig)


def comparison_curves(histories: Sequence[Sequence[Mapping]], names: Sequence[str], key: str,
                      best_epochs: Sequence[int | None]) -> str | None:
    """One metric (validation and training) of several runs on shared axes."""
    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    drawn = False
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (history, name, best) in enumerate(zip(histories, names, best_epochs)):
        color = colors[i % len(colors)]
        for k, style, suffix in (("val_" + key, "-", "validation"), (key, ":", "training")):
            x, y = _series(history or [], k)
            if len(x):
                ax.plot(x, y, style, marker="o", markersize=3, color=color, label=f"{name} {suffix}")
                drawn = True
        if best is not None:
            ax.axvline(best, color=color, linestyle="--", linewidth=1, alpha=0.6)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_title(f"{key} (dashed line: epoch kept)", fontsize=10)
    ax.set_xlabel("epoch", fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    # below the axes: inside, four entries hide the lines
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.tight_layout()
    return png_uri(fig, tight=True)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def study_figure(sets: Sequence[str], values: Sequence[float], deltas: Sequence[float | None], label: str,
                 baseline: float | None = None, seeds: Mapping[str, Sequence[float]] | None = None) -> str | None:
    """The main task's metric per task set, each bar labelled with its difference to the main
    task trained alone (the first set), in points.

    Args:
        sets: task set names, the main task alone first.
        values: the metric of each set (mean over seeds), fractions in [0, 1].
        deltas: each set's value minus the first set's (``None`` / NaN: not known).
        label: the metric's name (axis label).
        baseline: the main task's majority-class accuracy (a vertical line), if known.
        seeds: per set, the value of each seed (dots over the bar) when there are several.
    """
    vals = np.asarray([float(v) if finite(v) else np.nan for v in values])
    if not len(vals) or not np.isfinite(vals).any():
        return None
    n = len(vals)
    fig, ax = plt.subplots(figsize=(6.4, 1.0 + 0.42 * n))
    y = np.arange(n)
    colors = ["#7f7f7f"] + [("#2ca02c" if finite(d) and d > 0 else "#d62728" if finite(d) and d < 0 else "#7f7f7f")
                            for d in list(deltas)[1:]]
    ax.barh(y, np.nan_to_num(vals), height=0.6, color=colors[:n], alpha=0.85)
    for yi, name in enumerate(sets):
        for v in (seeds or {}).get(name, ()) if len((seeds or {}).get(name, ())) > 1 else ():
            ax.plot([v], [yi], "o", color="black", markersize=3, zorder=3)
    if finite(baseline):
        ax.axvline(baseline, color="black", linewidth=1.5, linestyle=":")
    for yi, (v, d) in enumerate(zip(vals, deltas)):
        if not np.isfinite(v):
            continue
        text = f"{100 * v:.1f}%" if yi == 0 else (f"{100 * v:.1f}%  ({100 * d:+.1f} points)" if finite(d)
                                                 else f"{100 * v:.1f}%")
        ax.text(min(v + 0.015, 0.72), yi, text, va="center", fontsize=7)
    ax.set_yticks(y, list(sets), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(label, fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color="#7f7f7f", alpha=0.85, label="main task alone"),
               Patch(color="#2ca02c", alpha=0.85, label="better with the auxiliary tasks"),
               Patch(color="#d62728", alpha=0.85, label="worse")]
    if finite(baseline):
        handles.append(Line2D([], [], color="black", linestyle=":", label="majority baseline"))
    ax.legend(handles=handles, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    return png_uri(fig, tight=True)
