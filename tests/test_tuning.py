"""Hyperparameter search: objective names, the search space and its YAML narrowing, the output
folder rules, real searches (embedded default, hyperband with bounded memory, distributed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pandas as pd
import pytest

from mtl.config import build_config, load_yaml
from mtl.data.sources.market_course import MARKET_ALIASES, market_tasks
from mtl.errors import ConfigError, MtlError
from mtl.tasks import TaskSpec
from mtl.tuning import (config_for, declared_space, flatten_space, prepare_out_dir, resolve_objective,
                        search_space)
from mtl.rundir import config_diff as settings_diff

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "data.image_height=32", "--set", "data.image_width=16", "--set", "model.width=0.25",
        "--set", "train.batch_size=32"]
MARKET = list(market_tasks().values())


# --- objectives ---------------------------------------------------------------------------------

def test_short_objective_names_resolve_to_the_names_keras_logs():
    o = resolve_objective("age.accuracy", MARKET, MARKET_ALIASES)
    assert (o.name, o.direction, o.parts, o.post_trial) == ("val_age_accuracy", "max", ("val_age_accuracy",), False)
    o = resolve_objective("gender.xent", MARKET)
    assert (o.name, o.direction) == ("val_gender_xent", "min")
    assert resolve_objective("val_bag_accuracy", MARKET).name == "val_bag_accuracy"
    assert resolve_objective("masked_loss", MARKET).name == "val_masked_loss"
    assert resolve_objective("loss", MARKET).direction == "min"


def test_mean_alias_and_post_trial_objectives():
    o = resolve_objective("age.accuracy,gender.accuracy", MARKET)
    assert o.name == "mean_val_accuracy" and o.parts == ("val_age_accuracy", "val_gender_accuracy")
    assert resolve_objective("mean(age.accuracy, gender.accuracy)", MARKET) == \
        resolve_objective("age.accuracy,gender.accuracy", MARKET).__class__(
            "mean_val_accuracy", "max", ("val_age_accuracy", "val_gender_accuracy"),
            "mean(age.accuracy, gender.accuracy)")
    # an alias standing for several tasks averages them
    o = resolve_objective("color.accuracy", MARKET, MARKET_ALIASES)
    assert o.parts == ("val_upcolor_accuracy", "val_downcolor_accuracy") and o.name == "mean_val_accuracy"
    ma = resolve_objective("mA", MARKET)
    assert (ma.name, ma.direction, ma.post_trial) == ("mA", "max", True)
    f1 = resolve_objective("age.f1", MARKET)
    assert (f1.name, f1.post_trial) == ("val_age_macro_f1", True)
    mixed = resolve_objective("mean(age.accuracy,mA)", MARKET)
    assert mixed.name == "mean(val_age_accuracy,mA)" and mixed.post_trial


def test_unknown_or_inconsistent_objectives_are_clear_errors():
    with pytest.raises(ConfigError) as e:
        resolve_objective("agee.accuracy", MARKET)
    message = str(e.value)
    assert "agee.accuracy" in message and "age" in message and "mA" in message and "<task>.accuracy" in message
    with pytest.raises(ConfigError, match="reid_mAP"):
        resolve_objective("reid_mAP", MARKET)  # no identity task
    with pytest.raises(ConfigError, match="minimise and to maximise"):
        resolve_objective("age.accuracy,age.xent", MARKET)
    product = [TaskSpec("articleType", ("a", "b", "c"))]
    with pytest.raises(ConfigError, match="unknown objective 'mA'"):
        resolve_objective("mA", product)  # no binary attribute


def test_reid_objective_needs_the_identity_task():
    tasks = MARKET + [TaskSpec("identity", ("1", "2", "3"), "identity")]
    o = resolve_objective("reid_mAP", tasks)
    assert (o.name, o.direction, o.post_trial) == ("reid_mAP", "max", True)


# --- search space -------------------------------------------------------------------------------

def test_default_space_covers_heads_widths_dropout_weights_lr_and_optimiser():
    hp = declared_space(MARKET[:3], None)
    names = {p.name for p in hp.space}
    assert {"model.head", "model.public_units", "model.task_units", "model.private_multipliers", "model.dropout",
            "train.optimizer", "train.learning_rate"} <= names
    assert {f"train.loss_weights.{t.name}" for t in MARKET[:3]} <= names
    assert "model.width" not in names  # the trunk width is tuned only when the space names it
    one_task = {p.name for p in declared_space(MARKET[:1], None).space}
    assert not any(n.startswith("train.loss_weights") for n in one_task)


def test_values_map_onto_the_config_and_branches_follow_the_head():
    hp = keras_tuner.HyperParameters()
    search_space(hp, MARKET[:2], None)
    hp.values.update({"model.head": "public", "model.public_units": "512,256", "model.task_units": 64,
                      "train.learning_rate": 0.002, f"train.loss_weights.{MARKET[0].name}": 2.0})
    base = build_config({"tasks": "x", "train": {"loss_weights": {"other": 3.0}}})
    cfg = config_for(base, search_space(hp, MARKET[:2], None))
    assert cfg.model.head == "public" and cfg.model.public_units == (512, 256) and cfg.model.task_units == 64
    assert cfg.train.learning_rate == 0.002
    assert cfg.train.loss_weights[MARKET[0].name] == 2.0 and cfg.train.loss_weights["other"] == 3.0
    assert not hp.is_active("model.private_multipliers")


def test_yaml_narrows_and_fixes_the_space():
    space = {"model": {"head": "public", "dropout": [0.1, 0.2], "width": [0.5, 1.0]},
             "train.learning_rate": {"min": 1e-4, "max": 1e-3, "sampling": "log"},
             "train.loss_weights": 1.0, f"train.loss_weights.{MARKET[1].name}": [0.5, 2.0],
             "model.public_units": [[128], [256, 128]]}
    hp = declared_space(MARKET[:2], space)
    by_name = {p.name: p for p in hp.space}
    assert isinstance(by_name["model.head"], keras_tuner.engine.hyperparameters.Fixed)
    assert "model.private_multipliers" not in by_name  # the branch a fixed head excludes is not declared
    assert list(by_name["model.dropout"].values) == [0.1, 0.2]
    assert list(by_name["model.width"].values) == [0.5, 1.0]
    assert list(by_name["model.public_units"].values) == ["128", "256,128"]
    lr = by_name["train.learning_rate"]
    assert (lr.min_value, lr.max_value, lr.sampling) == (1e-4, 1e-3, "log")
    assert by_name[f"train.loss_weights.{MARKET[0].name}"].value == 1.0
    assert list(by_name[f"train.loss_weights.{MARKET[1].name}"].values) == [0.5, 2.0]
    # flat and nested spellings are the same space
    assert flatten_space({"model": {"dropout": [0.1]}}) == {"model.dropout": [0.1]}
    assert flatten_space({"model": {"dropout": {"min": 0, "max": 0.5}}}) == {"model.dropout": {"min": 0, "max": 0.5}}


@pytest.mark.parametrize("space, message", [
    ({"model.dropot": [0.1]}, "unknown tune.space key"),
    ({"train.optimizer": ["adam", "rmsprop"]}, "rmsprop"),
    ({"model.head": "shared"}, "shared"),
    ({"model.dropout": {"min": 0.5, "max": 0.1}}, "min <= max"),
    ({"model.dropout": [1.5]}, "out of range"),
    ({"model.public_units": [[128, "x"]]}, "integers"),
])
def test_bad_space_entries_are_clear_errors(space, message):
    with pytest.raises(ConfigError, match=message):
        declared_space(MARKET[:2], space)


def test_tune_section_of_a_config_file_is_read(tmp_path):
    cfg = build_config(load_yaml(REPO / "configs" / "tune_market.yaml"))
    assert cfg.tune.space and cfg.tune.objective
    declared_space(MARKET, cfg.tune.space)  # the example is a valid space for the Market tasks


# --- output folder rules ------------------------------------------------------------------------

def test_out_dir_rules_resume_overwrite_and_changed_settings(tmp_path):
    settings = {"space": {"model.dropout": {"min": 0.0, "max": 0.5}}, "tasks": ["age"]}
    out = tmp_path / "search"
    assert prepare_out_dir(out, settings) == "new"
    (out / "tuner").mkdir()
    (out / "trials.csv").write_text("old")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MtlError, match="--resume.*--overwrite"):
        prepare_out_dir(out, settings)
    assert prepare_out_dir(out, settings, resume=True) == "resume"
    changed = {"space": {"model.dropout": {"min": 0.0, "max": 0.3}}, "tasks": ["age"]}
    with pytest.raises(MtlError, match=r"search space or settings changed.*space.model.dropout.max: 0.5 -> 0.3"):
        prepare_out_dir(out, changed, resume=True)
    assert prepare_out_dir(out, changed, overwrite=True) == "new"
    assert not (out / "tuner").exists() and not (out / "trials.csv").exists()
    assert (out / "notes.txt").read_text() == "mine"  # only the search's own files are deleted
    assert json.loads((out / "search.json").read_text())["settings"] == changed
    with pytest.raises(ConfigError):
        prepare_out_dir(out, changed, resume=True, overwrite=True)


def test_a_search_folder_in_use_is_refused(tmp_path):
    from mtl.io import folder_lock
    from mtl.tuning import run_search

    out = tmp_path / "search"
    with folder_lock(out, "search"):
        with pytest.raises(MtlError, match="in use by process"):
            run_search(build_config({"tasks": "age", "tune": {"max_trials": 1}}), out)
    assert not (out / "search.json").exists()  # refused before touching the folder


def test_settings_diff_names_what_changed():
    diff = settings_diff({"a": {"b": 1, "c": [1]}}, {"a": {"b": 2, "c": [1]}, "d": 3})
    assert diff == ["a.b: 1 -> 2", "d: (absent) -> 3"]


# --- real searches ------------------------------------------------------------------------------

def _tune(argv):
    from scripts.tune import main

    return main(argv)


def _layers(model):
    return [(layer.name, tuple(layer.output.shape) if hasattr(layer, "output") else None) for layer in model.layers]


@pytest.mark.slow
def test_two_trial_search_on_embedded_default_then_resume_and_retrain_best(tmp_path):
    from mtl.experiment import prepare
    from mtl.models.builder import load_model
    from mtl.tuning import MtlHyperModel, resolve_objective as resolve

    out = tmp_path / "search"
    argv = ["--tasks", "age,gender", "--tuner", "bayesian", "--max-trials", "2", "--epochs", "1", "--set", "data.max_images=240",
            "--objective", "age.accuracy", "--out", str(out), *TINY]
    assert _tune(argv) == 0
    table = pd.read_csv(out / "trials.csv")
    assert list(table["trial_id"]) == [0, 1] and set(table["status"]) == {"COMPLETED"}
    assert {"model.head", "model.dropout", "train.optimizer", "train.learning_rate", "train.loss_weights.age",
            "objective", "trial_seconds", "val_masked_loss", "mA"} <= set(table.columns)
    assert (table["trial_seconds"] > 0).all()
    # the objective is what keras logged under the resolved name, as keras-tuner recorded it
    for _, row in table.iterrows():
        trial = keras_tuner.engine.trial.Trial.load(str(out / "tuner" / f"trial_{row['trial_id']}" / "trial.json"))
        assert trial.metrics.get_last_value("val_age_accuracy") == pytest.approx(row["objective"])
    summary = json.loads((out / "tuning.json").read_text())
    assert summary["objective"]["name"] == "val_age_accuracy"
    assert summary["best"]["value"] == pytest.approx(table["objective"].max())
    best_row = table.loc[table["objective"].idxmax()]
    assert str(summary["best"]["trial_id"]) == str(best_row["trial_id"])

    # best_config.yaml is a config train.py reads unchanged, and it builds the trial's architecture
    cfg = build_config(load_yaml(out / "best_config.yaml"))
    assert cfg.model.head == best_row["model.head"] and cfg.train.optimizer == best_row["train.optimizer"]
    from scripts.train import main as train_main

    run = tmp_path / "retrain"
    assert train_main(["--config", str(out / "best_config.yaml"), "--out", str(run)]) == 0
    retrained = load_model(run / "model.keras")
    data = prepare(cfg)
    hypermodel = MtlHyperModel(cfg, data, resolve("age.accuracy", data.tasks), patience=1)
    trial = keras_tuner.engine.trial.Trial.load(str(out / "tuner" / f"trial_{best_row['trial_id']}" / "trial.json"))
    keras.backend.clear_session()
    tuned = hypermodel.build(trial.hyperparameters)
    assert _layers(tuned) == _layers(retrained)
    assert tuned.count_params() == retrained.count_params()
    assert json.loads((run / "model.json").read_text())["params_total"] == tuned.count_params()

    # an existing search is never reused silently
    with pytest.raises(MtlError, match="--resume"):
        _tune(argv)
    with pytest.raises(MtlError, match="changed.*model.head"):
        _tune(argv + ["--resume", "--set", "tune.space.model.head=public"])
    # resuming with the same settings continues: the two trials are kept, a third runs
    assert _tune([*argv[:argv.index("--max-trials") + 1], "3", *argv[argv.index("--max-trials") + 2:],
                  "--resume"]) == 0
    again = pd.read_csv(out / "trials.csv")
    assert len(again) == 3 and set(again["status"]) == {"COMPLETED"}
    assert np.allclose(again["objective"][:2], table["objective"])


@pytest.mark.slow
def test_hyperband_memory_stays_bounded_across_trials(tmp_path, synthetic_root):
    out = tmp_path / "hb"
    argv = ["--data", str(synthetic_root), "--tasks", "age,gender", "--tuner", "hyperband", "--max-trials", "4",
            "--epochs", "3", "--objective", "mean(age.xent,gender.xent)", "--out", str(out), *TINY]
    assert _tune(argv) == 0
    summary = json.loads((out / "tuning.json").read_text())
    assert summary["objective"]["name"] == "mean_val_xent" and summary["objective"]["direction"] == "min"
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 4 and set(table["status"]) == {"COMPLETED"}
    assert summary["best"]["value"] == pytest.approx(table["objective"].min())
    assert "tuner/epochs" in table.columns  # hyperband's budget per trial is recorded
    memory = [m["rss_mb"] for m in summary["memory_mb"]]
    assert len(memory) == 4
    # without releasing each trial's graphs this grew by 50-80 MB per trial
    assert memory[3] - memory[1] < 40, memory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_worker_waits_for_its_chief_and_gives_up_with_a_clear_error():
    from mtl.tuning import wait_for_chief

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        wait_for_chief("127.0.0.1", server.getsockname()[1], timeout_s=5)  # returns: someone serves
    port = _free_port()
    start = time.time()
    with pytest.raises(MtlError, match=f"no chief at 127.0.0.1:{port}"):
        wait_for_chief("127.0.0.1", port, timeout_s=0.5, poll_s=0.1)
    assert time.time() - start < 5


def _distributed_search(out: Path, argv: list[str], deadline_s: float,
                        chief_delay_s: float = 15) -> tuple[dict | None, dict]:
    """Runs a chief and two workers on 127.0.0.1: ``(returncodes, outputs)``, returncodes None when
    they have not all ended within ``deadline_s`` (every process is killed then). Output goes to
    files, not pipes: a process blocked on a full pipe that nobody reads would look like a hang."""
    port = str(_free_port())
    base = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port,
            "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    # the workers first, the chief later: they must not touch --out before the chief has checked it
    logs = {tuner_id: out.parent / f"{out.name}-{tuner_id}.log" for tuner_id in ("worker0", "worker1", "chief")}
    procs, ended = {}, False
    try:
        for tuner_id, log in logs.items():
            if tuner_id == "chief":
                time.sleep(chief_delay_s)
            with open(log, "w") as f:
                procs[tuner_id] = subprocess.Popen([*argv, "--out", str(out)], cwd=REPO, stdout=f,
                                                   stderr=subprocess.STDOUT, env={**base, "KERASTUNER_TUNER_ID": tuner_id})
        deadline = time.time() + deadline_s
        for proc in procs.values():
            proc.wait(timeout=max(1, deadline - time.time()))
        ended = True
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = {k: log.read_text() for k, log in logs.items()}
    return ({k: p.returncode for k, p in procs.items()} if ended else None), outputs


@pytest.mark.slow
def test_distributed_search_one_chief_two_workers(tmp_path, synthetic_root):
    out = tmp_path / "dist"
    argv = [sys.executable, str(REPO / "scripts" / "tune.py"), "--data", str(synthetic_root), "--tasks", "age,gender",
            "--tuner", "random", "--max-trials", "4", "--epochs", "1", "--objective", "mA", *TINY]
    codes, outputs = _distributed_search(out, argv, deadline_s=540)  # about 1 min alone
    tails = "\n".join(f"--- {k}:\n{v[-1500:]}" for k, v in outputs.items())
    assert codes is not None, f"the search did not end:\n{tails}"
    for tuner_id, code in codes.items():
        assert code == 0, f"{tuner_id} failed:\n{tails}"
    ran = {}
    for worker in ("worker0", "worker1"):
        line = [x for x in outputs[worker].splitlines() if x.startswith("worker done")]
        assert line, outputs[worker][-2000:]
        ran[worker] = int(line[0].split("ran ")[1].split()[0])
    assert all(n >= 1 for n in ran.values()) and sum(ran.values()) == 4, ran
    # the chief's oracle recorded every trial the workers ran, and wrote the results
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 4 and set(table["status"]) == {"COMPLETED"} and table["objective"].notna().all()
    assert (out / "best_config.yaml").is_file()


def test_tune_help_documents_every_flag(capsys):
    from scripts.tune import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--tuner", "--max-trials", "--objective", "--epochs", "--patience", "--out", "--resume", "--overwrite",
                 "--data", "--tasks", "--config", "--set", "KERASTUNER_TUNER_ID", "mA", "reid_mAP"):
        assert flag in text


@pytest.mark.slow
def test_reid_map_objective_is_computed_after_each_trial(tmp_path, synthetic_root):
    out = tmp_path / "reid"
    argv = ["--data", str(synthetic_root), "--tasks", "gender,identity", "--tuner", "random", "--max-trials", "1",
            "--epochs", "1", "--objective", "reid_mAP", "--out", str(out), *TINY]
    assert _tune(argv) == 0
    table = pd.read_csv(out / "trials.csv")
    assert table["status"].tolist() == ["COMPLETED"]
    assert 0 < table["objective"].item() <= 1 and 0 <= table["reid_rank1"].item() <= 1
    assert json.loads((out / "tuning.json").read_text())["objective"]["name"] == "reid_mAP"
