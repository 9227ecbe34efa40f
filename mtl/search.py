"""Search a gallery of images with a trained run: by attribute values, by an example image, or both.

Attribute search (``--where "upcolor=red,backpack=yes"``): the model's probability of each asked
value is read from its task outputs (class names from the run's ``tasks.json``), and the gallery
is ranked by the **joint probability** ``P = prod_t p_t(value_t)``: the product over the named
tasks, the tasks treated as independent given the image (each head gives its own softmax /
sigmoid). Scores are kept as ``log P`` (a sum of logs, each probability clipped at ``1e-12``)
so that small products do not underflow.

Combined with an image query, the score of a gallery image ``g`` is::

    score(g) = d(q, g) - weight * log P(g)        (smaller is better)

``d`` is the appearance distance of the run's descriptor (``cosine``: ``1 - cos``, in [0, 2]),
``-log P >= 0`` the attribute penalty: an image that has the asked values for sure pays nothing,
one given probability 0.05 for one value pays ``weight * 3.0``. ``weight = 0`` is the pure
appearance ranking; a large weight ranks by attributes first, appearance breaking ties. With
``DEFAULT_WEIGHT = 0.05`` an attribute the model rejects at 5% costs 0.15, about the gap between a
good and a mediocre appearance match of a trained descriptor. Without ``--where`` an image query
ranks by ``d`` alone.

Which images are scored: attributes alone score every gallery image. With an image query the
index returns the appearance top ``candidates`` (default: the whole gallery for the exact index,
``APPROX_CANDIDATES`` for an approximate one) and only those are re-scored with the attributes:
an image outside them cannot be returned, however good its attributes.

The gallery is extracted once and kept next to the run, in ``RUN/index/`` (``mtl.rundir.INDEX``):
``mtl.predictions.predict_images`` writes ``predictions.csv`` with every class probability, the
identity descriptors ``embeddings.npy`` and ``skipped_images.csv``, and ``mtl.reid.index`` adds the
embedding index of the descriptors. A later search over the same images reuses them. Appearance
queries need the identity task (its descriptor); attribute search works with any attribute run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mtl.errors import ConfigError, DataError
from mtl.reid.index import EXACT, INDEX_JSON, EmbeddingIndex, build_index, load_index
from mtl.tasks import TaskSpec, classification_tasks

DEFAULT_WEIGHT = 0.05
APPROX_CANDIDATES = 1000
PROB_FLOOR = 1e-12  # log(0) would make one confident head veto everything, and -inf sorts badly


@dataclass(frozen=True)
class Condition:
    """One asked attribute value: ``task=value`` resolved against the run's task table."""

    task: str
    value: str
    class_index: int

    @property
    def label(self) -> str:
        return f"{self.task}={self.value}"


def parse_where(text: str, tasks: Sequence[TaskSpec]) -> list[Condition]:
    """``"upcolor=red,backpack=yes"`` -> conditions; names and values compared without case.

    Args:
        text: comma-separated ``task=value`` pairs.
        tasks: the run's task specs (``tasks.json``).

    Raises:
        ConfigError: a malformed pair, an unknown task or value (one line listing the valid ones),
            or one task asked with two different values.
    """
    by_name = {t.name.lower(): t for t in classification_tasks(tasks)}
    if not by_name:
        raise ConfigError("--where: the run has no attribute task to search by")
    conditions: dict[str, Condition] = {}
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise ConfigError(f"--where {text!r}: expected task=value pairs, e.g. upcolor=red,backpack=yes")
    for item in items:
        name, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not name or not value:
            raise ConfigError(f"--where item {item!r}: expected task=value, e.g. upcolor=red")
        spec = by_name.get(name.lower())
        if spec is None:
            raise ConfigError(f"--where: unknown task {name!r}; valid: {', '.join(t.name for t in by_name.values())}")
        classes = {c.lower(): i for i, c in enumerate(spec.classes)}
        if value.lower() not in classes:
            raise ConfigError(f"--where: unknown value {value!r} of task {spec.name!r}; valid: {', '.join(spec.classes)}")
        cond = Condition(spec.name, spec.classes[classes[value.lower()]], classes[value.lower()])
        old = conditions.get(spec.name)
        if old is not None and old != cond:
            raise ConfigError(f"--where: task {spec.name!r} asked twice ({old.value}, {cond.value}); give it once")
        conditions[spec.name] = cond
    return list(conditions.values())


def value_probabilities(probabilities: Mapping[str, np.ndarray], conditions: Sequence[Condition]) -> np.ndarray:
    """``(N, C)`` probability of each asked value (columns in ``conditions`` order).

    Args:
        probabilities: ``{task: (N, K) class probabilities}`` (``mtl.scoring.class_probabilities``).
        conditions: from ``parse_where``.

    Raises:
        DataError: a task missing from ``probabilities``.
    """
    columns = []
    for cond in conditions:
        if cond.task not in probabilities:
            raise DataError(f"no probabilities of task {cond.task!r} for this gallery; have: "
                            f"{', '.join(probabilities) or 'none'}")
        columns.append(np.asarray(probabilities[cond.task], dtype=np.float64)[:, cond.class_index])
    return np.stack(columns, axis=1)


def log_joint_probability(probabilities: Mapping[str, np.ndarray], conditions: Sequence[Condition]) -> np.ndarray:
    """``log prod_t p_t(value_t)`` per image, ``(N,)`` float64 (each ``p`` clipped at ``PROB_FLOOR``)."""
    return np.log(np.clip(value_probabilities(probabilities, conditions), PROB_FLOOR, 1.0)).sum(axis=1)


def combined_score(distance: np.ndarray, log_prob: np.ndarray, weight: float = DEFAULT_WEIGHT) -> np.ndarray:
    """``distance - weight * log_prob`` (smaller is better); see the module docstring."""
    if weight < 0:
        raise ConfigError(f"--weight must be >= 0, got {weight}")
    return np.asarray(distance, dtype=np.float64) - float(weight) * np.asarray(log_prob, dtype=np.float64)


def _best(score: np.ndarray, top: int) -> np.ndarray:
    """Indices of the ``top`` smallest scores, best first; ties by index."""
    top = min(int(top), len(score))
    part = np.argpartition(score, top - 1)[:top] if top < len(score) else np.arange(len(score))
    return part[np.lexsort((part, score[part]))]


@dataclass
class Gallery:
    """A gallery ready to search: image paths, attribute probabilities and an embedding index.

    Attributes:
        paths: the images, row ``i`` is index row ``i``.
        probabilities: ``{attribute task: (N, K) class probabilities}``.
        index: the embedding index of the run's identity descriptors (None: no identity task).
        skipped: images left out because they cannot be read or decoded (``path``, ``reason``).
    """

    paths: list[str]
    probabilities: dict[str, np.ndarray]
    index: EmbeddingIndex | None
    skipped: pd.DataFrame | None = None

    @classmethod
    def load(cls, folder: str | Path, tasks: Sequence[TaskSpec]) -> "Gallery":
        """Read a gallery folder written by :func:`build_gallery`.

        Raises:
            DataError: missing files or files that disagree on the gallery's size.
        """
        from mtl.rundir import PREDICTIONS_CSV, SKIPPED

        folder = Path(folder)
        csv = folder / PREDICTIONS_CSV
        if not csv.is_file():
            raise DataError(f"{folder}: no saved gallery ({PREDICTIONS_CSV} missing)")
        table = pd.read_csv(csv, keep_default_na=False, low_memory=False)
        probabilities = {}
        for t in classification_tasks(tasks):
            columns = [f"{t.name}={c}" for c in t.classes]
            if all(c in table.columns for c in columns):
                probabilities[t.name] = table[columns].to_numpy(dtype=np.float32)
        index = load_index(folder) if (folder / INDEX_JSON).is_file() else None
        if index is not None and len(index) != len(table):
            raise DataError(f"{folder}: the index holds {len(index)} images, {PREDICTIONS_CSV} {len(table)}; "
                            "build it again (--rebuild)")
        skipped = pd.read_csv(folder / SKIPPED, keep_default_na=False) if (folder / SKIPPED).is_file() else None
        return cls(table["path"].astype(str).tolist(), probabilities, index, skipped)

    def covers(self, paths: Sequence[str]) -> bool:
        """Whether this gallery was built from exactly ``paths`` (kept rows and skipped images, in order)."""
        kept = iter(self.paths)
        skipped = set() if self.skipped is None else set(self.skipped["path"].astype(str))
        rows = [p for p in map(str, paths) if p not in skipped]
        return len(rows) == len(self.paths) and all(p == q for p, q in zip(rows, kept))


def build_gallery(model, tasks: Sequence[TaskSpec], paths: Sequence[str], folder: str | Path, height: int,
                  width: int, batch_size: int = 64, index_kind: str = EXACT, metric: str = "cosine",
                  log=print) -> Gallery:
    """Extract a gallery once and save it in ``folder``: ``mtl.predictions.predict_images`` (the
    batched, bounded-memory pass that skips unreadable images) writes every class probability and
    the identity descriptors, and ``mtl.reid.index`` indexes the descriptors.

    Args:
        model, tasks: the run's model and task specs.
        paths: the gallery images (``mtl.data.images.list_images``).
        folder: where the gallery is kept (a run's ``mtl.rundir.INDEX`` folder).
        height, width, batch_size: the run's input size and the inference batch.
        index_kind, metric: see ``mtl.reid.index.build_index``.
        log: where the line about skipped images goes.
    """
    from mtl.predictions import predict_images

    result = predict_images(model, tasks, paths, height, width, folder, batch_size=batch_size, probabilities=True,
                            log=log)
    stale = Path(folder) / INDEX_JSON
    if stale.is_file():
        stale.unlink()  # an old index would not match the new rows
    if result.embeddings is not None:
        build_index(np.load(result.embeddings, mmap_mode="r"), index_kind, metric).save(folder)
    return Gallery.load(folder, tasks)


def search(gallery: Gallery, conditions: Sequence[Condition] = (), query_embedding: np.ndarray | None = None,
           top: int = 20, weight: float = DEFAULT_WEIGHT, candidates: int | None = None) -> pd.DataFrame:
    """Rank the gallery by attributes, by appearance, or by both (see the module docstring).

    Args:
        gallery: from ``build_gallery`` or ``Gallery.load``.
        conditions: asked attribute values (``parse_where``); may be empty with a query.
        query_embedding: ``(dim,)`` or ``(1, dim)`` descriptor of the query image, or None.
        top: rows returned.
        weight: the attribute weight of the combined score.
        candidates: appearance candidates re-scored with the attributes (default: the whole gallery
            for an exact index, ``APPROX_CANDIDATES`` for an approximate one).

    Returns:
        One row per result, best first: ``rank`` (1-based), ``path``, ``score`` (smaller is better),
        ``distance`` (with a query), ``joint_prob`` and one ``task=value`` probability column per
        condition (with conditions).

    Raises:
        ConfigError: neither conditions nor a query; ``top < 1``.
    """
    if not conditions and query_embedding is None:
        raise ConfigError("nothing to search by: give --where task=value,... and/or --query IMAGE")
    if int(top) < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    n = len(gallery.paths)
    frame = {}
    if query_embedding is None:
        log_p = log_joint_probability(gallery.probabilities, conditions)
        rows = _best(-log_p, top)
        score = -log_p[rows]
    else:
        if gallery.index is None:
            raise DataError("this gallery has no embedding index: an image query needs one")
        if candidates is None:
            candidates = n if gallery.index.kind == EXACT else APPROX_CANDIDATES
        k = max(int(top), min(int(candidates), n))
        dist, idx = gallery.index.search(np.asarray(query_embedding).reshape(1, -1), k)
        keep = idx[0] >= 0
        dist, idx = dist[0][keep].astype(np.float64), idx[0][keep]
        if conditions:
            log_p = log_joint_probability({t: p[idx] for t, p in gallery.probabilities.items()}, conditions)
            cand_score = combined_score(dist, log_p, weight)
        else:
            cand_score = dist
        order = _best(cand_score, top)
        rows, score = idx[order], cand_score[order]
        frame["distance"] = dist[order]
    table = pd.DataFrame({"rank": np.arange(1, len(rows) + 1), "path": [gallery.paths[i] for i in rows],
                          "score": score})
    for name, values in frame.items():
        table[name] = values
    if conditions:
        probs = value_probabilities({t: p[rows] for t, p in gallery.probabilities.items()}, conditions)
        table["joint_prob"] = probs.prod(axis=1)
        for j, cond in enumerate(conditions):
            table[cond.label] = probs[:, j]
    return table
