"""train -> evaluate -> predict on the embedded default with the identity task, end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, TINY_FLAGS

# tiny and without augmentation, so that a CPU learns the synthetic people in a few epochs
TINY = [*TINY_FLAGS, "--set", "augment.pad_crop=0", "--set", "augment.color_jitter=0", "--set", "augment.random_erasing=0"]


def run_script(name, *args, timeout=600, env=None):
    cmd = [sys.executable, str(REPO / "scripts" / name), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "MTL_PROGRESS": "0", **(env or {})})


def random_ranking_baseline(query, gallery, draws=50):
    """Expected mAP / rank-1 of a random ranking: the mean over shuffled rankings."""
    from mtl.reid.evaluate import evaluate_rank

    rng = np.random.default_rng(123)
    runs = [evaluate_rank(rng.random((len(query), len(gallery))), query["identity"].to_numpy(),
                          gallery["identity"].to_numpy(), query["camera"].to_numpy(), gallery["camera"].to_numpy())
            for _ in range(draws)]
    return float(np.mean([r["mAP"] for r in runs])), float(np.mean([r["rank1"] for r in runs]))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reid") / "run"
    # module fixtures start before conftest's per-test cache isolation: name the same cache here
    cache = {"MTL_CACHE": str(tmp_path_factory.getbasetemp() / "mtl-cache")}
    # all 8 epochs: on data this small the joint validation loss can be lowest at epoch 1, and
    # early stopping would keep an embedding that has hardly trained
    result = run_script("train.py", "--tasks", "identity,all", "--epochs", "8", "--out", out, *TINY,
                        "--set", "train.keep=last", env=cache)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_identity_embedding_beats_a_random_ranking(trained_run):
    from mtl.data.splits import query_gallery_split

    training_metrics = json.loads((trained_run / "metrics.json").read_text())
    assert {"tasks", "summary", "reid", "training"} <= set(training_metrics)
    result = run_script("evaluate.py", "--run", trained_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "re-identification (embedding features" in result.stdout
    metrics = json.loads((trained_run / "metrics.json").read_text())
    # the training metrics are kept next to the evaluation
    assert metrics["tasks"] == training_metrics["tasks"] and metrics["reid"] == training_metrics["reid"]
    evaluation = metrics["evaluation"]
    assert "validation identities" in evaluation["images"]
    attributes = evaluation["attributes"]
    assert len(attributes["tasks"]) == 12 and attributes["summary"]["mA"] is not None
    assert all(r["accuracy"] is not None and "macro_f1" in r for r in attributes["tasks"].values())

    # the evaluated queries / gallery: the run's validation people, one query per identity and camera
    split = pd.read_csv(trained_run / "split.csv")
    val = split[split["split"] == "val"].reset_index(drop=True)
    query, gallery = query_gallery_split(val, 0)
    reid = evaluation["reid"]
    assert reid["num_query"] == len(query) and reid["num_gallery"] == len(gallery)
    random_map, random_rank1 = random_ranking_baseline(query, gallery)
    plain = reid["plain"]
    assert plain["mAP"] > 2 * random_map and plain["mAP"] > random_map + 0.08, (plain, random_map)
    assert plain["rank1"] > random_rank1 + 0.05
    assert reid["chance"]["mAP"] == pytest.approx(random_map, abs=0.03)
    assert {"mAP", "mINP", "rank1", "rank5", "rank10", "cmc"} <= set(reid["reranked"])

    # running it again says that it replaces the previous evaluation
    again = run_script("evaluate.py", "--run", trained_run, "--rerank", "no", "--no-attributes",
                       "--attr-weight", "0.5", "--out", trained_run / "eval.json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "replacing the previous evaluation" in again.stdout
    second = json.loads((trained_run / "eval.json").read_text())
    assert "reranked" not in second["reid"] and "attr_weighted" in second["reid"] and "attributes" not in second


@pytest.mark.slow
def test_predict_writes_the_course_deliverables(trained_run, tmp_path):
    from mtl.data.synthetic import ensure_synthetic
    from mtl.deliverables import read_reid_txt

    data = Path(json.loads((trained_run / "data.json").read_text())["root"])
    assert data == ensure_synthetic()
    test_names = sorted(p.name for p in (data / "test").iterdir())
    query_names = sorted(p.name for p in (data / "queries").iterdir())
    result = run_script("predict.py", "--run", trained_run, "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    with open(tmp_path / "classification_test.csv") as f:
        header = f.readline().strip().split(",")
    colours_up = ["black", "white", "red", "purple", "yellow", "gray", "blue", "green"]
    colours_down = ["black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown"]
    assert header == (["file_name", "age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat",
                       "gender"] + [f"up{c}" for c in colours_up] + ["upmulticolor"]
                      + [f"down{c}" for c in colours_down] + ["downmulticolor"])
    table = pd.read_csv(tmp_path / "classification_test.csv", dtype={"file_name": str})
    assert list(table["file_name"]) == test_names
    assert table["age"].isin([1, 2, 3, 4]).all()
    codes = table.drop(columns=["file_name", "age"])
    assert codes.isin([1, 2]).all().all()
    up = table[[f"up{c}" for c in colours_up] + ["upmulticolor"]]
    down = table[[f"down{c}" for c in colours_down] + ["downmulticolor"]]
    assert ((up == 2).sum(axis=1) == 1).all() and ((down == 2).sum(axis=1) == 1).all()

    lines = (tmp_path / "reid_test.txt").read_text().splitlines()
    assert len(lines) == len(query_names)
    ranked = read_reid_txt(tmp_path / "reid_test.txt")
    assert list(ranked) == query_names
    # the gallery has fewer than 100 images: each line ranks all of them, each once
    assert all(sorted(names) == test_names for names in ranked.values())
    assert lines[0].startswith(f"{query_names[0]}: ") and ", " in lines[0]

    short = run_script("predict.py", "--run", trained_run, "--out", tmp_path / "top5", "--top", "5", "--rerank")
    assert short.returncode == 0, short.stderr[-3000:]
    ranked = read_reid_txt(tmp_path / "top5" / "reid_test.txt")
    assert len(ranked) == len(query_names) and {len(v) for v in ranked.values()} == {5}
    assert set().union(*ranked.values()) <= set(test_names)


@pytest.mark.slow
def test_evaluate_on_the_original_layout_uses_query_and_bounding_box_test(trained_run, tmp_path):
    """The run's validation people written in the original Market-1501 layout, plus distractors
    (identity 0, kept in the gallery) and junk boxes (identity -1, dropped)."""
    import shutil

    split = pd.read_csv(trained_run / "split.csv")
    val = split[split["split"] == "val"].reset_index(drop=True)
    root = tmp_path / "Market-1501"
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        (root / folder).mkdir(parents=True)
    first = val.groupby(["identity", "camera"]).head(1).index
    for i, row in val.iterrows():
        name = f"{row.identity:04d}_c{row.camera}s1_{i:06d}_01.jpg"
        shutil.copy(row.path, root / ("query" if i in first else "bounding_box_test") / name)
    trained = split[split["split"] == "train"].reset_index(drop=True)
    for i, row in trained.head(6).iterrows():
        shutil.copy(row.path, root / "bounding_box_test" / f"0000_c{row.camera}s1_{i:06d}_02.jpg")
        shutil.copy(row.path, root / "bounding_box_test" / f"-1_c{row.camera}s1_{i:06d}_03.jpg")
        shutil.copy(row.path, root / "bounding_box_train" / f"{row.identity:04d}_c{row.camera}s1_{i:06d}_01.jpg")
    result = run_script("evaluate.py", "--run", trained_run, "--data", root, "--out", tmp_path / "eval.json")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["format"] == "market1501"
    reid = evaluation["reid"]
    assert reid["num_query"] == len(first) and reid["num_gallery"] == len(val) - len(first) + 6
    assert reid["plain"]["mAP"] > 2 * reid["chance"]["mAP"]
    with_images = run_script("evaluate.py", "--run", trained_run, "--data", root, "--images", "val")
    assert with_images.returncode == 2 and "bounding_box_test" in with_images.stderr


def test_help_documents_every_flag():
    for script, flags in (("evaluate.py", ["--run", "--data", "--format", "--images", "--distance", "--rerank",
                                           "--attr-weight", "--attr-alpha", "--seed", "--batch-size",
                                           "--no-attributes", "--out"]),
                          ("predict.py", ["--run", "--data", "--out", "--top", "--distance", "--rerank",
                                          "--batch-size"])):
        result = run_script(script, "--help")
        assert result.returncode == 0
        for flag in flags:
            assert flag in result.stdout, (script, flag)


def test_bad_input_is_a_one_line_error(tmp_path):
    result = run_script("evaluate.py", "--run", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path}: not a finished run (config.yaml missing)"]
    result = run_script("predict.py", "--run", tmp_path, "--top", "0")
    assert result.returncode == 2 and result.stderr.strip() == "error: --top must be >= 1, got 0"
