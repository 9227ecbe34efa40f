"""The course deliverable files of the Market-1501 course layout.

``classification_test.csv``: one row per ``test/`` image, sorted by file name. The first column,
``file_name``, is the image's file name (``000123.jpg``); then the attribute columns in the order
and coding of ``annotations_train.csv``:

* ``age`` 1-4 (young, teenager, adult, old);
* ``backpack bag handbag clothes down up hair hat gender`` coded 1/2 (1 = the first value of the
  annotation README: no / dress / long / short hair / male, 2 = the second);
* the eight upper-body colour columns ``upblack .. upgreen`` then ``upmulticolor``, and the nine
  lower-body ``downblack .. downbrown`` then ``downmulticolor``, one-hot in the same 1/2 coding:
  exactly one of each group is 2 (``*multicolor`` = 2 where the annotation would set no colour).

``reid_test.txt``: one line per query image (``queries/``, sorted by name)::

    000123.jpg: 004567.jpg, 001234.jpg, ...

the gallery (``test/``) ranked best first, ``top`` images (100 by default, or the whole gallery
if smaller). File names only, no folders.

Variable-length lines (a distance threshold; :func:`threshold_rows`): each
query lists every gallery image at distance ``<= threshold``, best first, at least the nearest one
(a line needs one name, and a nearest guess costs less than no answer) and at most ``top``; the
rule ``mtl.reid.threshold`` chooses and scores the threshold under.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mtl.data.sources.market_course import BINARY_ATTRIBUTES, DOWN_COLUMNS, UP_COLUMNS
from mtl.errors import DataError
from mtl.io import atomic_path, atomic_write_text
from mtl.reid.threshold import MIN_RETURN, returned_counts

FILE_COLUMN = "file_name"
CLASSIFICATION_FILE = "classification_test.csv"
REID_FILE = "reid_test.txt"
UP_MULTI, DOWN_MULTI = "upmulticolor", "downmulticolor"
# the annotation file's order: age, then the binary attributes as the CSV has them, then colours
SCALAR_COLUMNS = ("age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender")
COLOR_GROUPS = {"upcolor": UP_COLUMNS + (UP_MULTI,), "downcolor": DOWN_COLUMNS + (DOWN_MULTI,)}
BINARY_TASKS = tuple(name for name, _ in BINARY_ATTRIBUTES)


def classification_columns(tasks: Sequence[str] | None = None) -> list[str]:
    """Attribute columns of ``classification_test.csv`` (after ``file_name``), in file order.

    Args:
        tasks: the task names predicted; None means all (the complete deliverable).
    """
    wanted = None if tasks is None else set(tasks)
    columns = [c for c in SCALAR_COLUMNS if wanted is None or c in wanted]
    for task, group in COLOR_GROUPS.items():
        if wanted is None or task in wanted:
            columns += list(group)
    return columns


def classification_frame(file_names: Sequence[str], predictions: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Predicted class indices -> the deliverable's table in the annotation coding.

    Args:
        file_names: image file names, one per row.
        predictions: ``{task: class index per row}`` for the Market attribute tasks (indices as in
            ``mtl.data.sources.market_course.market_tasks``: binary 0/1, age 0-3, colour 0..K-1
            with the last class multicolour). Tasks absent here have no columns.

    Returns:
        ``file_name`` and the columns of ``classification_columns(predictions)``, int codes.
    """
    n = len(file_names)
    frame = pd.DataFrame({FILE_COLUMN: [Path(f).name for f in file_names]})
    for task in predictions:
        if task not in SCALAR_COLUMNS and task not in COLOR_GROUPS:
            raise DataError(f"task {task!r} has no column in {CLASSIFICATION_FILE}")
    for column in SCALAR_COLUMNS:
        if column in predictions:
            idx = np.asarray(predictions[column]).reshape(-1)
            limit = 4 if column == "age" else 2
            if len(idx) != n or idx.min(initial=0) < 0 or idx.max(initial=0) >= limit:
                raise DataError(f"{column}: expected {n} class indices in 0..{limit - 1}")
            frame[column] = idx.astype(np.int64) + 1
    for task, group in COLOR_GROUPS.items():
        if task in predictions:
            idx = np.asarray(predictions[task]).reshape(-1)
            if len(idx) != n or idx.min(initial=0) < 0 or idx.max(initial=0) >= len(group):
                raise DataError(f"{task}: expected {n} class indices in 0..{len(group) - 1}")
            for i, column in enumerate(group):
                frame[column] = np.where(idx == i, 2, 1).astype(np.int64)
    return frame[[FILE_COLUMN] + classification_columns(list(predictions))]


def write_classification_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Write the table of ``classification_frame`` (atomically, no index column)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def top_k_rows(distmat: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` smallest entries of each row, smallest first (ties: lower index)."""
    distmat = np.asarray(distmat)
    k = min(int(k), distmat.shape[1])
    if 0 < k < distmat.shape[1]:
        # argpartition picks any of the entries tied with the k-th value: take all those below
        # it, then the lowest-index ones equal to it (a stable sort's choice)
        kth = np.take_along_axis(distmat, np.argpartition(distmat, k - 1, axis=1)[:, k - 1:k], axis=1)
        below = distmat < kth
        tied = distmat == kth
        room = k - np.count_nonzero(below, axis=1, keepdims=True)
        chosen = below | (tied & (np.cumsum(tied, axis=1) <= room))
        part = np.nonzero(chosen)[1].reshape(len(distmat), k)
    else:
        part = np.broadcast_to(np.arange(distmat.shape[1]), distmat.shape).copy()
    values = np.take_along_axis(distmat, part, axis=1)
    order = np.lexsort((part, values), axis=1)
    return np.take_along_axis(part, order, axis=1)


def threshold_rows(distmat: np.ndarray, threshold: float, top: int, min_return: int = MIN_RETURN
                   ) -> list[np.ndarray]:
    """Variable-length rankings: per row, the column indices with distance ``<= threshold``,
    smallest first (ties: lower index), at least ``min_return`` and at most ``top`` of them.

    Returns:
        One int array per row (the rule of ``mtl.reid.threshold.returned_counts``).
    """
    ranked = top_k_rows(distmat, top)
    return [row[:n] for row, n in zip(ranked, returned_counts(distmat, threshold, min_return, top))]


def rank_gallery(q_feat: np.ndarray, g_feat: np.ndarray, top: int = 100, distance: str = "cosine",
                 chunk: int = 256, threshold: float | None = None) -> np.ndarray | list[np.ndarray]:
    """Gallery indices per query, best first, computed ``chunk`` queries at a time (memory: one
    ``chunk x G`` block of distances).

    Args:
        q_feat, g_feat: ``(Q, D)`` / ``(G, D)`` descriptors.
        top: images per query (with ``threshold``: at most).
        distance: ``cosine`` or ``euclidean``.
        threshold: None: ``(Q, min(top, G))`` array; a distance: the variable-length lines of
            :func:`threshold_rows`, one array per query.
    """
    from mtl.reid.protocol import feature_distance

    rows = []
    for i in range(0, len(q_feat), chunk):
        d = feature_distance(q_feat[i:i + chunk], g_feat, distance)
        rows.append(top_k_rows(d, top) if threshold is None else threshold_rows(d, threshold, top))
    if threshold is not None:
        return [row for block in rows for row in block]
    return np.concatenate(rows) if rows else np.zeros((0, min(top, len(g_feat))), np.int64)


def reid_lines(query_names: Sequence[str], gallery_names: Sequence[str],
               ranking: np.ndarray | Sequence[np.ndarray]) -> list[str]:
    """``"q.jpg: g1.jpg, g2.jpg, ..."`` lines from a ``(Q, top)`` array of gallery indices, or one
    index array per query (variable-length lines, each non-empty)."""
    gallery = np.asarray([Path(g).name for g in gallery_names])
    if len(query_names) != len(ranking):
        raise DataError(f"{len(query_names)} queries but {len(ranking)} rankings")
    for q, row in zip(query_names, ranking):
        if len(row) == 0:  # an empty gallery: "q.jpg: " would not be a valid line
            raise DataError(f"{REID_FILE}: no gallery image to list for {Path(q).name} (a line names at least one)")
    return [f"{Path(q).name}: {', '.join(gallery[np.asarray(row, np.int64)])}" for q, row in zip(query_names, ranking)]


def write_reid_txt(path: str | Path, query_names: Sequence[str], gallery_names: Sequence[str],
                   ranking: np.ndarray | Sequence[np.ndarray]) -> None:
    """Write ``reid_test.txt`` (see the module docstring), atomically."""
    atomic_write_text(path, "\n".join(reid_lines(query_names, gallery_names, ranking)) + "\n")


_REID_LINE = re.compile(r"^([^:,\s]+): ([^:,\s]+(?:, [^:,\s]+)*)$")


def read_reid_txt(path: str | Path) -> dict[str, list[str]]:
    """Parse a ``reid_test.txt``: ``{query: [gallery names, best first]}``.

    Raises:
        DataError: a line that does not follow the format, a repeated query, or a repeated
            gallery image within one line (names the line).
    """
    ranked: dict[str, list[str]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        m = _REID_LINE.match(line)
        if not m:
            raise DataError(f"{path}:{number}: expected 'query.jpg: g1.jpg, g2.jpg, ...', got {line[:80]!r}")
        query, names = m.group(1), m.group(2).split(", ")
        if query in ranked:
            raise DataError(f"{path}:{number}: query {query} listed twice")
        if len(set(names)) != len(names):
            raise DataError(f"{path}:{number}: a gallery image is listed twice for {query}")
        ranked[query] = names
    return ranked
