"""mtl-evaluate (mtl.cli.evaluate): on a product run (labels by the run's class names, checks before any
work, product wording) and on a real identity run (ranked retrieval examples the report shows)."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest

from conftest import TINY_FLAGS
from mtl.errors import ConfigError, DataError, WriteError
from tests.fixtures_images import write_tf_unreadable
from tests.source_folders import OTHER_ROWS, RUN_ROWS, raw_values, write_fashion

TINY = [*TINY_FLAGS, "--set", "augment.pad_crop=0", "--set", "augment.color_jitter=0", "--set", "augment.random_erasing=0",
        "--set", "data.rare_threshold=0.1", "--batch-size", "8"]


def script(name):
    """The module of the command ``mtl-<name>`` (its ``main(argv)`` runs in this process)."""
    return importlib.import_module(f"mtl.cli.{name}")


@pytest.fixture(scope="module")
def product_run(tmp_path_factory):
    """One tiny 1-epoch run on a product folder (articleType and gender)."""
    base = tmp_path_factory.mktemp("products")
    data = write_fashion(base / "run_data", RUN_ROWS)
    run = base / "run"
    assert script("train").main(["--data", str(data), "--format", "fashion", "--tasks", "articleType,gender",
                                 "--epochs", "1", "--out", str(run), *TINY]) == 0
    return run, base


def copy_run(product_run, tmp_path):
    run, _ = product_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_another_folder_is_scored_with_the_run_class_names(product_run, tmp_path, capsys):
    run, base = product_run
    other = write_fashion(base / "other_data", OTHER_ROWS)
    write_tf_unreadable(other / "images" / "514.jpg")  # Socks, a TIFF under a .jpg name
    run = copy_run(product_run, tmp_path)
    assert script("evaluate").main(["--run", str(run), "--data", str(other), "--images", "all"]) == 0
    out = capsys.readouterr().out
    assert "rows with a value the run has no class for: gender 2 (unknown), articleType 2 (other)" in out
    assert "skipped 1 image(s) the pipeline cannot decode" in out and "514.jpg" in out
    # products are not people: no talk of cameras seeing identities
    assert "re-identification: not applicable (products have no camera views)" in out
    assert "two cameras" not in out and "identit" not in out
    assert not (run / "reid_examples.json").exists()
    evaluation = json.loads((run / "metrics.json").read_text())["evaluation"]
    assert evaluation["unseen_labels"] == {"articleType": 2, "gender": 2}
    assert [s["path"].endswith("514.jpg") for s in evaluation["skipped_images"]] == [True]
    # the support of each class, by name, is that of the folder's CSV (the TIFF Socks left out)
    truth = {p: v for p, v in raw_values(other, "articleType").items() if not p.endswith("514.jpg")}
    support = {c["class"]: c["support"] for c in evaluation["attributes"]["tasks"]["articleType"]["per_class"]}
    expected = {name: sum(v == name for v in truth.values()) for name in ("Tshirts", "Shirts", "Watches")}
    assert support == {**expected, "other": sum(v in ("Belts", "Socks") for v in truth.values())}
    gender_support = {c["class"]: c["support"]
                      for c in evaluation["attributes"]["tasks"]["gender"]["per_class"]}
    assert gender_support == {"Men": 2, "Women": 7, "Unisex": 4}  # the 2 Girls are unknown, not scored


def test_evaluate_run_returns_what_it_writes_and_tells_log(product_run, tmp_path, capsys):
    from mtl.evaluation import evaluate_run

    run = copy_run(product_run, tmp_path)
    lines = []
    evaluation = evaluate_run(run, out=tmp_path / "e.json", log=lines.append)
    assert capsys.readouterr().out == ""  # the library prints nothing itself: every line goes to log
    assert json.loads((run / "metrics.json").read_text())["evaluation"] == json.loads(json.dumps(evaluation))
    assert json.loads((tmp_path / "e.json").read_text()) == json.loads(json.dumps(evaluation))
    assert lines[0] == f"loading run {run}" and lines[-1] == f"written: {tmp_path / 'e.json'}"
    assert "re-identification: not applicable (products have no camera views)" in lines


def test_an_unreadable_metrics_file_stops_before_any_work(product_run, tmp_path, capsys):
    run = copy_run(product_run, tmp_path)
    (run / "metrics.json").write_text('{"tasks": ')
    with pytest.raises(DataError, match=r"cannot read .*metrics\.json"):
        script("evaluate").main(["--run", str(run)])
    assert "loading run" not in capsys.readouterr().out  # nothing was loaded, let alone computed
    assert (run / "metrics.json").read_text() == '{"tasks": '


def test_an_unwritable_out_stops_before_any_work(product_run, tmp_path, capsys):
    run = copy_run(product_run, tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(WriteError, match="a_file"):
        script("evaluate").main(["--run", str(run), "--out", str(blocker / "evaluation.json")])
    assert "loading run" not in capsys.readouterr().out


def test_a_run_in_use_or_missing_is_refused_before_any_work(product_run, tmp_path, capsys):
    from mtl.errors import MtlError
    from mtl.io import folder_lock

    run = copy_run(product_run, tmp_path)
    with folder_lock(run, "evaluation"):  # as if another evaluation were writing its metrics.json
        with pytest.raises(MtlError, match=r"in use by process \d+ \(evaluation"):
            script("evaluate").main(["--run", str(run)])
    assert "loading run" not in capsys.readouterr().out
    with pytest.raises(DataError, match="no such run folder"):
        script("evaluate").main(["--run", str(tmp_path / "typo")])
    assert not (tmp_path / "typo").exists()


def test_a_truncated_model_is_one_line_naming_the_file(product_run, tmp_path):
    run = copy_run(product_run, tmp_path)
    model = run / "model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(DataError) as info:
        script("evaluate").main(["--run", str(run)])
    message = str(info.value)
    assert message.startswith(f"cannot load model {model}") and "\n" not in message
    assert "File not found" not in message


def test_a_model_of_other_tasks_is_one_error_naming_both(product_run, tmp_path):
    run = copy_run(product_run, tmp_path)
    tasks = json.loads((run / "tasks.json").read_text())
    assert [t["name"] for t in tasks] == ["gender", "articleType"]  # the data's column order
    tasks[0]["name"] = "usage"  # tasks.json no longer describes the model
    (run / "tasks.json").write_text(json.dumps(tasks))
    with pytest.raises(DataError, match=r"model's outputs \((gender, articleType|articleType, gender)\) do not "
                                        r"match the tasks of tasks\.json \(usage, articleType\)"):
        script("evaluate").main(["--run", str(run)])
    run = copy_run(product_run, tmp_path / "second")
    with pytest.raises(ConfigError, match=r"--tasks articleType,season: the run .* has no task season; "
                                          r"its model predicts gender, articleType"):
        script("evaluate").main(["--run", str(run), "--tasks", "articleType,season"])


# ------------------------------------------------------------------------------------------
# retrieval examples


def test_query_average_precision_agrees_with_the_map_and_choice_of_queries():
    import numpy as np

    from mtl.reid.evaluate import evaluate_rank
    from mtl.reid.protocol import choose_queries, query_average_precision

    rng = np.random.default_rng(0)
    q_ids, g_ids = rng.integers(0, 5, 12), rng.integers(0, 5, 40)
    q_cams, g_cams = rng.integers(0, 3, 12), rng.integers(0, 3, 40)
    dist = rng.random((12, 40))
    ap = query_average_precision(dist, q_ids, g_ids, q_cams, g_cams)
    ranked = evaluate_rank(dist, q_ids, g_ids, q_cams, g_cams)
    assert np.nanmean(ap) == pytest.approx(ranked["mAP"]) and np.isfinite(ap).sum() == ranked["num_valid_queries"]
    # by hand: valid APs best first are 0.5 (query 1), 0.3 (4), 0.2 (3), 0.1 (0), 0.1 (5; ties: lower index
    # first): best query 1, median query 3, worst query 5; the NaN (query 2, no match) is never chosen
    toy = np.array([0.1, 0.5, np.nan, 0.2, 0.3, 0.1])
    assert choose_queries(toy, 3) == [(1, "best AP"), (3, "median AP"), (5, "worst AP")]
    assert [i for i, _ in choose_queries(toy, 10)] == [1, 4, 3, 0, 5]  # every valid query once, best first
    assert choose_queries(np.array([np.nan]), 3) == [] and choose_queries(toy, 0) == []


def test_cli_default_is_the_library_default():
    from mtl.cli.evaluate import EXAMPLE_QUERIES
    from mtl.reid import protocol

    assert EXAMPLE_QUERIES == protocol.EXAMPLE_QUERIES


def test_evaluate_writes_retrieval_examples_that_the_report_shows(tiny_reid_run, tmp_path, capsys):
    import numpy as np
    import pandas as pd

    from mtl.report import render_report

    run = shutil.copytree(tiny_reid_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    (run / "reid_examples.json").unlink()  # the fixture's; this one is mtl-evaluate's
    assert script("evaluate").main(["--run", str(run), "--images", "val", "--rerank", "no", "--examples", "5"]) == 0
    assert "written: " in capsys.readouterr().out
    examples = json.loads((run / "reid_examples.json").read_text())
    reid = json.loads((run / "metrics.json").read_text())["evaluation"]["reid"]
    assert len(examples) == 5 == min(5, reid["num_query"])
    assert examples[0]["chosen_as"] == "best AP" and examples[2]["chosen_as"] == "median AP"
    assert examples[-1]["chosen_as"] == "worst AP"
    aps = [q["ap"] for q in examples]
    assert aps == sorted(aps, reverse=True)
    for q in examples:
        gallery = q["gallery"]
        assert sum(not g["same_camera_removed"] for g in gallery) == 10  # the top 10, removed ones among them
        assert [g["distance"] for g in gallery] == sorted(g["distance"] for g in gallery)
        for g in gallery:  # green / red / removed, by the protocol
            same = g["identity"] == q["query_identity"]
            assert g["same_camera_removed"] == (same and g["camera"] == q["query_camera"])
            assert g["match"] == (same and not g["same_camera_removed"])
    # the AP of each shown query, recomputed from its own listing when all its matches are in it
    split = pd.read_csv(run / "split.csv")
    for q in examples:
        val = split[(split["split"] == "val")]
        matches = ((val["identity"] == q["query_identity"]) & (val["camera"] != q["query_camera"])).sum()
        ranked = [g for g in q["gallery"] if not g["same_camera_removed"]]
        if sum(g["match"] for g in ranked) == matches and matches:
            ranks = np.flatnonzero([g["match"] for g in ranked]) + 1
            assert q["ap"] == pytest.approx(np.mean(np.arange(1, len(ranks) + 1) / ranks), abs=1e-4)
    # mtl-report --queries N shows them
    text = (render_report(run, tmp_path / "r.html", max_queries=2)).read_text()
    assert text.count('<div class="query">') == 2 and "<b>best AP</b>" in text and "First 2 of 5 queries." in text
