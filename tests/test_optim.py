"""The step schedule's factor (halving every N epochs) and the
optimizer switch (AdamW for the first epochs, then SGD with Nesterov momentum), through the
engine's phases, the epoch logs, the saved model and a resume after a kill."""

import json

import keras
import numpy as np
import pytest

from conftest import tiny_config
from mtl import engine
from mtl.engine import TrainArgs
from mtl.errors import ConfigError
from mtl.optim import TrunkLRAdamW, TrunkLRSGD, WarmupSchedule
from mtl.rundir import RunPaths

TRAIN = {"epochs": 3, "sgd_from_epoch": 2, "schedule": "step", "step_epochs": 1, "step_factor": 0.5,
         "warmup_epochs": 0, "learning_rate": 1e-3, "batch_size": 32}
# the heads' rate at the start of each epoch: AdamW 1e-3 halved each epoch, then SGD at 10 x 1e-3,
# two halvings down the same schedule
EXPECTED_RATES = [1e-3, 5e-4, 1e-2 * 0.25]


def _rates(schedule, steps):
    return [float(keras.ops.convert_to_numpy(schedule(s))) for s in steps]


def test_step_schedule_halves_every_step_epochs_exactly():
    halving = WarmupSchedule(0.01, total_steps=100, kind="step", step_size=10, step_factor=0.5)
    np.testing.assert_allclose(_rates(halving, [0, 9, 10, 19, 20, 35, 99]),
                               [0.01, 0.01, 0.005, 0.005, 0.0025, 0.00125, 0.01 / 512], rtol=1e-6)
    # the decay counts from the end of the warm-up, as the default factor always did
    warm = WarmupSchedule(0.01, total_steps=100, warmup_steps=4, kind="step", step_size=10, step_factor=0.5)
    np.testing.assert_allclose(_rates(warm, [0, 4, 13, 14]), [0.001, 0.01, 0.01, 0.005], rtol=1e-6)
    tenth = WarmupSchedule(0.01, total_steps=100, kind="step", step_size=10)
    np.testing.assert_allclose(_rates(tenth, [0, 10, 20]), [0.01, 0.001, 0.0001], rtol=1e-6)


def test_schedule_factor_serialises_and_old_configs_keep_the_tenth():
    schedule = WarmupSchedule(0.01, 100, 0, "step", 10, step_factor=0.5)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert again.step_factor == 0.5 and _rates(again, [10]) == pytest.approx([0.005])
    old = {k: v for k, v in schedule.get_config().items() if k != "step_factor"}  # a model.keras of before
    assert WarmupSchedule.from_config(old).step_factor == 0.1


@pytest.mark.parametrize("train, message", [
    ({"epochs": 3, "sgd_from_epoch": 3}, "train.sgd_from_epoch=3: must be below train.epochs=3"),
    ({"epochs": 5, "sgd_from_epoch": 2, "freeze_trunk_epochs": 2},
     "train.sgd_from_epoch=2: must be above train.freeze_trunk_epochs=2"),
    ({"epochs": 5, "sgd_from_epoch": 2, "optimizer": "sgd"}, "train.sgd_from_epoch=2: switches"),
    ({"sgd_from_epoch": -1}, "train.sgd_from_epoch=-1: must be at least 0"),
    ({"sgd_learning_rate": 0}, "train.sgd_learning_rate=0.0: must be None or greater than 0"),
    ({"step_factor": 0}, r"train.step_factor=0.0: must be in \(0, 1\]"),
    ({"step_factor": 2}, r"train.step_factor=2.0: must be in \(0, 1\]"),
])
def test_bad_switch_and_factor_are_config_errors(train, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(train=train)


def test_keys_reach_the_engine_and_default_to_todays_recipe():
    from mtl.config import parse_overrides
    from mtl.experiment import train_args

    default = train_args(tiny_config())
    assert (default.step_factor, default.sgd_from_epoch, default.sgd_learning_rate) == (0.1, 0, None)
    args = train_args(tiny_config(train={"epochs": 5, "sgd_from_epoch": 3, "sgd_learning_rate": 0.02,
                                         "step_factor": 0.5}))
    assert (args.step_factor, args.sgd_from_epoch, args.sgd_learning_rate) == (0.5, 3, 0.02)
    sets = parse_overrides(["train.epochs=5", "train.sgd_from_epoch=3", "train.sgd_learning_rate=null",
                            "train.step_factor=0.5"])
    args = train_args(tiny_config(None, sets))
    assert (args.step_factor, args.sgd_from_epoch, args.sgd_learning_rate) == (0.5, 3, None)


class _Spy(keras.callbacks.Callback):
    """Records, at each epoch's start, the epoch, the optimizer's class, its step counter and
    whether its slots (moments, momentum) hold anything (a fresh optimizer's are zeros)."""

    seen: list = []

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        slots = [v for v in optimizer.variables if "iteration" not in v.path]
        state = any(np.any(keras.ops.convert_to_numpy(v) != 0) for v in slots)
        _Spy.seen.append((epoch, type(optimizer).__name__, int(keras.ops.convert_to_numpy(optimizer.iterations)),
                          state))


class _Kill(keras.callbacks.Callback):
    """Ends the process's training after 0-based epoch ``after`` (its backup already saved)."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after:
            raise KeyboardInterrupt("killed")


def _with_callbacks(monkeypatch, *extra):
    """``engine.run_callbacks`` with ``extra`` appended (after the backup, as a kill would come)."""
    original = engine.run_callbacks
    monkeypatch.setattr(engine, "run_callbacks", lambda *a, **k: original(*a, **k) + [c() for c in extra])


def _steps(cfg):
    from mtl.experiment import prepare, steps_per_epoch

    return steps_per_epoch(cfg, prepare(cfg))[0]


@pytest.mark.slow
def test_adamw_then_sgd_trains_logs_its_rates_and_reloads(tmp_path, synthetic_root, monkeypatch):
    from mtl.experiment import train

    cfg = tiny_config(synthetic_root, tasks="hat,age", train=TRAIN)
    _Spy.seen = []
    _with_callbacks(monkeypatch, _Spy)
    train(cfg, tmp_path / "run", log=None)
    steps = _steps(cfg)
    # the SGD phase's step counter starts at the nominal 2 epochs of steps (the same as a resumed run
    # gets); within a phase Keras counts one more step per epoch of a dataset of unknown length
    assert [(e, name) for e, name, _, _ in _Spy.seen] == [(0, "TrunkLRAdamW"), (1, "TrunkLRAdamW"), (2, "TrunkLRSGD")]
    assert _Spy.seen[0][2] == 0 and _Spy.seen[2][2] == 2 * steps
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    np.testing.assert_allclose([row["learning_rate"] for row in history], EXPECTED_RATES, rtol=1e-5)
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert isinstance(model.optimizer, TrunkLRSGD) and model.optimizer.nesterov
    schedule = model.optimizer.get_config()["learning_rate"]["config"]  # the SGD phase's WarmupSchedule
    assert (schedule["base_lr"], schedule["step_factor"]) == (pytest.approx(1e-2), 0.5)


@pytest.mark.slow
def test_a_run_killed_after_the_adamw_epochs_resumes_in_the_sgd_phase(tmp_path, synthetic_root, monkeypatch):
    from mtl.experiment import train

    cfg = tiny_config(synthetic_root, tasks="hat,age", train=TRAIN)
    _with_callbacks(monkeypatch, lambda: _Kill(after=1))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", log=None)
    assert [row["epoch"] for row in json.loads((tmp_path / "run" / "history.json").read_text())] == [1, 2]

    monkeypatch.undo()
    _Spy.seen = []
    _with_callbacks(monkeypatch, _Spy)
    lines = []
    train(cfg, tmp_path / "run", log=lambda text, **_: lines.append(text))
    # only epoch 3 trained, by SGD, its schedule two epochs in (not restarted by the new optimizer)
    assert _Spy.seen == [(2, "TrunkLRSGD", 2 * _steps(cfg), False)]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    np.testing.assert_allclose([row["learning_rate"] for row in history], EXPECTED_RATES, rtol=1e-5)
    assert isinstance(keras.saving.load_model(tmp_path / "run" / "model.keras").optimizer, TrunkLRSGD)
    assert any(line.startswith("resuming") and "after epoch 2 of 3" in line for line in lines)


@pytest.mark.slow
def test_a_run_killed_inside_the_sgd_phase_keeps_its_momentum(tmp_path, synthetic_root, monkeypatch):
    from mtl.experiment import train

    cfg = tiny_config(synthetic_root, tasks="hat", train={**TRAIN, "epochs": 4})
    _with_callbacks(monkeypatch, lambda: _Kill(after=2))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", log=None)
    monkeypatch.undo()
    _Spy.seen = []
    _with_callbacks(monkeypatch, _Spy)
    train(cfg, tmp_path / "run", log=None)
    # the backup's SGD state restored: its momentum and step counter (epoch 3's steps on top of the
    # phase's start; Keras counts one more per epoch of a dataset of unknown length)
    (epoch, name, step, state), = _Spy.seen
    assert (epoch, name, state) == (3, "TrunkLRSGD", True) and 3 * _steps(cfg) <= step <= 3 * _steps(cfg) + 1
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert all("learning_rate" in row and "hat_learning_rate" not in row for row in history)  # not a task's


def _tiny_engine_run(tmp_path, args, callbacks=()):
    """``engine.train_model``'s custom loop (MultiWorkerMirroredStrategy's path) on a tiny model, 2
    steps an epoch, with a run directory's resume state in ``tmp_path``."""
    import tensorflow as tf

    from mtl.models.builder import build_model
    from mtl.tasks import BINARY, TaskSpec

    tasks = [TaskSpec("hat", ("no", "yes"), BINARY)]
    keras.utils.set_random_seed(1)
    model = build_model(tasks, input_shape=(32, 16, 3), width=0.25, private_multipliers=[4, 2])
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 32, 16, 3)).astype("float32")
    train_ds = tf.data.Dataset.from_tensor_slices((x, {"hat": rng.integers(0, 2, 8).astype("int32")}))
    paths = RunPaths(tmp_path / "history.json", tmp_path / "best.weights.h5", tmp_path / "backup")
    return engine.train_model(model, tasks, train_ds.batch(4).repeat(), None, args, 2, fixed_steps=True,
                              paths=paths, callbacks=list(callbacks), custom_loop=True, verbose=0)


@pytest.mark.slow
@pytest.mark.parametrize("sgd_from_epoch, restored", [(2, False), (1, True)])
def test_the_custom_loop_switches_and_resumes_in_the_sgd_phase(tmp_path, sgd_from_epoch, restored):
    # the custom loop saves its checkpoint after the callbacks: a kill in epoch 3's callbacks leaves
    # 2 epochs saved, the last of them AdamW's (switch at 2: SGD starts afresh) or SGD's (switch at 1)
    args = TrainArgs(epochs=3, optimizer="adamw", learning_rate=1e-3, warmup_epochs=0, schedule="step",
                     step_epochs=1, step_factor=0.5, sgd_from_epoch=sgd_from_epoch, keep="last")
    with pytest.raises(KeyboardInterrupt):
        _tiny_engine_run(tmp_path, args, [_Kill(after=2)])
    _Spy.seen = []
    result = _tiny_engine_run(tmp_path, args, [_Spy()])
    assert _Spy.seen == [(2, "TrunkLRSGD", 4, restored)]  # 2 epochs x 2 steps: the schedule carried on
    assert [row["epoch"] for row in result.epochs] == [2]
    assert result.epochs[0]["learning_rate"] == pytest.approx(1e-2 * 0.25)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]


@pytest.mark.slow
def test_the_custom_loop_resumes_after_the_frozen_trunk_phase(tmp_path):
    # the checkpoint of the frozen phase holds a heads-only optimizer: restoring the model alone into
    # the unfrozen phase's optimizer matched its slots by position (incompatible shapes)
    args = TrainArgs(epochs=3, optimizer="adamw", learning_rate=1e-3, warmup_epochs=0, freeze_trunk_epochs=2,
                     keep="last")
    with pytest.raises(KeyboardInterrupt):
        _tiny_engine_run(tmp_path, args, [_Kill(after=2)])
    _Spy.seen = []
    _tiny_engine_run(tmp_path, args, [_Spy()])
    assert _Spy.seen == [(2, "TrunkLRAdamW", 0, False)]  # the fine-tuning phase's own schedule, afresh
