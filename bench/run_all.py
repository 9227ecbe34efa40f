"""Run every benchmark and write ``bench/results.json`` (``mtl.report.bench.render_bench`` shows it).

Each benchmark runs in its own process (TensorFlow's devices are set once per process; a failure
stays one benchmark's): the TensorFlow ones (``bench_pipeline``, ``bench_train_step``,
``bench_distribute``, ``bench_extraction``) write their result record through ``--json``; the
re-identification ones (``bench_evaluate_rank``, ``bench_rerank``, ``bench_index``) print, and their
output's last lines are kept. Benchmarks needing ``../shared/data`` are recorded as skipped when it
is absent.

    python bench/run_all.py            # full sizes
    python bench/run_all.py --quick    # smaller sizes (minutes)
    python bench/run_all.py --toy --only train_step,input_pipeline   # seconds (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import DEFAULT_DATA, load  # noqa: E402

SCHEMA = 1
RESULTS = HERE / "results.json"

# name -> (script, title, arguments per size: full, quick, toy); "{data}" is the data folder
BENCHMARKS = {
    "input_pipeline": ("bench_pipeline.py", "Input pipeline: decode + resize + augment (images/s)",
                       (["--data", "{data}"], ["--data", "{data}", "--limit", "3000"],
                        ["--data", "{data}", "--limit", "64", "--repeats", "1", "--height", "32", "--width-px", "16"])),
    "train_step": ("bench_train_step.py", "Training step: multi-task vs single head (images/s)",
                   ([], ["--steps", "5"],
                    ["--steps", "1", "--repeats", "1", "--batch-size", "8", "--height", "32", "--width-px", "16",
                     "--width", "0.25", "--identities", "8"])),
    "distribution": ("bench_distribute.py", "Distribution: mirrored over 2 logical CPUs vs one device (images/s)",
                     ([], ["--steps", "5"],
                      ["--steps", "1", "--repeats", "1", "--batch-size", "8", "--height", "32", "--width-px", "16",
                       "--width", "0.25"])),
    "extraction": ("bench_extraction.py", "Extraction: predict_images vs bare model.predict (images/s)",
                   (["--data", "{data}"], ["--data", "{data}", "--limit", "3000"],
                    ["--data", "{data}", "--limit", "64", "--height", "32", "--width-px", "16", "--width", "0.25"])),
    "evaluate_rank": ("bench_evaluate_rank.py", "Re-identification: evaluate_rank vs per-query loop",
                      ([], ["--queries", "300", "--repeat", "1"], None)),
    "rerank": ("bench_rerank.py", "Re-identification: re_ranking vs dense reference",
               ([], ["--small-queries", "300", "--small-gallery", "1200", "--skip-full"], None)),
    "index": ("bench_index.py", "Large gallery: exact vs approximate index",
              ([], ["--gallery", "50000", "--queries", "200"], None)),
}
TAIL_LINES = 25


def run_one(name: str, size: int, data: str, timeout: float) -> dict:
    """Run one benchmark in a child process; its result record (status failed / skipped on problems)."""
    script, title, sizes = BENCHMARKS[name]
    args = sizes[size]
    if args is None:
        return {"name": name, "title": title, "status": "skipped", "reason": "no toy size (numpy benchmark)"}
    args = [a.replace("{data}", data) for a in args]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        wants_json = script not in ("bench_evaluate_rank.py", "bench_rerank.py", "bench_index.py")
        command = [sys.executable, str(HERE / script), *args] + (["--json", str(out)] if wants_json else [])
        print(f"== {name}: {shlex.join(command[1:])}", flush=True)
        start, before = time.time(), load()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MTL_PROGRESS": "0"})
        except subprocess.TimeoutExpired:
            return {"name": name, "title": title, "status": "failed", "reason": f"timed out after {timeout:.0f} s",
                    "command": shlex.join(command[1:])}
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        print("\n".join(lines[-TAIL_LINES:]), flush=True)
        if out.is_file():
            record = json.loads(out.read_text())
        else:
            record = {"name": name, "title": title, "status": "ok" if proc.returncode == 0 else "failed",
                      "load_before": before, "load_after": load(), "wall_s": round(time.time() - start, 1)}
        if proc.returncode != 0 and record.get("status") == "ok":
            record["status"] = "failed"
        if record["status"] == "failed":
            record.setdefault("reason", (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1])
        record["command"] = "python " + shlex.join([str(Path(command[1]).relative_to(HERE.parent)), *command[2:]])
        record["output"] = lines[-TAIL_LINES:]
        return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes in all)")
    size.add_argument("--toy", action="store_true", help="tiny sizes, TensorFlow benchmarks only (tests)")
    p.add_argument("--only", help="comma-separated benchmark names: " + ", ".join(BENCHMARKS))
    p.add_argument("--data", default=str(DEFAULT_DATA), help="Market-1501 course folder")
    p.add_argument("--out", default=str(RESULTS), help="results file (default bench/results.json)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(BENCHMARKS)}")
    size_index = 2 if args.toy else 1 if args.quick else 0
    started = datetime.now(timezone.utc)
    load_before = load()
    records = [run_one(name, size_index, args.data, args.timeout) for name in names]
    try:
        import tensorflow  # noqa: F401  (version only; a light import once the runs are done)
        tf_version = tensorflow.__version__
    except ImportError:
        tf_version = None
    results = {"schema": SCHEMA, "created": started.isoformat(timespec="seconds"),
               "command": "python bench/run_all.py" + (" --quick" if args.quick else " --toy" if args.toy else "")
               + (f" --only {args.only}" if args.only else ""),
               "size": ["full", "quick", "toy"][size_index],
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                           "tensorflow": tf_version, "load_before": load_before, "load_after": load(),
                           "note": "load averages are of the whole machine (shared with other jobs): read the "
                                   "figures with them"},
               "wall_s": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
               "benchmarks": records}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}: " + ", ".join(f"{r['name']} {r['status']}" for r in records))
    return 0 if all(r["status"] != "failed" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
