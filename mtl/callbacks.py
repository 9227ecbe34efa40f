"""The callbacks of a training run: the masked validation loss (and the joint loss with an identity
embedding), early stopping and the best checkpoint that survive resumes and fit phases, history
written atomically every epoch, and resume after an interruption (atomic backup).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Mapping

import keras
import numpy as np

from mtl.io import atomic_path, atomic_write_json
from mtl.reid.heads import EMBEDDING

KEEP = ("best", "last")  # which epoch's weights a run ends with

class MaskedLossLogger(keras.callbacks.Callback):
    """Adds ``masked_loss`` / ``val_masked_loss``: the loss-weighted sum of each task's masked
    cross-entropy over the whole epoch (Keras' logged ``loss`` averages per-batch values, so a
    batch with no label counts as 0). Must come before the callbacks that monitor it.

    With ``embedding_weight`` (runs with attributes and an identity embedding) it also adds
    ``joint_loss`` / ``val_joint_loss``: the masked loss plus the weighted metric-learning loss of
    the embedding. The identity classifier's loss is left out: validation identities are not its
    classes, while the triplet loss is measured on the held-out people.
    """

    def __init__(self, weights: Mapping[str, float], embedding_weight: float | None = None):
        super().__init__()
        self.weights = dict(weights)
        self.embedding_weight = embedding_weight

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        self._name_single_output_metrics(logs)
        for prefix in ("", "val_"):
            keys = [(f"{prefix}{t}_xent", w) for t, w in self.weights.items()]
            if keys and all(k in logs for k, _ in keys):  # identity-only runs have no masked loss
                logs[f"{prefix}masked_loss"] = float(sum(w * float(logs[k]) for k, w in keys))
            embedding = logs.get(f"{prefix}{EMBEDDING}_loss")
            if self.embedding_weight is not None and embedding is not None and f"{prefix}masked_loss" in logs:
                logs[f"{prefix}joint_loss"] = logs[f"{prefix}masked_loss"] + self.embedding_weight * float(embedding)


    def _name_single_output_metrics(self, logs):
        """Keras names the metrics of a one-output model without the output's name (``val_xent``,
        not ``val_age_xent``); add the task-prefixed names, so that the logs (masked loss, early
        stopping, history, tuning objectives) read the same whatever the number of tasks."""
        names = list(getattr(self.model, "output_names", None) or []) if self.model is not None else []
        if len(names) != 1:
            return
        task = names[0]
        for key in list(logs):
            prefix, bare = ("val_", key[4:]) if key.startswith("val_") else ("", key)
            if bare not in ("loss", "masked_loss") and not bare.startswith(f"{task}_"):
                logs.setdefault(f"{prefix}{task}_{bare}", logs[key])


class HistoryWriter(keras.callbacks.Callback):
    """Writes ``history.json`` (a list of per-epoch logs with wall time) atomically every epoch;
    on resume it keeps the epochs already written."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.epochs = json.loads(self.path.read_text()) if self.path.is_file() else []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "time_s": round(time.time() - (self._start or time.time()), 3)}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        self.epochs = [e for e in self.epochs if e["epoch"] < epoch + 1] + [row]
        atomic_write_json(self.path, self.epochs)


def completed_epochs(history_path: str | Path | None, epoch: int) -> list[dict]:
    """The rows of ``history.json`` for the epochs finished before 0-based ``epoch`` (a resumed
    run's earlier sessions, or the earlier fit calls of this one)."""
    path = Path(history_path) if history_path else None
    rows = json.loads(path.read_text()) if path is not None and path.is_file() else []
    return [r for r in rows if r["epoch"] <= epoch]


class RunEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' EarlyStopping, but one run's best epoch, patience count and best weights survive
    its fit calls (the frozen-trunk phase, then fine-tuning) and its resumptions, and the best
    weights are restored once, when the run ends (stopped early, or after epoch ``epochs``).

    Keras resets its state at every ``fit`` and restores the best weights at the end of each: a
    run resumed after epoch 13 forgot that epoch 8 was its best and kept the best of epochs
    14-15, and a frozen phase of several epochs handed fine-tuning its best epoch rather than its
    last. With ``history_path`` the state is rebuilt from ``history.json`` when a fit call starts;
    the weights of an earlier session's best epoch come from ``weights_path`` (the best checkpoint).
    """

    def __init__(self, *args, epochs: int | None = None, history_path: str | Path | None = None,
                 weights_path: str | Path | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.epochs = epochs
        self.history_path = history_path
        self.weights_path = Path(weights_path) if weights_path else None
        self._started = False
        self._rebuilt = True
        self._last_epoch = -1

    def on_train_begin(self, logs=None):
        carried = (self.wait, self.best, self.best_epoch, self.best_weights) if self._started else None
        super().on_train_begin(logs)
        if carried is not None:
            self.wait, self.best, self.best_epoch, self.best_weights = carried
        self._started = True
        self._rebuilt = False

    def on_epoch_begin(self, epoch, logs=None):
        # the first epoch of a fit call tells which epochs are done (BackupAndRestore may skip some)
        if not self._rebuilt:
            self._rebuilt = True
            self._rebuild(completed_epochs(self.history_path, epoch), epoch)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self._last_epoch = epoch

    def on_train_end(self, logs=None):
        if not self._rebuilt:  # a rerun of a finished run trains no epoch: its state is all in the history
            rows = completed_epochs(self.history_path, np.inf)
            self._rebuilt = True
            self._rebuild(rows, max((r["epoch"] for r in rows), default=0))
            self._last_epoch = max((r["epoch"] - 1 for r in rows), default=self._last_epoch)
        finished = self.epochs is None or self.stopped_epoch > 0 or self._last_epoch >= self.epochs - 1
        if finished:
            super().on_train_end(logs)

    def _rebuild(self, rows: list[dict], epoch: int) -> None:
        values = [(r["epoch"] - 1, r[self.monitor]) for r in rows if self.monitor in r]
        if not values:
            return
        if self.monitor_op is None:
            self._set_monitor_op()
        best, best_epoch, wait = None, 0, 0
        for index, value in values:  # the same rule as on_epoch_end
            wait += 1
            if self._is_improvement(value, best):
                best, best_epoch, wait = value, index, 0
        if best_epoch != self.best_epoch or self.best_weights is None:
            self.best_weights = self._weights_of(best_epoch, epoch)
        self.best, self.best_epoch, self.wait = best, best_epoch, wait

    def _weights_of(self, best_epoch: int, epoch: int):
        if not self.restore_best_weights:
            return None
        if best_epoch == epoch - 1:  # the epoch just finished (or just restored from the backup)
            return self.model.get_weights()
        if self.weights_path is None or not self.weights_path.is_file():
            return None  # nothing to restore: the end of the run keeps its last weights
        current = self.model.get_weights()
        self.model.load_weights(str(self.weights_path))
        best = self.model.get_weights()
        self.model.set_weights(current)
        return best


class AtomicBestCheckpoint(keras.callbacks.Callback):
    """Saves the weights of the best epoch (lowest ``monitor``) to ``path`` atomically. A resumed
    run starts from the best value in ``history_path``, so the file keeps an earlier session's
    best epoch unless a later one beats it."""

    def __init__(self, path: str | Path, monitor: str = "val_masked_loss", history_path: str | Path | None = None):
        super().__init__()
        self.path = Path(path)
        self.monitor = monitor
        self.history_path = history_path
        self.best = np.inf
        self._rebuilt = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._rebuilt:
            self._rebuilt = True
            earlier = [r[self.monitor] for r in completed_epochs(self.history_path, epoch) if self.monitor in r]
            self.best = min([self.best, *earlier])

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value < self.best:
            self.best = float(value)
            with atomic_path(self.path) as tmp:
                self.model.save_weights(str(tmp))


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore (weights, optimizer state and epoch after every epoch), but each
    file is replaced atomically: a kill in the middle of a save leaves the previous backup intact
    instead of a truncated HDF5 file that makes the rerun fail."""

    def _save_model(self):
        with atomic_path(self._weights_path) as tmp:
            self.model.save_weights(str(tmp), overwrite=True)
        atomic_write_json(self._training_metadata_path,
                          {"epoch": self._current_epoch, "batch": self._last_batch_seen})


def fit_verbosity() -> int:
    """A live progress bar on a terminal, one line per epoch in logs."""
    return 1 if sys.stdout.isatty() else 2
