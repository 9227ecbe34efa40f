"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017), sparse and chunked.

Pure numpy / scipy, no TensorFlow. :func:`re_ranking` takes the same inputs and computes the
same distance as the numpy implementation shipped with the paper and copied into torchreid
and fast-reid (``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3)``),
but where that one builds dense ``(Q+G)^2`` matrices (the distances, their full argsort, the
encoding ``V`` and its query expansion; about 7 GiB and 85 s at Market-1501 size on the
benchmark machine, see ``bench/bench_rerank.py``), this one keeps only what the algorithm
uses:

* the ``k1 + 1`` nearest neighbours of every item. The distances are read once, by blocks
  of rows of the input matrices (or computed by panels of rows from the embeddings, each
  entry once thanks to the symmetry); every item keeps its ``k1 + 1`` best candidates, and
  once it has them, a block is reduced by a single comparison with its current
  ``(k1+1)``-th best distance. No row is ever sorted;
* ``V`` as a scipy CSR matrix (each row holds the k-reciprocal expansion set, a few dozen
  items); the local query expansion is one sparse product;
* the Jaccard distance only for query rows against gallery columns, through the inverted
  index of ``V`` (sum of element-wise minima over the shared non-zero columns), a chunk of
  query rows at a time, written into the output.

Extra memory is the ``(Q, G)`` float32 output plus O((Q+G) * k1 * k2) for the sparse
structures and a few tens of MB of chunk buffers (and, for :func:`re_ranking_features`, a
float32 copy of the embeddings and one panel of distances).

Semantics reproduced from the reference implementation (so that its results are matched):

* ``original_dist`` is the block matrix ``[[q_q, q_g], [q_g^T, g_g]]`` squared element-wise,
  cast to float32, each column divided by its maximum, then transposed: row ``i`` of it is
  column ``i`` of the squared block matrix over that column's maximum;
* the neighbours of item ``i`` are ranked on row ``i``; ``V[i]`` holds ``exp(-original_dist)``
  over the k-reciprocal expansion set of ``i`` (the k1-reciprocal neighbours, extended by the
  ``round(k1/2)``-reciprocal sets of those neighbours that share more than 2/3 of their set
  with it), normalised to sum 1; with ``k2 > 1``, ``V[i]`` is then replaced by the mean of
  ``V`` over the ``k2`` nearest neighbours of ``i``;
* ``jaccard = 1 - sum(min(V_q, V_g)) / (2 - sum(min(V_q, V_g)))`` and
  ``final = (1 - lambda) * jaccard + lambda * original_dist``, in float32, query rows x
  gallery columns.

Differences: neighbours are ranked on the squared distances before the per-row division
(the division by a positive constant keeps the order, except that rounding may make two
close values equal), and ties are broken by index, where the reference's ``argsort`` leaves
the order of ties unspecified. Sums are accumulated in a different order (differences of
order 1e-7).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["re_ranking", "re_ranking_features"]

_ROW_ELEMENTS = 1 << 22  # distance entries per chunk of rows (neighbour search)
_PANEL_ELEMENTS = 1 << 24  # distance entries per panel (features: one matrix product)
_EXPAND_ELEMENTS = 1 << 21  # (query entry, gallery entry) pairs per Jaccard chunk
_PAIR_CHUNK = 1 << 14  # pairs per chunk when computing distances of feature pairs
_MERGE_ELEMENTS = 1 << 23  # keys sorted at once when merging neighbour candidates
_NO_KEY = np.iinfo(np.uint64).max


def _check_params(k1, k2, lambda_value, num_all):
    k1, k2 = int(k1), int(k2)
    lambda_value = float(lambda_value)
    if k1 < 1:
        raise ValueError(f"k1 must be >= 1, got {k1}")
    if not 1 <= k2 <= k1 + 1:
        raise ValueError(f"k2 must be between 1 and k1 + 1 = {k1 + 1}, got {k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    if k1 + 1 > num_all:
        raise ValueError(
            f"k1 + 1 = {k1 + 1} neighbours requested but there are only {num_all} "
            "query and gallery items in all; lower k1"
        )
    return k1, k2, lambda_value


def _keys(idx, vals):
    """Sortable uint64 keys (value bits, index) for non-negative float32 values."""
    bits = (np.asarray(vals, dtype=np.float32) + np.float32(0)).view(np.uint32)  # -0 -> +0
    return (bits.astype(np.uint64) << np.uint64(32)) | np.asarray(idx).astype(np.uint64)


def _key_values(keys):
    return (keys >> np.uint64(32)).astype(np.uint32).view(np.float32)


class _Neighbours:
    """The ``k`` nearest items of every item, fed with blocks of distances.

    Each item keeps its ``k`` best (value, index) pairs as sorted uint64 keys (ties on the
    value are ordered by index). Blocks must come in increasing index order for every item
    (each new candidate has a larger index than those already seen), so that a candidate
    can only enter if its value is strictly smaller than the current k-th best: once an
    item has ``k`` candidates, a block is reduced by one comparison with that bound,
    without sorting or partitioning it. Before that, a block is reduced by a partition.
    """

    def __init__(self, n, k):
        self.k = k
        self.best = np.full((n, k), _NO_KEY, dtype=np.uint64)

    def add(self, items, block, offset, transposed=False):
        """Offer ``block[r, c]`` as the distance from item ``items[r]`` (a slice) to item
        ``offset + c``; with ``transposed``, ``block[c, r]`` is. No NaN in ``block``."""
        k = self.k
        best = self.best[items]  # a view
        if transposed:
            width, n_items = block.shape
        else:
            n_items, width = block.shape
        if (best[:, -1] == _NO_KEY).any():  # not yet k candidates: reduce the block first
            if transposed:
                block = np.ascontiguousarray(block.T)
                transposed = False
            if k < width:
                kth = np.partition(block, k - 1, axis=1)[:, k - 1]
                flat = np.flatnonzero(block <= kth[:, None])  # >= k per item (ties at kth)
            else:
                flat = np.arange(block.size)
        else:
            bound = _key_values(best[:, -1])
            flat = np.flatnonzero(block < (bound[None, :] if transposed else bound[:, None]))
        if flat.size == 0:
            return
        if transposed:
            other, item = np.divmod(flat, n_items)
        else:
            item, other = np.divmod(flat, width)
        keys = _keys(other + offset, block.reshape(-1)[flat])

        # Merge: per touched item, its k best keys and its new keys, sorted along a row.
        count = np.bincount(item, minlength=n_items)
        touched = np.flatnonzero(count)
        extra = int(count.max())
        if touched.size * (k + extra) > _MERGE_ELEMENTS:  # many ties: a few items, many keys
            order = np.lexsort((keys, item))
            keys, item = keys[order], item[order]
            for t in touched:
                lo, hi = np.searchsorted(item, [t, t + 1])
                best[t] = np.sort(np.concatenate([best[t], keys[lo:hi]]))[:k]
            return
        if transposed:  # group the new keys by item (flat is ordered by other, then item)
            order = np.argsort(item, kind="stable")
            item, keys = item[order], keys[order]
        slot = np.empty(n_items, dtype=np.int64)
        slot[touched] = np.arange(touched.size)
        pos = np.arange(item.size) - (np.cumsum(count) - count)[item]
        merged = np.full((touched.size, k + extra), _NO_KEY, dtype=np.uint64)
        merged[:, :k] = best[touched]
        merged[slot[item], k + pos] = keys
        merged.sort(axis=1)
        best[touched] = merged[:, :k]

    def indices(self):
        return (self.best & np.uint64(0xFFFFFFFF)).astype(np.int64)


# --------------------------------------------------------------------------------------
# Sources of distances: precomputed matrices, or features.


class _MatrixSource:
    """``original_dist`` from the three distance matrices of the reference signature."""

    def __init__(self, q_g, q_q, g_g):
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.num_q, self.num_g = q_g.shape
        self.num_all = self.num_q + self.num_g

    @staticmethod
    def _square(x, out):
        # Reference: np.power(dist, 2) in the input dtype, then .astype(np.float32).
        np.square(x, out=out, casting="unsafe")

    def neighbours(self, k, qg_out):
        """``(nn, m)``: the ``k`` nearest items of every row of ``original_dist`` and the
        maxima used to normalise the rows; fills ``qg_out`` with the squared q_g block.

        Row ``i`` of ``original_dist`` is column ``i`` of the block matrix
        ``D = [[q_q, q_g], [q_g^T, g_g]]``. The three input matrices are read by blocks of
        their rows (contiguous reads, each entry squared once); a block of q_q or g_g
        offers its entries to the items of its columns, a block of q_g to the gallery
        items of its columns and to the query items of its rows (through q_g^T). Every
        item receives its candidates in increasing index order: q_q, then q_g, then g_g.
        """
        nq, ng, n = self.num_q, self.num_g, self.num_all
        found = _Neighbours(n, k)
        m = np.zeros(n, dtype=np.float32)

        def rows_of(total, width):
            step = max(k, _ROW_ELEMENTS // max(width, 1))
            return [(a, min(a + step, total)) for a in range(0, total, step)]

        def check(col_max):
            if np.isnan(col_max).any():
                raise ValueError("the distances contain NaN")
            return col_max

        qq_spans, gg_spans = rows_of(nq, nq), rows_of(ng, ng)
        size = max((r1 - r0) * w for spans, w in ((qq_spans, nq), (gg_spans, ng)) for r0, r1 in spans)
        buf = np.empty(size, dtype=np.float32)
        for r0, r1 in qq_spans:  # column q of D, rows 0:nq -> item q
            raw = buf[: (r1 - r0) * nq].reshape(r1 - r0, nq)
            self._square(self.q_q[r0:r1], raw)
            np.maximum(m[:nq], check(raw.max(axis=0)), out=m[:nq])
            found.add(slice(0, nq), raw, r0, transposed=True)
        for r0, r1 in rows_of(nq, ng):  # q_g rows: D[r, nq + g] and D[nq + g, r]
            raw = qg_out[r0:r1]
            self._square(self.q_g[r0:r1], raw)
            np.maximum(m[nq:], check(raw.max(axis=0)), out=m[nq:])
            np.maximum(m[r0:r1], check(raw.max(axis=1)), out=m[r0:r1])
            found.add(slice(nq, n), raw, r0, transposed=True)
            found.add(slice(r0, r1), raw, nq)
        for g0, g1 in gg_spans:  # column nq + g of D, rows nq: -> item nq + g
            raw = buf[: (g1 - g0) * ng].reshape(g1 - g0, ng)
            self._square(self.g_g[g0:g1], raw)
            np.maximum(m[nq:], check(raw.max(axis=0)), out=m[nq:])
            found.add(slice(nq, n), raw, nq + g0, transposed=True)
        return found.indices(), m

    def raw_pairs(self, i, j):
        """Squared block-matrix entries ``D[j, i]**2`` (float32): row ``i``, column ``j`` of
        ``original_dist`` before the division."""
        nq = self.num_q
        out = np.empty(i.shape, dtype=np.float32)
        iq, jq = i < nq, j < nq
        for sel, mat, a, b in (
            (iq & jq, self.q_q, j, i),
            (~iq & jq, self.q_g, j, i - nq),
            (iq & ~jq, self.q_g, i, j - nq),
            (~iq & ~jq, self.g_g, j - nq, i - nq),
        ):
            if sel.any():
                out[sel] = np.square(mat[a[sel], b[sel]])
        return out


class _FeatureSource:
    """``original_dist`` from embeddings: squared Euclidean or squared cosine distances,
    computed panel by panel with one matrix product each, using the symmetry."""

    def __init__(self, q_feat, g_feat, metric):
        x = np.concatenate([q_feat, g_feat], axis=0, dtype=np.float32)
        if metric == "cosine":
            norm = np.sqrt(np.einsum("ij,ij->i", x, x))
            x = x / np.maximum(norm, np.finfo(np.float32).tiny)[:, None]
        self.x = np.ascontiguousarray(x)
        if not np.isfinite(self.x).all():
            raise ValueError("the features contain NaN or infinite values")
        self.sq = np.einsum("ij,ij->i", self.x, self.x)
        self.metric = metric
        self.num_q = q_feat.shape[0]
        self.num_g = g_feat.shape[0]
        self.num_all = self.num_q + self.num_g

    def _finish(self, dot, sq_rows, sq_cols):
        """Turn dot products (in place) into squared distances (the reference's
        ``np.power(dist, 2)``: squared Euclidean, or the square of ``1 - cos``)."""
        if self.metric == "euclidean":
            dot *= -2.0
            dot += sq_rows
            dot += sq_cols
            np.maximum(dot, 0.0, out=dot)
        else:
            np.subtract(1.0, dot, out=dot)
            np.maximum(dot, 0.0, out=dot)
            np.square(dot, out=dot)
        return dot

    def neighbours(self, k, qg_out):
        nq, n = self.num_q, self.num_all
        found = _Neighbours(n, k)
        m = np.zeros(n, dtype=np.float32)
        step = max(k, min(1024, _PANEL_ELEMENTS // n))
        spans = [(a, min(a + step, nq)) for a in range(0, nq, step)]
        spans += [(a, min(a + step, n)) for a in range(nq, n, step)]
        for i0, i1 in spans:
            b = i1 - i0
            # Panel: rows i0:i1 against columns i0: (the columns before i0 were seen as
            # rows of the earlier panels). Every item gets its candidates in increasing
            # index order: from the panels before its own (as a column), then its own.
            block = self._finish(self.x[i0:i1] @ self.x[i0:].T, self.sq[i0:i1, None], self.sq[None, i0:])
            block[np.arange(b), np.arange(b)] = 0.0  # self-distance exactly 0
            if i1 <= nq:
                qg_out[i0:i1] = block[:, nq - i0:]
            np.maximum(m[i0:i1], block.max(axis=1), out=m[i0:i1])
            found.add(slice(i0, i1), block, i0)
            if i1 < n:  # the same entries seen from the rows i1: (symmetry)
                lower = block[:, b:]
                np.maximum(m[i1:], lower.max(axis=0), out=m[i1:])
                found.add(slice(i1, n), lower, i0, transposed=True)
        return found.indices(), m

    def raw_pairs(self, i, j):
        out = np.empty(i.shape, dtype=np.float32)
        for s in range(0, i.size, _PAIR_CHUNK):
            a, b = i[s:s + _PAIR_CHUNK], j[s:s + _PAIR_CHUNK]
            dot = np.einsum("ij,ij->i", self.x[a], self.x[b])
            out[s:s + _PAIR_CHUNK] = self._finish(dot, self.sq[a], self.sq[b])
        out[i == j] = 0.0
        return out


# --------------------------------------------------------------------------------------
# The algorithm on neighbour lists.


def _reciprocal_mask(nn, width):
    """``mask[i, a]``: item ``i`` is among the first ``width`` neighbours of ``nn[i, a]``
    (for ``a < width``)."""
    n = nn.shape[0]
    head = np.ascontiguousarray(nn[:, :width])
    mask = np.empty((n, width), dtype=bool)
    step = max(1, _ROW_ELEMENTS // (width * width))
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        back = head[head[i0:i1]]  # (rows, width, width)
        mask[i0:i1] = (back == np.arange(i0, i1)[:, None, None]).any(axis=2)
    return mask


def _encoding(nn, k1, m, source):
    """The sparse k-reciprocal encoding ``V`` (CSR, float32, rows summing to 1)."""
    n, k = nn.shape
    k_half = int(np.around(k1 / 2.0)) + 1
    recip = _reciprocal_mask(nn, k)
    recip_half = _reciprocal_mask(nn, k_half)
    head = np.ascontiguousarray(nn[:, :k_half])

    keys = []
    step = max(1, min(n, _ROW_ELEMENTS // n))
    member = np.zeros((step, n), dtype=bool)  # member[r, j]: j in the k1-reciprocal set of row r
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        local = np.arange(i1 - i0)[:, None]
        cand, cand_ok = nn[i0:i1], recip[i0:i1]  # the k1-reciprocal set of each row
        half, half_ok = head[cand], recip_half[cand]  # each candidate's half-size set
        # |half set of candidate  AND  reciprocal set of the row| for every candidate.
        member[local, cand] = cand_ok
        shared = (member[local[:, :, None], half] & half_ok).sum(axis=2)
        member[local, cand] = False
        size = half_ok.sum(axis=2)
        take = cand_ok & (shared > 2.0 / 3 * size)
        rows = np.arange(i0, i1, dtype=np.int64)
        keys.append((rows[:, None] * n + cand)[cand_ok])
        keys.append((rows[:, None, None] * n + half)[take[:, :, None] & half_ok])
    keys = np.concatenate(keys)
    keys.sort()
    keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    row, col = np.divmod(keys, n)

    # Weights exp(-original_dist[i, j]) normalised per row, in float32 as the reference.
    dist = source.raw_pairs(row, col) / m[row]
    weight = np.exp(-dist)
    indptr = np.concatenate(([0], np.cumsum(np.bincount(row, minlength=n))))
    total = np.bincount(row, weights=weight, minlength=n).astype(np.float32)
    weight /= total[row]
    return sp.csr_matrix((weight, col, indptr), shape=(n, n))


def _query_expansion(v, nn, k2):
    n = nn.shape[0]
    if k2 == 1:
        return v
    avg = sp.csr_matrix(
        (np.ones(n * k2, dtype=np.float32), nn[:, :k2].reshape(-1), np.arange(0, n * k2 + 1, k2)),
        shape=(n, n),
    )
    v = (avg @ v).tocsr()
    v.data /= np.float32(k2)
    return v


def _finish_rows(out, v, m, num_q, lambda_value):
    """``out`` holds the squared q_g block; turn it, chunk by chunk, into the final
    distance ``(1 - lambda) * jaccard + lambda * original_dist``."""
    num_g = out.shape[1]
    vq = v[:num_q]
    vg = v[num_q:].tocsc()  # inverted index: for each column, the gallery rows using it
    col_nnz = np.diff(vg.indptr)
    vq_rows = np.repeat(np.arange(num_q), np.diff(vq.indptr))
    row_cost = np.bincount(vq_rows, weights=col_nnz[vq.indices], minlength=num_q).astype(np.int64)
    lam = np.float32(lambda_value)
    one_minus = np.float32(1.0 - lambda_value)

    q0 = 0
    max_rows = max(1, _ROW_ELEMENTS // max(num_g, 1))
    while q0 < num_q:
        # Rows of the chunk: bounded by the dense block and by the number of expanded pairs.
        cum = np.cumsum(row_cost[q0:q0 + max_rows])
        q1 = q0 + max(1, int(np.searchsorted(cum, _EXPAND_ELEMENTS, side="right")))
        q1 = min(q1, num_q)
        lo, hi = vq.indptr[q0], vq.indptr[q1]
        ent_col = vq.indices[lo:hi]
        ent_val = vq.data[lo:hi]
        ent_row = np.repeat(np.arange(0, (q1 - q0) * num_g, num_g), np.diff(vq.indptr[q0:q1 + 1]))
        # Every (query entry k, gallery row j using column k) pair: min(V[q, k], V[j, k]).
        reps = col_nnz[ent_col]
        pos = np.arange(int(reps.sum()))
        pos += np.repeat(vg.indptr[ent_col] - (np.cumsum(reps) - reps), reps)
        flat = np.repeat(ent_row, reps)
        flat += vg.indices[pos]
        contrib = np.repeat(ent_val, reps)
        np.minimum(contrib, vg.data[pos], out=contrib)
        del pos
        shared = np.bincount(flat, weights=contrib, minlength=(q1 - q0) * num_g)
        del flat, contrib
        # jaccard = 1 - shared / (2 - shared), in float32 as the reference.
        shared = shared.astype(np.float32).reshape(q1 - q0, num_g)
        denom = np.subtract(np.float32(2.0), shared)
        np.divide(shared, denom, out=shared)
        np.subtract(np.float32(1.0), shared, out=shared)
        shared *= one_minus

        block = out[q0:q1]
        block /= m[q0:q1, None]
        block *= lam
        block += shared
        q0 = q1
    return out


def _re_rank(source, k1, k2, lambda_value):
    k1, k2, lambda_value = _check_params(k1, k2, lambda_value, source.num_all)
    out = np.empty((source.num_q, source.num_g), dtype=np.float32)
    nn, m = source.neighbours(k1 + 1, out)
    m[m == 0] = 1.0  # an all-zero row stays zero (the reference would divide 0 by 0)
    v = _encoding(nn, k1, m, source)
    v = _query_expansion(v, nn, k2)
    return _finish_rows(out, v, m, source.num_q, lambda_value)


def _matrix(name, x, shape):
    x = np.asarray(x)
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {x.shape}")
    return x


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """k-reciprocal re-ranking of a query-gallery distance matrix.

    Same inputs and result as the reference numpy implementation (see the module
    docstring), with memory and time that grow with ``(Q + G) * k1`` instead of
    ``(Q + G)^2``, besides the input matrices and the output.

    Args:
        q_g_dist: ``(Q, G)`` query-gallery distances.
        q_q_dist: ``(Q, Q)`` query-query distances.
        g_g_dist: ``(G, G)`` gallery-gallery distances.
        k1: size of the k-reciprocal neighbourhoods (the expansion uses ``round(k1 / 2)``).
        k2: neighbours averaged in the local query expansion (``1``: none); ``<= k1 + 1``.
        lambda_value: weight of the original distance in the result, in [0, 1].

    The distances are squared (as in the reference), so pass plain Euclidean distances to
    re-rank on squared Euclidean ones. Inputs are read in chunks and never copied whole.

    Returns:
        ``(Q, G)`` float32 re-ranked distances.

    Raises:
        ValueError: on shapes that do not fit together, NaN distances, or parameters out of
            range (including ``k1 + 1 > Q + G``).
    """
    q_g = np.asarray(q_g_dist)
    if q_g.ndim != 2:
        raise ValueError(f"q_g_dist must be 2-D (num_query, num_gallery), got shape {q_g.shape}")
    q_g = _matrix("q_g_dist", q_g, q_g.shape)
    num_q, num_g = q_g.shape
    q_q = _matrix("q_q_dist", q_q_dist, (num_q, num_q))
    g_g = _matrix("g_g_dist", g_g_dist, (num_g, num_g))
    return _re_rank(_MatrixSource(q_g, q_q, g_g), k1, k2, lambda_value)


def re_ranking_features(q_feat, g_feat, k1=20, k2=6, lambda_value=0.3, metric="euclidean"):
    """k-reciprocal re-ranking from query and gallery embeddings.

    Equivalent to ``re_ranking(d(q, g), d(q, q), d(g, g), ...)`` with ``d`` the Euclidean
    distance (``metric="euclidean"``; the algorithm then works on squared Euclidean
    distances, as the original implementation on features does) or the cosine distance
    ``1 - cos`` (``metric="cosine"``), without ever holding a ``(Q+G)^2`` matrix: the
    distances are computed in float32 panels of rows, each entry once (the matrix is
    symmetric), and reduced to the nearest neighbours on the fly.

    Args:
        q_feat: ``(Q, D)`` query embeddings.
        g_feat: ``(G, D)`` gallery embeddings.
        k1, k2, lambda_value: as in :func:`re_ranking`.
        metric: ``"euclidean"`` or ``"cosine"``.

    Returns:
        ``(Q, G)`` float32 re-ranked distances.
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    q = np.asarray(q_feat)
    g = np.asarray(g_feat)
    for name, x in (("q_feat", q), ("g_feat", g)):
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D (num_items, dim), got shape {x.shape}")
        if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
            raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"q_feat and g_feat have different dimensions: {q.shape[1]} vs {g.shape[1]}")
    if q.shape[0] == 0 or g.shape[0] == 0:
        raise ValueError("need at least one query and one gallery embedding")
    return _re_rank(_FeatureSource(q, g, metric), k1, k2, lambda_value)
