"""The engine's ``TrainArgs`` is filled from the config by field name: every field, none forgotten."""

import dataclasses

from mtl.config import build_config, patience_for
from mtl.engine import TrainArgs
from mtl.experiment import train_args

# a value other than TrainArgs' default for every field that is a train key (valid together)
NOT_DEFAULT = {
    "epochs": 7, "optimizer": "adam", "learning_rate": 2e-3, "weight_decay": 1e-4, "trunk_lr_multiplier": 0.5,
    "freeze_trunk_epochs": 1, "warmup_epochs": 2, "schedule": "step", "step_epochs": 3, "step_factor": 0.5,
    "sgd_from_epoch": 4, "sgd_learning_rate": 0.05, "patience": 3, "keep": "last", "loss_weights": {"age": 2.0},
    "label_smoothing": 0.1, "loss_balancing": "dwa", "dwa_temperature": 1.5, "class_weighting": "confusion",
    "jit_compile": True, "mixed_precision": "mixed_bfloat16", "steps_per_execution": 2, "triplet_margin": None,
    "id_label_smoothing": 0.2, "center_loss": 5e-4, "metric_loss": "contrastive", "hard_mining": False,
    "contrastive_margin": 0.5,
}
FROM_DATA = {"class_weights"}  # from the training split (train.class_weighting): None without data


def test_every_field_is_the_train_key_of_its_name():
    cfg = build_config({"train": NOT_DEFAULT})
    args = train_args(cfg)
    fields = {f.name: f for f in dataclasses.fields(TrainArgs)}
    assert set(fields) - FROM_DATA == set(NOT_DEFAULT)
    for name, f in fields.items():
        if name in FROM_DATA:
            continue
        expected = patience_for(7, 3) if name == "patience" else getattr(cfg.train, name)
        assert getattr(args, name) == expected, name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert getattr(args, name) != default, f"{name}: the test's value is the default, it proves nothing"
    assert args.class_weights is None


def test_null_patience_is_the_rule_and_loss_weights_are_a_copy():
    cfg = build_config({"train": {"epochs": 100, "loss_weights": {"age": 2.0}}})
    args = train_args(cfg)
    assert args.patience == patience_for(100, None) == 11
    assert args.loss_weights == {"age": 2.0} and args.loss_weights is not cfg.train.loss_weights
