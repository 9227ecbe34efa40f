"""Benchmark of mtl.reid.index on a large synthetic gallery: exact (numpy) vs approximate (FAISS).

Builds 1,000 queries and 500,000 gallery embeddings (512-d) with identity structure: 500 "looks"
(people dressed alike: unit centres), 50,000 identities each a look plus noise (``--group-spread``),
10 gallery images per identity, each its identity centre plus Gaussian noise (``--noise``: its norm
relative to the unit centre; 1.6 makes the exact mAP about 0.8), six cameras drawn at random; each
query is a fresh image of a distinct gallery identity. Then, in one process:

* ``exact`` (``build_index(kind="exact")``, numpy blocks and a running top-k): the baseline;
* each approximate kind asked (``--kinds``: ``ivf`` by default; ``hnsw``, whose build takes
  minutes per 50,000 images on 2 cores; FAISS, the ``index`` extra).

For each it prints the build time, the search time of the 1,000 queries (top-100), the peak
memory of the search (growth of the process resident set over its level before the call,
sampled every 2 ms: numpy and FAISS allocations alike), the approximate index's recall@10
against the exact top-10, and the mAP / rank-1 of both top-100 lists under the Market-1501
protocol (``rank_metrics_from_topk``; ``matches_found`` says how many matches the lists hold).
The last line per kind gives the time ratio (exact / approximate) and whether the target
(recall@10 >= 0.95 at a tenth of the exact time or less) is met.

    .venv/bin/python bench/bench_index.py                       # full size (a few minutes)
    .venv/bin/python bench/bench_index.py --gallery 50000       # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mtl.reid.index import build_index, rank_metrics_from_topk, recall_at_k  # noqa: E402

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


class PeakRss:
    """Peak growth of the resident set during a ``with`` block (sampled by a thread)."""

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.growth_mb = (self.peak - self.start) / 2**20


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic(num_gallery: int, num_queries: int, dim: int, per_id: int, groups: int, group_spread: float,
              noise: float, seed: int):
    """Gallery / query embeddings with identity structure, float32, generated in blocks.

    Two levels, as in real re-identification embeddings where people dressed alike lie close:
    ``groups`` look centres (unit vectors); each identity centre is a look centre plus Gaussian
    noise of norm ~``group_spread``, normalised; each image is its identity centre plus noise of
    norm ~``noise``.
    """
    rng = np.random.default_rng(seed)
    num_ids = num_gallery // per_id
    looks = _unit(rng.standard_normal((groups, dim), dtype=np.float32))
    centres = rng.standard_normal((num_ids, dim), dtype=np.float32)
    centres *= np.float32(group_spread / np.sqrt(dim))
    centres += looks[rng.integers(0, groups, size=num_ids)]
    _unit(centres)
    scale = np.float32(noise / np.sqrt(dim))

    def draw(pids):
        out = np.empty((len(pids), dim), dtype=np.float32)
        for i0 in range(0, len(pids), 65536):
            block = rng.standard_normal((min(65536, len(pids) - i0), dim), dtype=np.float32)
            block *= scale
            block += centres[pids[i0:i0 + len(block)]]
            out[i0:i0 + len(block)] = block
        return out

    g_pids = np.repeat(np.arange(num_ids), per_id)
    q_pids = rng.choice(num_ids, size=num_queries, replace=False)
    g_cams, q_cams = rng.integers(0, 6, size=len(g_pids)), rng.integers(0, 6, size=num_queries)
    return draw(q_pids), draw(g_pids), q_pids, g_pids, q_cams, g_cams


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gallery", type=int, default=500_000)
    p.add_argument("--queries", type=int, default=1_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--per-id", type=int, default=10, help="gallery images per identity")
    p.add_argument("--groups", type=int, help="look groups (default: one per 1,000 gallery images)")
    p.add_argument("--group-spread", type=float, default=1.0, help="identity noise norm around its look")
    p.add_argument("--noise", type=float, default=1.6, help="image noise norm around its unit identity centre")
    p.add_argument("--kinds", default="ivf", help="approximate kinds to compare with exact (ivf, hnsw, flat)")
    p.add_argument("--k", type=int, default=100, help="list length for the mAP")
    p.add_argument("--nprobe", type=int, help="ivf cells searched (default: build_index's)")
    p.add_argument("--ef-search", type=int, default=64, help="hnsw search list length")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    groups = args.groups or max(1, args.gallery // 1000)
    queries, gallery, q_pids, g_pids, q_cams, g_cams = synthetic(args.gallery, args.queries, args.dim, args.per_id,
                                                                 groups, args.group_spread, args.noise, args.seed)
    print(f"data: {args.queries} queries x {args.gallery} gallery, {args.dim}-d, {args.gallery // args.per_id} "
          f"identities in {groups} looks (spread {args.group_spread}), image noise {args.noise} "
          f"({time.perf_counter() - t0:.1f} s); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    labels = (q_pids, g_pids, q_cams, g_cams)

    def run(kind, **kw):
        t = time.perf_counter()
        index = build_index(gallery, kind, "cosine", **kw)
        build_s = time.perf_counter() - t
        with PeakRss() as mem:
            t, c = time.perf_counter(), time.process_time()
            _, idx = index.search(queries, args.k)
            search_s, cpu_s = time.perf_counter() - t, time.process_time() - c
        metrics = rank_metrics_from_topk(idx, *labels)
        print(f"{kind:6s} {index.params or ''}: build {build_s:7.1f} s | search {search_s:6.2f} s wall "
              f"{cpu_s:6.2f} s CPU | search peak RSS +{mem.growth_mb:7.1f} MB | mAP@{args.k} {metrics['mAP']:.4f} "
              f"rank1 {metrics['rank1']:.4f} matches found {metrics['matches_found']:.4f}", flush=True)
        del index
        return idx, search_s, cpu_s, metrics

    exact_idx, exact_s, exact_cpu, exact_m = run("exact")
    for kind in [k for k in args.kinds.split(",") if k]:
        kw = {"nprobe": args.nprobe} if kind == "ivf" else {"ef_search": args.ef_search} if kind == "hnsw" else {}
        idx, s, cpu, m = run(kind, **kw)
        recall = recall_at_k(idx, exact_idx, 10)
        ratio = exact_s / s
        ok = recall >= 0.95 and ratio >= 10
        print(f"  {kind}: recall@10 vs exact {recall:.4f}; mAP {m['mAP']:.4f} vs exact {exact_m['mAP']:.4f} "
              f"(diff {m['mAP'] - exact_m['mAP']:+.4f}); time ratio exact/{kind} {ratio:.1f}x wall, "
              f"{exact_cpu / cpu:.1f}x CPU; "
              f"target (recall@10 >= 0.95, ratio >= 10): {'met' if ok else 'NOT met'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
