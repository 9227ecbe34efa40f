"""Tables of a report, computed with pandas and handed to the templates as plain cells.

A ``Table`` carries, per cell, the text shown and the value the inline JavaScript sorts by
(``data-v``), so that "85.3%" sorts as 0.853 and a missing value sorts last. Builders take
the plain dicts / frames of the run files and return ``Table`` objects (or frames, where a
caller computes further).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mtl.tasks import KINDS

# How far above the majority baseline a task's accuracy must be to count as "learned something".
# Small validation splits make smaller gaps noise.
LEARNED_MARGIN = 0.02
# How far above chance (1 / classes present) the balanced accuracy must be for "partly": the
# model tells classes apart without beating the majority baseline in accuracy (skewed tasks).
# Larger than LEARNED_MARGIN: mean recall over rare classes of a small split is noisy.
PARTLY_MARGIN = 0.10
YES, PARTLY, NO = "yes", "partly", "no"

PERCENT = "percent"
NUMBER = "number"
INTEGER = "integer"
TEXT = "text"
DELTA = "delta"


@dataclass
class Cell:
    text: str
    sort: Any = None  # number or string the table sorts by; None sorts last
    css: str = ""  # "good" / "bad" / "muted" tints the cell
    links: list = field(default_factory=list)  # (text, relative href) shown after the text


@dataclass
class Table:
    """Column headers and rows of cells; ``numeric[i]`` right-aligns column ``i``."""

    headers: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    numeric: list[bool] = field(default_factory=list)
    caption: str = ""
    kv: bool = False  # a key / value list: no header row, keys as row headers

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, header: str) -> list[Cell]:
        i = self.headers.index(header)
        return [r[i] for r in self.rows]


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def format_value(value, fmt: str) -> Cell:
    """One cell: ``value`` formatted as ``fmt`` (percent, number, integer, delta or text)."""
    if is_missing(value):
        return Cell("–", None, "muted")
    if fmt == PERCENT:
        return Cell(f"{100 * float(value):.1f}%", float(value))
    if fmt == DELTA:
        v = float(value)
        if abs(v) < 0.0005:  # shown as 0.0: never "-0.0", never tinted
            return Cell("±0.0", v, "muted")
        css = "good" if v >= LEARNED_MARGIN else ("bad" if v < 0 else "muted")
        return Cell(f"{100 * v:+.1f}", v, css)
    if fmt == INTEGER:
        return Cell(f"{int(value):,}", int(value))
    if fmt == NUMBER:
        v = float(value)
        text = f"{v:,.0f}" if abs(v) >= 1000 else (f"{v:.4g}" if v != int(v) or abs(v) < 1 else f"{int(v)}")
        return Cell(text, v)
    return Cell(str(value), str(value))


def guess_format(series: pd.Series) -> str:
    """Column format from its values: integers, fractions in [0, 1] are left as numbers."""
    if pd.api.types.is_bool_dtype(series):
        return TEXT
    if pd.api.types.is_integer_dtype(series):
        return INTEGER
    if pd.api.types.is_numeric_dtype(series):
        return NUMBER
    return TEXT


def frame_table(df: pd.DataFrame, formats: Mapping[str, str] | None = None, caption: str = "",
                max_rows: int | None = None) -> Table:
    """A ``Table`` of a frame; column formats default to ``guess_format``.

    Args:
        df: the rows to show (its index is ignored).
        formats: column -> format for columns that should not be guessed.
        caption: text above the table.
        max_rows: keep the first rows only (the caption then says how many were dropped).
    """
    formats = dict(formats or {})
    fmts = [formats.get(c) or guess_format(df[c]) for c in df.columns]
    table = Table(headers=[str(c) for c in df.columns], numeric=[f != TEXT for f in fmts], caption=caption)
    shown = df if max_rows is None else df.head(max_rows)
    for row in shown.itertuples(index=False):
        table.rows.append([format_value(v, f) for v, f in zip(row, fmts)])
    if max_rows is not None and len(df) > max_rows:
        table.caption = (caption + " " if caption else "") + f"(first {max_rows} of {len(df):,} rows)"
    return table


def plain_text(value) -> str:
    """A value as a reader would write it, never as Python prints it: lists joined by commas,
    mappings as ``key: value`` pairs, ``None`` as "none", booleans as "yes" / "no"."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and math.isnan(value):
        return "–"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {plain_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return ", ".join(plain_text(v) for v in value)
    return str(value)


def key_value_table(items: Mapping[str, Any] | Iterable[tuple[str, Any]], caption: str = "") -> Table:
    """Two-column table of values; lists and mappings are written out as text (``plain_text``),
    long ones cut."""
    pairs = items.items() if isinstance(items, Mapping) else items
    table = Table(headers=["", "value"], numeric=[False, False], caption=caption, kv=True)
    for key, value in pairs:
        if isinstance(value, float):
            cell = format_value(value, NUMBER)
        elif isinstance(value, int) and not isinstance(value, bool):
            cell = format_value(value, INTEGER)
        else:
            text = plain_text(value)
            cell = Cell(text if len(text) <= 300 else text[:297] + "...", text)
        table.rows.append([Cell(str(key), str(key)), cell])
    return table


def task_overview(task_metrics: Mapping[str, dict]) -> pd.DataFrame:
    """One row per evaluated task: accuracy and macro F1 beside the majority-class baseline.

    Verdict ``yes``: accuracy beats the majority baseline by ``LEARNED_MARGIN``. ``partly``:
    it does not, but the balanced accuracy (mean recall over the classes present) beats chance
    (1 / classes present) by ``PARTLY_MARGIN`` - on a skewed attribute (hat: 95% "no") a model can
    tell classes apart while staying below the majority baseline in accuracy. ``no`` otherwise.

    Args:
        task_metrics: ``metrics.json["tasks"]`` (``mtl.scoring.evaluate_task`` results).

    Returns:
        A frame with columns task, kind, support, accuracy, majority, gain (accuracy - majority),
        macro_f1, balanced_accuracy, chance, verdict and learned (verdict == yes).
    """
    rows = []
    for name, r in task_metrics.items():
        if not isinstance(r, Mapping) or "accuracy" not in r:  # a regression task: no classes
            continue
        acc, base = _nan(r.get("accuracy")), _nan(r.get("majority_accuracy"))
        present = [c for c in (r.get("per_class") or []) if isinstance(c, Mapping) and (c.get("support") or 0) > 0]
        balanced = _nan(r.get("balanced_accuracy"))
        if math.isnan(balanced) and present:
            balanced = float(np.mean([_nan(c.get("recall")) for c in present]))
        chance = 1.0 / len(present) if present else np.nan
        gain = acc - base
        verdict = YES if gain >= LEARNED_MARGIN else (PARTLY if balanced - chance >= PARTLY_MARGIN else NO)
        rows.append({"task": name, "kind": r.get("kind", ""), "support": r.get("support"), "accuracy": acc,
                     "majority": base, "gain": gain, "macro_f1": _nan(r.get("macro_f1")),
                     "balanced_accuracy": balanced, "chance": chance, "verdict": verdict, "learned": verdict == YES})
    return pd.DataFrame(rows, columns=["task", "kind", "support", "accuracy", "majority", "gain", "macro_f1",
                                       "balanced_accuracy", "chance", "verdict", "learned"])


VERDICT_CSS = {YES: "good", PARTLY: "warn", NO: "bad"}


def overview_table(task_metrics: Mapping[str, dict]) -> Table:
    """``task_overview`` as a sortable table, the gain over the baseline and the verdict tinted."""
    df = task_overview(task_metrics)
    # the verdict and what it rests on first: on a phone the table scrolls sideways
    shown = df[["task", "verdict", "accuracy", "majority", "gain", "macro_f1", "balanced_accuracy", "chance",
                "support"]]
    shown.columns = ["task", "learned?", "accuracy", "majority baseline", "gain (points)", "macro F1",
                     "balanced acc.", "chance", "support"]
    table = frame_table(shown, {"support": INTEGER, "accuracy": PERCENT, "majority baseline": PERCENT,
                                "gain (points)": DELTA, "macro F1": PERCENT, "balanced acc.": PERCENT,
                                "chance": PERCENT})
    for row in table.rows:
        row[1].css = VERDICT_CSS.get(row[1].text, "")
    return table


def per_class_table(result: Mapping[str, Any]) -> Table:
    """Per-class precision / recall / F1 / support of one task (``evaluate_task`` result)."""
    df = pd.DataFrame(result.get("per_class") or [], columns=["class", "precision", "recall", "f1", "support"])
    total = df["support"].sum()
    df.insert(5, "share", df["support"] / total if total else np.nan)
    table = frame_table(df, {"precision": PERCENT, "recall": PERCENT, "f1": PERCENT, "support": INTEGER,
                             "share": PERCENT})
    table.headers = ["class", "precision", "recall", "F1", "support", "share of labels"]
    for row in table.rows:
        if row[4].sort == 0:  # a class absent from validation: its zeros mean nothing
            for c in row[1:4]:
                c.css = "muted"
    return table


def binary_table(task_metrics: Mapping[str, dict]) -> Table:
    """Binary attributes: accuracy, balanced accuracy (mA term), F1 of the positive class,
    macro F1 and the majority baseline, one row per attribute."""
    rows = []
    for name, r in task_metrics.items():
        kind = KINDS.get(r.get("kind"))
        if kind is None or not kind.yes_no:
            continue
        per_class = r.get("per_class") or []
        positive = per_class[1] if len(per_class) > 1 else {}
        acc, base = r.get("accuracy"), r.get("majority_accuracy")
        rows.append({"attribute": name, "positive class": positive.get("class", ""),
                     "support": r.get("support"), "accuracy": _nan(acc), "majority baseline": _nan(base),
                     "gain (points)": acc - base if acc is not None and base is not None else np.nan,
                     "balanced acc.": _nan(r.get("balanced_accuracy")), "F1 (positive)": _nan(positive.get("f1")),
                     "macro F1": _nan(r.get("macro_f1"))})
    df = pd.DataFrame(rows)
    return frame_table(df, {"support": INTEGER, "accuracy": PERCENT, "majority baseline": PERCENT,
                            "gain (points)": DELTA, "balanced acc.": PERCENT, "F1 (positive)": PERCENT,
                            "macro F1": PERCENT}) if len(df) else Table(headers=[])


REID_KEYS = ("mAP", "mINP", "rank1", "rank5", "rank10")
REID_LABELS = {"plain": "plain ranking", "reranked": "with re-ranking", "chance": "chance (random ranking)"}


def reid_variants(reid: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The rankings a re-id metrics dict holds, as ``(label, metrics)``, plain first, chance last.

    Two shapes are read: flat (``{"mAP": .., "rank1": .., "cmc": [..], "reranked": {..}}``) and
    nested as ``mtl.reid.protocol.evaluate_embeddings`` returns it (``{"plain": {..}, "reranked":
    {..}, "attr_weighted": {..}, "chance": {..}, "num_query": .., ...}``): every entry that is a
    dict with at least one of ``REID_KEYS`` is a ranking.
    """
    out: list[tuple[str, Mapping[str, Any]]] = []
    if any(k in reid for k in REID_KEYS):
        out.append(("plain", reid))
    out += [(k, v) for k, v in reid.items() if isinstance(v, Mapping) and any(m in v for m in REID_KEYS)]
    order = {"plain": 0, "reranked": 1, "chance": 3}
    out.sort(key=lambda kv: order.get(kv[0], 2))  # stable: other variants keep their order
    return [(REID_LABELS.get(k, k.replace("_", " ")), v) for k, v in out]


def reid_ranking(reid: Mapping[str, Any] | None, name: str = "plain") -> Mapping[str, Any]:
    """The metrics of one ranking (``plain``, ``reranked``, ...) in either shape; ``{}`` if absent."""
    if not isinstance(reid, Mapping):
        return {}
    if name == "plain" and any(k in reid for k in REID_KEYS):
        return reid
    value = reid.get(name)
    return value if isinstance(value, Mapping) else {}


def reid_table(reid: Mapping[str, Any]) -> Table:
    """mAP, mINP and rank-1/5/10, one row per ranking (plain, re-ranked, ..., chance)."""
    table = Table(headers=["ranking", "mAP", "mINP", "rank-1", "rank-5", "rank-10"], numeric=[False] + [True] * 5)
    for label, values in reid_variants(reid):
        row = [Cell(label, label)] + [format_value(_nan(values.get(k)), PERCENT) for k in REID_KEYS]
        if label.startswith("chance"):
            for c in row:
                c.css = "muted"
        table.rows.append(row)
    return table


def reid_extras(reid: Mapping[str, Any]) -> Table:
    """The other entries of the re-id metrics (distance, query / gallery sizes, notes), if any."""
    skip = set(REID_KEYS) | {"cmc"}
    items = []
    threshold = reid.get("threshold")
    if isinstance(threshold, Mapping) and threshold.get("value") is not None and threshold.get("f1") is not None:
        # variable-length retrieval (mtl.reid.threshold): what reid_test.txt --reid-threshold auto uses
        best = threshold.get("best_k") if isinstance(threshold.get("best_k"), Mapping) else {}
        fixed = f"; best fixed length k={best['k']}: F1 {best['f1']:.3f}" if {"k", "f1"} <= set(best) else ""
        items.append(("distance threshold", f"{threshold['value']:.4f} ({threshold.get('distance', '')}): F1 "
                                            f"{threshold['f1']:.3f} ({threshold.get('validation', '')}){fixed}"))
    for k, v in reid.items():
        if k in skip or isinstance(v, Mapping) or v is None:
            continue
        if isinstance(v, list):
            v = "; ".join(map(plain_text, v))
        if isinstance(v, (int, float, str)) and len(str(v)) < 400:
            items.append((k.replace("_", " "), v))
    return key_value_table(items)


def split_table(data: Mapping[str, Any], split: pd.DataFrame | None = None) -> Table:
    """Images and identities per split, from ``data.json`` (or ``split.csv`` when absent)."""
    splits = data.get("splits") if isinstance(data, Mapping) else None
    if not splits and split is not None and "split" in split:
        splits = {name: {"images": len(g), "identities": g["identity"].nunique() if "identity" in g else None}
                  for name, g in split.groupby("split", sort=False)}
    table = Table(headers=["split", "images", "identities"], numeric=[False, True, True])
    for name, v in (splits or {}).items():
        v = v if isinstance(v, Mapping) else {}
        table.rows.append([Cell(str(name), str(name)), format_value(v.get("images"), INTEGER),
                           format_value(v.get("identities"), INTEGER)])
    return table


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b": value}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(configs: Sequence[Mapping[str, Any] | None], names: Sequence[str]) -> Table:
    """Config keys whose values differ between runs, one column per run."""
    flats = [flatten(c or {}) for c in configs]
    keys = sorted(set().union(*flats))
    table = Table(headers=["config key"] + list(names), numeric=[False] * (1 + len(names)))
    for key in keys:
        values = [f.get(key, "(absent)") for f in flats]
        if len({repr(v) for v in values}) > 1:
            table.rows.append([Cell(key, key)] + [Cell(plain_text(v), plain_text(v)) for v in values])
    return table


def comparison_table(task_metrics: Sequence[Mapping[str, dict] | None], names: Sequence[str]) -> Table:
    """Per task: accuracy and macro F1 of each run, the majority baseline, and the difference
    of each later run to the first (for two runs: B - A)."""
    tasks: list[str] = []
    for m in task_metrics:
        for t in (m or {}):
            if t not in tasks:
                tasks.append(t)
    headers = ["task", "majority baseline"]
    for n in names:
        headers += [f"accuracy {n}", f"macro F1 {n}"]
    headers += [f"Δ accuracy {n}" for n in names[1:]]
    table = Table(headers=headers, numeric=[False] + [True] * (len(headers) - 1))
    for t in tasks:
        results = [(m or {}).get(t, {}) for m in task_metrics]
        base = next((r.get("majority_accuracy") for r in results if r.get("majority_accuracy") is not None), None)
        row = [Cell(t, t), format_value(base, PERCENT)]
        for r in results:
            row += [format_value(r.get("accuracy"), PERCENT), format_value(r.get("macro_f1"), PERCENT)]
        first = results[0].get("accuracy")
        for r in results[1:]:
            acc = r.get("accuracy")
            delta = acc - first if acc is not None and first is not None else None
            cell = format_value(delta, DELTA)
            if delta is not None and abs(delta) >= 0.0005:  # any visible difference is tinted
                cell.css = "good" if delta > 0 else "bad"
            row.append(cell)
        table.rows.append(row)
    return table


def sort_trials(trials: pd.DataFrame, objective: str | None, direction: str | None) -> pd.DataFrame:
    """Trials best first when ``objective`` names a numeric column (``direction`` "max" or
    anything else = minimise); otherwise unchanged."""
    if objective and objective in trials and pd.api.types.is_numeric_dtype(trials[objective]):
        return trials.sort_values(objective, ascending=str(direction).lower() not in ("max", "maximize"),
                                  na_position="last", kind="stable")
    return trials


def _nan(value) -> float:
    """A float, NaN for a missing or non-numeric value (hand-edited or partial metrics files)."""
    try:
        return float("nan") if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return float("nan")
