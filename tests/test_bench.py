"""bench/run_all.py writes a valid results.json and the benchmark page renders it (no timing asserted)."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO


def _run_all(argv):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import run_all

        return run_all.main(argv)
    finally:
        sys.path.remove(str(REPO / "bench"))


def _check_and_render(results_path, tmp_path):
    from mtl.report.bench import load_results, render_bench

    results = load_results(results_path)
    assert results["schema"] == 1 and results["machine"]["cpus"] >= 1
    assert len(results["machine"]["load_before"]) == 3
    html = render_bench(results_path, tmp_path / "page").read_text()
    for record in results["benchmarks"]:
        assert record["name"] in html and record["title"] in html
    return results, html


def test_data_benchmarks_skip_cleanly_without_the_data(tmp_path):
    out = tmp_path / "results.json"
    assert _run_all(["--toy", "--only", "input_pipeline,extraction", "--data", str(tmp_path / "absent"),
                     "--out", str(out)]) == 0
    results, html = _check_and_render(out, tmp_path)
    assert [(r["name"], r["status"]) for r in results["benchmarks"]] == [("input_pipeline", "skipped"),
                                                                         ("extraction", "skipped")]
    assert all("no data folder" in r["reason"] for r in results["benchmarks"])
    assert "no data folder" in html


@pytest.mark.slow
def test_a_toy_training_benchmark_writes_its_figures(tmp_path):
    out = tmp_path / "results.json"
    assert _run_all(["--toy", "--only", "train_step", "--out", str(out)]) == 0
    results, html = _check_and_render(out, tmp_path)
    (record,) = results["benchmarks"]
    assert record["status"] == "ok", record
    assert record["baseline"]["unit"] == record["package"]["unit"] == "images/s"
    assert record["ratio"] == pytest.approx(record["package"]["value"] / record["baseline"]["value"], rel=0.01)
    assert isinstance(record["met"], bool) and record["command"].startswith("python bench/bench_train_step.py")
    assert f"{record['ratio']:.3f}" in html


def test_a_broken_results_file_is_one_error(tmp_path):
    from mtl.errors import DataError
    from mtl.report.bench import load_results

    bad = tmp_path / "results.json"
    bad.write_text(json.dumps({"no": "benchmarks"}))
    with pytest.raises(DataError, match="no 'benchmarks' list"):
        load_results(bad)
    with pytest.raises(DataError, match="not found"):
        load_results(tmp_path / "missing.json")


def _methods_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_methods", REPO / "bench" / "methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # trains the session's tiny identity run (tens of seconds on a shared CPU)
def test_the_methods_table_reads_a_real_run(tiny_reid_run, tmp_path):
    import shutil

    methods = _methods_module()
    metrics = json.loads((tiny_reid_run / "metrics.json").read_text())
    row = methods.figures(tiny_reid_run)
    # the figures are the run's own (metrics.json)
    assert row["instance_f1"] == pytest.approx(metrics["summary"]["instance_f1"])
    assert row["mAP"] == metrics["reid"]["plain"]["mAP"] and row["rank1"] == metrics["reid"]["plain"]["rank1"]
    # two runs of the baseline: the table shows their mean, and another variant's delta against it
    for name in ("baseline-s0", "baseline-s1", "gem-s0"):
        shutil.copytree(tiny_reid_run, tmp_path / name, ignore=shutil.ignore_patterns(".lock"))
    rows = methods.collect(tmp_path)
    assert [r["variant"] for r in rows] == ["baseline", "gem"] and rows[0]["seeds"] == "0,1"
    text = methods.table(rows)
    gem = next(line for line in text.splitlines() if line.startswith("| gem |"))
    assert f"{row['mAP']:.3f} (+0.000)" in gem
    # and the variable-length retrieval of each run, from its metrics.json
    threshold = metrics["reid"]["threshold"]
    assert f"| gem-s0 | {threshold['value']:.3f} | {threshold['f1']:.3f} |" in text
