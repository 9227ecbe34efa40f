"""Variable-length retrieval: a distance threshold instead of a fixed number of images per query.

Each query lists every gallery image closer than a threshold, because the number of true matches
varies from person to person. It can be set by eye or searched on validation people; here it is
chosen on held-out people to maximise the mean per-query F1 of the returned set, and measured on
other held-out people.

Protocol (Market-1501, as ``mtl.reid.evaluate.evaluate_rank``):

* for each query, gallery images of the same identity **and** camera are removed: never returned,
  never counted;
* its *matches* are the remaining gallery images of its identity; a query with no match left is
  skipped (not counted in the means), as ``evaluate_rank`` skips it for mAP. Its ideal answer
  would be "nothing", which the deliverable cannot say (see the return rule);
* the **return rule** (the one ``reid_test.txt`` follows, ``mtl.deliverables``): every remaining
  gallery image with distance ``<= threshold``, sorted by distance (ties by gallery index), but
  at least ``min_return`` (1: the file's format needs one name per query, and a nearest guess
  costs less than an empty line) and at most ``max_return`` (``--top``; None: no cap). When the
  count is clipped, the first images in that order are returned;
* per query, with ``R`` returned images of which ``H`` are matches and ``M`` matches in all:
  precision ``H / R``, recall ``H / M``, ``F1 = 2 H / (R + M)``. An empty return (only possible
  with ``min_return=0``) scores precision 0, recall 0 and F1 0: it answered nothing;
* the scores are the means over the valid queries (those with a match).

Fixed top-k baseline: the first ``k`` images of the same ranking (the deliverable without a
threshold), scored the same way.

Choosing the threshold (:func:`scan_thresholds`): the mean F1 only changes where the threshold
crosses a distance, and between two consecutive match distances it can only fall (only
non-matches are added), so its maximum is at one of the match distances (or below every
distance: nearest image only). The best one stands for the interval up to the next distance,
where the same images come back; the threshold recorded is that interval's middle (the widest
margin on both sides, for new people). Every candidate is scored at once: each distance of a block of
queries is placed among the sorted candidates (``searchsorted``) and counted per (query,
candidate) with one ``bincount`` and a cumulative sum, so the cost is ``Q x G x log C`` for the
placement plus ``Q x C`` for the scores (``C`` candidates, about the number of match pairs), in
bounded memory. 2,000 queries x 20,000 gallery images take seconds.

Honest figures (:func:`holdout_threshold`): a threshold chosen and scored on the same people
flatters itself. The held-out query identities are split into two halves; the threshold chosen on
one half is scored on the other, both ways, and the two scores are averaged (2-fold
cross-validation by identity; the gallery stays whole, so each half searches the same gallery).
The threshold recorded for use (``value``) is the one chosen on all the held-out people; its
cross-validated scores are what a user should expect on new people.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["top_k_rows", "returned_counts", "retrieval_scores", "topk_scores", "scan_thresholds",
           "choose_threshold", "holdout_threshold", "MIN_RETURN", "TOP_K"]

MIN_RETURN = 1  # a query always gets its nearest image (the reid_test.txt line needs one name)
TOP_K = 100  # the deliverable's fixed length without a threshold (mtl-predict --top default)
# element budget of one (queries x candidates) block of the scan; bounds its temporaries (~8 arrays)
_BLOCK_ELEMENTS = 1 << 20
# rows of the distance matrix masked at once
_CHUNK_ELEMENTS = 1 << 22


# === The return rule ===

def top_k_rows(distmat: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` smallest entries of each row, smallest first (ties: lower index):
    the order of the return rule, and of every ``reid_test.txt`` line (``mtl.deliverables``)."""
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


def returned_counts(distmat, threshold: float, min_return: int = MIN_RETURN, max_return: int | None = None
                    ) -> np.ndarray:
    """How many gallery images each query returns under the threshold rule.

    Args:
        distmat: ``(Q, G)`` distances; ``inf`` marks an image that is never returned (removed).
        threshold: images with distance ``<= threshold`` are returned.
        min_return: at least this many (as far as the row has finite distances).
        max_return: at most this many; None: no cap.

    Returns:
        ``(Q,)`` int64 counts; the images returned are the first ones of the row's stable
        distance order (ties by gallery index).
    """
    d = np.asarray(distmat)
    # a float64 threshold: compared with float32 distances as a float64, never rounded to float32
    n_raw = np.count_nonzero(d <= np.float64(threshold), axis=1)
    return _clip_counts(n_raw, np.count_nonzero(np.isfinite(d), axis=1), min_return, max_return)


def _clip_counts(n_raw, n_valid, min_return, max_return):
    """``n_raw`` (any shape, rows first) clipped to ``[min(min_return, n_valid), min(max_return, n_valid)]``."""
    n_valid = np.asarray(n_valid).reshape((-1,) + (1,) * (np.ndim(n_raw) - 1))
    hi = n_valid if max_return is None else np.minimum(n_valid, max_return)
    return np.clip(n_raw, np.minimum(min_return, n_valid), hi).astype(np.int64)


def _check(distmat, q_ids, g_ids, q_cams, g_cams, min_return, max_return):
    distmat = np.asarray(distmat)
    if distmat.ndim != 2 or 0 in distmat.shape:
        raise ValueError(f"distmat must be a non-empty 2-D (queries, gallery) array, got shape {distmat.shape}")
    arrays = [np.asarray(a).reshape(-1) for a in (q_ids, g_ids, q_cams, g_cams)]
    for name, arr, n in zip(("q_ids", "g_ids", "q_cams", "g_cams"), arrays, (distmat.shape[0], distmat.shape[1]) * 2):
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} entries for a distance matrix of shape {distmat.shape}")
    if min_return < 0 or (max_return is not None and max_return < max(1, min_return)):
        raise ValueError(f"need 0 <= min_return <= max_return, max_return >= 1; got {min_return}, {max_return}")
    return (distmat, *arrays)


def _blocks(distmat, q_ids, g_ids, q_cams, g_cams, rows: int):
    """Per block of query rows: ``(row slice, masked distances (a float copy), match mask)``.

    Removed images (same identity and camera) are set to ``inf``; matches are the same identity
    on another camera.
    """
    for r0 in range(0, distmat.shape[0], rows):
        sl = slice(r0, min(distmat.shape[0], r0 + rows))
        same = q_ids[sl, None] == g_ids[None, :]
        removed = same & (q_cams[sl, None] == g_cams[None, :])
        # float distances keep their dtype (exact comparisons, a faster sort); integers as float64
        block = np.array(distmat[sl], dtype=distmat.dtype if distmat.dtype.kind == "f" else np.float64)
        if np.isnan(block).any():
            raise ValueError("distmat contains NaN")
        block[removed] = np.inf
        yield sl, block, same & ~removed


def _prefix_hits(block, match, k):
    """``(b, k + 1)``: matches among the first ``0..k`` images of each row's stable order."""
    hits = np.zeros((block.shape[0], k + 1), np.int64)
    if k:
        top = top_k_rows(block, k)
        np.cumsum(np.take_along_axis(match, top, axis=1), axis=1, out=hits[:, 1:top.shape[1] + 1])
        hits[:, top.shape[1] + 1:] = hits[:, top.shape[1]:top.shape[1] + 1]
    return hits


def _hits_at(n_raw, h_raw, n_valid, prefix, min_return, max_return):
    """Matches returned (rows first, any trailing shape): ``h_raw`` where the rule does not clip the
    count; where it does, the matches among the first ``lo`` (or ``hi``) images, one number per row."""
    lo, hi = np.minimum(min_return, n_valid), n_valid if max_return is None else np.minimum(max_return, n_valid)
    rows = np.arange(len(prefix))
    shape = (-1,) + (1,) * (np.ndim(n_raw) - 1)
    at_lo, at_hi = prefix[rows, lo].reshape(shape), prefix[rows, np.minimum(hi, prefix.shape[1] - 1)].reshape(shape)
    return np.where(n_raw < lo.reshape(shape), at_lo, np.where(n_raw > hi.reshape(shape), at_hi, h_raw))


def _scores(hits, returned, matches):
    """Per-query precision, recall and F1 (arrays of the broadcast shape); empty returns score 0."""
    hits, returned, matches = (np.asarray(a, np.float64) for a in (hits, returned, matches))
    precision = np.divide(hits, returned, out=np.zeros(np.broadcast(hits, returned).shape), where=returned > 0)
    return precision, hits / matches, 2 * hits / (returned + matches)


def _summary(precision, recall, f1, count) -> dict:
    return {"f1": float(f1.sum() / count), "precision": float(precision.sum() / count),
            "recall": float(recall.sum() / count)}


def retrieval_scores(distmat, q_ids, g_ids, q_cams, g_cams, threshold: float, min_return: int = MIN_RETURN,
                     max_return: int | None = None) -> dict:
    """Mean per-query F1, precision and recall of the threshold rule (see the module docstring).

    Args:
        distmat: ``(Q, G)`` query-gallery distances; q_ids, g_ids, q_cams, g_cams: identities / cameras.
        threshold, min_return, max_return: the return rule (:func:`returned_counts`).

    Returns:
        ``{"f1", "precision", "recall", "mean_returned", "num_valid_queries", "num_queries"}``.

    Raises:
        ValueError: bad shapes, NaN, or no query with a match.
    """
    distmat, q_ids, g_ids, q_cams, g_cams = _check(distmat, q_ids, g_ids, q_cams, g_cams, min_return, max_return)
    k = max(min_return, max_return or 0)
    parts, returned_sum = [], 0
    for _, block, match in _blocks(distmat, q_ids, g_ids, q_cams, g_cams, max(1, _CHUNK_ELEMENTS // distmat.shape[1])):
        valid = match.any(axis=1)
        block, match = block[valid], match[valid]
        under = block <= np.float64(threshold)
        n_raw = np.count_nonzero(under, axis=1)
        n_valid = np.count_nonzero(np.isfinite(block), axis=1)
        n_eff = _clip_counts(n_raw, n_valid, min_return, max_return)
        hits = _hits_at(n_raw, np.count_nonzero(under & match, axis=1), n_valid, _prefix_hits(block, match, k),
                        min_return, max_return)
        parts.append(_scores(hits, n_eff, match.sum(axis=1)))
        returned_sum += int(n_eff.sum())
    return _finish(parts, returned_sum, distmat.shape[0])


def topk_scores(distmat, q_ids, g_ids, q_cams, g_cams, k: int = TOP_K) -> dict:
    """Mean per-query F1, precision and recall of returning the first ``k`` images (fewer when the
    gallery left after the same-camera rule is smaller); same keys as :func:`retrieval_scores`."""
    distmat, q_ids, g_ids, q_cams, g_cams = _check(distmat, q_ids, g_ids, q_cams, g_cams, 0, None)
    parts, returned_sum = [], 0
    for _, block, match in _blocks(distmat, q_ids, g_ids, q_cams, g_cams, max(1, _CHUNK_ELEMENTS // distmat.shape[1])):
        valid = match.any(axis=1)
        block, match = block[valid], match[valid]
        n = np.minimum(k, np.count_nonzero(np.isfinite(block), axis=1))
        hits = np.take_along_axis(_prefix_hits(block, match, k), n[:, None], axis=1)[:, 0]
        parts.append(_scores(hits, n, match.sum(axis=1)))
        returned_sum += int(n.sum())
    return _finish(parts, returned_sum, distmat.shape[0])


def _finish(parts, returned_sum, num_queries) -> dict:
    precision, recall, f1 = (np.concatenate([p[i] for p in parts]) for i in range(3))
    if not len(f1):
        raise ValueError("no query has a matching gallery image (same identity, different camera)")
    return {**_summary(precision, recall, f1, len(f1)), "mean_returned": returned_sum / len(f1),
            "num_valid_queries": int(len(f1)), "num_queries": int(num_queries)}


# === Choosing the threshold ===

@dataclass
class ThresholdScan:
    """Mean F1 of every candidate threshold and of every fixed length ``k``.

    Attributes:
        candidates: ``(C,)`` sorted thresholds: ``-inf`` (nearest image only) then every distinct
            match distance; between two candidates the mean F1 can only fall.
        f1: ``(C,)`` mean per-query F1 of each candidate.
        topk_f1: ``(K,)`` mean F1 of the fixed top-k rule for ``k = 1..K``.
        num_valid_queries: queries with a match (the means' denominator).
        threshold: the chosen threshold: the best candidate (the smallest among equals) moved to the
            middle of the interval where it returns the same images (up to the next distance of a
            valid query; below every distance for ``-inf``): the widest margin on both sides, which
            matters on new people (a threshold at the last match's distance loses the next
            person's slightly farther matches).
    """

    candidates: np.ndarray
    f1: np.ndarray
    topk_f1: np.ndarray
    num_valid_queries: int
    threshold: float

    def best(self) -> tuple[float, float]:
        """``(threshold, mean F1)`` of the chosen threshold."""
        return self.threshold, float(self.f1.max())

    def best_k(self) -> tuple[int, float]:
        """``(k, mean F1)`` of the best fixed length (the smallest among equals)."""
        k = int(np.argmax(self.topk_f1))
        return k + 1, float(self.topk_f1[k])


def scan_thresholds(distmat, q_ids, g_ids, q_cams, g_cams, min_return: int = MIN_RETURN,
                    max_return: int | None = None, max_k: int = TOP_K) -> ThresholdScan:
    """Mean per-query F1 of the threshold rule at every candidate threshold, and of top-k.

    Exact (equal to building every returned set, see the tests); vectorised over blocks of
    queries (see the module docstring for the method and cost).

    Args:
        distmat: ``(Q, G)`` query-gallery distances (any real dtype; read, not copied whole).
        q_ids, g_ids, q_cams, g_cams: identities and cameras.
        min_return, max_return: the return rule (:func:`returned_counts`).
        max_k: the fixed lengths scored, ``1..max_k``.

    Returns:
        A :class:`ThresholdScan`.

    Raises:
        ValueError: bad shapes, NaN, or no query with a match.
    """
    distmat, q_ids, g_ids, q_cams, g_cams = _check(distmat, q_ids, g_ids, q_cams, g_cams, min_return, max_return)
    num_g = distmat.shape[1]
    rows = max(1, _CHUNK_ELEMENTS // num_g)
    # pass 1: the candidates (every match distance)
    found = [np.unique(block[match]) for _, block, match in _blocks(distmat, q_ids, g_ids, q_cams, g_cams, rows)]
    matched = np.unique(np.concatenate(found))
    if not matched.size:
        raise ValueError("no query has a matching gallery image (same identity, different camera)")
    candidates = np.concatenate(([-np.inf], matched)).astype(matched.dtype)
    num_c = candidates.size
    k_max = max(1, int(max_k))
    prefix_k = max(k_max, min_return, max_return or 0)
    f1_sum, topk_sum, num_valid = np.zeros(num_c), np.zeros(k_max), 0
    ks = np.arange(1, k_max + 1)
    # pass 2: every candidate scored for a block of queries at once
    for _, block, match in _blocks(distmat, q_ids, g_ids, q_cams, g_cams,
                                   max(1, min(rows, _BLOCK_ELEMENTS // num_c))):
        valid = match.any(axis=1)
        if not valid.any():
            continue
        block, match = block[valid], match[valid]
        b = block.shape[0]
        matches = match.sum(axis=1)
        n_valid = np.count_nonzero(np.isfinite(block), axis=1)
        prefix = _prefix_hits(block, match, prefix_k)
        # an image of distance d is returned by every candidate c >= first candidate >= d;
        # removed images (inf) fall past the last candidate and count nowhere. Rows sorted first:
        # searchsorted is several times faster on increasing keys
        offset = (num_c + 1) * np.arange(b)[:, None]
        slot = np.searchsorted(candidates, np.sort(block, axis=1), side="left") + offset
        n_raw = np.bincount(slot.ravel(), minlength=b * (num_c + 1)).reshape(b, num_c + 1)[:, :num_c].cumsum(axis=1)
        slot = (np.searchsorted(candidates, block[match], side="left") + offset[np.nonzero(match)[0], 0])
        h_raw = np.bincount(slot, minlength=b * (num_c + 1)).reshape(b, num_c + 1)[:, :num_c].cumsum(axis=1)
        n_eff = _clip_counts(n_raw, n_valid, min_return, max_return)
        hits = _hits_at(n_raw, h_raw, n_valid, prefix, min_return, max_return)
        f1_sum += (2 * hits / (n_eff + matches[:, None])).sum(axis=0)
        n_k = np.minimum(ks[None, :], n_valid[:, None])
        topk_sum += (2 * np.take_along_axis(prefix, n_k, axis=1) / (n_k + matches[:, None])).sum(axis=0)
        num_valid += b
    f1 = f1_sum / num_valid
    best = candidates[int(np.argmax(f1))]
    # pass 3: the interval the best candidate stands for, [best, next distance of a valid query)
    below, above = np.inf, np.inf
    for _, block, match in _blocks(distmat, q_ids, g_ids, q_cams, g_cams, rows):
        block = block[match.any(axis=1)]
        below = min(below, float(block.min(initial=np.inf)))
        above = min(above, float(block.min(where=block > best, initial=np.inf)))
    if best == -np.inf:
        threshold = float(np.nextafter(below, -np.inf))
    else:
        threshold = float(best + (above - best) / 2) if np.isfinite(above) else float(best)
        if not best <= threshold < above:  # adjacent floats: the midpoint rounds to an end
            threshold = float(best)
    return ThresholdScan(candidates, f1, topk_sum / num_valid, num_valid, threshold)


def choose_threshold(distmat, q_ids, g_ids, q_cams, g_cams, min_return: int = MIN_RETURN,
                     max_return: int | None = None, top_k: int = TOP_K) -> dict:
    """The threshold of best mean F1 on these queries, with its figures and the top-k baseline
    **on the same queries** (in-sample: optimistic; :func:`holdout_threshold` gives honest ones).

    Returns:
        ``{"value", "f1", "precision", "recall", "mean_returned", "num_valid_queries", "num_queries",
        "top_k": {"k", "f1", "precision", "recall", ...}, "best_k": {the same for the best fixed k}}``.
    """
    ids = (q_ids, g_ids, q_cams, g_cams)
    scan = scan_thresholds(distmat, *ids, min_return=min_return, max_return=max_return, max_k=top_k)
    value, _ = scan.best()
    k, _ = scan.best_k()
    return {"value": value, **retrieval_scores(distmat, *ids, value, min_return, max_return),
            "top_k": {"k": int(top_k), **topk_scores(distmat, *ids, top_k)},
            "best_k": {"k": k, **topk_scores(distmat, *ids, k)}}


def holdout_threshold(distmat, q_ids, g_ids, q_cams, g_cams, distance: str = "cosine", seed: int = 0,
                      min_return: int = MIN_RETURN, max_return: int | None = TOP_K, top_k: int = TOP_K) -> dict:
    """The ``threshold`` record of ``metrics.json["reid"]``: chosen on held-out people, scored by
    2-fold cross-validation over their identities (see the module docstring).

    Args:
        distmat: ``(Q, G)`` distances of the held-out queries to their gallery.
        q_ids, g_ids, q_cams, g_cams: identities and cameras.
        distance: the distance ``distmat`` holds (recorded: the threshold is in its units).
        seed: of the random split of the query identities into halves.
        min_return, max_return, top_k: the return rule and the fixed-length baseline; by default
            those of ``mtl-predict --reid-threshold`` with its default ``--top`` (at least 1, at
            most 100 images), so that the figures are the deliverable's.

    Returns:
        ``{"value", "distance", "f1", "precision", "recall", "mean_returned", "validation",
        "in_sample": {f1, precision, recall}, "top_k": {k, f1, precision, recall, mean_returned},
        "best_k": {...}, "min_return", "max_return", "num_valid_queries", "num_queries"}``. ``value``
        is chosen on all the queries; ``f1`` / ``precision`` / ``recall`` / ``mean_returned`` (and
        ``best_k``'s, whose ``k`` is chosen on all) are the cross-validated means, weighted by
        each half's valid queries. With fewer than two identities, they are the in-sample ones and
        ``validation`` says so.

    Raises:
        ValueError: bad shapes, NaN, or no query with a match.
    """
    distmat = np.asarray(distmat)
    q_ids, g_ids, q_cams, g_cams = (np.asarray(a).reshape(-1) for a in (q_ids, g_ids, q_cams, g_cams))
    full = choose_threshold(distmat, q_ids, g_ids, q_cams, g_cams, min_return, max_return, top_k)
    keys = ("f1", "precision", "recall", "mean_returned")
    record = {"value": full["value"], "distance": distance, **{k: full[k] for k in keys},
              "validation": "in-sample (fewer than two held-out identities with a match: no split)",
              "in_sample": {k: full[k] for k in ("f1", "precision", "recall")},
              "top_k": full["top_k"], "best_k": full["best_k"],
              "min_return": int(min_return), "max_return": max_return,
              "num_valid_queries": full["num_valid_queries"], "num_queries": full["num_queries"]}
    ids = np.unique(q_ids[_has_match(q_ids, g_ids, q_cams, g_cams)])
    if len(ids) < 2:
        return record
    half = set(np.random.default_rng(seed).permutation(ids)[: len(ids) // 2].tolist())
    in_a = np.array([i in half for i in q_ids.tolist()])
    folds = []
    for choose_rows, score_rows in ((in_a, ~in_a), (~in_a, in_a)):
        chosen = scan_thresholds(distmat[choose_rows], q_ids[choose_rows], g_ids, q_cams[choose_rows], g_cams,
                                 min_return, max_return, top_k)
        part = (distmat[score_rows], q_ids[score_rows], g_ids, q_cams[score_rows], g_cams)
        folds.append((retrieval_scores(*part, chosen.best()[0], min_return, max_return),
                      topk_scores(*part, chosen.best_k()[0])))
    weights = np.array([f[0]["num_valid_queries"] for f in folds], np.float64)
    record.update({k: float(np.average([f[0][k] for f in folds], weights=weights)) for k in keys})
    record["best_k"] = {"k": full["best_k"]["k"],
                        **{k: float(np.average([f[1][k] for f in folds], weights=weights)) for k in keys}}
    record["validation"] = ("2-fold by identity: chosen on one half of the held-out people, scored on the other, "
                            "both ways (value: chosen on all of them)")
    return record


def _has_match(q_ids, g_ids, q_cams, g_cams) -> np.ndarray:
    """``(Q,)`` bool: the query has a gallery image of its identity on another camera."""
    out = np.zeros(len(q_ids), bool)
    for start in range(0, len(q_ids), 1024):
        sl = slice(start, start + 1024)
        out[sl] = ((q_ids[sl, None] == g_ids[None, :]) & (q_cams[sl, None] != g_cams[None, :])).any(axis=1)
    return out
