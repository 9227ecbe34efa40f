"""Ranking evaluation for person re-identification: CMC, mAP and mINP.

Pure numpy, no TensorFlow. The protocol is the one of ``eval_market1501`` in torchreid and
fast-reid (see :func:`evaluate_rank`); the implementation gives the same numbers as their
per-query loop but never sorts whole rows when it can avoid it and processes the queries in
chunks, so that it needs well under a second and a bounded amount of memory on a
Market-1501-sized problem.

How it works, for one query row ``d`` of the distance matrix:

* the gallery items with the query's identity are looked up through an index of the gallery
  grouped by identity (no pass over the row). Those seen by the query's camera are *removed*,
  the others are the *matches* ``m_1 .. m_M`` taken in ranking order;
* the rank of a match is ``1 + #{valid gallery items ranked before it}``. "Ranked before"
  means smaller distance, or equal distance and smaller gallery index. The count over the
  whole row is ``#{g : d[g] < d[m]} + #{g < m : d[g] == d[m]}``, from which the number of
  removed items ranked before the match (known from the small same-identity set) is
  subtracted;
* the counts ``#{g : d[g] < t}`` for the M thresholds ``t = d[m_j]`` come either from a
  vectorised comparison of the row with all its thresholds at once (bits packed and
  popcounted, cost ``~M * G``) or, for queries with many matches, from one sort of the row
  and a binary search (cost ``~G log G``); whichever is cheaper is used per query. Ties with
  the threshold are detected by the equality count and resolved exactly by gallery index;
* ``AP = mean_j (j / rank_j)``, ``INP = M / rank_M``, and the CMC needs only ``rank_1``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["evaluate_rank"]

# A query with more matches than this is ranked by sorting its row; one with fewer, by
# comparing its row with each match distance. Tuned on the Market-sized benchmark
# (bench/bench_evaluate_rank.py, AVX2 machine): all-sort 0.42 s, all-compare 0.40 s,
# split at 14-24 matches 0.25-0.30 s.
_SORT_MIN_MATCHES = 20

# Element budget of one chunk of distance rows handled at once; bounds the temporaries.
_CHUNK_ELEMENTS = 1 << 22
# Element budget of one broadcast comparison (rows x thresholds x gallery, one byte each).
_COMPARE_ELEMENTS = 1 << 21


def check_max_rank(max_rank) -> int:
    """``max_rank`` as an int; ``ValueError`` below 1."""
    max_rank = int(max_rank)
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    return max_rank


def dense_codes(query_values: np.ndarray, gallery_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (identities or cameras) of queries and gallery as codes ``0..n-1`` shared by both."""
    _, codes = np.unique(np.concatenate([query_values, gallery_values]), return_inverse=True)
    codes = codes.reshape(-1)
    return codes[:len(query_values)], codes[len(query_values):]


def _check_1d(name, values, length, length_name):
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.shape[0] != length:
        raise ValueError(
            f"{name} has {arr.shape[0]} entries but distmat has {length} {length_name}"
        )
    return arr


def _compare_counts(rows, thresholds):
    """Per (row, threshold): ``#(row < t)`` and ``#(row == t)``.

    ``rows`` is ``(b, W)`` with ``W`` a multiple of 64 (NaN padding counts nothing, as does a
    NaN threshold); ``thresholds`` is ``(b, T)``. The comparison bits are packed 64 to a
    word and popcounted.
    """
    cmp = np.less(rows[:, None, :], thresholds[:, :, None])
    lt = np.bitwise_count(np.packbits(cmp, axis=-1).view(np.uint64)).sum(axis=-1, dtype=np.int64)
    np.equal(rows[:, None, :], thresholds[:, :, None], out=cmp)
    eq = np.bitwise_count(np.packbits(cmp, axis=-1).view(np.uint64)).sum(axis=-1, dtype=np.int64)
    return lt, eq


def _rank_counts(block, pair_row, pair_d, num_matches):
    """``#(d_row < t)`` and ``#(d_row == t)`` for each match pair of a block of rows.

    ``block`` holds the distance rows, ``pair_row`` / ``pair_d`` the row (into ``block``)
    and distance of each match pair, grouped by row and in ranking order inside a row;
    ``num_matches`` the number of pairs of each row.
    """
    n_pairs = pair_row.shape[0]
    lt = np.empty(n_pairs, dtype=np.int64)
    eq = np.empty(n_pairs, dtype=np.int64)
    if n_pairs == 0:
        return lt, eq
    num_g = block.shape[1]
    pair_start = np.cumsum(num_matches) - num_matches
    ordinal = np.arange(n_pairs) - pair_start[pair_row]  # 0-based position inside its row

    small_rows = np.flatnonzero((num_matches > 0) & (num_matches <= _SORT_MIN_MATCHES))
    big_rows = np.flatnonzero(num_matches > _SORT_MIN_MATCHES)

    if small_rows.size:
        # Rows with few matches: compare each row with all its thresholds at once. Rows are
        # taken by decreasing number of matches so that the padding per batch stays small.
        small_rows = small_rows[np.argsort(-num_matches[small_rows], kind="stable")]
        padded_g = -(-num_g // 64) * 64
        padded = np.full((min(small_rows.size, _COMPARE_ELEMENTS // padded_g + 1), padded_g),
                         np.nan, dtype=block.dtype)
        start = 0
        while start < small_rows.size:
            width = int(num_matches[small_rows[start]])
            size = max(1, min(small_rows.size - start, _COMPARE_ELEMENTS // (width * padded_g)))
            rows = small_rows[start:start + size]
            start += size
            thresholds = np.full((rows.size, width), np.nan, dtype=block.dtype)
            slot = np.full(block.shape[0], -1, dtype=np.int64)
            slot[rows] = np.arange(rows.size)
            sel = np.flatnonzero(slot[pair_row] >= 0)
            thresholds[slot[pair_row[sel]], ordinal[sel]] = pair_d[sel]
            padded[: rows.size, :num_g] = block[rows]
            block_lt, block_eq = _compare_counts(padded[: rows.size], thresholds)
            lt[sel] = block_lt[slot[pair_row[sel]], ordinal[sel]]
            eq[sel] = block_eq[slot[pair_row[sel]], ordinal[sel]]

    if big_rows.size:
        # Rows with many matches: sort the row once, binary-search every threshold.
        per_batch = max(1, _CHUNK_ELEMENTS // max(num_g, 1))
        for b0 in range(0, big_rows.size, per_batch):
            rows = big_rows[b0:b0 + per_batch]
            sorted_rows = np.sort(block[rows], axis=1)
            for k, r in enumerate(rows):
                s = pair_start[r]
                t = pair_d[s:s + num_matches[r]]
                left = np.searchsorted(sorted_rows[k], t, side="left")
                right = np.searchsorted(sorted_rows[k], t, side="right")
                lt[s:s + num_matches[r]] = left
                eq[s:s + num_matches[r]] = right - left
    return lt, eq


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """CMC, mAP and mINP of a query-gallery distance matrix (Market-1501 protocol).

    Protocol (the one of ``eval_market1501`` in torchreid / fast-reid):

    * for each query, the gallery images with the same identity **and** the same camera are
      removed from its ranking (they are not counted as matches nor as errors);
    * the remaining gallery images with the query's identity are its matches; a query without
      any match left is skipped (not counted as valid);
    * the gallery is ranked by increasing distance. Ties are broken deterministically: equal
      distances are ordered by gallery index (a stable sort by distance). torchreid's default
      ``argsort`` has no defined order for ties, so on tied inputs the numbers can differ
      from it; without ties they agree to rounding error (1e-7 on the CMC, which the
      reference accumulates in float32);
    * AP (non-interpolated) is the mean, over the query's matches, of
      ``(matches so far) / rank`` at the rank of each match; mINP uses the inverse negative
      penalty ``INP = (number of matches) / (rank of the last match)``;
    * ``CMC[k]`` is 1 when the first match is within the first ``k + 1`` ranks;
    * mAP, mINP and the CMC are averaged over the valid queries.

    Identities are compared by equality only; no value is special. With the Market-1501
    convention, junk gallery images (identity ``-1``) are expected to have been dropped by
    the loader already; if any are passed they are ranked as ordinary gallery images of
    identity ``-1``. Distractors (identity ``0``) are ordinary gallery images that match no
    query.

    Args:
        distmat: ``(num_query, num_gallery)`` real distances, smaller is more similar. Any
            real dtype; it is read, never copied whole nor modified. NaN is rejected.
        q_pids, g_pids: identities of the queries / gallery images (1-D, any comparable dtype).
        q_camids, g_camids: camera ids of the queries / gallery images (1-D).
        max_rank: length of the returned CMC curve. It may exceed the gallery size: the CMC
            is then 1 past the rank of the last match.

    Returns:
        A flat dict: ``mAP``, ``mINP``, ``rank1``, ``rank5``, ``rank10`` (floats in [0, 1]),
        ``cmc`` (float64 array of length ``max_rank``), ``num_valid_queries`` and
        ``num_queries`` (ints).

    Raises:
        ValueError: on a distance matrix that is not 2-D, empty or contains NaN, on
            identity / camera arrays that do not match its shape, on ``max_rank < 1``, and
            when no query has a match in the gallery (the metrics would be undefined).

    Memory: queries are processed in chunks of about ``2**22`` distance entries; the extra
    memory is a few tens of MB whatever the number of queries, plus O(num_gallery) index
    arrays.
    """
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}")
    if distmat.dtype.kind not in "fiu" or distmat.dtype == np.bool_:
        raise ValueError(f"distmat must hold real numbers, got dtype {distmat.dtype}")
    num_q, num_g = distmat.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"distmat is empty (shape {distmat.shape}); need queries and gallery images")
    q_pids = _check_1d("q_pids", q_pids, num_q, "rows (queries)")
    g_pids = _check_1d("g_pids", g_pids, num_g, "columns (gallery images)")
    q_camids = _check_1d("q_camids", q_camids, num_q, "rows (queries)")
    g_camids = _check_1d("g_camids", g_camids, num_g, "columns (gallery images)")
    max_rank = check_max_rank(max_rank)

    # Identities as dense codes; the gallery grouped by identity, gallery index ascending.
    q_code, g_code = dense_codes(q_pids, g_pids)
    num_codes = int(max(q_code.max(), g_code.max())) + 1
    g_by_code = np.argsort(g_code, kind="stable")
    code_count = np.bincount(g_code, minlength=num_codes)
    code_start = np.cumsum(code_count) - code_count

    sum_ap = 0.0
    sum_inp = 0.0
    num_valid = 0
    first_rank_hist = np.zeros(max_rank + 2, dtype=np.int64)  # bin k: first match at rank k
    within = {1: 0, 5: 0, 10: 0}

    chunk_rows = max(1, _CHUNK_ELEMENTS // num_g)
    for r0 in range(0, num_q, chunk_rows):
        r1 = min(num_q, r0 + chunk_rows)
        block = distmat[r0:r1]
        if block.dtype.kind != "f":
            block = block.astype(np.float64)  # exact for integers below 2**53
        elif np.isnan(block.max()):
            raise ValueError("distmat contains NaN")
        rows = r1 - r0

        # All (query, same-identity gallery item) pairs of the chunk, grouped by query.
        n_same = code_count[q_code[r0:r1]]
        n_pairs = int(n_same.sum())
        pair_row = np.repeat(np.arange(rows), n_same)
        offset = np.arange(n_pairs) - np.repeat(np.cumsum(n_same) - n_same, n_same)
        pair_g = g_by_code[np.repeat(code_start[q_code[r0:r1]], n_same) + offset]
        pair_d = block[pair_row, pair_g]
        removed = g_camids[pair_g] == q_camids[r0:r1][pair_row]

        # Ranking order inside each query: by distance, then gallery index.
        order = np.lexsort((pair_g, pair_d, pair_row))
        pair_g, pair_d, removed = pair_g[order], pair_d[order], removed[order]
        # pair_row is unchanged by the sort (primary key, already grouped).
        row_start = np.cumsum(n_same) - n_same
        removed_cum = np.concatenate(([0], np.cumsum(removed)))
        removed_before = removed_cum[:-1] - removed_cum[row_start[pair_row]]

        is_match = ~removed
        m_row = pair_row[is_match]
        m_g = pair_g[is_match]
        m_d = pair_d[is_match]
        m_removed_before = removed_before[is_match]
        num_matches = np.bincount(m_row, minlength=rows)
        valid = num_matches > 0
        if not valid.any():
            continue

        lt, eq = _rank_counts(block, m_row, m_d, num_matches)
        before = lt
        tied = np.flatnonzero(eq > 1)
        if tied.size:
            before = lt.copy()
            for p in tied:  # equal distances: items with a smaller gallery index rank first
                before[p] += np.count_nonzero(block[m_row[p], :m_g[p]] == m_d[p])
        rank = before - m_removed_before + 1  # 1-based rank among the valid gallery items

        m_start = np.cumsum(num_matches) - num_matches
        ordinal = np.arange(m_row.size) - m_start[m_row] + 1  # j: matches so far
        ap = np.bincount(m_row, weights=ordinal / rank, minlength=rows)[valid]
        ap /= num_matches[valid]
        last_rank = rank[m_start[valid] + num_matches[valid] - 1]
        first_rank = rank[m_start[valid]]

        sum_ap += float(ap.sum())
        sum_inp += float((num_matches[valid] / last_rank).sum())
        num_valid += int(valid.sum())
        first_rank_hist += np.bincount(np.minimum(first_rank, max_rank + 1), minlength=max_rank + 2)
        for k in within:
            within[k] += int(np.count_nonzero(first_rank <= k))

    if num_valid == 0:
        raise ValueError(
            "no query has a matching gallery image (same identity, different camera); "
            "the metrics are undefined - check the query/gallery identities and cameras"
        )
    cmc = np.cumsum(first_rank_hist[1:max_rank + 1]) / num_valid
    return {
        "mAP": sum_ap / num_valid,
        "mINP": sum_inp / num_valid,
        "rank1": within[1] / num_valid,
        "rank5": within[5] / num_valid,
        "rank10": within[10] / num_valid,
        "cmc": cmc,
        "num_valid_queries": num_valid,
        "num_queries": num_q,
    }
