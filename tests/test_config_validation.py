"""The whole config is validated before any work starts, with one-line errors naming key, value and
what is valid (once tracebacks for ``--epochs -1``, ``--tasks ""``, ``--batch-size 0``,
``data.image_height=0``, ``model.dropout=1.5``, malformed YAML; ``--epochs 0`` trained nothing)."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from mtl import config as config_lib
from mtl.config import Config, TrainConfig, build_config, load_yaml, parse_overrides, validate
from mtl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs").glob("*.yaml"))

# (layer, the "key=value" the error must start with); at least one case for every checked key
BAD = [
    ({"tasks": ""}, "tasks=''"),
    ({"tasks": " , "}, "tasks=' , '"),
    ({"tasks": "age,up-color"}, "tasks='age,up-color'"),
    ({"data": {"path": " "}}, "data.path=' '"),
    ({"data": {"format": "csv"}}, "data.format='csv'"),
    ({"data": {"image_height": 0}}, "data.image_height=0"),
    ({"data": {"image_width": 4}}, "data.image_width=4"),
    ({"data": {"val_fraction": 0}}, "data.val_fraction=0.0"),
    ({"data": {"val_fraction": 1}}, "data.val_fraction=1.0"),
    ({"data": {"split_seed": -1}}, "data.split_seed=-1"),
    ({"data": {"rare_threshold": 1}}, "data.rare_threshold=1.0"),
    ({"data": {"rare_threshold": -0.1}}, "data.rare_threshold=-0.1"),
    ({"data": {"max_images": -5}}, "data.max_images=-5"),
    ({"data": {"val_identities": -1}}, "data.val_identities=-1"),
    ({"data": {"stratify": "a b"}}, "data.stratify='a b'"),
    ({"augment": {"pad_crop": -1}}, "augment.pad_crop=-1"),
    ({"augment": {"color_jitter": 1.5}}, "augment.color_jitter=1.5"),
    ({"augment": {"random_erasing": -0.5}}, "augment.random_erasing=-0.5"),
    ({"model": {"trunk": "resnet"}}, "model.trunk='resnet'"),
    ({"model": {"weights": " "}}, "model.weights=' '"),
    ({"model": {"width": 0}}, "model.width=0.0"),
    ({"model": {"head": "x"}}, "model.head='x'"),
    ({"model": {"public_units": [256, 0]}}, "model.public_units=[256, 0]"),
    ({"model": {"private_multipliers": [-1]}}, "model.private_multipliers=[-1]"),
    ({"model": {"task_units": 0}}, "model.task_units=0"),
    ({"model": {"dropout": 1.5}}, "model.dropout=1.5"),
    ({"model": {"dropout": 1}}, "model.dropout=1.0"),
    ({"model": {"dropout": -0.1}}, "model.dropout=-0.1"),
    ({"model": {"embedding_dim": -1}}, "model.embedding_dim=-1"),
    ({"train": {"epochs": -1}}, "train.epochs=-1"),
    ({"train": {"epochs": 0}}, "train.epochs=0"),
    ({"train": {"batch_size": 0}}, "train.batch_size=0"),
    ({"train": {"optimizer": "rmsprop"}}, "train.optimizer='rmsprop'"),
    ({"train": {"learning_rate": 0}}, "train.learning_rate=0.0"),
    ({"train": {"learning_rate": float("inf")}}, "train.learning_rate=inf"),
    ({"train": {"learning_rate": float("nan")}}, "train.learning_rate=nan"),
    ({"train": {"weight_decay": -1e-4}}, "train.weight_decay=-0.0001"),
    ({"train": {"trunk_lr_multiplier": -1}}, "train.trunk_lr_multiplier=-1.0"),
    ({"train": {"freeze_trunk_epochs": -1}}, "train.freeze_trunk_epochs=-1"),
    ({"train": {"warmup_epochs": -1}}, "train.warmup_epochs=-1"),
    ({"train": {"schedule": "linear"}}, "train.schedule='linear'"),
    ({"train": {"step_epochs": 0}}, "train.step_epochs=0"),
    ({"train": {"patience": -1}}, "train.patience=-1"),
    ({"train": {"keep": "first"}}, "train.keep='first'"),
    ({"train": {"loss_weights": {"age": -1}}}, "train.loss_weights={'age': -1.0}"),
    ({"train": {"loss_weights": {"up color": 1}}}, "train.loss_weights={'up color': 1.0}"),
    ({"train": {"label_smoothing": 1}}, "train.label_smoothing=1.0"),
    ({"train": {"seed": -3}}, "train.seed=-3"),
    ({"train": {"distribute": "multi"}}, "train.distribute='multi'"),
    ({"train": {"mixed_precision": "float8"}}, "train.mixed_precision='float8'"),
    ({"train": {"steps_per_execution": 0}}, "train.steps_per_execution=0"),
    ({"train": {"steps_per_epoch": -1}}, "train.steps_per_epoch=-1"),
    ({"train": {"sampler": "balanced"}}, "train.sampler='balanced'"),
    ({"train": {"p_identities": -1}}, "train.p_identities=-1"),
    ({"train": {"k_images": 1}}, "train.k_images=1"),
    ({"train": {"triplet_margin": 0}}, "train.triplet_margin=0.0"),
    ({"train": {"id_label_smoothing": 1.0}}, "train.id_label_smoothing=1.0"),
    ({"train": {"center_loss": -1}}, "train.center_loss=-1.0"),
    ({"tune": {"tuner": "grid"}}, "tune.tuner='grid'"),
    ({"tune": {"max_trials": 0}}, "tune.max_trials=0"),
    ({"tune": {"objective": " "}}, "tune.objective=' '"),
    ({"tune": {"patience": -2}}, "tune.patience=-2"),
    # the training methods' keys
    ({"model": {"attention": ["top"]}}, "model.attention=['top']"),
    ({"model": {"pooling": "sum"}}, "model.pooling='sum'"),
    ({"model": {"last_stride": 3}}, "model.last_stride=3"),
    ({"data": {"junk_fraction": 1.0}}, "data.junk_fraction=1.0"),
    ({"data": {"person_mask": " "}}, "data.person_mask=' '"),
    ({"train": {"metric_loss": "siamese"}}, "train.metric_loss='siamese'"),
    ({"train": {"class_weighting": "often"}}, "train.class_weighting='often'"),
    ({"train": {"step_factor": 0}}, "train.step_factor=0.0"),
    ({"train": {"sgd_from_epoch": -1}}, "train.sgd_from_epoch=-1"),
    ({"train": {"sgd_learning_rate": 0}}, "train.sgd_learning_rate=0.0"),
    ({"train": {"loss_balancing": "gradnorm"}}, "train.loss_balancing='gradnorm'"),
    ({"train": {"dwa_temperature": 0}}, "train.dwa_temperature=0.0"),
    ({"train": {"contrastive_margin": 0}}, "train.contrastive_margin=0.0"),
    ({"train": {"contrastive_margin": 2.5}}, "train.contrastive_margin=2.5"),
    # P x K batches of the identity task need two people each
    ({"tasks": "identity", "train": {"batch_size": 4}}, "train.batch_size=4"),
    ({"tasks": "identity,age", "train": {"p_identities": 1}}, "train.p_identities=1"),
]

# boundary values that are valid
GOOD = [
    {"model": {"weights": ""}},  # "" reads as None: random weights
    {"model": {"dropout": 0}}, {"model": {"embedding_dim": 0}},
    {"data": {"image_height": 8, "image_width": 8, "val_fraction": 0.5, "rare_threshold": 0}},
    {"augment": {"pad_crop": 0, "color_jitter": 1, "random_erasing": 1}},
    {"train": {"epochs": 1, "batch_size": 1, "patience": None, "triplet_margin": None, "k_images": 2,
               "trunk_lr_multiplier": 0, "weight_decay": 0, "loss_weights": {"age": 0, "embedding": 2}}},
    {"train": {"patience": 0, "warmup_epochs": 0, "steps_per_epoch": 0, "step_epochs": 1}},
    {"tasks": " age , color ", "data": {"stratify": "age,gender"}},
    {"tasks": "identity", "train": {"batch_size": 4, "sampler": "random"}},
    {"tasks": "identity", "train": {"batch_size": 4, "p_identities": 2}},
    {"tune": {"max_trials": 1, "patience": None, "tuner": "hyperband"}},
    {"model": {"attention": ["stage2", "last"], "pooling": "gem", "last_stride": 1}},
    {"data": {"junk_fraction": 0.5}}, {"train": {"metric_loss": "centroid_triplet", "contrastive_margin": 2}},
    {"train": {"epochs": 5, "sgd_from_epoch": 3, "sgd_learning_rate": 0.02, "step_factor": 0.5}},
    {"train": {"loss_balancing": "dwa", "dwa_temperature": 0.5, "class_weighting": "confusion"}},
]


def _case_id(case):
    return case[1].split("=")[0] + "=" + case[1].split("=", 1)[1][:20]


@pytest.mark.parametrize("layer,prefix", BAD, ids=[_case_id(c) for c in BAD])
def test_bad_value_is_a_one_line_error_naming_key_and_value(layer, prefix):
    with pytest.raises(ConfigError) as e:
        build_config(layer)
    text = str(e.value)
    assert text.startswith(prefix + ":"), text
    assert "\n" not in text


def test_every_checked_key_has_a_bad_case():
    """A new key gets a rule (declared with its field) and a rule gets a test here."""
    keys = config_lib.config_keys()
    unchecked = {k for k in keys if _rule(k) is None}
    # booleans: type-checked only; tune.space: checked by mtl.tuning (its keys name search parameters)
    assert unchecked == {k for k, t in keys.items() if t is bool} | {"tune.space"}
    tested = {prefix.split("=")[0] for _, prefix in BAD}
    assert set(keys) - unchecked - tested == set()


@pytest.mark.parametrize("layer", GOOD, ids=[str(g)[:40] for g in GOOD])
def test_boundary_values_are_accepted(layer):
    build_config(layer)


def test_choice_errors_list_the_valid_values():
    with pytest.raises(ConfigError, match=r"^model\.head='x': valid values: private, public$"):
        build_config({"model": {"head": "x"}})
    with pytest.raises(ConfigError, match=r"^train\.epochs=-1: must be at least 1$"):
        build_config({"train": {"epochs": -1}})
    with pytest.raises(ConfigError) as e:
        build_config({"model": {"trunk": "resnet"}})
    assert "resnet_small" in str(e.value) and "efficientnet_lite0" in str(e.value)
    with pytest.raises(ConfigError) as e:
        build_config({"data": {"format": "csv"}})
    assert "auto, market1501_course" in str(e.value)


def test_a_config_built_in_code_is_type_checked():
    cfg = Config(train=TrainConfig(epochs="3"))
    with pytest.raises(ConfigError, match=r"^train\.epochs='3': expected an integer$"):
        validate(cfg)
    with pytest.raises(ConfigError, match="expected a finite number"):
        validate(dataclasses.replace(Config(), model=dataclasses.replace(Config().model, dropout=True)))


@pytest.mark.parametrize("argv,prefix", [
    (["--epochs", "-1"], "train.epochs=-1"),
    (["--epochs", "0"], "train.epochs=0"),
    (["--tasks", ""], "tasks=''"),
    (["--batch-size", "0"], "train.batch_size=0"),
    (["--set", "data.image_height=0"], "data.image_height=0"),
    (["--set", "model.dropout=1.5"], "model.dropout=1.5"),
])
def test_former_traceback_cases_through_the_command_line_flags(argv, prefix):
    from mtl.cli import config_from_args
    from mtl.cli.train import parser

    args = parser().parse_args(argv)
    with pytest.raises(ConfigError) as e:
        config_from_args(args, {"train": {"epochs": args.epochs, "batch_size": args.batch_size}})
    assert str(e.value).startswith(prefix + ":")


def test_train_script_rejects_a_bad_value_before_creating_the_run_folder(tmp_path, capsys):
    """End to end, in process: ``mtl-train --epochs -1`` exits 2 with one ``error:`` line."""
    from mtl.cli import run_main
    from mtl.cli.train import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        run_main(lambda: main(["--epochs", "-1", "--out", str(out)]))
    captured = capsys.readouterr()
    assert e.value.code == 2
    assert captured.err == "error: train.epochs=-1: must be at least 1\n"
    assert not out.exists()


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: age\ntrain:\n  epochs: [3\n  batch_size: 8\n")
    with pytest.raises(ConfigError) as e:
        load_yaml(bad)
    text = str(e.value)
    assert str(bad) in text and "line 4" in text and "\n" not in text, text
    tabs = tmp_path / "tabs.yaml"
    tabs.write_text("train:\n\tepochs: 3\n")
    with pytest.raises(ConfigError, match=r"tabs\.yaml: invalid YAML at line 2, column 1"):
        load_yaml(tabs)


def test_yaml_top_level_must_be_a_mapping_and_empty_sections_are_fine(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- epochs: 3\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        load_yaml(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("tasks: age\ntrain:\n")
    assert build_config(load_yaml(empty)).train == TrainConfig()


def test_malformed_set_value_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^--set train\.loss_weights=\{age: 2: the value is not valid YAML"):
        parse_overrides(["train.loss_weights={age: 2"])


def test_a_run_config_yaml_with_a_bad_value_is_rejected_on_reading(tmp_path):
    path = tmp_path / "config.yaml"
    config_lib.save_config(build_config(), path)
    path.write_text(path.read_text().replace("epochs: 30", "epochs: 0"))
    with pytest.raises(ConfigError, match=r"^train\.epochs=0: must be at least 1$"):
        build_config(load_yaml(path))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_validates(path):
    assert validate(build_config(load_yaml(path))) == build_config(load_yaml(path))


def test_defaults_validate_and_deterministic_is_off():
    cfg = validate(Config())
    assert cfg.train.deterministic is False
    assert build_config(parse_overrides(["train.deterministic=true"])).train.deterministic is True


def test_config_imports_without_tensorflow():
    code = "import sys, mtl.config; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _rule(key):
    return config_lib._field(key).metadata["rule"]


# choice key -> the table of the code that implements it (TensorFlow-importing modules read their
# names from mtl.choices; the mappings of trunks and poolings spell them out again)
IMPLEMENTED = {
    "data.format": ("mtl.data.sources", "FORMATS"),
    "model.trunk": ("mtl.models.trunks", "TRUNKS"),
    "model.head": ("mtl.models.heads", "HEAD_TYPES"),
    "model.pooling": ("mtl.models.builder", "POOLINGS"),
    "train.optimizer": ("mtl.optim", "OPTIMIZERS"),
    "train.schedule": ("mtl.optim", "SCHEDULES"),
    "train.keep": ("mtl.engine", "KEEP"),
    "train.class_weighting": ("mtl.balancing", "CLASS_WEIGHTING"),
    "train.loss_balancing": ("mtl.balancing", "LOSS_BALANCING"),
    "train.mixed_precision": ("mtl.engine", "PRECISION_POLICIES"),
    "train.distribute": ("mtl.distribute", "DISTRIBUTE"),
    "train.sampler": ("mtl.data.prepare", "SAMPLERS"),
    "train.metric_loss": ("mtl.reid.losses", "METRIC_LOSSES"),
    "tune.tuner": ("mtl.tuning.tuners", "TUNERS"),
}


def test_every_table_of_choices_is_named_here():
    referenced = {k for k in config_lib.config_keys() if isinstance(getattr(_rule(k), "table", None), str)}
    assert referenced == set(IMPLEMENTED)


@pytest.mark.parametrize("key", sorted(IMPLEMENTED))
def test_choices_are_the_names_of_the_code_that_implements_them(key):
    module, attribute = IMPLEMENTED[key]
    table = tuple(getattr(importlib.import_module(module), attribute))
    rule = _rule(key)
    assert rule.names() == table
    assert config_lib.valid_values(key) == rule.first + table


def test_tables_of_choices_are_read_when_first_needed():
    # in a fresh process: this one has imported the tables already
    code = """
import sys
import mtl.config as C
tables = ("mtl.choices", "mtl.data.sources")
print([m for m in tables if m in sys.modules])
C.build_config()  # the defaults: data.format=auto needs no table
C.build_config({"model": {"trunk": "resnet50"}, "data": {"format": "fashion"}})
print([m for m in tables if m in sys.modules])
print(sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "pandas"}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:3] == ["[]", "['mtl.choices', 'mtl.data.sources']", "[]"], out.stdout


def test_a_choice_key_lists_its_table_in_its_help():
    rows = {k.key: k.help for k in config_lib.describe_keys()}
    assert rows["model.trunk"] == "shared trunk: " + ", ".join(config_lib.valid_values("model.trunk"))
    assert rows["data.format"].startswith("on-disk format: auto (detected) or market1501_course, market1501, ")
    assert config_lib.NAMES not in "".join(rows.values())


def test_valid_values_is_for_choice_keys():
    assert config_lib.valid_values("model.last_stride") == (1, 2)
    with pytest.raises(ValueError, match="train.epochs is not a choice key"):
        config_lib.valid_values("train.epochs")


def test_one_value_for_a_list_key_is_a_list_of_one():
    # --set model.attention=3 and --set model.public_units=384 read as numbers, not lists
    from mtl.config import build_config, parse_overrides

    cfg = build_config(parse_overrides(["model.public_units=384", "model.attention=3"]))
    assert cfg.model.public_units == (384,) and cfg.model.attention == ("3",)
