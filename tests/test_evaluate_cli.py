"""mtl-evaluate (mtl.cli.evaluate) on a product run: labels by the run's class names, checks before any work."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest

from conftest import TINY_FLAGS
from mtl.errors import ConfigError, DataError, WriteError
from tests.fixtures_images import write_tf_unreadable
from tests.test_relabel import OTHER_ROWS, RUN_ROWS, raw_values
from tests.test_source_fashion import write_fashion

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
