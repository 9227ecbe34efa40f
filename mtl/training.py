"""Compile and fit: optimisers with a lower trunk learning rate, warm-up + cosine/step schedules,
task-keyed masked losses and metrics, and the callbacks a long run needs (early stopping on the
true masked validation loss, best checkpoint, resume after interruption, stop on NaN, history
written atomically every epoch).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import keras
import numpy as np
from keras import ops

from mtl.errors import ConfigError
from mtl.io import atomic_path, atomic_write_json
from mtl.losses import MaskedBinaryCrossentropy, MaskedSparseCategoricalCrossentropy
from mtl.metrics import MaskedAccuracy, MaskedCrossentropy
from mtl.reid.heads import EMBEDDING
from mtl.tasks import BINARY, CATEGORICAL, IDENTITY, TaskSpec

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
KEEP = ("best", "last")  # which epoch's weights a run ends with


@keras.saving.register_keras_serializable(package="mtl")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``base_lr / 10`` over ``warmup_steps``, then cosine decay to 1% of
    ``base_lr`` at ``total_steps``, or a step decay (x0.1 every ``step_size`` steps), or constant.
    """

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
                 step_size: int = 0):
        if kind not in SCHEDULES:
            raise ConfigError(f"unknown schedule {kind!r}; valid: {', '.join(SCHEDULES)}")
        self.base_lr = float(base_lr)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.kind = kind
        self.step_size = int(step_size)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = float(self.warmup_steps)
        base = self.base_lr
        if self.kind == "cosine":
            progress = ops.clip((step - warm) / max(1.0, self.total_steps - warm), 0.0, 1.0)
            lr = base * (0.01 + 0.99 * 0.5 * (1 + ops.cos(math.pi * progress)))
        elif self.kind == "step" and self.step_size > 0:
            lr = base * ops.power(0.1, ops.floor(ops.maximum(step - warm, 0.0) / self.step_size))
        else:
            lr = base * ops.ones_like(step)
        if self.warmup_steps:
            ramp = base * (0.1 + 0.9 * ops.minimum(step / warm, 1.0))
            lr = ops.where(step < warm, ramp, lr)
        return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "kind": self.kind, "step_size": self.step_size}


def _with_trunk_lr(base):
    """An optimizer class whose updates of trunk variables use ``lr * trunk_lr_multiplier``.

    Keras has no per-layer learning rate; trunk variables are recognised by their paths, which
    are stable across save/reload.
    """

    class TrunkLR(base):
        def __init__(self, trunk_lr_multiplier: float = 1.0, trunk_paths: Sequence[str] = (), **kwargs):
            super().__init__(**kwargs)
            self.trunk_lr_multiplier = float(trunk_lr_multiplier)
            self.trunk_paths = list(trunk_paths)
            self._trunk_set = set(self.trunk_paths)

        def update_step(self, gradient, variable, learning_rate):
            # backends hand over their raw variable: map it back to the Keras variable and its path
            path = self._trainable_variables[self._get_variable_index(variable)].path
            if self.trunk_lr_multiplier != 1.0 and path in self._trunk_set:
                learning_rate = ops.multiply(learning_rate, self.trunk_lr_multiplier)
            return super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(), "trunk_lr_multiplier": self.trunk_lr_multiplier,
                    "trunk_paths": self.trunk_paths}

    TrunkLR.__name__ = TrunkLR.__qualname__ = f"TrunkLR{base.__name__}"
    return keras.saving.register_keras_serializable(package="mtl")(TrunkLR)


TrunkLRAdam = _with_trunk_lr(keras.optimizers.Adam)
TrunkLRAdamW = _with_trunk_lr(keras.optimizers.AdamW)
TrunkLRSGD = _with_trunk_lr(keras.optimizers.SGD)


def make_optimizer(name: str, learning_rate, weight_decay: float = 0.0, trunk_lr_multiplier: float = 1.0,
                   trunk_paths: Sequence[str] = ()) -> keras.optimizers.Optimizer:
    """Adam, AdamW or SGD with Nesterov momentum 0.9; ``learning_rate`` may be a schedule."""
    common = {"learning_rate": learning_rate, "trunk_lr_multiplier": trunk_lr_multiplier,
              "trunk_paths": list(trunk_paths), "clipnorm": 5.0}
    if name == "adam":
        return TrunkLRAdam(**common)
    if name == "adamw":
        return TrunkLRAdamW(weight_decay=weight_decay, **common)
    if name == "sgd":
        return TrunkLRSGD(momentum=0.9, nesterov=True, weight_decay=weight_decay or None, **common)
    raise ConfigError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def task_losses(tasks: Sequence[TaskSpec], class_weights: Mapping[str, Sequence[float]] | None = None,
                label_smoothing: float = 0.0, triplet_margin: float | None = 0.3,
                identity_options: Mapping | None = None) -> dict:
    """``{output name: loss}`` for the tasks (identity adds its embedding's metric loss).

    ``identity_options`` are keyword arguments of ``mtl.reid.losses.identity_losses``
    (triplet_margin, label_smoothing, center_loss); by default only ``triplet_margin`` is given.
    """
    class_weights = class_weights or {}
    losses = {}
    for spec in tasks:
        if spec.kind == BINARY:
            losses[spec.name] = MaskedBinaryCrossentropy(class_weights.get(spec.name), label_smoothing)
        elif spec.kind == CATEGORICAL:
            losses[spec.name] = MaskedSparseCategoricalCrossentropy(class_weights.get(spec.name), label_smoothing)
        elif spec.kind == IDENTITY:
            from mtl.reid.losses import identity_losses

            losses.update(identity_losses(spec, **(identity_options or {"triplet_margin": triplet_margin})))
    return losses


def task_metrics(tasks: Sequence[TaskSpec]) -> dict:
    return {s.name: [MaskedAccuracy(name="accuracy"), MaskedCrossentropy(name="xent")] for s in tasks}


def compile_model(model: keras.Model, tasks: Sequence[TaskSpec], optimizer, loss_weights: Mapping[str, float] | None = None,
                  class_weights=None, label_smoothing: float = 0.0, jit_compile: bool = False,
                  identity_options: Mapping | None = None) -> None:
    """Compile with task-keyed losses, loss weights (default 1) and masked metrics.

    ``identity_options``: keyword arguments of ``mtl.reid.losses.identity_losses``.
    """
    losses = task_losses(tasks, class_weights, label_smoothing, identity_options=identity_options)
    loss_weights = dict(loss_weights or {})
    unknown = set(loss_weights) - set(losses)
    if unknown:
        raise ConfigError(f"loss weights for unknown outputs {sorted(unknown)}; outputs: {', '.join(losses)}")
    model.compile(optimizer=optimizer, loss=losses,
                  loss_weights={name: float(loss_weights.get(name, 1.0)) for name in losses},
                  metrics=task_metrics(tasks), jit_compile=jit_compile)


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


def trunk_phases(freeze_trunk_epochs: int, epochs: int, initial_epoch: int = 0) -> list[tuple[int, int, bool]]:
    """The ``(first_epoch, last_epoch, trunk_trainable)`` fit calls of a fine-tuning run: the heads
    alone for the first ``freeze_trunk_epochs``, then everything; empty phases are left out."""
    split = max(initial_epoch, min(freeze_trunk_epochs, epochs))
    phases = [(initial_epoch, split, False), (split, epochs, True)]
    return [(first, last, trainable) for first, last, trainable in phases if last > first]


def fit_verbosity() -> int:
    """A live progress bar on a terminal, one line per epoch in logs."""
    return 1 if sys.stdout.isatty() else 2


def make_callbacks(run_dir: Path, loss_weights: Mapping[str, float], patience: int,
                   monitor: str = "val_masked_loss", resume: bool = True,
                   embedding_weight: float | None = None, keep: str = "best", epochs: int | None = None) -> list:
    """The callbacks of a run. ``keep="best"``: early stopping, and the model ends with the
    weights of its lowest ``monitor`` epoch; ``keep="last"``: the whole schedule runs and the
    model keeps its final weights. Either way ``checkpoints/best.weights.h5`` holds the best epoch.
    ``epochs``: the run's last epoch over all its fit calls (the best weights are restored after it)."""
    if keep not in KEEP:
        raise ConfigError(f"unknown train.keep {keep!r}; valid: {', '.join(KEEP)}")
    run_dir = Path(run_dir)
    history, best = run_dir / "history.json", run_dir / "checkpoints" / "best.weights.h5"
    stopping = [RunEarlyStopping(monitor=monitor, mode="min", patience=patience, restore_best_weights=True,
                                 min_delta=1e-4, epochs=epochs, history_path=history, weights_path=best)
                ] if keep == "best" else []
    callbacks = [
        MaskedLossLogger(loss_weights, embedding_weight),
        keras.callbacks.TerminateOnNaN(),
        *stopping,
        AtomicBestCheckpoint(best, monitor, history_path=history),
        HistoryWriter(history),
    ]
    if resume:
        # saves weights, optimizer and epoch each epoch; a rerun continues from there
        callbacks.append(AtomicBackupAndRestore(str(run_dir / "checkpoints" / "backup"), delete_checkpoint=False))
    return callbacks


def embedding_loss_weight(tasks: Sequence[TaskSpec], loss_weights: Mapping[str, float]) -> float | None:
    """Weight of the embedding's metric loss in ``joint_loss``; None without an identity task."""
    return float(loss_weights.get(EMBEDDING, 1.0)) if any(t.kind == IDENTITY for t in tasks) else None


def attribute_loss_weights(tasks: Sequence[TaskSpec], loss_weights: Mapping[str, float]) -> dict:
    """Weights of the attribute tasks' masked losses (what ``masked_loss`` sums)."""
    return {t.name: float(loss_weights.get(t.name, 1.0)) for t in tasks if t.kind in (BINARY, CATEGORICAL)}
