"""Data read for an existing run is labelled with the run's class table, by class name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import shared_dataset
from mtl.data.relabel import load_for_run, relabel, unseen_summary
from mtl.data.sources import fashion, load_source
from mtl.errors import DataError
from mtl.scoring import evaluate_task
from mtl.tasks import BINARY, CATEGORICAL, TaskSpec
from tests.source_folders import OTHER_ROWS, RUN_ROWS, raw_values, write_fashion


@pytest.fixture
def folders(tmp_path):
    run_root = write_fashion(tmp_path / "run_data", RUN_ROWS)
    other_root = write_fashion(tmp_path / "other_data", OTHER_ROWS)
    run_tasks = list(fashion.load(run_root, rare_threshold=0.1).tasks.values())  # as training builds them
    return run_root, other_root, run_tasks


def test_the_other_folder_orders_its_classes_otherwise(folders):
    run_root, other_root, run_tasks = folders
    run_article = next(t for t in run_tasks if t.name == "articleType")
    assert run_article.classes == ("Tshirts", "Shirts", "Watches", "other")
    own = load_source(other_root, "fashion", rare_threshold=0.1).tasks["articleType"]
    assert own.classes[:3] == ("Watches", "Shirts", "Tshirts")  # index 0 means another article there


def test_load_for_run_labels_another_folder_by_class_name(folders):
    run_root, other_root, run_tasks = folders
    source, unseen = load_for_run(other_root, "fashion", run_tasks)
    specs = {t.name: t for t in run_tasks}
    assert list(source.tasks) == [t.name for t in run_tasks] and source.tasks == specs
    article, gender = raw_values(other_root, "articleType"), raw_values(other_root, "gender")
    for _, row in source.table.iterrows():
        # articleType has "other" in the run: Belts (grouped there by the run) and Socks (never seen) go to it
        expected = article[row["path"]] if article[row["path"]] in specs["articleType"].classes else "other"
        assert specs["articleType"].classes[row["articleType"]] == expected
        # gender has no "other" in the run: Girls is unknown (-1)
        if gender[row["path"]] == "Girls":
            assert row["gender"] == -1
        else:
            assert specs["gender"].classes[row["gender"]] == gender[row["path"]]
    assert unseen["articleType"] == 2 and unseen["gender"] == 2 and unseen["usage"] == 0
    line = unseen_summary(unseen, run_tasks)
    assert "articleType 2 (other)" in line and "gender 2 (unknown)" in line and "usage" not in line


def test_a_model_that_knows_the_names_scores_perfectly_only_when_relabelled(folders):
    """A fake model that predicts every product's true class (by name, in the run's class order)."""
    run_root, other_root, run_tasks = folders
    spec = next(t for t in run_tasks if t.name == "articleType")
    article = raw_values(other_root, "articleType")
    source, _ = load_for_run(other_root, "fashion", run_tasks)
    index = {name: i for i, name in enumerate(spec.classes)}
    truth = [index.get(article[p], index["other"]) for p in source.table["path"]]
    probs = np.eye(spec.num_classes)[truth]
    assert evaluate_task(source.table["articleType"].to_numpy(), probs, spec)["accuracy"] == 1.0
    # what evaluate.py did before: the folder's own class table, read with the run's indices
    own = load_source(other_root, "fashion", rare_threshold=0.1).table.set_index("path").loc[source.table["path"]]
    assert evaluate_task(own["articleType"].to_numpy(), probs, spec)["accuracy"] < 0.5


def test_the_same_folder_keeps_the_run_labels(folders):
    run_root, _, run_tasks = folders
    trained = fashion.load(run_root, rare_threshold=0.1)
    source, unseen = load_for_run(run_root, "fashion", run_tasks)
    for task in run_tasks:
        np.testing.assert_array_equal(source.table[task.name], trained.table[task.name])
    assert unseen["articleType"] == 1  # Belts: the run grouped it, its name is not among the run's classes


def test_relabel_maps_names_keeps_missing_and_drops_other_tasks():
    data_tasks = {"colour": TaskSpec("colour", ("red", "blue", "green", "other"), CATEGORICAL),
                  "hat": TaskSpec("hat", ("no", "yes"), BINARY),
                  "size": TaskSpec("size", ("S", "L"), CATEGORICAL)}
    table = pd.DataFrame({"path": list("abcde"), "colour": [0, 1, 2, 3, -1], "hat": [1, 0, -1, 1, 0],
                          "size": [0, 1, 0, 1, 0]})
    run_tasks = [TaskSpec("colour", ("blue", "red"), CATEGORICAL), TaskSpec("hat", ("no", "yes"), BINARY)]
    out, unseen = relabel(table, data_tasks, run_tasks)
    assert list(out["colour"]) == [1, 0, -1, -1, -1] and list(out["hat"]) == [1, 0, -1, 1, 0]
    assert "size" not in out.columns and list(out["path"]) == list("abcde")
    assert unseen == {"colour": 2, "hat": 0}
    assert list(table["colour"]) == [0, 1, 2, 3, -1]  # the input is not changed
    with_other = [TaskSpec("colour", ("blue", "red", "other"), CATEGORICAL)]
    out, unseen = relabel(table, data_tasks, with_other)
    assert list(out["colour"]) == [1, 0, 2, 2, -1] and unseen == {"colour": 1}  # "other" maps by name
    with pytest.raises(DataError, match="'hat' is binary in the data but categorical in the run"):
        relabel(table, data_tasks, [TaskSpec("hat", ("no", "yes", "maybe"), CATEGORICAL)])


def test_a_folder_without_a_run_task_is_one_error(folders):
    _, other_root, run_tasks = folders
    tasks = run_tasks + [TaskSpec("pattern", ("plain", "striped"), CATEGORICAL)]
    with pytest.raises(DataError, match=r"no labels for the run's tasks pattern \(its tasks: gender,"):
        load_for_run(other_root, "fashion", tasks)
    source, _ = load_for_run(other_root, "fashion", tasks, require_labels=False)
    assert "pattern" not in source.tasks


@pytest.mark.realdata
def test_real_products_map_by_name_across_subsets(tmp_path):
    root = shared_dataset("fashion-product-small")
    header, records = fashion.read_styles(root / "styles.csv")
    lines = (root / "styles.csv").read_text(encoding="utf-8-sig").splitlines()
    body = lines[1:]
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, part in ((first, body[: len(body) // 2]), (second, body[len(body) // 2:])):
        folder.mkdir()
        (folder / "styles.csv").write_text("\n".join([lines[0], *part]) + "\n", encoding="utf-8")
    images = str((root / "images").resolve())
    run_tasks = list(load_source(first, "fashion", images=images).tasks.values())  # the default 1 % grouping
    source, unseen = load_for_run(second, "fashion", run_tasks, images=images)
    own = load_source(second, "fashion", images=images)
    assert any(own.tasks[t.name].classes != t.classes for t in run_tasks)  # the bug's premise, on real data
    specs = {t.name: t for t in run_tasks if t.type.has_classes}  # the year, a value, is kept as it is
    np.testing.assert_array_equal(source.table["year"].to_numpy(), own.table["year"].to_numpy())
    columns = {t.name: header.index(t.name) for t in run_tasks}
    by_path = {str((root / "images" / f"{f[0]}.jpg").resolve()): f for _, f in records}
    for name, spec in specs.items():
        values = [by_path[p][columns[name]].strip() for p in source.table["path"]]
        codes = source.table[name].to_numpy()
        for value, code in zip(values, codes):
            if value in fashion.NA_VALUES:
                assert code == -1
            elif value in spec.classes:
                assert spec.classes[code] == value
            else:
                assert code == (spec.classes.index("other") if "other" in spec.classes else -1)
        assert unseen[name] == sum(v not in fashion.NA_VALUES and v not in spec.classes for v in values)
