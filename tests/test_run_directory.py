"""The run directory's rules: what a rerun into an existing --out does, the lock, failed commands
that must change nothing, and the files' schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO, tiny_config
from mtl import rundir
from mtl.config import build_config, to_dict
from mtl.errors import MtlError
from mtl.rundir import RunDir, plan


def tiny_cfg(root, tasks="age,gender", **train):
    return tiny_config(root, {"data": {"max_images": 60}, "train": {"epochs": 1, "batch_size": 32}},
                       tasks=tasks, train=train)


@pytest.fixture(scope="module")
def finished_run(synthetic_root, tmp_path_factory):
    """A finished tiny run (trained once for the module; tests copy it)."""
    from mtl.experiment import train

    out = tmp_path_factory.mktemp("runs") / "finished"
    train(tiny_cfg(synthetic_root), out, command="train.py --tasks age,gender", log=None)
    return out


def snapshot(folder):
    """``{relative path: bytes}`` of every file under ``folder`` but the lock."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != rundir.LOCK}


def copy_run(src, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow
def test_a_finished_run_holds_every_file_with_its_schema(finished_run):
    run = RunDir(finished_run)
    assert run.status() == rundir.FINISHED
    manifest = run.manifest()
    assert manifest["schema_version"] == rundir.SCHEMA_VERSION
    assert manifest["sessions"][0]["command"] == "train.py --tasks age,gender" and manifest["sessions"][0]["ended"]
    for name in (rundir.CONFIG, rundir.COMMAND, rundir.TASKS, rundir.DATA, rundir.SPLIT, rundir.MODEL_JSON,
                 rundir.MODEL, rundir.HISTORY, rundir.METRICS, rundir.PREDICTIONS, rundir.BEST_WEIGHTS):
        assert run.file(name).is_file(), name
    info = run.read_data_info()
    assert info.schema_version == rundir.SCHEMA_VERSION and info.splits["train"]["images"] > 0
    assert sorted(t.name for t in run.read_tasks()) == ["age", "gender"]
    assert run.read_metrics()["schema_version"] == rundir.SCHEMA_VERSION
    assert run.read_metrics()["training"]["kept_epoch"] == 1
    model = json.loads(run.file(rundir.MODEL_JSON).read_text())
    assert model["input_shape"] == [32, 16, 3] and sorted(model["outputs"]) == ["age", "gender"]
    assert model["channel_order"] == "RGB" and model["value_range"] == [0, 255]


@pytest.mark.slow
def test_rerun_with_other_tasks_stops_and_keeps_the_first_run(finished_run, synthetic_root, tmp_path):
    # reported: --tasks age,gender then --tasks age,hat into the same --out exited 0 without
    # training, loaded the `gender` weights into `hat` and rewrote every file to say `hat`
    from mtl.experiment import train

    out = copy_run(finished_run, tmp_path)
    before = snapshot(out)
    with pytest.raises(MtlError, match=r"finished run with another config \(tasks: .age,gender. -> .age,hat.\).*--overwrite"):
        train(tiny_cfg(synthetic_root, tasks="age,hat"), out, log=None)
    assert snapshot(out) == before


@pytest.mark.slow
def test_a_changed_config_on_a_finished_run_is_refused(finished_run, synthetic_root, tmp_path):
    # reported: --config best_config.yaml --epochs 3 over a 2-epoch run trained one more epoch
    # and rewrote config.yaml
    from mtl.experiment import train

    out = copy_run(finished_run, tmp_path)
    before = snapshot(out)
    with pytest.raises(MtlError, match="finished run"):
        train(tiny_cfg(synthetic_root, epochs=3), out, log=None)
    assert snapshot(out) == before


def test_an_unfinished_run_resumes_only_with_the_same_config(tmp_path, synthetic_root):
    cfg = tiny_cfg(synthetic_root)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_config(cfg)
    run.begin_session("first")
    assert plan(run.path, to_dict(cfg)) == rundir.RESUME
    with pytest.raises(MtlError, match=r"another config \(train.epochs: 1 -> 3\)"):
        plan(run.path, to_dict(tiny_cfg(synthetic_root, epochs=3)))
    assert plan(run.path, to_dict(tiny_cfg(synthetic_root, epochs=3)), overwrite=True) == rundir.NEW
    assert plan(tmp_path / "missing", to_dict(cfg)) == rundir.NEW


def test_a_folder_that_is_not_a_run_is_never_used_or_cleared(tmp_path, synthetic_root):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(MtlError, match="not a run folder"):
        plan(tmp_path / "mine", to_dict(tiny_cfg(synthetic_root)), overwrite=True)
    with pytest.raises(MtlError, match="not a run folder"):
        rundir.clear(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"


@pytest.mark.slow
def test_overwrite_trains_afresh(finished_run, synthetic_root, tmp_path):
    from mtl.experiment import train

    out = copy_run(finished_run, tmp_path)
    metrics = train(tiny_cfg(synthetic_root, tasks="age,hat"), out, overwrite=True, log=None)
    assert set(metrics["tasks"]) == {"age", "hat"}
    assert sorted(t.name for t in RunDir(out).read_tasks()) == ["age", "hat"]
    assert len(RunDir(out).read_history()) == 1
    assert len(RunDir(out).manifest()["sessions"]) == 1


def test_a_failed_command_changes_nothing_and_leaves_no_folder(tmp_path, synthetic_root):
    # reported: a typo in --data against a finished run overwrote its config.yaml and command.txt,
    # and a rejected command left a stray run folder
    from mtl.experiment import train

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    cfg = tiny_cfg(synthetic_root)
    run.write_config(cfg)
    run.write_command("the first command")
    run.begin_session("the first command")
    before = snapshot(run.path)
    typo = build_config(to_dict(cfg), {"data": {"path": str(tmp_path / "typo")}})
    with pytest.raises(MtlError):
        train(typo, run.path, log=None)
    assert snapshot(run.path) == before
    with pytest.raises(MtlError, match="not found"):
        train(typo, tmp_path / "new", log=None)
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_a_failure_before_the_first_epoch_leaves_no_folder(tmp_path, synthetic_root):
    from mtl.experiment import train

    cfg = build_config(to_dict(tiny_cfg(synthetic_root)), {"model": {"weights": str(tmp_path / "none.weights.h5")}})
    with pytest.raises(MtlError):
        train(cfg, tmp_path / "new", log=None)
    assert not (tmp_path / "new").exists()


def test_a_second_process_on_the_same_folder_stops_with_a_clear_error(tmp_path, synthetic_root):
    # reported: two train.py on the same --out both exited 0 and mixed their files
    from mtl.experiment import train

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mtl.io import folder_lock\n"
         f"with folder_lock({str(out)!r}, 'training'):\n    print('locked', flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(MtlError, match=rf"in use by process {holder.pid} \(training"):
            train(tiny_cfg(synthetic_root), out, log=None)
    finally:
        holder.kill()
        holder.wait()
    assert not (out / rundir.CONFIG).exists()


def test_an_unwritable_out_is_one_error_before_any_image_is_read(tmp_path, synthetic_root, monkeypatch):
    # reported: a read-only or full --out ended in tracebacks (a full disk in a segfault)
    from mtl import experiment
    from mtl.errors import WriteError

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr(experiment, "prepare", lambda cfg: pytest.fail("data read before the output was checked"))
    with pytest.raises(WriteError, match="a_file"):
        experiment.train(tiny_cfg(synthetic_root), blocker / "run", log=None)
