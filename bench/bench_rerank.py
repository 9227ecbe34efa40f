"""Benchmark of mtl.reid.re_ranking against the common dense numpy implementation.

Two parts, in one process:

1. Comparison at a size the reference can run (default 1,000 queries x 4,000 gallery): the
   reference implementation (paper code / torchreid: dense (Q+G)^2 distance, full argsort,
   dense V, Jaccard through an inverted index) and ``re_ranking`` on the same float32
   Euclidean distance matrices; prints both times, the ratio, their extra memory, the
   largest difference of the re-ranked distances, and asserts that mAP agrees to 0.001.
2. Market-1501 size (3,368 queries x 15,913 gallery, 2,048-d embeddings by default):
   ``re_ranking_features`` from the embeddings, and ``re_ranking`` from precomputed
   q_g / q_q / g_g matrices (g_g alone is 1 GiB); prints times and peak extra memory.
   The reference is not run at this size unless ``--full-baseline`` (it needs about
   9 GB); its time is extrapolated from part 1 by the (Q+G)^2 growth of its dominant steps.

    python bench/bench_rerank.py                  # both parts (about 2 minutes)
    python bench/bench_rerank.py --dim 512        # 512-d embeddings at Market size
    python bench/bench_rerank.py --skip-full      # part 1 only

Memory: "extra" is the peak of numpy allocations during the call above what existed before
it (tracemalloc; inputs excluded, output included), measured in a separate run from the
timing. For the reference, the growth of the process peak RSS (ru_maxrss) during its run,
which is run first so that nothing before it raised the peak.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_evaluate_rank import market_like_features  # noqa: E402

from mtl.reid import evaluate_rank, euclidean_distance, re_ranking, re_ranking_features  # noqa: E402
from mtl.reid.reference import reference_re_ranking  # noqa: E402


def _maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(fn, *args, **kwargs):
    """``(result, wall seconds, process CPU seconds)``."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0, time.process_time() - c0


def _peak_mib(fn, *args, **kwargs):
    """Peak numpy/Python allocation during ``fn`` above what was allocated before (MiB)."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    out = fn(*args, **kwargs)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del out
    return peak / 2**20


def _problem(num_query, num_gallery, dim, noise, seed):
    scale = num_gallery / 15913
    return market_like_features(
        seed=seed, num_query=num_query, num_gallery=num_gallery,
        num_ids=max(2, round(750 * num_query / 3368)), num_distractors=round(2798 * scale),
        dim=dim, noise=noise,
    )


def _mAP(dist, q_pids, g_pids, q_camids, g_camids):
    return evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids)["mAP"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-queries", type=int, default=1000)
    parser.add_argument("--small-gallery", type=int, default=4000)
    parser.add_argument("--dim", type=int, default=2048, help="embedding dimension")
    parser.add_argument("--noise", type=float, default=None,
                        help="embedding noise (default: chosen for an original mAP around 0.3-0.4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-full", action="store_true", help="run part 1 only")
    parser.add_argument("--full-baseline", action="store_true",
                        help="also run the reference at Market size (needs about 9 GB of memory)")
    args = parser.parse_args(argv)
    noise = args.noise if args.noise is not None else 2.35 * (args.dim / 512) ** 0.31

    # ---------------------------------------------------------------- part 1
    print(f"load average before the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs); times are wall-clock, CPU = process CPU time (BLAS may use 2 threads)")
    nq, ng = args.small_queries, args.small_gallery
    q_feat, g_feat, q_pids, g_pids, q_camids, g_camids = _problem(nq, ng, args.dim, noise, args.seed)
    q_g = euclidean_distance(q_feat, g_feat)
    q_q = euclidean_distance(q_feat, q_feat)
    g_g = euclidean_distance(g_feat, g_feat)
    labels = (q_pids, g_pids, q_camids, g_camids)
    print(f"part 1: {nq} queries x {ng} gallery, {args.dim}-d embeddings, float32 distances")

    rss0 = _maxrss_mib()
    ref, ref_time, ref_cpu = _timed(reference_re_ranking, q_g, q_q, g_g)
    ref_rss = _maxrss_mib() - rss0
    print(f"  reference (dense numpy):    {ref_time:8.2f} s (CPU {ref_cpu:6.2f} s)   "
          f"peak RSS growth {ref_rss:6.0f} MiB")

    runs = [_timed(re_ranking, q_g, q_q, g_g) for _ in range(3)]
    got, fast_time, fast_cpu = min(runs, key=lambda r: r[1])
    fast_peak = _peak_mib(re_ranking, q_g, q_q, g_g)
    print(f"  re_ranking (matrices):      {fast_time:8.3f} s (CPU {fast_cpu:6.3f} s)   "
          f"peak extra memory {fast_peak:6.0f} MiB   (best of 3 runs: "
          f"{', '.join(f'{r[1]:.3f}' for r in runs)} s)")
    feat_res, feat_time, feat_cpu = _timed(re_ranking_features, q_feat, g_feat)
    print(f"  re_ranking_features:        {feat_time:8.3f} s (CPU {feat_cpu:6.3f} s)")

    diff = np.abs(got - ref)
    max_diff, n_diff = float(diff.max()), int(np.count_nonzero(diff > 1e-5))
    del diff
    map_orig = _mAP(q_g, *labels)
    map_ref, map_got, map_feat = _mAP(ref, *labels), _mAP(got, *labels), _mAP(feat_res, *labels)
    print(f"  speed-up of re_ranking: {ref_time / fast_time:.0f}x wall, {ref_cpu / fast_cpu:.0f}x CPU")
    print(f"  max |re_ranking - reference| = {max_diff:.2e}; entries differing by more than 1e-5: "
          f"{n_diff} of {got.size} (where equal float32 distances straddle a neighbour-list "
          "boundary: the reference's argsort orders ties arbitrarily, re_ranking by index)")
    print(f"  mAP: original {map_orig:.4f}, reference re-ranked {map_ref:.4f}, re_ranking {map_got:.4f} "
          f"(diff {abs(map_got - map_ref):.1e}), re_ranking_features {map_feat:.4f}")
    assert abs(map_got - map_ref) < 1e-3, (map_got, map_ref)
    assert abs(map_feat - map_ref) < 1e-3, (map_feat, map_ref)
    del ref, got, feat_res, q_g, q_q, g_g

    if args.skip_full:
        print("OK (part 1)")
        return

    # ---------------------------------------------------------------- part 2
    nq, ng = 3368, 15913
    q_feat, g_feat, q_pids, g_pids, q_camids, g_camids = _problem(nq, ng, args.dim, noise, args.seed)
    labels = (q_pids, g_pids, q_camids, g_camids)
    print(f"part 2: Market size, {nq} queries x {ng} gallery, {args.dim}-d embeddings")
    feat_res, feat_time, feat_cpu = _timed(re_ranking_features, q_feat, g_feat)
    print(f"  re_ranking_features:        {feat_time:8.2f} s (CPU {feat_cpu:6.2f} s)", flush=True)
    feat_peak = _peak_mib(re_ranking_features, q_feat, g_feat)
    print(f"    peak extra memory {feat_peak:.0f} MiB (output {feat_res.nbytes / 2**20:.0f} MiB included)")

    q_g, qg_time, _ = _timed(euclidean_distance, q_feat, g_feat)
    q_q = euclidean_distance(q_feat, q_feat)
    g_g, gg_time, _ = _timed(euclidean_distance, g_feat, g_feat)
    print(f"  (distance matrices for re_ranking: q_g {qg_time:.1f} s, g_g {gg_time:.1f} s, "
          f"g_g is {g_g.nbytes / 2**30:.2f} GiB)")
    got, mat_time, mat_cpu = _timed(re_ranking, q_g, q_q, g_g)
    print(f"  re_ranking (matrices):      {mat_time:8.2f} s (CPU {mat_cpu:6.2f} s)", flush=True)
    mat_peak = _peak_mib(re_ranking, q_g, q_q, g_g)
    print(f"    peak extra memory {mat_peak:.0f} MiB (inputs excluded, output included)")
    map_orig, map_got, map_feat = _mAP(q_g, *labels), _mAP(got, *labels), _mAP(feat_res, *labels)
    print(f"  mAP: original {map_orig:.4f}, re_ranking {map_got:.4f}, re_ranking_features {map_feat:.4f}")

    n_small = args.small_queries + args.small_gallery
    growth = ((nq + ng) / n_small) ** 2
    ref_full, ref_full_cpu = ref_time * growth, ref_cpu * growth
    print(f"  reference extrapolated from part 1 by ((Q+G) ratio)^2 = {growth:.1f}: "
          f"~{ref_full:.0f} s (CPU ~{ref_full_cpu:.0f} s), ~{ref_rss * growth / 1024:.1f} GiB")
    what = "extrapolated"
    if args.full_baseline:
        del feat_res
        rss0 = _maxrss_mib()
        ref, ref_full, ref_full_cpu = _timed(reference_re_ranking, q_g, q_q, g_g)
        ref_full_rss = _maxrss_mib() - rss0
        diff = np.abs(got - ref)
        print(f"  reference at Market size:   {ref_full:8.2f} s (CPU {ref_full_cpu:6.2f} s)   peak RSS growth "
              f"{ref_full_rss / 1024:.1f} GiB; mAP {_mAP(ref, *labels):.4f}, "
              f"max |re_ranking - reference| = {float(diff.max()):.2e}, "
              f"{int(np.count_nonzero(diff > 1e-5))} of {diff.size} entries differ by more than 1e-5")
        del diff
        what = "measured"
    print(f"  speed-up at Market size ({what} reference): from matrices {ref_full / mat_time:.0f}x wall, "
          f"{ref_full_cpu / mat_cpu:.0f}x CPU; from features (distances included) "
          f"{ref_full / feat_time:.0f}x wall, {ref_full_cpu / feat_cpu:.0f}x CPU")
    print("OK")


if __name__ == "__main__":
    main()
