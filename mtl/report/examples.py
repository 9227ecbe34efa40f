"""Which predictions and retrievals a report shows: a bounded sample, however large the run.

``prediction_examples`` picks, per task, the most and least confident correct and wrong
predictions from ``val_predictions.csv``; ``retrieval_examples`` keeps the first queries of
``reid_examples.json`` and their top gallery items. Both return plain dicts for the templates
(with thumbnail URIs filled in by the caller's ``Thumbnailer``).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd

PER_GROUP = 6  # thumbnails per group (4 groups per task)
MAX_QUERIES = 10
MAX_GALLERY = 10

GROUPS = (
    ("confident and right", True, False),
    ("unsure but right", True, True),
    ("confident but wrong", False, False),
    ("unsure and wrong", False, True),
)


def prediction_examples(predictions: pd.DataFrame, task: str, classes: Sequence[str],
                        thumb: Callable[[str], str | None], per_group: int = PER_GROUP,
                        full: Callable[[str], str | None] | None = None) -> list[dict]:
    """The most and least confident correct and wrong predictions of one task.

    Args:
        predictions: ``val_predictions.csv`` (``path``, ``<task>_true``, ``<task>_pred``,
            ``<task>_conf``); rows with a true label of ``-1`` (missing) are skipped.
        task: task name.
        classes: class names (index = label); labels beyond them are shown as numbers.
        thumb: path -> thumbnail URI (or ``None`` for a missing image).
        per_group: items per group.
        full: path -> URI of the image at full size (what a click on the thumbnail shows), or None.

    Returns:
        Up to four groups ``{"title", "correct", "items": [{"path", "uri", "full", "true", "pred",
        "conf"}]}``; an item never appears in two groups, empty groups are dropped.
    """
    cols = [f"{task}_true", f"{task}_pred", f"{task}_conf"]
    if not set(cols) <= set(predictions.columns):
        return []
    df = predictions[["path"] + cols if "path" in predictions else cols].copy()
    df.columns = (["path"] if "path" in predictions else []) + ["true", "pred", "conf"]
    df = df[pd.to_numeric(df["true"], errors="coerce").fillna(-1) >= 0]
    df = df.dropna(subset=["pred", "conf"])
    if "path" not in df:
        df["path"] = ""
    df["correct"] = df["true"].astype(int) == df["pred"].astype(int)
    groups = []
    used: set = set()  # an item shown as "confident" is not shown again as "unsure"
    for title, correct, ascending in GROUPS:
        pool = df[(df["correct"] == correct) & ~df.index.isin(used)]
        # stable order on (confidence, row order): the same run always gives the same page
        order = np.lexsort((pool.index.to_numpy(), pool["conf"].to_numpy() * (1 if ascending else -1)))
        chosen = pool.iloc[order[:per_group]]
        used.update(chosen.index)
        if not len(chosen):
            continue
        items = [{"path": str(r.path), "uri": thumb(str(r.path)), "full": full(str(r.path)) if full else None,
                  "true": _label(r.true, classes),
                  "pred": _label(r.pred, classes), "conf": float(r.conf)} for r in chosen.itertuples()]
        groups.append({"title": title, "correct": correct, "items": items})
    return groups


def retrieval_examples(examples: list[dict], thumb: Callable[[str], str | None], max_queries: int = MAX_QUERIES,
                       max_gallery: int = MAX_GALLERY, full: Callable[[str], str | None] | None = None) -> list[dict]:
    """The first ``max_queries`` queries of ``reid_examples.json``, each with its gallery items
    down to rank ``max_gallery`` (the removed images among them shown where they fall, at most
    ``2 * max_gallery`` items), thumbnails attached; malformed entries are skipped.

    Args:
        examples: ``reid_examples.json`` (``mtl.reid.protocol.retrieval_examples`` writes it).
        thumb: path -> thumbnail URI; ``full``: path -> full-size URI (or None).
        max_queries, max_gallery: bounds.

    Returns:
        ``[{"query", "uri", "full", "identity", "camera", "ap", "chosen_as", "gallery": [{"path",
        "uri", "full", "identity", "camera", "distance", "match", "removed", "rank"}]}]`` where
        ``rank`` counts only the items the protocol keeps (same-camera matches removed have
        ``rank`` ``None``); ``ap`` / ``chosen_as`` (why the query is shown) may be ``None``.
    """
    full = full or (lambda _: None)
    out = []
    for q in examples:
        if len(out) >= max_queries:
            break
        if not isinstance(q, dict) or "query" not in q or not isinstance(q.get("gallery"), list):
            continue
        gallery, rank = [], 0
        for g in q["gallery"]:
            if not isinstance(g, dict):
                continue
            if rank == max_gallery or len(gallery) == 2 * max_gallery:
                break  # the top max_gallery ranks, with the removed images among them (bounded)
            removed = bool(g.get("same_camera_removed", False))
            rank += 0 if removed else 1
            gallery.append({"path": str(g.get("path", "")), "uri": thumb(str(g.get("path", ""))),
                            "full": full(str(g.get("path", ""))),
                            "identity": g.get("identity"), "camera": g.get("camera"),
                            "distance": _float(g.get("distance")), "match": bool(g.get("match", False)),
                            "removed": removed, "rank": None if removed else rank})
        chosen = q.get("chosen_as")
        out.append({"query": str(q["query"]), "uri": thumb(str(q["query"])), "full": full(str(q["query"])),
                    "identity": q.get("query_identity"), "camera": q.get("query_camera"), "gallery": gallery,
                    "ap": _float(q.get("ap")), "chosen_as": chosen if isinstance(chosen, str) else None,
                    "hit_at_1": next((g["match"] for g in gallery if not g["removed"]), False)})
    return out


def _label(value, classes: Sequence[str]) -> str:
    i = int(value)
    return classes[i] if 0 <= i < len(classes) else str(i)


def _float(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v
