"""The one training engine: compile a multi-task model and train it through its phases.

``fit`` is the only training loop of the package: ``mtl.experiment.train`` (a run directory),
each tuning trial (``mtl.tuning``) and each run of a task-set study call it. It takes plain
arguments (``TrainArgs``, datasets, the model); the ``Config`` is turned into them at the top
(``mtl.experiment.train_args``).

What one call does:

* phases: with ``freeze_trunk_epochs`` the heads train alone first (frozen trunk, BatchNorm in
  inference mode), then everything, each phase a ``model.fit`` call on the same epoch counter;
* compile: task-keyed masked losses and metrics, loss weights, an optimizer whose trunk learning
  rate can be lower, warm-up then a cosine / step / constant schedule;
* callbacks: the masked validation loss (``val_masked_loss``, plus ``val_joint_loss`` with an
  identity embedding), stop on NaN, early stopping that survives phases and resumes
  (``train.keep: best``), and with ``paths``: the best checkpoint, ``history.json`` every epoch,
  the resume backup (a rerun continues after the last finished epoch) and TensorBoard scalars;
  with ``log``: one compact line per epoch instead of Keras's line of every metric.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import keras
import tensorflow as tf

from mtl.callbacks import (KEEP, AtomicBackupAndRestore, AtomicBestCheckpoint, EpochLine, HistoryWriter,
                           MaskedLossLogger, RunEarlyStopping, RunTensorBoard, fit_verbosity)
from mtl.errors import ConfigError
from mtl.losses import MaskedBinaryCrossentropy, MaskedSparseCategoricalCrossentropy
from mtl.metrics import MaskedAccuracy, MaskedCrossentropy
from mtl.optim import WarmupSchedule, make_optimizer
from mtl.reid.heads import EMBEDDING
from mtl.tasks import BINARY, CATEGORICAL, IDENTITY, TaskSpec

DISTRIBUTE = ("none", "mirrored")


@dataclass(frozen=True)
class TrainArgs:
    """Everything the engine needs to train, as plain values (see ``mtl.config.TrainConfig``).

    ``class_weights``: per task, one weight per class (None: unweighted); ``patience``: epochs
    without improvement before early stopping (``keep="best"`` only).
    """

    epochs: int
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 5e-4
    trunk_lr_multiplier: float = 1.0
    freeze_trunk_epochs: int = 0
    warmup_epochs: int = 1
    schedule: str = "cosine"
    step_epochs: int = 10
    patience: int = 6
    keep: str = "best"
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    class_weights: Mapping[str, Sequence[float]] | None = None
    label_smoothing: float = 0.0
    jit_compile: bool = False
    triplet_margin: float | None = 0.3
    id_label_smoothing: float = 0.1
    center_loss: float = 0.0

    def identity_options(self) -> dict:
        """Keyword arguments of ``mtl.reid.losses.identity_losses``."""
        return {"triplet_margin": self.triplet_margin, "label_smoothing": self.id_label_smoothing,
                "center_loss": self.center_loss}


@dataclass(frozen=True)
class RunPaths:
    """Where ``fit`` keeps a run's training state (``mtl.rundir.RunDir`` gives them);
    ``tensorboard``: the TensorBoard log folder, None for none."""

    history: Path
    best_weights: Path
    backup: Path
    tensorboard: Path | None = None


@dataclass
class FitResult:
    """What ``fit`` did.

    Attributes:
        epochs: the logs of every epoch this call trained (0-based ``epoch`` key added).
        monitor: the logged value early stopping and the best checkpoint watch (``monitor_for``).
        kept_epoch: 1-based epoch whose weights the model holds at the end; None when no epoch ran
            in this call and nothing was restored (a finished run's rerun).
        best_epoch: 1-based epoch with the lowest ``monitor`` seen by early stopping, or None.
        train_time_s: wall time of this call's training.
    """

    epochs: list[dict]
    monitor: str
    kept_epoch: int | None
    best_epoch: int | None
    train_time_s: float


def task_losses(tasks: Sequence[TaskSpec], class_weights: Mapping[str, Sequence[float]] | None = None,
                label_smoothing: float = 0.0, identity_options: Mapping | None = None) -> dict:
    """``{output name: loss}`` for the tasks (identity adds its embedding's metric loss).

    ``identity_options`` are keyword arguments of ``mtl.reid.losses.identity_losses``
    (triplet_margin, label_smoothing, center_loss).
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

            losses.update(identity_losses(spec, **(identity_options or {})))
    return losses


def task_metrics(tasks: Sequence[TaskSpec]) -> dict:
    """Masked accuracy and cross-entropy per task (epoch values over labelled rows only)."""
    return {s.name: [MaskedAccuracy(name="accuracy"), MaskedCrossentropy(name="xent")] for s in tasks}


def compile_losses(model: keras.Model, tasks: Sequence[TaskSpec], optimizer,
                   loss_weights: Mapping[str, float] | None = None, class_weights=None, label_smoothing: float = 0.0,
                   jit_compile: bool = False, identity_options: Mapping | None = None) -> None:
    """Compile with task-keyed losses, loss weights (default 1) and masked metrics.

    Raises:
        ConfigError: a loss weight names an output the model does not have.
    """
    losses = task_losses(tasks, class_weights, label_smoothing, identity_options=identity_options)
    loss_weights = dict(loss_weights or {})
    unknown = set(loss_weights) - set(losses)
    if unknown:
        raise ConfigError(f"train.loss_weights for unknown outputs {sorted(unknown)}; outputs: {', '.join(losses)}")
    model.compile(optimizer=optimizer, loss=losses,
                  loss_weights={name: float(loss_weights.get(name, 1.0)) for name in losses},
                  metrics=task_metrics(tasks), jit_compile=jit_compile)


def compile_model(model: keras.Model, tasks: Sequence[TaskSpec], args: TrainArgs, steps_per_epoch: int,
                  trainable_trunk: bool = True) -> None:
    """Compile ``model`` for a training phase: optimizer and schedule of ``args``, the trunk
    frozen or not. The optimizer's slots are made here, eagerly: left to ``fit``, Keras creates
    them inside the traced train step (one conditional per slot variable), which made the first
    epoch about three times slower to trace."""
    from mtl.models.builder import get_trunk

    schedule = WarmupSchedule(args.learning_rate, args.epochs * steps_per_epoch,
                              args.warmup_epochs * steps_per_epoch, args.schedule,
                              args.step_epochs * steps_per_epoch)
    trunk = get_trunk(model)
    trunk.trainable = trainable_trunk
    optimizer = make_optimizer(args.optimizer, schedule, args.weight_decay, args.trunk_lr_multiplier,
                               [v.path for v in trunk.trainable_variables])
    compile_losses(model, tasks, optimizer, args.loss_weights, args.class_weights, args.label_smoothing,
                   args.jit_compile, identity_options=args.identity_options())
    optimizer.build(model.trainable_variables)


def monitor_for(tasks) -> str:
    """What early stopping and the best checkpoint watch: the masked attribute loss; with an
    identity task as well, that plus the embedding's triplet loss on the held-out people (the
    attributes alone start to overfit while the embedding still improves); identity-only runs
    watch the training loss (validation identities are not the classifier's classes)."""
    attributes = any(t.kind in (BINARY, CATEGORICAL) for t in tasks)
    if attributes and any(t.kind == IDENTITY for t in tasks):
        return "val_joint_loss"
    return "val_masked_loss" if attributes else "loss"


def embedding_loss_weight(tasks: Sequence[TaskSpec], loss_weights: Mapping[str, float]) -> float | None:
    """Weight of the embedding's metric loss in ``joint_loss``; None without an identity task."""
    return float(loss_weights.get(EMBEDDING, 1.0)) if any(t.kind == IDENTITY for t in tasks) else None


def attribute_loss_weights(tasks: Sequence[TaskSpec], loss_weights: Mapping[str, float]) -> dict:
    """Weights of the attribute tasks' masked losses (what ``masked_loss`` sums)."""
    return {t.name: float(loss_weights.get(t.name, 1.0)) for t in tasks if t.kind in (BINARY, CATEGORICAL)}


def trunk_phases(freeze_trunk_epochs: int, epochs: int, initial_epoch: int = 0) -> list[tuple[int, int, bool]]:
    """The ``(first_epoch, last_epoch, trunk_trainable)`` fit calls of a fine-tuning run: the heads
    alone for the first ``freeze_trunk_epochs``, then everything; empty phases are left out."""
    split = max(initial_epoch, min(freeze_trunk_epochs, epochs))
    phases = [(initial_epoch, split, False), (split, epochs, True)]
    return [(first, last, trainable) for first, last, trainable in phases if last > first]


def strategy_for(distribute: str):
    """The ``tf.distribute`` strategy of ``train.distribute`` (``none``: the default strategy)."""
    if distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    if distribute != "none":
        raise ConfigError(f"train.distribute={distribute!r}: valid values: {', '.join(DISTRIBUTE)}")
    return tf.distribute.get_strategy()


class _EpochRecorder(keras.callbacks.Callback):
    """Keeps every epoch's logs (after the masked loss was added)."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})


def run_callbacks(tasks: Sequence[TaskSpec], args: TrainArgs, paths: RunPaths | None = None, log=None,
                  images_per_epoch: int | None = None) -> list:
    """The engine's callbacks, in the order they must run: the masked / joint loss first (the
    others read it), stop on NaN, early stopping (``keep="best"``), then with ``paths`` the best
    checkpoint, the history file, the resume backup and TensorBoard (``paths.tensorboard``), and
    with ``log`` the compact epoch line (``EpochLine``; ``images_per_epoch`` gives its images/s)."""
    if args.keep not in KEEP:
        raise ConfigError(f"train.keep={args.keep!r}: valid values: {', '.join(KEEP)}")
    monitor = monitor_for(tasks)
    history = paths.history if paths else None
    callbacks = [MaskedLossLogger(attribute_loss_weights(tasks, args.loss_weights),
                                  embedding_loss_weight(tasks, args.loss_weights)),
                 keras.callbacks.TerminateOnNaN()]
    if args.keep == "best":
        callbacks.append(RunEarlyStopping(monitor=monitor, mode="min", patience=args.patience,
                                          restore_best_weights=True, min_delta=1e-4, epochs=args.epochs,
                                          history_path=history, weights_path=paths.best_weights if paths else None))
    if paths:
        callbacks += [AtomicBestCheckpoint(paths.best_weights, monitor, history_path=history),
                      HistoryWriter(history),
                      # saves weights, optimizer and epoch each epoch; a rerun continues from there
                      AtomicBackupAndRestore(str(paths.backup), delete_checkpoint=False)]
    if paths and paths.tensorboard is not None:
        callbacks.append(RunTensorBoard(paths.tensorboard, [t.name for t in tasks if t.kind == IDENTITY],
                                        images_per_epoch))
    if log is not None:
        callbacks.append(EpochLine(log, monitor, [t.name for t in tasks if t.kind in (BINARY, CATEGORICAL)],
                                   epochs=args.epochs, images_per_epoch=images_per_epoch))
    return callbacks


def fit(model: keras.Model, tasks: Sequence[TaskSpec], train_ds, val_ds, args: TrainArgs, steps_per_epoch: int,
        fixed_steps: bool = False, paths: RunPaths | None = None, callbacks: Sequence = (), strategy=None,
        verbose: int | None = None, initial_epoch: int = 0, log=None,
        images_per_epoch: int | None = None) -> FitResult:
    """Train ``model`` through its phases with the engine's callbacks.

    Args:
        model: a model from ``mtl.models.builder.build_model`` (built under ``strategy``'s scope).
        tasks: its task specs.
        train_ds, val_ds: ``mtl.data.prepare.datasets``.
        args: the training arguments.
        steps_per_epoch: optimizer steps per epoch (sizes the schedule).
        fixed_steps: train exactly ``steps_per_epoch`` steps each epoch (infinite datasets: P x K
            batches, or ``train.steps_per_epoch``); otherwise one pass over ``train_ds``.
        paths: a run directory's training files (best checkpoint, history, resume backup); None
            keeps nothing on disk (tuning trials).
        callbacks: more callbacks, run after the engine's (keras-tuner's).
        strategy: a ``tf.distribute`` strategy (default: the current one).
        verbose: Keras fit verbosity; default: none with ``log`` (the compact line), else a
            progress bar on a terminal and a line per epoch otherwise. 2: Keras's line of every metric.
        initial_epoch: first epoch (keras-tuner's Hyperband resumes trials).
        log: called with one compact line per epoch (``mtl.callbacks.EpochLine``); None: none.
        images_per_epoch: training images per epoch, for the images/s of the line and TensorBoard.

    Returns:
        A ``FitResult``; the model holds the weights of ``kept_epoch``.
    """
    strategy = strategy or tf.distribute.get_strategy()
    own = run_callbacks(tasks, args, paths, log, images_per_epoch)
    if verbose is None:
        verbose = 0 if log is not None else fit_verbosity()
    recorder = _EpochRecorder()
    all_callbacks = own + [recorder, *callbacks]
    stopper = next((c for c in own if isinstance(c, RunEarlyStopping)), None)
    start = time.time()
    for first, last, trainable in trunk_phases(args.freeze_trunk_epochs, args.epochs, initial_epoch):
        with strategy.scope():
            compile_model(model, tasks, args, steps_per_epoch, trainable_trunk=trainable)
        with warnings.catch_warnings():
            # the first epoch of a dataset of unknown length ends by running out of data: expected
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            # unfreezing the trunk gives the optimizer more variables than the backup saved at the
            # end of the frozen phase: its weights restore, its (heads-only) moments start afresh
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.fit(train_ds, validation_data=val_ds, epochs=last, initial_epoch=first,
                      steps_per_epoch=steps_per_epoch if fixed_steps else None, shuffle=False,
                      callbacks=all_callbacks, verbose=verbose)
        if model.stop_training:
            break
    restored = stopper is not None and stopper.best_weights is not None
    last_epoch = recorder.rows[-1]["epoch"] + 1 if recorder.rows else None
    best = stopper.best_epoch + 1 if stopper is not None and stopper.best is not None else None
    return FitResult(epochs=recorder.rows, monitor=monitor_for(tasks),
                     kept_epoch=stopper.best_epoch + 1 if restored else last_epoch,
                     best_epoch=best, train_time_s=time.time() - start)
