"""Task-set study: task sets, the recipe each gets, the table, and a real study of two sets."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mtl.config import build_config
from mtl.data.sources.market_course import MARKET_ALIASES, market_tasks
from mtl.errors import ConfigError, MtlError
from mtl.study import check_run_dir, resolve_study_tasks, set_config, study_table, summary_table, task_sets

TINY = ["--set", "data.image_height=32", "--set", "data.image_width=16", "--set", "model.width=0.25",
        "--set", "train.batch_size=32"]


def test_task_names_and_aliases_resolve():
    main, groups = resolve_study_tasks("age", ["gender", "color"], market_tasks(), MARKET_ALIASES)
    assert main == "age" and groups == [("gender",), ("upcolor", "downcolor")]
    with pytest.raises(ConfigError, match="one attribute task"):
        resolve_study_tasks("color", ["gender"], market_tasks(), MARKET_ALIASES)
    with pytest.raises(ConfigError, match="genderr"):
        resolve_study_tasks("age", ["genderr"], market_tasks(), MARKET_ALIASES)
    with pytest.raises(ConfigError, match="is the main task"):
        resolve_study_tasks("age", ["age"], market_tasks(), MARKET_ALIASES)


def test_task_sets_main_alone_each_aux_and_all():
    sets = task_sets("age", [("gender",), ("upcolor", "downcolor")], include_all=True)
    assert [s.name for s in sets] == ["age", "age+gender", "age+upcolor+downcolor", "all"]
    assert sets[0].tasks == ("age",) and sets[0].aux == ()
    assert sets[-1].tasks == ("age", "gender", "upcolor", "downcolor")
    assert [s.name for s in task_sets("age", [("gender",)], include_all=True)] == ["age", "age+gender"]


def test_every_set_gets_the_same_recipe_split_and_seed():
    base = build_config({"train": {"epochs": 3, "loss_weights": {"age": 1.0, "gender": 0.5, "hat": 0.2}}})
    sets = task_sets("age", [("gender",), ("hat",)])
    configs = [set_config(base, s, ["age", "gender", "hat"], seed=7) for s in sets]
    assert [c.tasks for c in configs] == ["age", "age,gender", "age,hat"]
    assert {c.data.stratify for c in configs} == {"age,gender,hat"}  # one split for all sets
    assert {c.train.seed for c in configs} == {7} and {c.train.epochs for c in configs} == {3}
    # a loss weight of a task absent from the set is dropped (compile rejects unknown outputs)
    assert configs[0].train.loss_weights == {"age": 1.0}
    assert configs[1].train.loss_weights == {"age": 1.0, "gender": 0.5}


def test_table_differences_are_to_the_main_task_alone_of_the_same_seed():
    rows = []
    for seed, acc in ((0, 0.5), (1, 0.6)):
        rows.append({"set": "age", "tasks": "age", "aux": "", "seed": seed, "main_val_loss": 1.0,
                     "main_best_val_loss": 0.9, "main_accuracy": acc, "main_macro_f1": 0.3})
        rows.append({"set": "age+gender", "tasks": "age,gender", "aux": "gender", "seed": seed,
                     "main_val_loss": 0.8, "main_best_val_loss": 0.8, "main_accuracy": acc + 0.1 * (seed + 1),
                     "main_macro_f1": 0.35})
    frame = study_table(rows)
    assert frame["delta_accuracy"].round(6).tolist() == [0.0, 0.1, 0.0, 0.2]
    summary = summary_table(frame).set_index("set")
    assert summary.loc["age+gender", "delta_accuracy"] == pytest.approx(0.15)
    assert summary.loc["age+gender", "delta_accuracy_std"] == pytest.approx(0.0707107, rel=1e-4)
    assert summary.loc["age+gender", "delta_val_loss"] == pytest.approx(-0.2)
    assert summary.loc["age", "seeds"] == 2


def test_a_run_folder_of_another_recipe_is_not_reused(tmp_path):
    from mtl.config import save_config

    cfg = build_config({"tasks": "age", "train": {"epochs": 2}})
    run = tmp_path / "age" / "seed0"
    assert check_run_dir(run, cfg, overwrite=False) == "new"
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    assert check_run_dir(run, cfg, overwrite=False) == "resume"
    (run / "metrics.json").write_text("{}")
    assert check_run_dir(run, cfg, overwrite=False) == "done"
    other = build_config({"tasks": "age", "train": {"epochs": 3}})
    with pytest.raises(MtlError, match=r"another config \(train.epochs: 2 -> 3\).*--overwrite"):
        check_run_dir(run, other, overwrite=False)
    assert check_run_dir(run, other, overwrite=True) == "new"  # train() clears it, under its lock


def test_a_study_folder_in_use_is_refused(tmp_path):
    from mtl.study import run_study
    from mtl.io import folder_lock

    out = tmp_path / "study"
    with folder_lock(out, "study"):  # as if the same command were already running
        with pytest.raises(MtlError, match=r"in use by process \d+"):
            run_study(build_config({}), "age", ["gender"], out)
    with folder_lock(out, "study"):  # released with its holder
        pass


def test_help_documents_every_flag(capsys):
    from scripts.study import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--main", "--aux", "--all", "--seeds", "--epochs", "--out", "--overwrite", "--data", "--config",
                 "--set"):
        assert flag in text


@pytest.mark.slow
def test_study_over_two_task_sets(tmp_path, synthetic_root, capsys):
    from scripts.study import main

    out = tmp_path / "study"
    argv = ["--data", str(synthetic_root), "--main", "age", "--aux", "gender", "--epochs", "1", "--out", str(out),
            *TINY]
    assert main(argv) == 0
    table = pd.read_csv(out / "study.csv")
    assert table["set"].tolist() == ["age", "age+gender"]
    assert {"main_val_loss", "main_accuracy", "main_macro_f1", "delta_accuracy", "delta_macro_f1"} <= set(table.columns)
    runs = pd.read_csv(out / "study_runs.csv")
    for _, row in runs.iterrows():
        metrics = json.loads((out / row["set"] / "seed0" / "metrics.json").read_text())
        assert row["main_accuracy"] == pytest.approx(metrics["tasks"]["age"]["accuracy"])
        assert row["main_macro_f1"] == pytest.approx(metrics["tasks"]["age"]["macro_f1"])
        history = json.loads((out / row["set"] / "seed0" / "history.json").read_text())
        # the main task alone is a one-output model: its logs still name the task, early stopping works
        assert all("val_age_xent" in e and "val_masked_loss" in e for e in history)
        best = next(e for e in history if e["epoch"] == metrics["training"]["best_epoch"])
        assert row["main_val_loss"] == pytest.approx(best["val_age_xent"])
    # both sets were validated on the same images
    splits = [pd.read_csv(out / s / "seed0" / "split.csv") for s in ("age", "age+gender")]
    val = [sorted(s.loc[s["split"] == "val", "path"]) for s in splits]
    assert val[0] == val[1] and len(val[0]) > 0
    assert table.loc[table["set"] == "age", "delta_accuracy"].item() == 0.0

    # rerunning reuses the finished runs; another recipe into the same folder is an error
    stamp = (out / "age" / "seed0" / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert "reusing" in capsys.readouterr().out
    assert (out / "age" / "seed0" / "metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(MtlError, match="another config"):
        main([*argv, "--set", "model.dropout=0.1"])
