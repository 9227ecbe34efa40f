"""HTML reports without a browser: the pieces (tables, figures, examples, thumbnails), the
rendering of real tiny run / study directories (trained once per session, see conftest.py),
robustness to missing and broken files, size bounds, and the command line."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from markupsafe import escape

from conftest import REPO
from mtl import rundir
from mtl.errors import DataError
from mtl.scoring import evaluate_task
from mtl.report import detect_kind, render_comparison, render_report, report_command
from mtl.report import examples as ex
from mtl.report.render import run_context
from mtl.report import figures, tables
from mtl.report.thumbnails import Thumbnailer, resolve_path, thumbnail_bytes
from mtl.tasks import TaskSpec

TASKS = [TaskSpec("gender", ("male", "female"), "binary"), TaskSpec("hat", ("no", "yes"), "binary"),
         TaskSpec("up", ("long", "short"), "binary"),
         TaskSpec("upcolor", ("black", "white", "red", "blue"), "categorical")]

# The runs these tests read are real: ``tiny_run`` (gender, upcolor), ``tiny_reid_run`` (identity,
# gender, hat, upcolor, with re-id metrics and retrieval examples) and ``tiny_study``, written by
# mtl.experiment.train / mtl.study.run_study (tests/conftest.py). Expected values are read from
# their files. A test that breaks or edits a file works on a copy (``copy_run``).


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


def copy_run(run: Path, to: Path) -> Path:
    """A copy of a real run to break or edit (its lock file, checkpoints and model left behind)."""
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock", "checkpoints", "model.keras"))
    return to


def read_json(run: Path, name: str):
    return json.loads((run / name).read_text())


def run_tasks(run: Path, kinds=("binary", "categorical", "identity")) -> list[dict]:
    """``tasks.json`` of a run, the tasks of the given kinds."""
    return [t for t in read_json(run, "tasks.json") if t["kind"] in kinds]


def html_of(path: Path) -> str:
    return Path(path).read_text(encoding="utf-8")


def section_ids(text: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', text)


def img_sources(text: str) -> list[str]:
    return re.findall(r'<img (?:class="t" )?src="([^"]+)"', text)


def tables_of(text: str) -> list[str]:
    """The body of every table on the page."""
    return re.findall(r"<tbody>(.*?)</tbody>", text, flags=re.S)


RAW_PYTHON = ("{'", "[{", "['", "None", "True", "False", "nan")  # the words as whole words


def assert_readable(text: str) -> None:
    """No table twice, and no Python structure or value printed as Python prints it (the page's
    text only: figures and thumbnails are base64, the inline script is code)."""
    bodies = [b for b in tables_of(text) if b.strip()]
    assert len(bodies) == len(set(bodies)), "a table is shown twice"
    shown = re.sub(r"data:[a-z/]+;base64,[A-Za-z0-9+/=]+", "", text)
    shown = re.sub(r"<script>.*?</script>", "", shown, flags=re.S)
    shown = re.sub(r"<pre><code>.*?</code></pre>", "", shown, flags=re.S)  # config.yaml, commands: as written
    shown = shown.replace("&#39;", "'")
    for raw in RAW_PYTHON:
        assert not re.search(rf"\b{raw}\b" if raw.isalpha() else re.escape(raw), shown), raw


def decode_data_uri(uri: str) -> bytes:
    header, data = uri.split(",", 1)
    assert header.endswith(";base64")
    return base64.b64decode(data)


# ------------------------------------------------------------------------------------------
# directory kinds and robust loading


def test_detect_kind_by_files(tmp_path, tiny_reid_run, tiny_study):
    assert detect_kind(tiny_reid_run) == "run"
    assert detect_kind(tiny_study) == "study"
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


def test_broken_files_become_notes_not_crashes(tmp_path, tiny_run):
    run = copy_run(tiny_run, tmp_path / "broken")
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


def test_history_with_nan_is_read(tmp_path, tiny_run):
    run = copy_run(tiny_run, tmp_path / "nan")
    (run / "history.json").write_text('[{"epoch": 1, "loss": NaN, "val_loss": 2.0}, {"epoch": 2, "loss": 1.0}]')
    rf = rundir.load(run)
    assert len(rf.history) == 2 and np.isnan(rf.history[0]["loss"])
    render_report(run, tmp_path / "out.html")


def test_a_run_with_only_metrics_renders(tmp_path, tiny_reid_run):
    run = tmp_path / "only-metrics"
    run.mkdir()
    shutil.copy(tiny_reid_run / "metrics.json", run / "metrics.json")
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


def test_binary_table_lists_only_binary_tasks(tiny_reid_run):
    m = read_json(tiny_reid_run, "metrics.json")["tasks"]
    table = tables.binary_table(m)
    binary = [t["name"] for t in run_tasks(tiny_reid_run, ("binary",))]
    assert binary == ["gender", "hat"]
    assert [c.text for c in table.column("attribute")] == binary  # not upcolor, not identity
    for name, row in zip(binary, table.rows):
        assert row[table.headers.index("balanced acc.")].sort == pytest.approx(m[name]["balanced_accuracy"])
        assert row[table.headers.index("F1 (positive)")].sort == pytest.approx(m[name]["per_class"][1]["f1"])
        assert row[table.headers.index("majority baseline")].sort == pytest.approx(m[name]["majority_accuracy"])


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
    png_size(figures.study_figure(["a", "a+b"], [0.6, 0.65], [0.0, 0.05], "a: accuracy", baseline=0.5))
    overview = tables.task_overview({"t": {"accuracy": 0.7, "majority_accuracy": 0.5, "per_class": []}})
    png_size(figures.baseline_figure(overview))
    trials = pd.DataFrame({"objective": [0.5, 0.3, np.nan, 0.4]})
    png_size(figures.trials_figure(trials, "objective", "min"))
    assert len(plt.get_fignums()) == before
    assert figures.curve_panel(history, "missing", "x") is None
    assert figures.cmc_figure({}) is None


def test_cmc_axis_has_integer_ranks(monkeypatch):
    ticks = []

    def keep_ticks(fig, tight=False):
        fig.canvas.draw()
        ticks.extend(fig.axes[0].get_xticks())
        import matplotlib.pyplot as plt

        plt.close(fig)
        return "data:image/png;base64,"

    monkeypatch.setattr(figures, "png_uri", keep_ticks)
    figures.cmc_figure({"plain": [0.5, 0.6, 0.7]})  # three ranks: matplotlib alone would tick 1.0, 1.5, 2.0, ...
    visible = [t for t in ticks if 0.5 <= t <= 3.5]
    assert visible and all(float(t).is_integer() for t in visible)


def test_flat_zero_validation_curves_are_meaningless():
    history = [{"epoch": e, "identity_xent": 3.0 / e, "val_identity_xent": 0.0, "age_xent": 1.0,
                "val_age_xent": 0.0 if e == 1 else 0.5} for e in (1, 2, 3)]
    assert figures.meaningless_validation(history, "identity_xent")
    assert not figures.meaningless_validation(history, "age_xent")  # 0 once is a value
    assert not figures.meaningless_validation(history, "missing")


def test_plain_text_never_prints_python_structures():
    assert tables.plain_text(["a", "b"]) == "a, b"
    assert tables.plain_text({"root": "/d", "format": "x"}) == "root: /d; format: x"
    assert tables.plain_text(None) == "none" and tables.plain_text(False) == "no"
    assert tables.plain_text([["upcolor"], ["hat", "bag"]]) == "upcolor, hat, bag"
    table = tables.key_value_table({"seeds": [0, 1], "data": {"format": "x"}, "nothing": None})
    assert [r[1].text for r in table.rows] == ["0, 1", "format: x", "none"]


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
    assert len(out) == 10 and all(len(q["gallery"]) == 11 for q in out)
    assert [q["query"] for q in out[:2]] == ["q0", "q1"]
    ranks = [g["rank"] for g in out[0]["gallery"]]
    assert ranks == [1, 2, None, 3, 4, 5, 6, 7, 8, 9, 10]  # the removed item takes no rank: down to rank 10
    removed_only = [{"path": "r", "identity": 1, "camera": 1, "same_camera_removed": True}] * 50
    assert len(ex.retrieval_examples([{"query": "q", "gallery": removed_only}], str)[0]["gallery"]) == 20  # bounded
    assert out[0]["hit_at_1"] is True
    assert out[0]["ap"] is None and out[0]["chosen_as"] is None and out[0]["full"] is None  # optional fields
    queries[0].update(ap=0.5, chosen_as="best AP")
    first = ex.retrieval_examples(queries, str.upper, max_queries=1, full=lambda p: "full:" + p)[0]
    assert (first["ap"], first["chosen_as"], first["full"], first["gallery"][0]["full"]) == (0.5, "best AP", "full:q0",
                                                                                            "full:g0")


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


def retrieval_counts(examples: list[dict], max_gallery: int = ex.MAX_GALLERY) -> dict[str, int]:
    """How many gallery thumbnails of each kind the report frames, from ``reid_examples.json``."""
    shown = []
    for q in examples[:ex.MAX_QUERIES]:  # down to rank max_gallery, the removed images among them
        ranked = 0
        for g in q["gallery"]:
            if ranked == max_gallery:
                break
            shown.append(g)
            ranked += not g["same_camera_removed"]
    removed = sum(g["same_camera_removed"] for g in shown)
    hits = sum(g["match"] and not g["same_camera_removed"] for g in shown)
    return {"hit": hits, "removed": removed, "miss": len(shown) - hits - removed}


def test_run_report_has_every_section(tmp_path, tiny_reid_run):
    run = tiny_reid_run
    out = render_report(run, tmp_path / "rep")
    assert out == tmp_path / "rep" / "index.html"
    text = html_of(out)
    assert section_ids(text) == ["run", "glance", "curves", "attributes", "tasks", "reid"]
    # the run: data, model, training time, reproduction command
    data, model, metrics = read_json(run, "data.json"), read_json(run, "model.json"), read_json(run, "metrics.json")
    training = metrics["training"]
    assert f"<td>{data['format']}</td>" in text and data["format"] == "market1501_course"
    assert f"<td>{model['params_total']:,}</td>" in text
    assert f"<td>{training['train_time_s']:.0f} s</td>" in text
    command = (run / "command.txt").read_text().strip()
    assert command.startswith("scripts/train.py ") and escape(f"python {command}") in text
    assert f"epoch kept ({training['kept_epoch']})" in text
    # verdicts, as tables.task_overview draws them from metrics.json
    overview = tables.task_overview(metrics["tasks"])
    assert list(overview["task"]) == ["gender", "hat", "upcolor"]
    for task, verdict in zip(overview["task"], overview["verdict"]):
        assert f'class="chip {tables.VERDICT_CSS[verdict]}" href="#task-{task}"' in text
    # a confusion matrix for the categorical task only, curves for every task
    assert text.count("confusion matrix\"") == 1 and 'alt="upcolor confusion matrix"' in text
    for t in run_tasks(run):
        assert f"training curve: {t['name']} · " in text
    for t in run_tasks(run, ("binary", "categorical")):
        assert f'id="task-{t["name"]}"' in text and f"training curve: {t['name']} · xent" in text
    # re-identification: both rankings, CMC, the retrieval examples framed
    assert "with re-ranking" in text and 'alt="CMC curve"' in text
    examples = read_json(run, "reid_examples.json")
    counts = retrieval_counts(examples)
    assert len(examples) == 3 and text.count('<div class="query">') == 3
    assert counts["hit"] + counts["miss"] == 3 * 10  # each query's top 10
    for kind, n in counts.items():
        assert text.count(f'class="thumb {kind}"') == n
    # the queries mtl.reid.protocol chose, best to worst AP, each labelled
    assert [q["chosen_as"] for q in examples] == ["best AP", "median AP", "worst AP"]
    for q in examples:
        assert f"<b>{q['chosen_as']}</b><br>AP {q['ap']:.2f}" in text
    # every thumbnail enlarges on a click, to the image at full size (embedded too)
    thumbs = re.findall(r'<img class="t" src="(data:image/jpeg;base64,[^"]+)"', text)
    zooms = re.findall(r'<details class="zoom"><summary[^>]*><img class="t" src="[^"]+"[^>]*><span class="full">'
                       r'<img src="(data:image/jpeg;base64,[^"]+)"', text)
    assert thumbs and len(zooms) == len(thumbs)
    from PIL import Image

    with Image.open(io.BytesIO(decode_data_uri(zooms[0]))) as big:
        with Image.open(Path(examples[0]["query"])) as original:
            assert big.size == original.size  # full size (a synthetic crop is far below the 512 px bound)
    # the monitored joint loss is plotted; no table twice, nothing printed as Python prints it
    assert 'alt="training curve: all tasks · joint_loss (monitored)"' in text
    assert "Early stopping watches <code>val_joint_loss</code>" in text
    assert_readable(text)
    # self-contained: every image embedded, nothing fetched
    sources = img_sources(text)
    assert sources and all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert "<link" not in text
    for uri in sources[:5]:
        assert decode_data_uri(uri)[:4] == b"\x89PNG" or decode_data_uri(uri)[:2] == b"\xff\xd8"


def test_nested_reid_metrics_and_missing_examples(tmp_path, tiny_reid_run):
    run = copy_run(tiny_reid_run, tmp_path / "nested")
    (run / "reid_examples.json").unlink()
    reid = read_json(run, "metrics.json")["reid"]
    assert {"plain", "reranked", "chance"} <= set(reid)  # the nested shape of mtl.reid.protocol
    text = html_of(render_report(run, tmp_path / "r.html"))
    assert "reid" in section_ids(text)
    assert "chance (random ranking)" in text and f"{reid['num_gallery']:,}" in text
    assert "Ranked retrieval examples" not in text
    assert re.search(rf"<b>{100 * reid['plain']['mAP']:.1f}%</b><span>re-id mAP</span>", text)  # headline: plain


def test_identity_task_gets_curves_but_no_class_tables(tmp_path, tiny_reid_run):
    text = html_of(render_report(tiny_reid_run, tmp_path / "r.html"))
    identity = run_tasks(tiny_reid_run, ("identity",))
    assert len(identity) == 1
    history = read_json(tiny_reid_run, "history.json")
    assert {"identity_xent", "val_identity_xent", "embedding_loss"} <= set(history[0])
    assert "training curve: identity · xent" in text
    assert 'id="task-identity"' not in text  # no metrics, no predictions: no task section
    # validation identity accuracy / cross-entropy are 0 by construction: their panels are training only
    assert all(history[e][f"val_identity_{m}"] == 0 for e in range(len(history)) for m in ("xent", "accuracy"))
    ctx = run_context(rundir.load(tiny_reid_run))
    assert {"identity · xent", "identity · accuracy"} == set(ctx["train_only"])
    keys = [c["key"] for c in ctx["curves"]]
    assert keys[0] == "joint_loss" and "embedding_loss" in keys and "loss" not in keys
    assert 'class="curvegrid"' in text and "class=\"panels\"" not in text  # one grid of panels, no half-empty rows
    # the tasks table counts its classes: the training people
    classes = len(identity[0]["classes"])
    assert classes == read_json(tiny_reid_run, "data.json")["splits"]["train"]["identities"]
    assert f'<td data-v="identity">identity</td><td class="num" data-v="{classes}">{classes}</td>' in text


def test_evaluation_from_evaluate_py_is_shown(tmp_path, tiny_reid_run, tiny_run, capsys):
    from mtl.cli.evaluate import main as evaluate

    run = shutil.copytree(tiny_reid_run, tmp_path / "evaluated", ignore=shutil.ignore_patterns(".lock"))
    assert evaluate(["--run", str(run), "--images", "val"]) == 0
    evaluation = read_json(run, "metrics.json")["evaluation"]
    images, num_images = evaluation["images"], evaluation["attributes"]["num_images"]
    text = html_of(render_report(run, tmp_path / "r.html"))
    assert section_ids(text) == ["run", "glance", "curves", "attributes", "evaluation", "tasks", "reid"]
    assert f"Evaluation on {num_images:,} images" in text and escape(images) in text
    # --images val ranks the same people as the end of training: one re-id table, one set of attribute
    # tables (those of the validation split), the headline from the evaluation
    assert evaluation["reid"]["plain"] == read_json(tiny_reid_run, "metrics.json")["reid"]["plain"]
    assert text.count("<h3>validation people") == 1 and "<h3>evaluation:" not in text
    assert "These are the images of the validation split" in text
    assert "--tasks</th><td>gender, hat, upcolor, identity<" in text
    assert_readable(text)
    # and mtl-evaluate wrote retrieval examples for the report
    examples = read_json(run, "reid_examples.json")
    assert examples[0]["chosen_as"] == "best AP" and text.count('<div class="query">') == len(examples)
    eval_map = f"{100 * evaluation['reid']['plain']['mAP']:.1f}%"
    assert re.search(rf"<b>{re.escape(eval_map)}</b><span>re-id mAP \(evaluation\)</span>", text)
    cmp = html_of(render_comparison([run, tiny_run], tmp_path / "c.html"))
    assert eval_map in cmp  # the comparison takes the evaluation's re-id numbers too
    # another distance ranks differently: both results are shown, each once
    assert evaluate(["--run", str(run), "--images", "val", "--distance", "euclidean", "--examples", "0"]) == 0
    text = html_of(render_report(run, tmp_path / "r2.html"))
    assert "<h3>validation people, at the end of training</h3>" in text
    assert "<h3>evaluation: " in text
    assert_readable(text)


def test_report_without_reid_has_no_reid_section(tmp_path, tiny_run):
    assert "reid" not in read_json(tiny_run, "metrics.json")
    assert "reid" not in section_ids(html_of(render_report(tiny_run, tmp_path / "r.html")))


def test_missing_images_are_placeholders(tmp_path, tiny_run):
    run = copy_run(tiny_run, tmp_path / "moved")
    preds = pd.read_csv(run / "val_predictions.csv")
    preds["path"] = "/nonexistent/" + preds["path"].map(lambda p: Path(p).name)
    preds.to_csv(run / "val_predictions.csv", index=False)
    text = html_of(render_report(run, tmp_path / "r.html"))
    assert 'class="noimg"' in text and "could not be found" in text
    assert not any(s.startswith("data:image/jpeg") for s in img_sources(text))


def scaled_copy(run: Path, to: Path, rows: int, queries: int) -> Path:
    """A copy of a real run whose predictions and retrieval examples are its own repeated to
    ``rows`` and ``queries`` entries (a long validation split, many evaluated queries)."""
    out = copy_run(run, to)
    preds = pd.read_csv(run / "val_predictions.csv")
    pd.concat([preds] * -(-rows // len(preds)), ignore_index=True).head(rows).to_csv(out / "val_predictions.csv",
                                                                                  index=False)
    examples = read_json(run, "reid_examples.json")
    (out / "reid_examples.json").write_text(json.dumps((examples * -(-queries // len(examples)))[:queries]))
    return out


def test_report_size_does_not_grow_with_the_number_of_predictions(tmp_path, tiny_reid_run):
    small = scaled_copy(tiny_reid_run, tmp_path / "small", rows=200, queries=30)
    big = scaled_copy(tiny_reid_run, tmp_path / "big", rows=20000, queries=300)
    size_small = render_report(small, tmp_path / "s.html").stat().st_size
    out = render_report(big, tmp_path / "b.html")
    size_big = out.stat().st_size
    assert size_big < 3_000_000
    assert size_big < 1.3 * size_small  # bounded samples: the 100x bigger run is about the same size
    text = html_of(out)
    assert text.count('<div class="query">') == ex.MAX_QUERIES
    thumbs = re.findall(r'<img class="t" src="data:image/jpeg', text)
    per_task = 4 * ex.PER_GROUP
    attributes = run_tasks(big, ("binary", "categorical"))
    assert len(thumbs) <= len(attributes) * per_task + ex.MAX_QUERIES * (1 + 2 * ex.MAX_GALLERY)
    jpegs = [s for s in img_sources(text) if s.startswith("data:image/jpeg")]
    assert len(jpegs) == 2 * len(thumbs)  # each with its full-size image, no more
    assert "First 10 of 300 queries." in text


def test_fewer_examples_on_request(tmp_path, tiny_reid_run):
    text = html_of(render_report(tiny_reid_run, tmp_path / "r.html", per_group=1, max_queries=1))
    assert text.count('<div class="query">') == 1
    preds = pd.read_csv(tiny_reid_run / "val_predictions.csv")
    groups = sum(len(ex.prediction_examples(preds, t["name"], t["classes"], str, per_group=1))
                 for t in run_tasks(tiny_reid_run, ("binary", "categorical")))
    assert groups >= 3 * 2  # every task has right and wrong predictions
    assert text.count('<div class="exgroup">') == groups
    assert text.count('<div class="thumb">') == groups  # one thumbnail per group


def write_tuning(out: Path) -> Path:
    """A tuning folder's files (``trials.csv``, ``tuning.json``, ``best_config.yaml``) as
    ``mtl.tuning`` writes them. Kept by hand: a real two-trial search costs a minute, and
    ``mtl.tuning.results.write_results`` needs a keras-tuner oracle."""
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"trial": [1, 2, 3, 4], "status": ["COMPLETED"] * 3 + ["FAILED"],
                  "objective": [0.61, 0.72, 0.55, None], "majority_baseline": [0.5] * 4,
                  "trial_seconds": [10.0, 12.5, 9.1, 1.0], "learning_rate": [1e-3, 3e-4, 1e-2, 1e-4],
                  "dropout": [0.1, 0.3, 0.5, 0.2], "trial_id": ["00", "01", "02", "03"]}
                 ).to_csv(out / "trials.csv", index=False)
    (out / "best_config.yaml").write_text("tasks: age\ntrain:\n  learning_rate: 0.0003\n")
    (out / "tuning.json").write_text(json.dumps({
        "objective": {"name": "val_age_accuracy", "direction": "max", "parts": ["val_age_accuracy"],
                      "text": "val_age_accuracy", "post_trial": False},
        "tuner": "random", "max_trials": 4, "trials": 4, "completed": 3, "memory_mb": [],
        "command": "scripts/tune.py --tasks age --max-trials 4",
        "best": {"trial": 2, "trial_id": "01", "value": 0.72, "majority_baseline": 0.5,
                 "hyperparameters": {"learning_rate": 3e-4, "dropout": 0.3},
                 "config": "best_config.yaml"}}))
    return out


def test_trials_are_numbered_from_1_with_their_majority_baseline():
    import keras_tuner
    from keras_tuner.engine import trial as trial_module

    from mtl.tuning.objective import resolve_objective
    from mtl.tuning.results import majority_metrics, objective_baseline, trial_line, trials_table

    tasks = [TaskSpec("age", ("young", "old", "teen"), "categorical"), TaskSpec("hat", ("no", "yes"), "binary")]
    val = pd.DataFrame({"age": [0, 0, 0, 1, -1], "hat": [1, 0, 0, 0, 0]})
    baselines = majority_metrics(val, tasks)
    # by hand: age 3 of 4 labelled are "young"; hat 4 of 5 "no"; a constant answer has balanced accuracy 0.5
    assert baselines["val_age_accuracy"] == 0.75 and baselines["val_hat_accuracy"] == 0.8 and baselines["mA"] == 0.5
    assert baselines["val_hat_macro_f1"] == pytest.approx((2 * 0.8 / 1.8) / 2)
    objective = resolve_objective("age.accuracy,hat.accuracy", tasks)
    assert objective_baseline(objective, baselines) == pytest.approx(0.775)
    assert objective_baseline(resolve_objective("masked_loss", tasks), baselines) is None  # a loss has none

    class Oracle:  # what trials_table reads of keras-tuner's oracle
        def __init__(self):
            self.space = keras_tuner.HyperParameters()
            self.space.Float("lr", 1e-4, 1e-2)
            self.trials = {}
            for i, value in enumerate([0.6, 0.8]):
                t = trial_module.Trial(self.space.copy(), trial_id=f"{i:02d}", status="COMPLETED")
                t.metrics.register(objective.name, direction="max")
                t.metrics.update(objective.name, value)
                self.trials[t.trial_id] = t

        def get_space(self):
            return self.space

    oracle = Oracle()
    table = trials_table(oracle, objective, 0.775)
    assert list(table.columns[:4]) == ["trial", "status", "objective", "majority_baseline"]
    assert list(table["trial"]) == [1, 2] and list(table["trial_id"]) == ["00", "01"]  # keras-tuner's, last
    line = trial_line(oracle, "01", objective, {"max_trials": 4, "best": {"trial": 2, "majority_baseline": 0.775}})
    assert line == "trial 2 of 4: mean_val_accuracy 0.8000 (majority baseline 0.7750); best so far: trial 2"


def test_tuning_report(tmp_path, tiny_run):
    out = write_tuning(tmp_path / "tune")
    copy_run(tiny_run, out / "trial_01")  # a sub-run (the best trial retrained) is listed
    text = html_of(render_report(out, tmp_path / "t.html"))
    assert section_ids(text) == ["tuning", "subruns"]
    assert "val_age_accuracy (max)" in text and "sorted by val_age_accuracy, best first" in text
    order = re.findall(r'<tr><td class="num(?: good)?" data-v="(\d+)">', text)
    assert order[:4] == ["2", "1", "3", "4"]  # best first, the failed trial (no value) last
    assert text.count('<td class="num good" data-v="2">2</td>') == 1  # the best trial is highlighted
    # one numbering: trial 2 in the table and the summary, keras-tuner's "01" nowhere
    assert "<th>best trial</th><td>2</td>" in text and "trial_id" not in text and ">01<" not in text
    headers = re.findall(r"<th[^>]*>([^<]+)</th>", text[text.index("<h3>Trials</h3>"):])
    assert headers[2:4] == ["objective", "majority_baseline"]  # the baseline beside the objective
    assert_readable(text)
    assert "python scripts/train.py --config" in text and "learning_rate: 0.0003" in text
    assert 'alt="objective per trial"' in text
    assert "trial_01" in text and report_command(out / "trial_01") in text


def test_study_report(tmp_path, tiny_study):
    info = read_json(tiny_study, "study.json")
    text = html_of(render_report(tiny_study, tmp_path / "s.html"))
    assert section_ids(text)[0] == "study"
    assert [s["set"] for s in info["sets"]] == ["gender", "gender+upcolor"]
    for s in info["sets"]:
        assert f'<td data-v="{s["set"]}">{s["set"]}</td>' in text
    assert "seeds" in text and "Study report: study" in text
    # a chart of the main task's accuracy per set, with the differences to the main task alone
    assert 'alt="main task accuracy per task set"' in text
    for s in info["sets"][1:]:
        assert f"{100 * s['delta_accuracy']:+.1f}" in text
    assert_readable(text)


def test_study_report_links_each_set_to_its_run_reports(tmp_path, tiny_study):
    text = html_of(render_report(tiny_study, tmp_path / "s.html"))
    assert section_ids(text) == ["study"]  # the table of sets links the runs: no second list of them
    for r in read_json(tiny_study, "study.json")["runs"]:
        label = Path(r["run_dir"]).relative_to(tiny_study).as_posix()  # "gender/seed0"
        assert f'<a href="{escape(label)}/index.html">seed {r["seed"]}</a>' in text
        sub = html_of(tmp_path / label / "index.html")  # rendered beside the study's page
        assert f"Run report: seed{r['seed']}" in sub and "glance" in section_ids(sub)


def test_comparison(tmp_path, tiny_reid_run, tiny_run):
    a, b = tiny_reid_run, tiny_run
    out = render_comparison([a, b], tmp_path / "cmp")
    text = html_of(out)
    assert section_ids(text) == ["runs", "settings", "tasks", "curves", "reid"]
    assert "train.learning_rate" in text and f"Δ accuracy {b.name}" in text  # 0.002 against 0.001
    settings = text[text.index('<section id="settings"'):]
    settings = settings[:settings.index("</section>")]
    assert "train.learning_rate" in settings and "model.embedding_dim" in settings
    assert "model.width" not in settings  # equal settings are not listed
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


def test_cli_renders_and_compares(tmp_path, tiny_reid_run, tiny_run):
    result = run_script(tiny_reid_run, "--out", tmp_path / "one", "--quiet")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == tmp_path / "one" / "index.html"
    result = run_script(tiny_reid_run, tiny_run, "--out", tmp_path / "cmp.html")
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
