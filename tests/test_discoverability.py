"""Options are found from the commands, not the source: ``--help`` lists the few valid
values, ``--show-config`` lists every config key with its type, default and meaning (read from the
config dataclasses), and ``--tasks help`` lists a dataset's tasks, all without training or writing."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from mtl import config as config_lib
from mtl.cli import study as study_cli
from mtl.cli import train as train_cli
from mtl.cli import tune as tune_cli
from mtl.config import Config, build_config, format_keys, format_value, valid_values

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"train": train_cli, "tune": tune_cli, "study": study_cli}


def _sections():
    """``{"": Config, "data": DataConfig, ...}``: each config dataclass and its key prefix."""
    hints = typing.get_type_hints(Config)
    out = {"": Config}
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(hints[f.name]):
            out[f.name] = hints[f.name]
    return out


def _rows(text: str) -> dict[str, list[str]]:
    """The key lines of ``--show-config``: ``{key: [type, default, (value,) meaning]}``."""
    rows = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 4 and cells[0] != "key" and not line.startswith("["):
            rows[cells[0]] = cells[1:]
    return rows


def test_every_key_has_help_text_in_its_field():
    for prefix, cls in _sections().items():
        for f in dataclasses.fields(cls):
            if prefix == "" and f.name in _sections():
                continue  # a section, not a key
            assert f.metadata.get("help", "").strip(), f"{prefix}.{f.name} has no help text"


def test_show_config_lists_every_field_with_its_type_default_and_meaning(capsys):
    assert train_cli.main(["--show-config"]) == 0
    rows = _rows(capsys.readouterr().out)
    meanings = {k.key: k.help for k in config_lib.describe_keys()}  # a choice key's help names its table's values
    expected = set()
    for prefix, cls in _sections().items():
        defaults = cls()
        for f in dataclasses.fields(cls):
            if prefix == "" and f.name in _sections():
                continue
            key = f"{prefix}.{f.name}" if prefix else f.name
            expected.add(key)
            assert key in rows, f"{key} missing from --show-config"
            type_, default, meaning = rows[key]
            assert default == format_value(getattr(defaults, f.name)), key
            assert type_ == config_lib._type_name(typing.get_type_hints(cls)[f.name]), key
            assert meaning == meanings[key], key
    assert set(rows) == expected  # nothing listed that is not a key
    assert set(expected) == set(config_lib.config_keys())


def test_show_config_defaults_reload_as_the_defaults():
    """The default column is written as --set takes it: feeding it back changes nothing."""
    rows = _rows(format_keys())
    overrides = [f"{key}={cells[1]}" for key, cells in rows.items() if key not in ("train.loss_weights", "tune.space")]
    assert build_config(config_lib.parse_overrides(overrides)) == Config()


def test_show_config_shows_the_values_that_config_and_set_give(tmp_path, capsys):
    yaml_file = tmp_path / "recipe.yaml"
    yaml_file.write_text("train:\n  epochs: 3\n")
    assert train_cli.main(["--show-config", "--config", str(yaml_file), "--set", "model.dropout=0.5",
                           "--trunk", "mobilenet_v2"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert re.search(r"^key\s+type\s+default\s+value\s+meaning", out, re.M)
    assert rows["train.epochs"][:3] == ["int", "30", "3"]
    assert rows["model.dropout"][:3] == ["float", "0.3", "0.5"]
    assert rows["model.trunk"][:3] == ["str", "resnet_small", "mobilenet_v2"]
    assert rows["train.batch_size"][2] == "="  # unchanged


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_config_command_answers_show_config_and_set_help_without_its_required_flags(command, capsys, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in (["--show-config"], ["--set", "help"]):
        assert COMMANDS[command].main(argv) == 0
        assert "train.epochs" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("command", ["tune", "study"])
def test_required_flags_are_still_required_for_real_work(command, capsys):
    with pytest.raises(SystemExit) as exc:
        COMMANDS[command].main(["--epochs", "1"])
    assert exc.value.code == 2
    assert "the following arguments are required: " in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_the_few_valid_values(command):
    text = COMMANDS[command].parser().format_help()
    normal = " ".join(text.split())
    for flag in ("--show-config", "--tasks", "--format"):
        assert flag in text
    for name in valid_values("data.format"):
        assert name in normal
    if command in ("train", "study"):
        for trunk in valid_values("model.trunk"):
            assert trunk in normal
    if command == "train":
        for head in valid_values("model.head"):
            assert head in normal


def test_tasks_help_lists_the_tasks_of_a_data_folder(synthetic_root, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_cli.main(["--tasks", "help", "--data", str(synthetic_root)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "market1501_course" in out and str(synthetic_root) in out
    assert re.search(r"^age\s+categorical\s+4 classes: young, teenager, adult, old$", rows["age"])
    assert re.search(r"^gender\s+binary\s+2 classes: male, female$", rows["gender"])
    assert "multicolor" in rows["upcolor"]
    assert re.search(r"^color\s+alias\s+upcolor, downcolor$", rows["color"])
    assert rows["all"].split()[1] == "alias"
    assert re.search(r"^identity\s+identity\s+", rows["identity"])
    assert list(tmp_path.iterdir()) == []  # no run folder


def test_tasks_help_on_the_embedded_default_and_on_study(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert study_cli.main(["--tasks", "help"]) == 0  # the study has required flags: not needed here
    out = capsys.readouterr().out
    assert "synthetic" in out and re.search(r"^age\s+categorical", out, re.M)
    assert list(tmp_path.iterdir()) == []


def test_tasks_help_without_identities_leaves_identity_out(tmp_path):
    """Product photos (one image per product) cannot train the identity task: not offered."""
    import pandas as pd

    from mtl.data.sources import describe_tasks
    from mtl.data.sources.base import SourceData
    from mtl.tasks import TaskSpec

    table = pd.DataFrame({"path": ["a.jpg", "b.jpg"], "identity": [1, 2], "camera": [-1, -1],
                          "subset": ["train", "train"], "colour": [0, 1]})
    text = describe_tasks(SourceData("fashion", str(tmp_path), table, {"colour": TaskSpec("colour", ("red", "blue"))}))
    assert "identity" not in text
    assert re.search(r"^colour\s+categorical\s+2 classes: red, blue$", text, re.M)


def test_tasks_help_and_show_config_from_the_console_script(synthetic_root, tmp_path):
    """In a fresh process: exit status 0, clean stderr, and no TensorFlow needed for either answer."""
    code = ("import sys; from mtl.cli.train import main; rc = main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules, 'imported TensorFlow'; sys.exit(rc)")
    for args in (["--show-config"], ["--tasks", "help", "--data", str(synthetic_root)]):
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert result.stdout.strip()
    assert list(tmp_path.iterdir()) == []
