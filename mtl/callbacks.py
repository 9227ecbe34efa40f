"""The callbacks of a training run: the masked validation loss (and the joint loss with an identity
embedding), early stopping and the best checkpoint that survive resumes and fit phases, history
written atomically every epoch, resume after an interruption (atomic backup), and what a run
shows: one compact line per epoch (``EpochLine``) and TensorBoard scalars (``RunTensorBoard``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import keras
import numpy as np

from mtl.io import atomic_path, atomic_write_json
from mtl.reid.heads import EMBEDDING


class MaskedLossLogger(keras.callbacks.Callback):
    """Adds ``masked_loss`` / ``val_masked_loss``: the loss-weighted sum of each task's masked
    loss over the whole epoch (its ``xent`` metric, or the metric ``epoch_losses`` names: a
    regression task's ``huber``; Keras' logged ``loss`` averages per-batch values, so a batch with
    no label counts as 0). Must come before the callbacks that monitor it.

    With ``embedding_weight`` (runs with attributes and an identity embedding) it also adds
    ``joint_loss`` / ``val_joint_loss``: the masked loss plus the weighted metric-learning loss of
    the embedding. The identity classifier's loss is left out: validation identities are not its
    classes, while the triplet loss is measured on the held-out people.
    """

    def __init__(self, weights: Mapping[str, float], embedding_weight: float | None = None,
                 epoch_losses: Mapping[str, str] | None = None):
        super().__init__()
        self.weights = dict(weights)
        self.embedding_weight = embedding_weight
        self.epoch_losses = dict(epoch_losses or {})

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        self._name_single_output_metrics(logs)
        for prefix in ("", "val_"):
            keys = [(f"{prefix}{t}_{self.epoch_losses.get(t, 'xent')}", w) for t, w in self.weights.items()]
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


# ---------------------------------------------------------------------------------------------
# What a run shows: one compact line per epoch, TensorBoard scalars
# ---------------------------------------------------------------------------------------------

def hidden_metric(key: str, identity_tasks: Sequence[str] = (), output_names: Sequence[str] = ()) -> bool:
    """Whether a logged value says nothing and is left out of what a run shows (TensorBoard, summaries).

    * the identity classifier on validation images (``val_identity_accuracy``, ``_xent``, ``_loss``):
      validation people are not its classes, so these are 0 by construction;
    * a one-output model's un-prefixed metrics (``accuracy``, ``xent``): ``MaskedLossLogger`` logs
      them again as ``<task>_accuracy``, the names every other run uses.

    Args:
        key: a key of Keras's epoch logs.
        identity_tasks: names of the run's identity tasks.
        output_names: the model's outputs.
    """
    validation = key.startswith("val_")
    bare = key[4:] if validation else key
    if validation and any(bare.startswith(f"{name}_") for name in identity_tasks):
        return True
    return len(output_names) == 1 and bare in ("accuracy", "xent")


def current_learning_rate(model) -> float | None:
    """The optimizer's learning rate now (a schedule evaluated at the current step), or None."""
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # mixed precision wraps it
    if optimizer is None or not hasattr(optimizer, "learning_rate"):
        return None
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class _EpochClock(keras.callbacks.Callback):
    """Times each epoch: ``epoch_time_s`` (training and validation) and ``train_time_s`` (the
    training steps alone, which ``images_per_second`` divides by)."""

    def __init__(self, images_per_epoch: int | None = None):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self._start = self._train_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._train_end = time.time(), None

    def on_test_begin(self, logs=None):
        if self._start is not None and self._train_end is None:  # fit's validation, not a later evaluate
            self._train_end = time.time()

    def times(self) -> tuple[float, float]:
        """``(epoch_time_s, train_time_s)`` of the epoch under way (or just ended)."""
        now = time.time()
        start = self._start if self._start is not None else now
        return now - start, (self._train_end or now) - start

    def images_per_second(self, train_time_s: float) -> float | None:
        if not self.images_per_epoch or train_time_s <= 0:
            return None
        return self.images_per_epoch / train_time_s


class EpochLine(_EpochClock):
    """One compact line per epoch through ``log``, instead of Keras's line of every metric:

    ``Epoch 3/30  12.4s  310 img/s  masked_loss 2.874  val_masked_loss 3.012  val accuracy 0.512  lr 9.4e-04``

    i.e. the epoch, its time, training images per second, the training loss (the counterpart of
    the monitored loss), the monitored validation loss (``mtl.engine.monitor_for``), the mean
    validation accuracy of the attribute tasks and the learning rate. On a terminal (stdout a TTY,
    or ``MTL_PROGRESS=1``) a short live bar counts the steps of the epoch; in a log file there is
    nothing but the line. Must come after ``MaskedLossLogger`` (it reads the masked loss).

    Args:
        log: called with each line (``print``).
        monitor: the monitored loss (``val_masked_loss``, ``val_joint_loss`` or ``loss``).
        attribute_tasks: names of the attribute tasks (their validation accuracy is averaged).
        epochs: the run's number of epochs (Keras only knows the current fit call's last epoch).
        images_per_epoch: training images per epoch (None: no images/s).
        bar: show the live bar; None: when stdout is a terminal (``mtl.progress.bars_enabled``).
    """

    def __init__(self, log, monitor: str, attribute_tasks: Sequence[str] = (), epochs: int | None = None,
                 images_per_epoch: int | None = None, bar: bool | None = None):
        super().__init__(images_per_epoch)
        from mtl.progress import bars_enabled

        self.log = log
        self.monitor = monitor
        self.attribute_tasks = list(attribute_tasks)
        self.epochs = epochs
        self.bar = bars_enabled(sys.stdout) if bar is None else bar
        self._epoch = 0
        self._bar_shown = 0.0

    def _header(self, epoch: int) -> str:
        total = self.epochs or (self.params or {}).get("epochs") or 0
        return f"Epoch {epoch + 1:>{len(str(total))}}/{total}"

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if not self.bar or time.time() - self._bar_shown < 0.2:
            return
        self._bar_shown = time.time()
        steps = (self.params or {}).get("steps")
        loss = (logs or {}).get("loss")
        text = f"{self._header(self._epoch)}  step {batch + 1}" + (f"/{steps}" if steps else "")
        if loss is not None:
            text += f"  loss {float(loss):.4f}"
        sys.stdout.write(f"\r{text}\033[K")
        sys.stdout.flush()

    def on_epoch_end(self, epoch, logs=None):
        if self.bar and self._bar_shown:
            sys.stdout.write("\r\033[K")  # the line replaces the bar
            sys.stdout.flush()
            self._bar_shown = 0.0
        self.log(self.line(epoch, logs or {}))

    def line(self, epoch: int, logs: Mapping) -> str:
        """The compact line of 0-based ``epoch`` with Keras's (and ``MaskedLossLogger``'s) ``logs``."""
        epoch_time, train_time = self.times()
        parts = [self._header(epoch), format_duration(epoch_time)]
        speed = self.images_per_second(train_time)
        if speed is not None:
            parts.append(f"{speed:.0f} img/s")
        train_key = self.monitor[4:] if self.monitor.startswith("val_") else self.monitor
        if train_key not in logs:
            train_key = "loss"
        if train_key in logs:
            parts.append(f"{train_key} {float(logs[train_key]):.4f}")
        if self.monitor != train_key and self.monitor in logs:
            parts.append(f"{self.monitor} {float(logs[self.monitor]):.4f}")
        accuracies = [float(logs[k]) for k in (f"val_{t}_accuracy" for t in self.attribute_tasks) if k in logs]
        if accuracies:
            parts.append(f"val {'mean ' if len(accuracies) > 1 else ''}accuracy {np.mean(accuracies):.3f}")
        # the rate of the epoch's first step (EpochLearningRate), not the next epoch's after a decay
        lr = logs.get("learning_rate")
        lr = current_learning_rate(self.model) if lr is None else float(lr)
        if lr is not None:
            parts.append(f"lr {lr:.2e}")
        return "  ".join(parts)


class EpochLearningRate(keras.callbacks.Callback):
    """Adds ``learning_rate`` to each epoch's logs: the heads' rate at the epoch's first step (the
    trunk's is ``trunk_lr_multiplier`` x that), read from the optimizer of the phase under way, so
    the epoch after an optimizer switch shows SGD's rate and the epoch after a step decay shows the
    decayed one (Keras's TensorBoard writes the rate at the epoch's end instead: the next epoch's).
    Must come before the callbacks that write the logs (history, the epoch line)."""

    def __init__(self):
        super().__init__()
        self._rate = None

    def on_epoch_begin(self, epoch, logs=None):
        self._rate = current_learning_rate(self.model)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._rate is not None:
            logs["learning_rate"] = self._rate


def format_duration(seconds: float) -> str:
    """``8.4s``, ``2m05s``, ``1h02m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class RunTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback for a run: epoch scalars only (no graph, no profiling), in
    ``log_dir/train`` and ``log_dir/validation``: every task's loss and accuracy, the masked / joint
    loss, the learning rate (Keras adds it), and ``images_per_second`` and ``epoch_time_s``; the
    figures of :func:`hidden_metric` are left out. Must come after ``MaskedLossLogger``.

    Args:
        log_dir: the run's ``tensorboard/`` folder (``mtl.rundir.TENSORBOARD``).
        identity_tasks: names of the identity tasks (their validation figures are hidden).
        images_per_epoch: training images per epoch (None: no images/s).
    """

    def __init__(self, log_dir: str | Path, identity_tasks: Sequence[str] = (), images_per_epoch: int | None = None):
        super().__init__(log_dir=str(log_dir), histogram_freq=0, write_graph=False, update_freq="epoch",
                         profile_batch=0)
        self.identity_tasks = list(identity_tasks)
        self.clock = _EpochClock(images_per_epoch)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self.clock.on_epoch_begin(epoch, logs)

    def on_test_begin(self, logs=None):
        super().on_test_begin(logs)
        self.clock.on_test_begin(logs)

    def on_test_end(self, logs=None):
        # Keras writes every validation value again here, per optimizer step, before the masked
        # loss is added and without the hidden figures: the epoch scalars say it all
        pass

    def on_epoch_end(self, epoch, logs=None):
        outputs = list(getattr(self.model, "output_names", None) or [])
        shown = {k: v for k, v in (logs or {}).items() if not hidden_metric(k, self.identity_tasks, outputs)}
        epoch_time, train_time = self.clock.times()
        shown["epoch_time_s"] = epoch_time
        speed = self.clock.images_per_second(train_time)
        if speed is not None:
            shown["images_per_second"] = speed
        super().on_epoch_end(epoch, shown)


def write_scalars(log_dir: str | Path, values: Mapping[str, float], step: int, split: str = "validation") -> None:
    """Write scalars once, at ``step``, into a run's TensorBoard folder (``log_dir/split``): figures
    computed after training, such as the re-identification mAP and rank-1 on the validation people.

    Args:
        log_dir: the run's ``tensorboard/`` folder.
        values: ``{tag: value}``; None values are skipped.
        step: the 0-based epoch to show them at (the run's last).
        split: ``train`` or ``validation`` (the sub-folder Keras's callback writes).
    """
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(Path(log_dir) / split))
    with writer.as_default():
        for tag, value in values.items():
            if value is not None:
                tf.summary.scalar(tag, float(value), step=int(step))
    writer.flush()
    writer.close()
