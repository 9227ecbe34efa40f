"""The console scripts: declared in the installed metadata, each with a --help that shows a
description and examples without importing TensorFlow, and the checkout wrappers scripts/*.py."""

from __future__ import annotations

import configparser
import importlib
import importlib.metadata
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from mtl.cli import COMMANDS
from mtl.config import valid_values


def distribution_name() -> str:
    """The distribution name setup.cfg declares (not the import name ``mtl``)."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg["metadata"]["name"]


def installed_distribution() -> importlib.metadata.Distribution:
    """The installed distribution of this checkout; skips the test when it is not installed."""
    name = distribution_name()
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"the distribution {name} is not installed in this environment (pip install -e .)")
    return dist


def test_the_distribution_is_not_named_like_the_unrelated_pypi_project():
    # PyPI's "mtl" is another project: pip install mtl would fetch it, not this package
    assert distribution_name() not in ("mtl", "MTL")


def test_installed_metadata_declares_the_six_console_scripts():
    dist = installed_distribution()
    scripts = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.dist is not None and ep.dist.name == dist.metadata["Name"]}
    assert sorted(scripts) == sorted(f"mtl-{c}" for c in COMMANDS), \
        f"reinstall (pip install -e .) if setup.cfg changed; installed: {sorted(scripts)}"
    for command in COMMANDS:
        ep = scripts[f"mtl-{command}"]
        assert ep.value == f"mtl.cli.{command}:entry"
        assert ep.load() is importlib.import_module(f"mtl.cli.{command}").entry


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_each_command_has_a_description_and_examples(command, capsys):
    module = importlib.import_module(f"mtl.cli.{command}")
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mtl-{command} ")
    description = module.__doc__.strip().splitlines()[0]
    assert description in out
    assert "Examples:" in out and f"\n    mtl-{command} " in out


def test_help_lists_the_valid_values_of_the_choice_flags(capsys):
    from mtl.cli import train, tune

    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps help text at any space
    for name in (*valid_values("model.trunk"), *valid_values("data.format"), *valid_values("model.head")):
        assert name in text, name
    with pytest.raises(SystemExit):
        tune.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in valid_values("tune.tuner"))


def test_help_imports_neither_tensorflow_nor_keras():
    # in a fresh process: this test process may have imported TensorFlow already
    code = """
import contextlib, io, json, sys
from mtl.cli import COMMANDS
import importlib
for command in COMMANDS:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            importlib.import_module(f"mtl.cli.{command}").main(["--help"])
        except SystemExit:
            pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "keras_tuner"})))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == []


def test_the_installed_console_script_runs():
    installed_distribution()
    script = Path(sys.executable).parent / ("mtl-train.exe" if os.name == "nt" else "mtl-train")
    if not script.is_file():
        pytest.skip(f"{script} not found: the package is installed, but not into {sys.executable}'s environment")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: mtl-train ") and "--trunk" in result.stdout


def test_the_checkout_wrapper_scripts_still_work():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--help"], capture_output=True,
                            text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    # named as typed, so that the usage line is a command that works here
    assert result.stdout.startswith(f"usage: {REPO / 'scripts' / 'train.py'} ") and "--trunk" in result.stdout
    for command in COMMANDS:  # every wrapper runs the command's entry (and offers main for in-process use)
        module = importlib.import_module(f"mtl.cli.{command}")
        names = runpy.run_path(str(REPO / "scripts" / f"{command}.py"), run_name="wrapper")
        assert names["entry"] is module.entry and names["main"] is module.main


def test_the_recorded_command_line(monkeypatch):
    from mtl.cli import command_line

    # in process: the console script's name, runnable where the package is installed
    assert command_line("train", ["--tasks", "age", "--out", "runs/a b"]) == "mtl-train --tasks age --out 'runs/a b'"
    monkeypatch.setattr(sys, "argv", ["/venv/bin/mtl-tune", "--out", "x"])
    assert command_line("tune", None) == "mtl-tune --out x"
    # the checkout wrapper: as typed (the report adds "python" in front of a .py command)
    monkeypatch.setattr(sys, "argv", ["scripts/train.py", "--tasks", "age"])
    assert command_line("train", None) == "scripts/train.py --tasks age"
