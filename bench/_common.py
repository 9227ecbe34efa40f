"""Shared helpers of the TensorFlow benchmarks (bench_pipeline, bench_train_step, bench_distribute,
bench_extraction): the data folder, the machine's load, timing, and the result record that
``bench/run_all.py`` collects into ``bench/results.json``.

A result is a plain dict::

    {"name", "title", "status": "ok" | "skipped" | "failed", "reason" (skipped / failed),
     "baseline": {"label", "value", "unit"}, "package": {"label", "value", "unit"},
     "ratio": package / baseline, "target": text, "met": bool | None, "notes": [text], "details": {...},
     "load_before", "load_after": os.getloadavg(), "wall_s"}
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MTL_PROGRESS", "0")

DEFAULT_DATA = REPO.parent / "shared" / "data" / "market1501-course"


def add_size_args(p, trunk_width: bool = True) -> None:
    """The input size flags every benchmark shares: ``--height`` and ``--width-px`` (pixels) and,
    for a benchmark that builds a model, ``--width`` (the trunk's width multiplier)."""
    p.add_argument("--height", type=int, default=128, help="input height in pixels (default 128)")
    p.add_argument("--width-px", type=int, default=64, help="input width in pixels (default 64)")
    if trunk_width:
        p.add_argument("--width", type=float, default=1.0, help="trunk width multiplier (default 1.0)")


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded (the machine is shared: read figures with them)."""
    return [round(x, 2) for x in os.getloadavg()]


def result(name: str, title: str, **fields) -> dict:
    """A result record (see the module docstring) with the load average at creation."""
    return {"name": name, "title": title, "status": "ok", "load_before": load(), **fields}


def skipped(name: str, title: str, reason: str) -> dict:
    """The record of a benchmark that could not run here (no data, a missing feature)."""
    print(f"{name}: skipped: {reason}")
    return {"name": name, "title": title, "status": "skipped", "reason": reason, "load_before": load()}


def compare(record: dict, baseline: tuple[str, float], package: tuple[str, float], unit: str,
            target: float | None = None, higher_is_better: bool = True, target_text: str | None = None) -> dict:
    """Fill baseline, package, ratio (package / baseline) and whether ``ratio >= target``; print them."""
    ratio = package[1] / baseline[1] if baseline[1] else None
    record.update(baseline={"label": baseline[0], "value": round(baseline[1], 2), "unit": unit},
                  package={"label": package[0], "value": round(package[1], 2), "unit": unit},
                  ratio=None if ratio is None else round(ratio, 4))
    if target is not None and ratio is not None:
        record["target"] = target_text or f"ratio >= {target:g}"
        record["met"] = bool(ratio >= target) if higher_is_better else bool(ratio <= target)
    print(f"{record['name']}: baseline ({baseline[0]}) {baseline[1]:,.1f} {unit} | package ({package[0]}) "
          f"{package[1]:,.1f} {unit} | ratio {ratio:.3f}"
          + (f" | target {record['target']}: {'met' if record['met'] else 'NOT met'}" if "met" in record else ""))
    return record


def finish(record: dict, start: float, json_path: str | None) -> dict:
    """Add the load after the run and the wall time; write ``json_path`` when given."""
    record["load_after"] = load()
    record["wall_s"] = round(time.time() - start, 1)
    print(f"load average before {record['load_before']} after {record['load_after']} "
          f"({os.cpu_count()} CPUs); {record['wall_s']} s")
    if json_path:
        Path(json_path).write_text(json.dumps(record, indent=1))
    return record


def images_in(folder: Path, limit: int = 0) -> list[str]:
    """The .jpg files of ``folder``, sorted; the first ``limit`` when > 0."""
    paths = sorted(str(p) for p in folder.glob("*.jpg"))
    return paths[:limit] if limit else paths


def timed(fn) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of ``fn()``. On a shared machine the CPU time (all
    threads of this process) measures the work done; the wall time also counts waiting for the CPUs."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def rates_in_turn(fns: dict, count: int, repeats: int) -> dict:
    """Run each of ``fns`` (name -> callable processing ``count`` items) in turn, ``repeats`` rounds
    (a change of load hits all of them); returns per name the wall and CPU rates of every round."""
    rates = {name: {"wall": [], "cpu": []} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = timed(fn)
            rates[name]["wall"].append(round(count / wall, 1))
            rates[name]["cpu"].append(round(count / cpu, 1) if cpu > 0 else None)
            print(f"  {name}: {count / wall:,.1f} /s wall, {count / max(cpu, 1e-9):,.1f} per CPU second", flush=True)
    return rates


def best(rates: dict, name: str, kind: str = "wall") -> float:
    """The best rate of ``name`` (the round least disturbed by other jobs)."""
    return max(r for r in rates[name][kind] if r is not None)


def market_specs(identities: int = 600):
    """The Market-1501 course tasks (every attribute) and an identity task of ``identities`` people
    (about the training split of its 751 people)."""
    from mtl.data.sources.market_course import market_tasks
    from mtl.tasks import IDENTITY, TaskSpec

    return list(market_tasks().values()) + [TaskSpec("identity", tuple(str(i) for i in range(identities)), IDENTITY)]
