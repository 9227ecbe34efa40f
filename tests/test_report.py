"""HTML reports without a browser: the pieces (tables, figures, examples, thumbnails), the
rendering of fake run / tuning / study directories, robustness to missing files, size bounds,
and the command line."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO
from mtl.errors import DataError
from mtl.metrics import class_probabilities, evaluate_task, summarize
from mtl.report import detect_kind, render_comparison, render_report, report_command
from mtl.report import examples as ex
from mtl.report import figures, rundir, tables
from mtl.report.thumbnails import Thumbnailer, resolve_path, thumbnail_bytes
from mtl.tasks import TaskSpec

TASKS = [TaskSpec("gender", ("male", "female"), "binary"), TaskSpec("hat", ("no", "yes"), "binary"),
         TaskSpec("up", ("long", "short"), "binary"),
         TaskSpec("upcolor", ("black", "white", "red", "blue"), "categorical")]


# ------------------------------------------------------------------------------------------
# fake directories (the files `mtl.experiment.train`, the re-id evaluation and tuning write)


def write_images(folder: Path, n: int = 8, size=(32, 64)) -> list[Path]:
    """``n`` small JPEGs (width, height = ``size``), each a different colour."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i:04d}_c{i % 3 + 1}_img.jpg"
        Image.new("RGB", size, (30 * i % 255, 90, 200 - 20 * i % 200)).save(p, format="JPEG")
        paths.append(p)
    return paths


def write_fake_run(run: Path, images: list[Path], rows: int = 200, epochs: int = 5, best_epoch: int = 3,
                   reid: bool = False, reid_shape: str = "flat", queries: int = 3, seed: int = 0,
                   learning: float = 0.8, config_overrides: dict | None = None) -> Path:
    """A run directory like `mtl.experiment.train` writes, with predictions drawn so that the
    categorical task and ``gender`` beat their baselines and ``hat`` does not.

    Args:
        run: the folder to create.
        images: image files the predictions refer to (cycled over ``rows``).
        rows: validation predictions.
        epochs, best_epoch: history length and the epoch early stopping kept.
        reid: add re-identification metrics and ``reid_examples.json``.
        reid_shape: ``flat`` or ``nested`` (``mtl.reid.protocol.evaluate_embeddings`` layout).
        queries: retrieval examples written.
        learning: probability that a prediction is right (tasks that learn).
    """
    rng = np.random.default_rng(seed)
    run.mkdir(parents=True, exist_ok=True)
    config = {"tasks": "gender,hat,up,upcolor", "data": {"path": None, "image_height": 64, "image_width": 32},
              "model": {"trunk": "resnet_small", "width": 0.25}, "train": {"epochs": epochs, "learning_rate": 0.001}}
    for section, values in (config_overrides or {}).items():
        config[section].update(values)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "command.txt").write_text(f"scripts/train.py --tasks gender,hat,up,upcolor --out {run}\n")
    (run / "tasks.json").write_text(json.dumps([t.to_dict() for t in TASKS]))
    (run / "data.json").write_text(json.dumps({"format": "market1501_course", "root": str(images[0].parent),
                                               "embedded_default": False,
                                               "splits": {"train": {"images": 4 * rows, "identities": 40},
                                                          "val": {"images": rows, "identities": 10}}}))
    (run / "model.json").write_text(json.dumps({"trunk": "resnet_small", "weights": None, "head": "private",
                                                "input_shape": [64, 32, 3], "params_total": 123456,
                                                "params_trainable": 120000, "params_trunk": 100000,
                                                "outputs": [t.name for t in TASKS]}))
    history = []
    for e in range(1, epochs + 1):
        entry = {"epoch": e, "time_s": 1.5, "loss": 3.0 / e, "masked_loss": 2.9 / e, "val_loss": 3.2 / e + 0.05 * e,
                 "val_masked_loss": 3.1 / e + 0.05 * e}
        for t in TASKS:
            entry |= {f"{t.name}_accuracy": 0.5 + 0.05 * e, f"{t.name}_xent": 1.0 / e, f"{t.name}_loss": 1.1 / e,
                      f"val_{t.name}_accuracy": 0.5 + 0.03 * e, f"val_{t.name}_xent": 1.2 / e}
        history.append(entry)
    (run / "history.json").write_text(json.dumps(history))
    paths = [str(images[i % len(images)]) for i in range(rows)]
    frame = pd.DataFrame({"path": paths, "identity": np.arange(rows) // 4, "camera": np.arange(rows) % 3 + 1})
    results = {}
    for t in TASKS:
        k = t.num_classes
        y = rng.integers(0, k, rows) if t.name != "hat" else (rng.random(rows) < 0.1).astype(int)
        y[rng.random(rows) < 0.05] = -1  # missing labels
        p_right = learning if t.name in ("gender", "upcolor") else (0.55 if t.name == "up" else 0.0)
        right = rng.random(rows) < p_right
        pred = np.where(right, np.clip(y, 0, None), rng.integers(0, k, rows))
        if t.name == "hat":
            pred = np.zeros(rows, dtype=int)  # always the majority class: learned nothing
        conf = np.round(rng.uniform(1.0 / k, 1.0, rows), 4)
        probs = np.full((rows, k), 0.0)
        probs[np.arange(rows), pred] = 1.0
        results[t.name] = evaluate_task(y, probs, t)
        frame[f"{t.name}_true"], frame[f"{t.name}_pred"], frame[f"{t.name}_conf"] = y, pred, conf
    frame.to_csv(run / "val_predictions.csv", index=False)
    pd.DataFrame({"path": paths, "identity": frame["identity"], "camera": frame["camera"],
                  "split": "val"}).to_csv(run / "split.csv", index=False)
    metrics = {"tasks": results, "summary": summarize(results), "num_images": rows,
               "training": {"train_time_s": 12.3, "epochs_run": epochs, "best_epoch": best_epoch,
                            "mean_epoch_time_s": 1.5}}
    if reid:
        plain = {"mAP": 0.42, "mINP": 0.11, "rank1": 0.61, "rank5": 0.8, "rank10": 0.88,
                 "cmc": [0.61, 0.7, 0.75, 0.78, 0.8, 0.83, 0.85, 0.86, 0.87, 0.88]}
        reranked = {"mAP": 0.55, "mINP": 0.2, "rank1": 0.66, "rank5": 0.83, "rank10": 0.9,
                    "cmc": [0.66, 0.72, 0.77, 0.8, 0.83, 0.85, 0.87, 0.88, 0.89, 0.9]}
        if reid_shape == "flat":
            metrics["reid"] = plain | {"reranked": reranked}
        else:
            metrics["reid"] = {"distance": "cosine", "num_query": 40, "num_gallery": 20000, "plain": plain,
                               "reranked": reranked, "chance": {"mAP": 0.02, "mINP": 0.01, "rank1": 0.01,
                                                                 "rank5": 0.05, "rank10": 0.1}}
        queries_out = []
        for q in range(queries):
            gallery = []
            for r in range(12):
                same = r in (0, 3, 5)
                gallery.append({"path": str(images[(q + r) % len(images)]), "identity": q if same else 100 + r,
                                "camera": 1 if r == 3 else 2, "distance": round(0.1 + 0.05 * r, 3),
                                "match": same and r != 3, "same_camera_removed": r == 3})
            queries_out.append({"query": str(images[q % len(images)]), "query_camera": 1, "query_identity": q,
                                "gallery": gallery})
        (run / "reid_examples.json").write_text(json.dumps(queries_out))
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("images") / "train")


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory, images) -> Path:
    return write_fake_run(tmp_path_factory.mktemp("runs") / "fake", images, reid=True)


def html_of(path: Path) -> str:
    return Path(path).read_text(encoding="utf-8")


def section_ids(text: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', text)


def img_sources(text: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', text)


def decode_data_uri(uri: str) -> bytes:
    header, data = uri.split(",", 1)
    assert header.endswith(";base64")
    return base64.b64decode(data)


# ------------------------------------------------------------------------------------------
# directory kinds and robust loading


def test_detect_kind_by_files(tmp_path, fake_run):
    assert detect_kind(fake_run) == "run"
    tuning = tmp_path / "tuning"
    tuning.mkdir()
    (tuning / "trials.csv").write_text("trial_id,objective\n1,0.5\n")
    assert detect_kind(tuning) == "tuning"
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text("{}")
    (study / "trials.csv").write_text("x\n1\n")
    assert detect_kind(study) == "study"  # a study may hold tuning files too
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no run, tuning or study files"):
        detect_kind(tmp_path / "empty")
    with pytest.raises(DataError, match="not a directory"):
        detect_kind(tmp_path / "missing")


def test_broken_files_become_notes_not_crashes(tmp_path, images):
    run = write_fake_run(tmp_path / "broken", images, rows=40)
    (run / "history.json").write_text('[{"epoch": 1, "loss": 1.0}')  # truncated
    (run / "tasks.json").write_text('{"not": "a list"}')
    (run / "val_predictions.csv").unlink()
    rf = rundir.load(run)
    assert rf.history is None and rf.tasks is None and rf.predictions is None
    assert any(n.startswith("history.json: unreadable") for n in rf.notes)
    assert any(n.startswith("tasks.json: unreadable") for n in rf.notes)
    text = html_of(render_report(run, tmp_path / "out"))
    assert "history.json: unreadable" in text
    ids = section_ids(text)
    assert "curves" not in ids  # no history: no curves
    assert "tasks" in ids  # tasks recovered from metrics.json, without examples or confusion matrices
    assert "confusion matrix" not in text and "Examples" not in text


def test_history_with_nan_is_read(tmp_path, images):
    run = write_fake_run(tmp_path / "nan", images, rows=20)
    (run / "history.json").write_text('[{"epoch": 1, "loss": NaN, "val_loss": 2.0}, {"epoch": 2, "loss": 1.0}]')
    rf = rundir.load(run)
    assert len(rf.history) == 2 and np.isnan(rf.history[0]["loss"])
    render_report(run, tmp_path / "out.html")


def test_a_run_with_only_metrics_renders(tmp_path, fake_run):
    run = tmp_path / "only-metrics"
    run.mkdir()
    (run / "metrics.json").write_text((fake_run / "metrics.json").read_text())
    text = html_of(render_report(run, tmp_path / "r.html"))
    assert {"run", "glance", "attributes", "tasks", "reid"} <= set(section_ids(text))
    assert "curves" not in section_ids(text)


# ------------------------------------------------------------------------------------------
# tables


def test_format_value_and_sort_keys():
    assert tables.format_value(0.8531, tables.PERCENT).text == "85.3%"
    assert tables.format_value(0.8531, tables.PERCENT).sort == pytest.approx(0.8531)
    missing = tables.format_value(float("nan"), tables.PERCENT)
    assert missing.text == "–" and missing.sort is None
    delta = tables.format_value(0.05, tables.DELTA)
    assert delta.text == "+5.0" and delta.css == "good"
    assert tables.format_value(-0.01, tables.DELTA).css == "bad"
    assert tables.format_value(12345, tables.INTEGER).text == "12,345"


def test_task_overview_verdicts():
    spec = TASKS[3]
    y = np.array([0] * 60 + [1] * 20 + [2] * 10 + [3] * 10)

    def result(pred, spec=spec, y=y):
        probs = np.eye(spec.num_classes)[pred]
        return evaluate_task(y, probs, spec)

    learned = result(y.copy())  # perfect
    majority = result(np.zeros_like(y))  # always the majority class
    # tells classes apart (recall 50% on each) but below the majority baseline in accuracy
    partly_pred = np.where(np.arange(100) % 2 == 0, y, (y + 1) % 4)
    partly = result(partly_pred)
    df = tables.task_overview({"a": learned, "b": majority, "c": partly})
    assert list(df["verdict"]) == ["yes", "no", "partly"]
    assert df.loc[1, "gain"] == pytest.approx(0.0)
    assert df.loc[2, "balanced_accuracy"] == pytest.approx(0.5)
    assert df.loc[2, "chance"] == pytest.approx(0.25)
    table = tables.overview_table({"a": learned, "b": majority, "c": partly})
    assert [c.css for c in table.column("learned?")] == ["good", "bad", "warn"]
    assert table.column("majority baseline")[0].sort == pytest.approx(0.6)


def test_per_class_table_mutes_absent_classes():
    spec = TASKS[3]
    y = np.array([0, 0, 1, 1, 1, 2])  # class 3 absent
    pred = np.array([0, 1, 1, 1, 0, 2])
    table = tables.per_class_table(evaluate_task(y, np.eye(4)[pred], spec))
    assert [c.text for c in table.column("class")] == ["black", "white", "red", "blue"]
    assert [c.sort for c in table.column("support")] == [2, 3, 1, 0]
    assert sum(c.sort for c in table.column("share of labels")) == pytest.approx(1.0)
    assert table.rows[3][1].css == "muted"  # precision of the absent class means nothing
    assert table.column("recall")[1].sort == pytest.approx(2 / 3)


def test_binary_table_lists_only_binary_tasks(fake_run):
    m = json.loads((fake_run / "metrics.json").read_text())["tasks"]
    table = tables.binary_table(m)
    assert [c.text for c in table.column("attribute")] == ["gender", "hat", "up"]
    hat = table.rows[1]
    assert hat[table.headers.index("balanced acc.")].sort == pytest.approx(0.5)  # always "no"
    assert hat[table.headers.index("F1 (positive)")].sort == pytest.approx(0.0)


def test_reid_tables_read_flat_and_nested_shapes():
    flat = {"mAP": 0.4, "mINP": 0.1, "rank1": 0.6, "rank5": 0.8, "rank10": 0.9, "cmc": [0.6, 0.7],
            "reranked": {"mAP": 0.5, "rank1": 0.65}}
    t = tables.reid_table(flat)
    assert [r[0].text for r in t.rows] == ["plain ranking", "with re-ranking"]
    assert t.rows[1][1].sort == pytest.approx(0.5) and t.rows[1][2].sort is None
    nested = {"distance": "cosine", "num_query": 3, "chance": {"mAP": 0.01}, "plain": {"mAP": 0.3},
              "attr_weighted": {"mAP": 0.35}, "reranked": {"mAP": 0.4}, "notes": ["few images"]}
    t = tables.reid_table(nested)
    assert [r[0].text for r in t.rows] == ["plain ranking", "with re-ranking", "attr weighted",
                                           "chance (random ranking)"]
    assert all(c.css == "muted" for c in t.rows[-1])
    extras = dict((r[0].text, r[1].text) for r in tables.reid_extras(nested).rows)
    assert extras == {"distance": "cosine", "num query": "3", "notes": "few images"}
    assert tables.reid_ranking(nested, "plain") == {"mAP": 0.3}
    assert tables.reid_ranking(flat, "plain") is flat
    assert tables.reid_ranking(None) == {}


def test_split_table_falls_back_to_split_csv():
    split = pd.DataFrame({"path": list("abcde"), "identity": [1, 1, 2, 3, 3], "split": ["train"] * 3 + ["val"] * 2})
    t = tables.split_table({}, split)
    assert [[c.sort for c in r] for r in t.rows] == [["train", 3, 2], ["val", 2, 1]]


def test_config_diff_and_comparison_table():
    a = {"model": {"trunk": "resnet_small", "width": 1.0}, "train": {"epochs": 5}}
    b = {"model": {"trunk": "resnet_small", "width": 0.5}, "train": {"epochs": 5, "new": 1}}
    diff = tables.config_diff([a, b], ["A", "B"])
    assert [[c.text for c in r] for r in diff.rows] == [["model.width", "1.0", "0.5"], ["train.new", "(absent)", "1"]]
    ma = {"age": {"accuracy": 0.5, "macro_f1": 0.3, "majority_accuracy": 0.4}}
    mb = {"age": {"accuracy": 0.6, "macro_f1": 0.35, "majority_accuracy": 0.4},
          "hat": {"accuracy": 0.9, "majority_accuracy": 0.9}}
    t = tables.comparison_table([ma, mb], ["A", "B"])
    assert t.headers[-1] == "Δ accuracy B"
    age, hat = t.rows
    assert age[-1].sort == pytest.approx(0.1) and age[-1].css == "good"
    assert hat[2].sort is None and hat[-1].sort is None  # hat absent from A


def test_sort_trials_best_first():
    trials = pd.DataFrame({"trial_id": ["a", "b", "c"], "objective": [0.3, None, 0.7]})
    assert list(tables.sort_trials(trials, "objective", "max")["trial_id"]) == ["c", "a", "b"]
    assert list(tables.sort_trials(trials, "objective", "min")["trial_id"]) == ["a", "c", "b"]
    assert tables.sort_trials(trials, "missing", "min") is trials


# ------------------------------------------------------------------------------------------
# figures


def png_size(uri: str) -> tuple[int, int]:
    from PIL import Image

    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(decode_data_uri(uri))) as im:
        assert im.format == "PNG"
        return im.size


def test_split_history_gives_keys_to_the_longest_task_name():
    history = [{"epoch": 1, "loss": 1.0, "up_accuracy": 0.5, "upcolor_accuracy": 0.2, "upcolor_xent": 2.0,
                "val_up_accuracy": 0.4, "masked_loss": 0.9}]
    groups = figures.split_history(history, ["up", "upcolor"])
    assert groups["up"] == {"accuracy": "up_accuracy"}
    assert groups["upcolor"] == {"accuracy": "upcolor_accuracy", "xent": "upcolor_xent"}
    assert groups[""] == {"loss": "loss", "masked_loss": "masked_loss"}
    assert figures.metrics_to_plot({"loss": "a", "xent": "b", "accuracy": "c"}) == ["xent", "accuracy"]
    assert figures.metrics_to_plot({"loss": "a", "accuracy": "c"}) == ["loss", "accuracy"]


def test_figures_are_pngs_and_are_closed():
    import matplotlib.pyplot as plt

    history = [{"epoch": e, "age_xent": 1 / e, "val_age_xent": 1.2 / e} for e in range(1, 6)]
    before = len(plt.get_fignums())
    w, h = png_size(figures.curve_panel(history, "age_xent", "age · xent", best_epoch=3))
    assert 250 < w < 600 and 150 < h < 400
    counts = figures.confusion_counts(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]), 3)
    png_size(figures.confusion_figure(counts, ["a", "b", "c"], "t"))
    png_size(figures.cmc_figure({"plain": [0.5, 0.6, 0.7]}))
    overview = tables.task_overview({"t": {"accuracy": 0.7, "majority_accuracy": 0.5, "per_class": []}})
    png_size(figures.baseline_figure(overview))
    trials = pd.DataFrame({"objective": [0.5, 0.3, np.nan, 0.4]})
    png_size(figures.trials_figure(trials, "objective", "min"))
    assert len(plt.get_fignums()) == before
    assert figures.curve_panel(history, "missing", "x") is None
    assert figures.cmc_figure({}) is None


def test_confusion_counts_match_sklearn_and_skip_missing():
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    y, p = rng.integers(-1, 5, 500), rng.integers(0, 5, 500)
    keep = y >= 0
    np.testing.assert_array_equal(figures.confusion_counts(y, p, 5), confusion_matrix(y[keep], p[keep], labels=range(5)))


def test_big_confusion_matrix_stays_bounded():
    k = 60
    counts = np.random.default_rng(0).integers(0, 20, (k, k))
    w, h = png_size(figures.confusion_figure(counts, [f"class{i}" for i in range(k)], "many"))
    assert max(w, h) < 2000


# ------------------------------------------------------------------------------------------
# examples and thumbnails


def test_prediction_examples_pick_the_extremes_without_repeats():
    df = pd.DataFrame({"path": [f"p{i}" for i in range(10)],
                       "age_true": [0, 0, 1, 1, 2, 2, -1, 0, 1, 2],
                       "age_pred": [0, 0, 1, 2, 2, 0, 0, 1, 1, 2],
                       "age_conf": [0.9, 0.5, 0.7, 0.95, 0.6, 0.4, 0.99, 0.8, 0.55, 0.65]})
    groups = ex.prediction_examples(df, "age", ["young", "adult", "old"], lambda p: f"uri:{p}", per_group=2)
    by_title = {g["title"]: [i["path"] for i in g["items"]] for g in groups}
    # correct rows: p0 .9, p1 .5, p2 .7, p4 .6, p8 .55, p9 .65 ; wrong: p3 .95, p5 .4, p7 .8 ; p6 missing
    assert by_title == {"confident and right": ["p0", "p2"], "unsure but right": ["p1", "p8"],
                        "confident but wrong": ["p3", "p7"], "unsure and wrong": ["p5"]}
    wrong = groups[2]["items"][0]
    assert (wrong["true"], wrong["pred"], wrong["uri"]) == ("adult", "old", "uri:p3")
    assert ex.prediction_examples(df, "nosuchtask", [], str) == []


def test_retrieval_examples_rank_and_bounds():
    gallery = [{"path": f"g{i}", "identity": 1 if i in (0, 2) else 9, "camera": 2, "distance": i / 10,
                "match": i == 0, "same_camera_removed": i == 2} for i in range(15)]
    queries = [{"query": f"q{j}", "query_camera": 1, "query_identity": 1, "gallery": gallery} for j in range(14)]
    queries.insert(1, {"query": "broken"})  # no gallery: skipped
    out = ex.retrieval_examples(queries, lambda p: None, max_queries=10, max_gallery=10)
    assert len(out) == 10 and all(len(q["gallery"]) == 10 for q in out)
    assert [q["query"] for q in out[:2]] == ["q0", "q1"]
    ranks = [g["rank"] for g in out[0]["gallery"]]
    assert ranks == [1, 2, None, 3, 4, 5, 6, 7, 8, 9]  # the removed item does not take a rank
    assert out[0]["hit_at_1"] is True


def test_thumbnails_are_small_jpegs(tmp_path):
    big = write_images(tmp_path / "big", n=1, size=(600, 900))[0]
    data = thumbnail_bytes(big)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and im.size[1] == 64 and im.size[0] <= 96
    small = write_images(tmp_path / "small", n=1, size=(16, 32))[0]
    with Image.open(io.BytesIO(thumbnail_bytes(small))) as im:
        assert im.size == (16, 32)  # never enlarged
    th = Thumbnailer([tmp_path / "big"])
    assert th.uri(big.name).startswith("data:image/jpeg;base64,")  # relative to a root
    assert th.uri(str(tmp_path / "nope.jpg")) is None and th.missing == 1
    assert th.uri(str(tmp_path / "nope.jpg")) is None and th.missing == 1  # cached, counted once
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert th.uri(str(tmp_path / "bad.jpg")) is None
    assert resolve_path("nope.jpg", [tmp_path]) is None


# ------------------------------------------------------------------------------------------
# whole reports


def test_run_report_has_every_section(tmp_path, fake_run):
    out = render_report(fake_run, tmp_path / "rep")
    assert out == tmp_path / "rep" / "index.html"
    text = html_of(out)
    assert section_ids(text) == ["run", "glance", "curves", "attributes", "tasks", "reid"]
    # the run: data, model, training time, reproduction command
    assert "market1501_course" in text and "123,456" in text and "12 s" in text
    assert f"python scripts/train.py --tasks gender,hat,up,upcolor --out {fake_run}" in text
    assert "epoch kept (3)" in text
    # verdicts: gender and upcolor learned, hat not
    assert re.search(r'class="chip good" href="#task-gender"', text)
    assert re.search(r'class="chip good" href="#task-upcolor"', text)
    assert re.search(r'class="chip bad" href="#task-hat"', text)
    # a confusion matrix for the categorical task only, curves for every task
    assert text.count("confusion matrix\"") == 1
    for t in TASKS:
        assert f'id="task-{t.name}"' in text and f"training curve: {t.name} · xent" in text
    # re-identification: both rankings, CMC, the retrieval examples framed
    assert "with re-ranking" in text and 'alt="CMC curve"' in text
    assert text.count('<div class="query">') == 3
    assert text.count('class="thumb hit"') == 3 * 2 and text.count('class="thumb removed"') == 3
    assert text.count('class="thumb miss"') == 3 * 7
    # self-contained: every image embedded, nothing fetched
    sources = img_sources(text)
    assert sources and all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert "<link" not in text
    for uri in sources[:5]:
        assert decode_data_uri(uri)[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0"[:4]) or decode_data_uri(uri)[:2] == b"\xff\xd8"


def test_nested_reid_metrics_and_missing_examples(tmp_path, images):
    run = write_fake_run(tmp_path / "nested", images, rows=30, reid=True, reid_shape="nested")
    (run / "reid_examples.json").unlink()
    text = html_of(render_report(run, tmp_path / "r.html"))
    assert "reid" in section_ids(text)
    assert "chance (random ranking)" in text and "20,000" in text
    assert "Ranked retrieval examples" not in text
    assert "re-id mAP" in text  # headline from the nested "plain" ranking


def test_identity_task_gets_curves_but_no_class_tables(tmp_path, images):
    run = write_fake_run(tmp_path / "ident", images, rows=30)
    specs = json.loads((run / "tasks.json").read_text())
    specs.append({"name": "identity", "kind": "identity", "classes": [str(i) for i in range(751)]})
    (run / "tasks.json").write_text(json.dumps(specs))
    history = json.loads((run / "history.json").read_text())
    for e in history:
        e |= {"identity_logits_loss": 6.0 / e["epoch"], "identity_embedding_loss": 0.3 / e["epoch"]}
    (run / "history.json").write_text(json.dumps(history))
    text = html_of(render_report(run, tmp_path / "r.html"))
    assert "training curve: identity · logits_loss" in text and "training curve: identity · embedding_loss" in text
    assert 'id="task-identity"' not in text  # no metrics, no predictions: no task section
    assert "751" in text  # the tasks table counts its classes


def test_evaluation_from_evaluate_py_is_shown(tmp_path, images):
    run = write_fake_run(tmp_path / "evaluated", images, rows=40, reid=True, reid_shape="nested", queries=2)
    metrics = json.loads((run / "metrics.json").read_text())
    attrs = {k: v for k, v in metrics["tasks"].items()}
    metrics["evaluation"] = {
        "data": "/data/market", "format": "market1501", "images": "query/ against bounding_box_test/",
        "settings": {"images": "auto", "distance": "cosine", "rerank": "auto", "attr_weight": None},
        "reid": {"feature_layer": "embedding", "distance": "cosine", "num_query": 3368, "num_gallery": 15913,
                 "plain": {"mAP": 0.777, "mINP": 0.3, "rank1": 0.9, "rank5": 0.95, "rank10": 0.97, "cmc": [0.9, 0.93]},
                 "chance": {"mAP": 0.01}},
        "attributes": {"tasks": attrs, "summary": summarize(attrs), "num_images": 19281}, "time_s": 60.2}
    (run / "metrics.json").write_text(json.dumps(metrics))
    text = html_of(render_report(run, tmp_path / "r.html"))
    assert section_ids(text) == ["run", "glance", "curves", "attributes", "evaluation", "tasks", "reid"]
    assert "Evaluation on 19,281 images" in text and "query/ against bounding_box_test/" in text
    # both re-id results, the headline from the evaluation
    assert "<h3>validation people, at the end of training</h3>" in text
    assert "<h3>evaluation: query/ against bounding_box_test/</h3>" in text
    assert re.search(r"<b>77\.7%</b><span>re-id mAP \(evaluation\)</span>", text)
    other = write_fake_run(tmp_path / "other", images, rows=40)
    cmp = html_of(render_comparison([run, other], tmp_path / "c.html"))
    assert "77.7%" in cmp  # the comparison takes the evaluation's re-id numbers too


def test_report_without_reid_has_no_reid_section(tmp_path, images):
    run = write_fake_run(tmp_path / "noreid", images, rows=30)
    assert "reid" not in section_ids(html_of(render_report(run, tmp_path / "r.html")))


def test_missing_images_are_placeholders(tmp_path, images):
    run = write_fake_run(tmp_path / "moved", images, rows=30)
    preds = pd.read_csv(run / "val_predictions.csv")
    preds["path"] = "/nonexistent/" + preds["path"].map(lambda p: Path(p).name)
    preds.to_csv(run / "val_predictions.csv", index=False)
    text = html_of(render_report(run, tmp_path / "r.html"))
    assert 'class="noimg"' in text and "could not be found" in text
    assert not any(s.startswith("data:image/jpeg") for s in img_sources(text))


def test_report_size_does_not_grow_with_the_number_of_predictions(tmp_path, images):
    small = write_fake_run(tmp_path / "small", images, rows=200, reid=True, queries=30)
    big = write_fake_run(tmp_path / "big", images, rows=20000, reid=True, queries=300)
    size_small = render_report(small, tmp_path / "s.html").stat().st_size
    out = render_report(big, tmp_path / "b.html")
    size_big = out.stat().st_size
    assert size_big < 3_000_000
    assert size_big < 1.3 * size_small  # bounded samples: the 100x bigger run is about the same size
    text = html_of(out)
    assert text.count('<div class="query">') == ex.MAX_QUERIES
    thumbs = [s for s in img_sources(text) if s.startswith("data:image/jpeg")]
    per_task = 4 * ex.PER_GROUP
    assert len(thumbs) <= len(TASKS) * per_task + ex.MAX_QUERIES * (1 + ex.MAX_GALLERY)
    assert "First 10 of 300 queries." in text


def test_fewer_examples_on_request(tmp_path, fake_run):
    text = html_of(render_report(fake_run, tmp_path / "r.html", per_group=1, max_queries=1))
    assert text.count('<div class="query">') == 1
    groups = text.count('<div class="exgroup">')
    assert groups >= len(TASKS) * 3  # hat is never wrong in a confident way... but has 3+ groups per task
    assert text.count('<div class="thumb">') == groups  # one thumbnail per group


def write_tuning(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"trial_id": ["00", "01", "02", "03"], "status": ["COMPLETED"] * 3 + ["FAILED"],
                  "objective": [0.61, 0.72, 0.55, None], "trial_seconds": [10.0, 12.5, 9.1, 1.0],
                  "learning_rate": [1e-3, 3e-4, 1e-2, 1e-4], "dropout": [0.1, 0.3, 0.5, 0.2]}
                 ).to_csv(out / "trials.csv", index=False)
    (out / "best_config.yaml").write_text("tasks: age\ntrain:\n  learning_rate: 0.0003\n")
    (out / "tuning.json").write_text(json.dumps({
        "objective": {"name": "val_age_accuracy", "direction": "max", "parts": ["val_age_accuracy"],
                      "text": "val_age_accuracy", "post_trial": False},
        "tuner": "random", "max_trials": 4, "trials": 4, "completed": 3, "memory_mb": [],
        "command": "scripts/tune.py --tasks age --max-trials 4",
        "best": {"trial_id": "01", "value": 0.72, "hyperparameters": {"learning_rate": 3e-4, "dropout": 0.3},
                 "config": "best_config.yaml"}}))
    return out


def test_tuning_report(tmp_path, images):
    out = write_tuning(tmp_path / "tune")
    write_fake_run(out / "trial_01", images, rows=20)  # a sub-run is listed
    text = html_of(render_report(out, tmp_path / "t.html"))
    assert section_ids(text) == ["tuning", "subruns"]
    assert "val_age_accuracy (max)" in text and "sorted by val_age_accuracy, best first" in text
    order = re.findall(r'<tr><td(?: class="good")? data-v="(\d+)">', text)
    assert order[:4] == ["01", "00", "02", "03"]  # best first, the failed trial (no value) last
    assert text.count('<td class="good" data-v="01">') == 1  # the best trial is highlighted
    assert "python scripts/train.py --config" in text and "learning_rate: 0.0003" in text
    assert 'alt="objective per trial"' in text
    assert "trial_01" in text and report_command(out / "trial_01") in text


def test_study_report(tmp_path, images):
    out = tmp_path / "study"
    out.mkdir()
    pd.DataFrame({"task_set": ["age", "age+color", "all"], "mean_accuracy": [0.5, 0.55, 0.52]}
                 ).to_csv(out / "study.csv", index=False)
    (out / "study.json").write_text(json.dumps({"seeds": 2, "epochs": 3}))
    write_fake_run(out / "age", images, rows=20)
    text = html_of(render_report(out, tmp_path / "s.html"))
    assert section_ids(text) == ["study", "subruns"]
    assert "age+color" in text and "seeds" in text
    assert "Study report: study" in text


def test_comparison(tmp_path, images):
    a = write_fake_run(tmp_path / "A", images, rows=60, seed=1, reid=True)
    b = write_fake_run(tmp_path / "B", images, rows=60, seed=2, learning=0.95,
                       config_overrides={"train": {"learning_rate": 0.01}})
    out = render_comparison([a, b], tmp_path / "cmp")
    text = html_of(out)
    assert section_ids(text) == ["runs", "settings", "tasks", "curves", "reid"]
    assert "train.learning_rate" in text and "Δ accuracy B" in text
    assert "model.width" not in text  # equal settings are not listed
    assert all(s.startswith("data:image/png") for s in img_sources(text))
    with pytest.raises(DataError, match="at least two"):
        render_comparison([a])
    tuning = write_tuning(tmp_path / "tune")
    with pytest.raises(DataError, match="not a training run"):
        render_comparison([a, tuning])


# ------------------------------------------------------------------------------------------
# command line


def run_script(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_cli_renders_and_compares(tmp_path, fake_run, images):
    result = run_script(fake_run, "--out", tmp_path / "one", "--quiet")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == tmp_path / "one" / "index.html"
    other = write_fake_run(tmp_path / "other", images, rows=30)
    result = run_script(fake_run, other, "--out", tmp_path / "cmp.html")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cmp.html").is_file() and "report:" in result.stdout
    assert "report: reading" in result.stderr or "report: comparing" in result.stderr


def test_cli_errors_are_one_line(tmp_path):
    result = run_script(tmp_path / "nope")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "not a directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_script(tmp_path, "--examples", "-1")
    assert result.returncode == 2 and "--examples must be 0 or more" in result.stderr


def test_cli_help_documents_every_flag():
    result = run_script("--help")
    assert result.returncode == 0
    for flag in ("--out", "--examples", "--queries", "--quiet"):
        assert flag in result.stdout
