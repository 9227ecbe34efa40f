"""Early stopping and the best checkpoint over a run's several fit calls and its resumptions."""

import json

import keras
import numpy as np
import pytest

from mtl.errors import ConfigError
from mtl.callbacks import AtomicBestCheckpoint, RunEarlyStopping
from mtl.engine import TrainArgs, run_callbacks
from mtl.rundir import RunPaths
from mtl.tasks import TaskSpec


class ScriptedScore(keras.callbacks.Callback):
    """Puts ``val_score`` = ``scores[epoch]`` in the logs (placed before the callbacks that read it)."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def on_epoch_end(self, epoch, logs=None):
        logs["val_score"] = self.scores[epoch]


class Marker(keras.callbacks.Callback):
    """Sets every weight to the epoch's number at the end of each epoch, so a weight tells the epoch."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.set_weights([np.full_like(w, epoch + 1) for w in self.model.get_weights()])


def tiny_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def fit(model, callbacks, first, last):
    x, y = np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")
    model.fit(x, y, epochs=last, initial_epoch=first, verbose=0, callbacks=callbacks)


def epoch_of(model):
    return float(model.get_weights()[0].flat[0])


def write_history(path, scores):
    path.write_text(json.dumps([{"epoch": e + 1, "time_s": 1.0, "val_score": s} for e, s in enumerate(scores)]))


def test_a_resumed_run_remembers_its_best_epoch_and_restores_it(tmp_path):
    # the first session ran epochs 1-3 (best: 2, whose weights the best checkpoint holds); the
    # resumed one runs 4-5, both worse: the run must end with epoch 2, not the better of 4-5
    write_history(tmp_path / "history.json", [3.0, 1.0, 2.0])
    model = tiny_model()
    model.set_weights([np.full_like(w, 2.0) for w in model.get_weights()])
    model.save_weights(str(tmp_path / "best.weights.h5"))
    model.set_weights([np.full_like(w, 3.0) for w in model.get_weights()])  # the backup: epoch 3
    stopper = RunEarlyStopping(monitor="val_score", mode="min", patience=10, restore_best_weights=True,
                               epochs=5, history_path=tmp_path / "history.json",
                               weights_path=tmp_path / "best.weights.h5")
    fit(model, [ScriptedScore([0, 0, 0, 2.5, 1.5]), Marker(), stopper], 3, 5)
    assert stopper.best_epoch == 1 and stopper.best == 1.0
    assert epoch_of(model) == 2.0


def test_a_resumed_run_counts_patience_from_its_best_epoch(tmp_path):
    write_history(tmp_path / "history.json", [1.0, 2.0, 3.0])  # two epochs without improvement
    stopper = RunEarlyStopping(monitor="val_score", mode="min", patience=3, restore_best_weights=False,
                               history_path=tmp_path / "history.json")
    model = tiny_model()
    fit(model, [ScriptedScore([0, 0, 0, 4.0, 5.0, 6.0]), stopper], 3, 6)
    assert stopper.stopped_epoch == 3  # the third epoch after the best, not the third of this session


def test_the_best_weights_survive_the_frozen_then_fine_tuning_fits_and_are_restored_once():
    # Keras' EarlyStopping forgets the first fit's best epoch and restores the first fit's best
    # at its end, so fine-tuning would start from it instead of continuing from the last epoch
    stopper = RunEarlyStopping(monitor="val_score", mode="min", patience=10, restore_best_weights=True, epochs=4)
    model = tiny_model()
    scores = ScriptedScore([3.0, 1.0, 2.0, 2.5])
    fit(model, [scores, Marker(), stopper], 0, 3)
    assert epoch_of(model) == 3.0  # not restored between the fits
    fit(model, [scores, Marker(), stopper], 3, 4)
    assert stopper.best_epoch == 1 and epoch_of(model) == 2.0


def test_the_best_checkpoint_keeps_an_earlier_sessions_best(tmp_path):
    write_history(tmp_path / "history.json", [3.0, 1.0])
    model = tiny_model()
    checkpoint = AtomicBestCheckpoint(tmp_path / "best.weights.h5", "val_score", history_path=tmp_path / "history.json")
    fit(model, [ScriptedScore([0, 0, 1.5, 0.5]), Marker(), checkpoint], 2, 3)
    assert not (tmp_path / "best.weights.h5").exists()  # epoch 3 (1.5) does not beat epoch 2 (1.0)
    fit(model, [ScriptedScore([0, 0, 1.5, 0.5]), Marker(), checkpoint], 3, 4)
    model.load_weights(str(tmp_path / "best.weights.h5"))
    assert epoch_of(model) == 4.0


def test_keep_last_trains_without_early_stopping_and_rejects_unknown_choices(tmp_path):
    tasks = [TaskSpec("age", ("young", "old"), "binary")]
    paths = RunPaths(tmp_path / "history.json", tmp_path / "best.weights.h5", tmp_path / "backup")
    callbacks = run_callbacks(tasks, TrainArgs(epochs=3, patience=2, keep="last"), paths)
    assert not any(isinstance(c, keras.callbacks.EarlyStopping) for c in callbacks)
    assert any(isinstance(c, AtomicBestCheckpoint) for c in callbacks)  # the best epoch is still saved
    assert any(isinstance(c, RunEarlyStopping) for c in run_callbacks(tasks, TrainArgs(epochs=3, patience=2), paths))
    with pytest.raises(ConfigError, match="train.keep"):
        run_callbacks(tasks, TrainArgs(epochs=3, patience=2, keep="final"), paths)
