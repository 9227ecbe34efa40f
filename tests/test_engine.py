"""The training engine: its phases (a frozen trunk, BatchNorm in inference mode, then an unfrozen one
with a lower learning rate; the optimizer switch) through the same compile path as scripts/train.py."""

import keras
import numpy as np
import pytest

from conftest import tiny_config
from mtl.custom_loop import phase_at
from mtl.engine import Phase, TrainArgs, compile_model, training_phases, trunk_phases
from mtl.experiment import model_kwargs, train_args
from mtl.models.builder import build_model, get_trunk
from mtl.optim import SGD_LR_FACTOR, phase_optimizer
from mtl.tasks import TaskSpec

TASKS = [TaskSpec("hat", ("no", "yes"), "binary"), TaskSpec("color", ("r", "g", "b"))]


def _setup(**train):
    keras.utils.set_random_seed(0)  # identical initial weights and dropout masks across calls
    cfg = tiny_config(train={"epochs": 2, "warmup_epochs": 0, "learning_rate": 0.05, **train})
    model = build_model(TASKS, **model_kwargs(cfg))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 32, 16, 3)).astype(np.float32)
    y = {"hat": rng.integers(0, 2, 16), "color": rng.integers(-1, 3, 16)}
    return cfg, model, x, y


def _snapshot(variables):
    return [np.asarray(v).copy() for v in variables]


def test_frozen_trunk_keeps_weights_and_batchnorm_statistics_while_heads_learn():
    cfg, model, x, y = _setup()
    compile_model(model, TASKS, train_args(cfg), steps_per_epoch=2, trainable_trunk=False)
    trunk = get_trunk(model)
    trunk_before = _snapshot(trunk.weights)  # includes BatchNorm moving mean / variance
    heads_before = _snapshot(model.trainable_weights)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(trunk_before, trunk.weights))
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(heads_before, model.trainable_weights))


def test_unfrozen_trunk_learns_with_a_lower_learning_rate():
    moves = {}
    for multiplier in (1.0, 0.01):
        cfg, model, x, y = _setup(trunk_lr_multiplier=multiplier, optimizer="sgd", weight_decay=0.0)
        compile_model(model, TASKS, train_args(cfg), steps_per_epoch=2, trainable_trunk=True)
        trunk = get_trunk(model)
        kernel = trunk.get_layer("stem_conv").kernel
        before = np.asarray(kernel).copy()
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # one identical SGD step
        moves[multiplier] = float(np.abs(np.asarray(kernel) - before).max())
    assert moves[1.0] > 0
    # SGD: the first update is proportional to the learning rate
    np.testing.assert_allclose(moves[0.01], moves[1.0] * 0.01, rtol=0.05)


def test_trunk_phases_freeze_then_unfreeze_and_resume_inside_either_phase():
    assert trunk_phases(0, 10) == [(0, 10, True)]
    assert trunk_phases(2, 10) == [(0, 2, False), (2, 10, True)]
    assert trunk_phases(20, 10) == [(0, 10, False)]  # frozen for the whole run
    assert trunk_phases(2, 10, initial_epoch=1) == [(1, 2, False), (2, 10, True)]
    assert trunk_phases(2, 10, initial_epoch=5) == [(5, 10, True)]  # resumed after unfreezing
    assert trunk_phases(2, 10, initial_epoch=10) == []


def test_phases_split_where_the_trunk_unfreezes_and_where_sgd_starts():
    args = TrainArgs(epochs=10, freeze_trunk_epochs=2, sgd_from_epoch=6)
    assert training_phases(args) == [Phase(0, 2, False, False, 0), Phase(2, 6, True, False, 2),
                                     Phase(6, 10, True, True, 2)]
    # the switch carries the schedule on (step 4 epochs after unfreezing); a resume lands in its phase
    assert training_phases(args)[2].initial_step(5) == 20
    assert training_phases(args, initial_epoch=7) == [Phase(7, 10, True, True, 2)]
    assert training_phases(TrainArgs(epochs=4)) == [Phase(0, 4)]  # no switch: one phase, as before
    assert phase_at(training_phases(args), 6).sgd and not phase_at(training_phases(args), 5).sgd
    assert phase_optimizer("adamw", 1e-3) == ("adamw", 1e-3)
    assert phase_optimizer("adamw", 1e-3, sgd_phase=True) == ("sgd", pytest.approx(SGD_LR_FACTOR * 1e-3))
    assert phase_optimizer("adamw", 1e-3, sgd_phase=True, sgd_learning_rate=0.05) == ("sgd", 0.05)
