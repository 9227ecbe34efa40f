"""Benchmark of mtl.reid.evaluate_rank against the plain per-query numpy loop.

Builds a synthetic problem the size of Market-1501 (3,368 queries x 15,913 gallery images,
750 identities plus distractors of identity 0, so 751 gallery identities, 6 cameras) from
random embeddings with identity and camera structure, then runs in the same process:

* the baseline: the per-query loop of torchreid / fast-reid ``eval_market1501`` (argsort of
  every row, then for each query a Python-level AP computation), with a stable argsort so
  that ties would be ordered as in ``evaluate_rank``;
* ``mtl.reid.evaluate_rank``.

It prints both times, the ratio, the extra memory of each, and asserts that both give the
same metrics to 1e-6.

    python bench/bench_evaluate_rank.py                 # full size baseline (about 1 min)
    python bench/bench_evaluate_rank.py --queries 500   # baseline on 500 queries only

Memory: for ``evaluate_rank`` the peak of numpy allocations above the inputs (tracemalloc,
separate run); for the baseline the growth of the process peak RSS (ru_maxrss), measured
after ``evaluate_rank`` ran, so a lower bound of its extra memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mtl.reid import evaluate_rank  # noqa: E402
from mtl.reid.distance import euclidean_distance  # noqa: E402
from mtl.reid.reference import reference_eval_market1501  # noqa: E402


def market_like_features(seed=0, num_query=3368, num_gallery=15913, num_ids=750,
                         num_distractors=2798, num_cams=6, dim=64, noise=1.0, cam_shift=0.35):
    """Synthetic query/gallery embeddings with Market-1501 proportions.

    Each identity has a random centre; an image is centre + camera offset * cam_shift +
    Gaussian noise, so matching is imperfect and the same camera is a confounder, as in real
    data. Distractors (identity 0) have their own random centres. Every query identity has
    gallery images (at least 2) in random cameras; queries of one identity are in distinct
    cameras. Returns ``q_feat``, ``g_feat`` (float32), ``q_pids``, ``g_pids``, ``q_camids``,
    ``g_camids``.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids + 1, dim)).astype(np.float32)
    cam_offsets = rng.standard_normal((num_cams, dim)).astype(np.float32)
    per_id = np.full(num_ids, num_query // num_ids)
    per_id[rng.permutation(num_ids)[: num_query - per_id.sum()]] += 1
    q_pids = np.repeat(np.arange(1, num_ids + 1), per_id)
    q_camids = np.concatenate([rng.permutation(num_cams)[:n] for n in per_id])
    num_real = num_gallery - num_distractors
    weights = rng.gamma(2.0, size=num_ids)
    counts = 2 + rng.multinomial(num_real - 2 * num_ids, weights / weights.sum())
    g_pids = np.concatenate([np.repeat(np.arange(1, num_ids + 1), counts),
                             np.zeros(num_distractors, dtype=np.int64)])
    g_camids = rng.integers(0, num_cams, size=num_gallery)
    perm = rng.permutation(num_gallery)
    g_pids, g_camids = g_pids[perm], g_camids[perm]

    def embed(pids, cams):
        base = centres[pids].copy()
        distractor = pids == 0
        base[distractor] = rng.standard_normal((int(distractor.sum()), dim))
        base += cam_shift * cam_offsets[cams]
        base += noise * rng.standard_normal((len(pids), dim)).astype(np.float32)
        return base

    return embed(q_pids, q_camids), embed(g_pids, g_camids), q_pids, g_pids, q_camids, g_camids


def market_like_problem(seed=0, **kwargs):
    """:func:`market_like_features` turned into a Euclidean distance matrix (float32):
    returns ``distmat``, ``q_pids``, ``g_pids``, ``q_camids``, ``g_camids`` (mAP about 0.6)."""
    q_feat, g_feat, q_pids, g_pids, q_camids, g_camids = market_like_features(seed=seed, **kwargs)
    return euclidean_distance(q_feat, g_feat), q_pids, g_pids, q_camids, g_camids


def _maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=None,
                        help="run the baseline on this many (random) queries only; default: all")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of evaluate_rank (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    distmat, q_pids, g_pids, q_camids, g_camids = market_like_problem(seed=args.seed)
    print(f"problem: {distmat.shape[0]} queries x {distmat.shape[1]} gallery, "
          f"{len(np.unique(g_pids))} gallery identities, {len(np.unique(g_camids))} cameras, "
          f"distmat {distmat.dtype} {distmat.nbytes / 2**20:.0f} MiB (built in {time.perf_counter() - t0:.1f} s)")

    print(f"load average before the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs); times are wall-clock, CPU = process CPU time")
    times, cpus = [], []
    for _ in range(args.repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fast = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    fast_time = min(times)
    fast_cpu = min(cpus)
    print(f"evaluate_rank (all {distmat.shape[0]} queries): best {fast_time:.3f} s "
          f"of {args.repeat} (runs: {', '.join(f'{t:.3f}' for t in times)}; "
          f"CPU: {', '.join(f'{t:.3f}' for t in cpus)})")
    print(f"  mAP {fast['mAP']:.4f}  mINP {fast['mINP']:.4f}  rank1 {fast['rank1']:.4f}  "
          f"rank5 {fast['rank5']:.4f}  rank10 {fast['rank10']:.4f}  valid queries {fast['num_valid_queries']}")

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    fast_peak = (tracemalloc.get_traced_memory()[1] - base) / 2**20
    tracemalloc.stop()
    print(f"  peak extra memory (tracemalloc): {fast_peak:.1f} MiB")

    if args.queries is not None and args.queries < distmat.shape[0]:
        rng = np.random.default_rng(args.seed + 1)
        sub = np.sort(rng.choice(distmat.shape[0], size=args.queries, replace=False))
        sub_args = (distmat[sub], q_pids[sub], g_pids, q_camids[sub], g_camids)
        fast_sub = evaluate_rank(*sub_args)
        c0, t0 = time.process_time(), time.perf_counter()
        fast_sub = evaluate_rank(*sub_args)
        fast_sub_time = time.perf_counter() - t0
        fast_sub_cpu = time.process_time() - c0
    else:
        sub_args = (distmat, q_pids, g_pids, q_camids, g_camids)
        fast_sub, fast_sub_time, fast_sub_cpu = fast, fast_time, fast_cpu
    n_base = sub_args[0].shape[0]

    rss0 = _maxrss_mb()
    c0, t0 = time.process_time(), time.perf_counter()
    cmc, mAP, mINP, _ = reference_eval_market1501(*sub_args)
    base_time = time.perf_counter() - t0
    base_cpu = time.process_time() - c0
    rss_growth = _maxrss_mb() - rss0
    print(f"baseline per-query loop ({n_base} queries): {base_time:.2f} s (CPU {base_cpu:.2f} s), "
          f"peak RSS growth {rss_growth:.0f} MiB")
    print(f"  mAP {mAP:.4f}  mINP {mINP:.4f}  rank1 {cmc[0]:.4f}")

    diffs = {
        "mAP": abs(mAP - fast_sub["mAP"]),
        "mINP": abs(mINP - fast_sub["mINP"]),
        "cmc": float(np.max(np.abs(cmc - fast_sub["cmc"]))),
    }
    print("max abs difference: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert all(v <= 1e-6 for v in diffs.values()), f"metrics differ: {diffs}"

    if n_base == distmat.shape[0]:
        print(f"speed-up (same {n_base} queries): {base_time / fast_time:.0f}x wall "
              f"({base_time:.2f} s -> {fast_time:.3f} s), {base_cpu / fast_cpu:.0f}x CPU "
              f"({base_cpu:.2f} s -> {fast_cpu:.3f} s)")
    else:
        print(f"speed-up on the {n_base}-query subset: {base_time / fast_sub_time:.0f}x wall "
              f"({base_time:.2f} s -> {fast_sub_time:.3f} s), {base_cpu / fast_sub_cpu:.0f}x CPU; "
              f"baseline extrapolated to all {distmat.shape[0]} queries: "
              f"{base_time * distmat.shape[0] / n_base:.1f} s (CPU "
              f"{base_cpu * distmat.shape[0] / n_base:.1f} s) vs {fast_time:.3f} s measured")
    print("OK: same metrics (1e-6)")


if __name__ == "__main__":
    main()
