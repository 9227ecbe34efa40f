"""Embedding index for galleries too large for a dense distance matrix: build once, save next to the
run, query for the top-k.

One small interface over two back ends:

* ``exact`` (numpy only, nothing to install): the gallery is scanned in blocks; each block is one
  matrix product ``queries x block``, and a running top-k per query is kept with ``argpartition``.
  Memory is the gallery (memory-mapped from disk once saved, so it need not fit in RAM) plus one
  block of about ``2**21`` distances, whatever the gallery size. Same distances as
  ``mtl.reid.distance`` (``cosine``: ``1 - cos``, ``euclidean``: L2), same ranking as a stable
  sort of the dense matrix.
* FAISS (the ``index`` extra: ``pip install mtl-keras[index]``, i.e. ``faiss-cpu``), imported only
  when asked for: ``flat`` (exact, FAISS's brute force), ``ivf`` (inverted lists over k-means cells,
  ``nprobe`` cells searched per query) and ``hnsw`` (graph, ``ef_search`` candidates per query).
  ``ivf`` and ``hnsw`` are approximate: they may miss true neighbours (measure the recall against
  ``exact``: ``bench/bench_index.py``).

The cosine metric normalises the gallery and the queries to unit length and ranks by inner
product; distances are returned as ``1 - cos`` either way.

Saved layout (``EmbeddingIndex.save(folder)``; a run keeps it in ``mtl.rundir.INDEX``)::

    folder/index.json       kind, metric, dim, size, parameters, library
    folder/index.npy        exact: the (normalised) gallery, float32, memory-mapped on load
    folder/index.faiss      FAISS kinds: faiss.write_index

(``index.*`` names: the folder may hold other files, e.g. ``mtl.search`` keeps the gallery's
``predictions.csv`` and ``embeddings.npy`` beside the index.)

Ranking metrics from top-k lists: :func:`rank_metrics_from_topk` (mAP / CMC / mINP under the
Market-1501 protocol of ``mtl.reid.evaluate_rank``; exact when k covers every match).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mtl.errors import ConfigError, DataError
from mtl.io import atomic_path, atomic_write_json, make_folder
from mtl.reid.distance import _unit_rows
from mtl.reid.evaluate import _check_1d, check_max_rank, dense_codes

__all__ = ["KINDS", "METRICS", "EXACT", "EmbeddingIndex", "ExactIndex", "FaissIndex", "build_index", "load_index",
           "rank_metrics_from_topk", "recall_at_k"]

EXACT = "exact"
FAISS_KINDS = ("flat", "ivf", "hnsw")
KINDS = (EXACT,) + FAISS_KINDS
METRICS = ("cosine", "euclidean")
EXTRA = "index"  # setup.cfg extra that installs faiss-cpu

INDEX_JSON = "index.json"
EMBEDDINGS_NPY = "index.npy"
FAISS_FILE = "index.faiss"

# Distances held at once by the exact search (one block of queries x gallery rows); bounds its
# temporaries (the block, float32, and argpartition's int64 indices) to a few tens of MB.
_BLOCK_ELEMENTS = 1 << 21
_QUERY_ROWS = 1024  # queries per block: enough rows for an efficient matrix product


def _faiss():
    """``import faiss`` on first use, with a one-line error naming the extra when it is missing."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(f"the approximate index kinds ({', '.join(FAISS_KINDS)}) need FAISS: "
                          f"pip install 'mtl-keras[{EXTRA}]' (faiss-cpu); the 'exact' kind needs nothing extra") \
            from None
    return faiss


def _matrix(name: str, x, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(f"{name} must be a non-empty 2-D array (rows, dim), got shape {x.shape}")
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise DataError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{name} have dimension {x.shape[1]}, the index {dim}")
    return x


def _prepared(x: np.ndarray, metric: str) -> np.ndarray:
    """float32 C-contiguous rows, unit length for the cosine; normalised a block at a time so that a
    large gallery needs one float32 copy, not two."""
    out = np.empty(x.shape, dtype=np.float32)
    step = max(1, _BLOCK_ELEMENTS // max(x.shape[1], 1))
    for i0 in range(0, x.shape[0], step):
        block = np.asarray(x[i0:i0 + step], dtype=np.float32)
        out[i0:i0 + step] = _unit_rows(block) if metric == "cosine" else block
    return out


class EmbeddingIndex:
    """The interface: ``search(queries, k) -> (distances, indices)``, ``save(folder)``, ``len``.

    Attributes:
        kind: one of ``KINDS``.
        metric: ``cosine`` or ``euclidean``.
        dim: embedding dimension.
        params: the back end's parameters (saved with the index).
    """

    kind: str = ""

    def __init__(self, metric: str, dim: int, size: int, params: dict | None = None):
        self.metric, self.dim, self.size, self.params = metric, int(dim), int(size), dict(params or {})

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, metric={self.metric!r}, size={self.size}, dim={self.dim})"

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest gallery rows of each query, nearest first.

        Args:
            queries: ``(Q, dim)`` embeddings (any real dtype; normalised here for the cosine).
            k: neighbours per query; more than the gallery size gives the whole gallery.

        Returns:
            ``(distances, indices)``: float32 / int64 ``(Q, min(k, size))``; equal distances are
            ordered by gallery index. An approximate index that finds fewer than ``k`` rows pads
            with distance ``inf`` and index ``-1``.
        """
        queries = _matrix("queries", queries, self.dim)
        if int(k) < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        k = min(int(k), self.size)
        distances, indices = self._search(_prepared(queries, self.metric), k)
        # ties (and FAISS's own order among them) by gallery index, as mtl.reid.evaluate_rank ranks
        order = np.lexsort((indices, distances), axis=-1)
        return np.take_along_axis(distances, order, -1), np.take_along_axis(indices, order, -1)

    def _search(self, queries: np.ndarray, k: int):
        raise NotImplementedError

    def save(self, folder: str | Path) -> Path:
        """Write the index into ``folder`` (created); ``index.json`` last, so it names a complete index.

        Returns:
            The folder.
        """
        folder = make_folder(folder)
        self._save_data(folder)
        atomic_write_json(folder / INDEX_JSON, {"kind": self.kind, "metric": self.metric, "dim": self.dim,
                                                "size": self.size, "params": self.params})
        return folder

    def _save_data(self, folder: Path) -> None:
        raise NotImplementedError


class ExactIndex(EmbeddingIndex):
    """Exact search in numpy: blocks of ``queries x gallery rows`` and a running top-k per query."""

    kind = EXACT

    def __init__(self, gallery: np.ndarray, metric: str):
        super().__init__(metric, gallery.shape[1], gallery.shape[0])
        self.gallery = gallery  # prepared: float32, unit rows for the cosine (maybe a memory map)
        self._sq_norms = None

    def _gallery_sq_norms(self) -> np.ndarray:
        if self._sq_norms is None:
            self._sq_norms = np.concatenate([np.einsum("ij,ij->i", b, b) for b in self._blocks(1 << 16)])
        return self._sq_norms

    def _blocks(self, rows: int):
        for g0 in range(0, self.size, rows):
            yield np.asarray(self.gallery[g0:g0 + rows])

    def _search(self, queries: np.ndarray, k: int):
        euclid = self.metric == "euclidean"
        g_sq = self._gallery_sq_norms() if euclid else None
        out_d = np.empty((len(queries), k), dtype=np.float32)
        out_i = np.empty((len(queries), k), dtype=np.int64)
        q_rows = min(len(queries), _QUERY_ROWS)
        g_rows = max(k, _BLOCK_ELEMENTS // q_rows)
        for q0 in range(0, len(queries), q_rows):
            q = queries[q0:q0 + q_rows]
            q_sq = np.einsum("ij,ij->i", q, q) if euclid else None
            best_d = np.empty((len(q), 0), dtype=np.float32)
            best_i = np.empty((len(q), 0), dtype=np.int64)
            for g0 in range(0, self.size, g_rows):
                block = np.asarray(self.gallery[g0:g0 + g_rows])
                d = q @ block.T
                if euclid:  # squared L2 = |q|^2 + |g|^2 - 2 q.g (square root once, at the end)
                    d *= -2.0
                    d += q_sq[:, None]
                    d += g_sq[None, g0:g0 + len(block)]
                else:
                    np.subtract(1.0, d, out=d)
                idx = np.broadcast_to(np.arange(g0, g0 + len(block)), d.shape)
                if d.shape[1] > k:
                    part = np.argpartition(d, k - 1, axis=1)[:, :k]
                    d, idx = np.take_along_axis(d, part, 1), np.take_along_axis(idx, part, 1)
                best_d, best_i = np.concatenate([best_d, d], 1), np.concatenate([best_i, idx], 1)
                if best_d.shape[1] > k:
                    part = np.argpartition(best_d, k - 1, axis=1)[:, :k]
                    best_d, best_i = np.take_along_axis(best_d, part, 1), np.take_along_axis(best_i, part, 1)
            out_d[q0:q0 + len(q)], out_i[q0:q0 + len(q)] = best_d, best_i
        if euclid:
            np.sqrt(np.maximum(out_d, 0.0, out=out_d), out=out_d)
        return out_d, out_i

    def _save_data(self, folder: Path) -> None:
        with atomic_path(folder / EMBEDDINGS_NPY) as tmp:
            with open(tmp, "wb") as handle:  # np.save on a path would append .npy to the temporary name
                np.save(handle, np.asarray(self.gallery), allow_pickle=False)


class FaissIndex(EmbeddingIndex):
    """A FAISS index (``flat``, ``ivf`` or ``hnsw``); cosine = inner product of unit rows."""

    def __init__(self, kind: str, index, metric: str, size: int, params: dict):
        super().__init__(metric, index.d, size, params)
        self.kind, self.index = kind, index
        self._apply_params()

    def _apply_params(self) -> None:
        # search-time settings are not all kept by faiss.write_index: set them after every load
        if self.kind == "ivf":
            self.index.nprobe = int(self.params["nprobe"])
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = int(self.params["ef_search"])

    def _search(self, queries: np.ndarray, k: int):
        scores, indices = self.index.search(queries, k)
        indices = indices.astype(np.int64, copy=False)
        missing = indices < 0
        if self.metric == "cosine":
            distances = (1.0 - scores).astype(np.float32)
        else:
            distances = np.sqrt(np.maximum(scores, 0.0)).astype(np.float32)
        distances[missing] = np.inf
        return distances, indices

    def _save_data(self, folder: Path) -> None:
        faiss = _faiss()
        with atomic_path(folder / FAISS_FILE) as tmp:
            faiss.write_index(self.index, str(tmp))


def _faiss_params(kind: str, size: int, nlist: int | None, nprobe: int | None, hnsw_m: int,
                  ef_search: int, ef_construction: int) -> dict:
    if kind == "ivf":
        # sqrt(G) cells keeps the k-means (G x nlist) affordable on a CPU; FAISS wants >= 39 points a cell
        nlist = int(nlist or max(1, min(int(round(np.sqrt(size))), size // 39)))
        return {"nlist": nlist, "nprobe": int(min(nlist, nprobe or max(1, nlist // 32)))}
    if kind == "hnsw":
        return {"m": int(hnsw_m), "ef_search": int(ef_search), "ef_construction": int(ef_construction)}
    return {}


def build_index(embeddings, kind: str = EXACT, metric: str = "cosine", *, nlist: int | None = None,
                nprobe: int | None = None, hnsw_m: int = 32, ef_search: int = 64, ef_construction: int = 64,
                seed: int = 0) -> EmbeddingIndex:
    """Build an index over gallery embeddings.

    Args:
        embeddings: ``(G, dim)`` gallery embeddings, row ``i`` is gallery item ``i``.
        kind: ``exact`` (numpy), or with FAISS ``flat`` (exact), ``ivf`` or ``hnsw`` (approximate).
        metric: ``cosine`` (rows normalised; distance ``1 - cos``) or ``euclidean``.
        nlist: ``ivf`` cells (default ``sqrt(G)``, at most ``G / 39``).
        nprobe: ``ivf`` cells searched per query (default ``nlist / 32``, at least 1): the
            speed / recall trade-off.
        hnsw_m: ``hnsw`` neighbours per node.
        ef_search, ef_construction: ``hnsw`` candidate-list lengths at search / build time.
        seed: of the ``ivf`` k-means.

    Returns:
        An ``EmbeddingIndex``.

    Raises:
        ConfigError: unknown kind or metric (the valid ones listed); FAISS missing for a FAISS kind.
        DataError: embeddings that are not a non-empty 2-D real array.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; valid: {', '.join(KINDS)}")
    if metric not in METRICS:
        raise ConfigError(f"unknown index metric {metric!r}; valid: {', '.join(METRICS)}")
    embeddings = _matrix("embeddings", embeddings)
    if kind == EXACT:
        return ExactIndex(_prepared(embeddings, metric), metric)
    faiss = _faiss()
    size, dim = embeddings.shape
    params = _faiss_params(kind, size, nlist, nprobe, hnsw_m, ef_search, ef_construction)
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    if kind == "flat":
        index = faiss.IndexFlat(dim, faiss_metric)
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlat(dim, faiss_metric), dim, params["nlist"], faiss_metric)
        index.cp.seed = int(seed)
    else:
        index = faiss.IndexHNSWFlat(dim, params["m"], faiss_metric)
        index.hnsw.efConstruction = params["ef_construction"]
    data = _prepared(embeddings, metric)
    if not index.is_trained:
        index.train(data)
    index.add(data)
    return FaissIndex(kind, index, metric, size, params)


def load_index(folder: str | Path, mmap: bool = True) -> EmbeddingIndex:
    """Read an index written by ``EmbeddingIndex.save``.

    Args:
        folder: the index folder.
        mmap: memory-map an exact index's embeddings (searched block by block from disk).

    Raises:
        DataError: no index there, or its files do not match ``index.json``.
        ConfigError: a FAISS index without FAISS installed.
    """
    folder = Path(folder)
    meta_file = folder / INDEX_JSON
    if not meta_file.is_file():
        raise DataError(f"{folder}: no embedding index ({INDEX_JSON} missing)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        kind, metric, size, dim = meta["kind"], meta["metric"], int(meta["size"]), int(meta["dim"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{meta_file}: unreadable index description ({exc})") from None
    if kind not in KINDS or metric not in METRICS:
        raise DataError(f"{meta_file}: unknown kind {kind!r} or metric {metric!r}")
    if kind == EXACT:
        try:
            gallery = np.load(folder / EMBEDDINGS_NPY, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{folder / EMBEDDINGS_NPY}: cannot read the index's embeddings ({exc})") from None
        index: EmbeddingIndex = ExactIndex(gallery, metric)
    else:
        faiss = _faiss()
        try:
            raw = faiss.read_index(str(folder / FAISS_FILE))
        except RuntimeError as exc:
            raise DataError(f"{folder / FAISS_FILE}: cannot read the FAISS index "
                            f"({str(exc).strip().splitlines()[-1]})") from None
        index = FaissIndex(kind, raw, metric, raw.ntotal, meta.get("params", {}))
    if (index.size, index.dim) != (size, dim):
        raise DataError(f"{folder}: the index data hold {index.size} x {index.dim} embeddings, "
                        f"{INDEX_JSON} says {size} x {dim} (an interrupted save? build it again)")
    return index


# === Metrics from top-k lists ===

def recall_at_k(approx_indices, exact_indices, k: int = 10) -> float:
    """Mean over queries of ``|approx top-k & exact top-k| / k``: how many true neighbours an
    approximate index finds (both arrays ``(Q, >= k)``, nearest first)."""
    approx, exact = np.asarray(approx_indices)[:, :k], np.asarray(exact_indices)[:, :k]
    hits = [np.intersect1d(a, e[e >= 0]).size for a, e in zip(approx, exact)]
    return float(np.mean(hits) / k)


def rank_metrics_from_topk(indices, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50) -> dict:
    """mAP, mINP and CMC of top-k lists (Market-1501 protocol), for galleries with no dense matrix.

    The protocol is the one of ``mtl.reid.evaluate_rank``: for each query the gallery items with its
    identity **and** its camera are removed from the ranking; the other items of its identity are
    its matches; a query with no match in the **whole** gallery is skipped. The rank of an item is
    its position in the list among the items not removed.

    Exactness: when each query's list holds all of its matches (``k`` at least its number of
    same-identity gallery items ranked up to its last match), every number equals
    ``evaluate_rank`` on the dense distance matrix whose stable ranking the lists are (the index's
    order: distance, then gallery index). Otherwise the numbers are **lower bounds**:

    * a match missing from the list adds 0 to the query's AP, whose denominator is still the
      number of matches in the whole gallery (as if that match were ranked at infinity), so mAP
      is under-estimated by at most ``mean(missing matches / matches)``;
    * a query whose last match is missing gets INP 0 (mINP under-estimated);
    * ``CMC[r]`` is exact for every ``r`` up to the number of non-removed items in the shortest
      list (a first match at rank ``<= r`` is always in the list); beyond it, a query whose first
      match is not in its list counts as a miss.

    An approximate index adds its own misses: these metrics then measure the index and the
    descriptor together (compare with the exact index's to separate them).

    Args:
        indices: ``(Q, k)`` gallery indices, nearest first; ``-1`` entries (padding) are ignored.
        q_pids, g_pids: identities of the queries / all ``G`` gallery items.
        q_camids, g_camids: their cameras.
        max_rank: length of the returned CMC curve.

    Returns:
        A flat dict as ``evaluate_rank``: ``mAP``, ``mINP``, ``rank1``, ``rank5``, ``rank10``,
        ``cmc``, ``num_valid_queries``, ``num_queries``, plus ``matches_found`` (the share of all
        queries' matches that are in their lists: 1.0 means exact).

    Raises:
        ValueError: bad shapes, indices out of range, ``max_rank < 1``, or no query with a match.
    """
    indices = np.asarray(indices)
    if indices.ndim != 2 or indices.shape[0] == 0:
        raise ValueError(f"indices must be 2-D (num_query, k), got shape {indices.shape}")
    if indices.dtype.kind not in "iu":
        raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
    num_q = indices.shape[0]
    g_pids = np.asarray(g_pids)
    if g_pids.ndim != 1:
        raise ValueError(f"g_pids must be one-dimensional, got shape {g_pids.shape}")
    num_g = g_pids.shape[0]
    q_pids = _check_1d("q_pids", q_pids, num_q, "rows (queries)")
    q_camids = _check_1d("q_camids", q_camids, num_q, "rows (queries)")
    g_camids = _check_1d("g_camids", g_camids, num_g, "gallery items")
    if indices.size and (indices.max() >= num_g or indices.min() < -1):
        raise ValueError(f"indices must lie in [0, {num_g}) (or be -1 for padding)")
    max_rank = check_max_rank(max_rank)

    # matches of each query in the whole gallery: same identity minus same identity and camera
    q_code, g_code = dense_codes(q_pids, g_pids)
    q_cam, g_cam = dense_codes(q_camids, g_camids)
    num_codes = int(max(q_code.max(), g_code.max())) + 1
    num_cams = int(max(q_cam.max(), g_cam.max())) + 1
    same_id = np.bincount(g_code, minlength=num_codes)[q_code]
    same_id_cam = np.bincount(g_code * num_cams + g_cam, minlength=num_codes * num_cams)[q_code * num_cams + q_cam]
    total_matches = same_id - same_id_cam
    valid = total_matches > 0
    if not valid.any():
        raise ValueError("no query has a matching gallery image (same identity, different camera); "
                         "the metrics are undefined - check the query/gallery identities and cameras")

    present = indices >= 0
    safe = np.where(present, indices, 0)
    same = present & (g_code[safe] == q_code[:, None])
    removed = same & (g_cam[safe] == q_cam[:, None])
    match = same & ~removed
    rank = np.cumsum(present & ~removed, axis=1)  # 1-based rank among the kept items
    found = np.cumsum(match, axis=1)  # matches so far
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(match, found / np.maximum(rank, 1), 0.0)
    num_found = found[:, -1]
    ap = precision.sum(axis=1)[valid] / total_matches[valid]
    last_rank = np.where(match, rank, 0).max(axis=1)
    inp = np.where(num_found == total_matches, total_matches / np.maximum(last_rank, 1), 0.0)[valid]
    has_match = match.any(axis=1)
    first_rank = np.where(has_match, np.take_along_axis(rank, match.argmax(axis=1)[:, None], 1)[:, 0],
                          np.iinfo(np.int64).max)[valid]
    cmc = np.array([np.mean(first_rank <= r) for r in range(1, max_rank + 1)], dtype=np.float64)
    return {
        "mAP": float(ap.mean()),
        "mINP": float(inp.mean()),
        "rank1": float(np.mean(first_rank <= 1)),
        "rank5": float(np.mean(first_rank <= 5)),
        "rank10": float(np.mean(first_rank <= 10)),
        "cmc": cmc,
        "num_valid_queries": int(valid.sum()),
        "num_queries": int(num_q),
        "matches_found": float(num_found[valid].sum() / total_matches[valid].sum()),
    }
