"""The one training engine: compile a multi-task model and train it through its phases.

``train_model`` is the only training loop of the package: ``mtl.experiment.train`` (a run directory),
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

import contextlib
import functools
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import keras
import tensorflow as tf

from mtl.callbacks import (AtomicBackupAndRestore, AtomicBestCheckpoint, EpochLearningRate, EpochLine,
                           HistoryWriter, MaskedLossLogger, RunEarlyStopping, RunTensorBoard, fit_verbosity)
from mtl.choices import KEEP, PRECISION_POLICIES
from mtl.custom_loop import CustomLoop, fit_custom
from mtl.errors import ConfigError
from mtl.models.builder import get_trunk
from mtl.optim import WarmupSchedule, make_optimizer, phase_optimizer
from mtl.reid.heads import EMBEDDING
from mtl.rundir import RunPaths
from mtl.tasks import TaskSpec, attribute_tasks, classification_tasks, find_identity


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
    step_factor: float = 0.1
    sgd_from_epoch: int = 0
    sgd_learning_rate: float | None = None
    patience: int = 6
    keep: str = "best"
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    class_weights: Mapping[str, Sequence[float]] | None = None
    label_smoothing: float = 0.0
    # mtl.balancing: loss terms weighted by learnt uncertainty or DWA; confusion: class weights
    # updated each epoch (the other class_weighting modes arrive as class_weights)
    loss_balancing: str = "fixed"
    dwa_temperature: float = 2.0
    class_weighting: str = "none"
    jit_compile: bool = False
    mixed_precision: str = "none"
    steps_per_execution: int = 1
    triplet_margin: float | None = 0.3
    id_label_smoothing: float = 0.1
    center_loss: float = 0.0
    metric_loss: str = "triplet"
    hard_mining: bool = True
    contrastive_margin: float = 1.0

    def identity_options(self) -> dict:
        """Keyword arguments of ``mtl.reid.losses.identity_losses``."""
        return {"triplet_margin": self.triplet_margin, "label_smoothing": self.id_label_smoothing,
                "center_loss": self.center_loss, "metric_loss": self.metric_loss,
                "hard_mining": self.hard_mining, "contrastive_margin": self.contrastive_margin}


@dataclass
class FitResult:
    """What ``train_model`` did.

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
                label_smoothing: float = 0.0, identity_options: Mapping | None = None, balancer=None) -> dict:
    """``{output name: loss}`` for the tasks (identity adds its embedding's metric loss).

    ``identity_options`` are keyword arguments of ``mtl.reid.losses.identity_losses``
    (triplet_margin, label_smoothing, center_loss). ``balancer``: the model's
    ``mtl.balancing.LossBalancer`` (``balancing.attach``), which hooks the losses it balances.
    """
    class_weights = class_weights or {}
    losses = {}
    for spec in tasks:
        losses.update(spec.type.losses(spec, class_weights.get(spec.name), label_smoothing, identity_options))
    return balancer.wrap(losses) if balancer is not None else losses


def task_metrics(tasks: Sequence[TaskSpec]) -> dict:
    """Each task's epoch metrics over its labelled rows (``TaskKind.training_metrics``: masked
    accuracy and cross-entropy of a classifier, the identity classifier's included)."""
    return {s.name: s.type.training_metrics(s) for s in tasks}


def compile_losses(model: keras.Model, tasks: Sequence[TaskSpec], optimizer,
                   loss_weights: Mapping[str, float] | None = None, class_weights=None, label_smoothing: float = 0.0,
                   jit_compile: bool = False, identity_options: Mapping | None = None,
                   steps_per_execution: int = 1, loss_balancing: str = "fixed", class_weighting: str = "none",
                   dwa_temperature: float = 2.0) -> None:
    """Compile with task-keyed losses, loss weights (default 1) and masked metrics.

    ``loss_balancing`` (fixed, uncertainty, dwa), ``class_weighting`` (only ``confusion`` matters
    here: the others arrive as ``class_weights``) and ``dwa_temperature``: ``mtl.balancing``; its
    variables are made here, under the strategy's scope, once per model.

    ``jit_compile`` is passed as a bool, never Keras's ``"auto"``: XLA made CPU training 4-14x
    slower here, so it is on only when asked for. ``steps_per_execution`` training steps run per
    call of the compiled function. A model built under the ``mixed_float16`` policy gets Keras's
    loss-scaling optimizer wrapper (``model.compile`` adds it); its outputs are float32 (the heads'
    output layers) and every loss casts its predictions to float32.

    Raises:
        ConfigError: a loss weight names an output the model does not have.
    """
    from mtl import balancing

    balancer = balancing.attach(model, tasks, loss_balancing, class_weighting, dwa_temperature)
    losses = task_losses(tasks, class_weights, label_smoothing, identity_options=identity_options, balancer=balancer)
    loss_weights = dict(loss_weights or {})
    unknown = set(loss_weights) - set(losses)
    if unknown:
        raise ConfigError(f"train.loss_weights for unknown outputs {sorted(unknown)}; outputs: {', '.join(losses)}")
    # the losses return their batch mean already (reduction "sum"), so Keras does not divide them
    # by the replicas of a strategy as it does its own losses; the optimizer sums the replicas'
    # gradients: without the 1/R here, R replicas trained at R times the learning rate
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    model.compile(optimizer=optimizer, loss=losses,
                  loss_weights={name: float(loss_weights.get(name, 1.0)) / replicas for name in losses},
                  metrics=task_metrics(tasks), jit_compile=bool(jit_compile),
                  steps_per_execution=int(steps_per_execution))


def compile_model(model: keras.Model, tasks: Sequence[TaskSpec], args: TrainArgs, steps_per_epoch: int,
                  trainable_trunk: bool = True, sgd_phase: bool = False, initial_step: int = 0) -> None:
    """Compile ``model`` for a training phase: optimizer and schedule of ``args``, the trunk
    frozen or not. The optimizer's slots are made here, eagerly: left to ``fit``, Keras creates
    them inside the traced train step (one conditional per slot variable), which made the first
    epoch about three times slower to trace.

    Args:
        sgd_phase: a phase after ``args.sgd_from_epoch``: SGD (Nesterov momentum 0.9) at
            ``args.sgd_learning_rate`` instead of ``args.optimizer`` (``mtl.optim.phase_optimizer``).
        initial_step: the schedule's step at the phase's start (``Phase.initial_step``): the new
            optimizer's step counter starts there, so the schedule carries on across the switch.
    """
    name, peak = phase_optimizer(args.optimizer, args.learning_rate, sgd_phase, args.sgd_learning_rate)
    schedule = WarmupSchedule(peak, args.epochs * steps_per_epoch,
                              args.warmup_epochs * steps_per_epoch, args.schedule,
                              args.step_epochs * steps_per_epoch, args.step_factor)
    trunk = get_trunk(model)
    trunk.trainable = trainable_trunk
    optimizer = make_optimizer(name, schedule, args.weight_decay, args.trunk_lr_multiplier,
                               [v.path for v in trunk.trainable_variables])
    no_decay = _no_weight_decay(model)
    if no_decay and hasattr(optimizer, "exclude_from_weight_decay"):
        optimizer.exclude_from_weight_decay(var_list=no_decay)
    _check_policy(model, args.mixed_precision)
    compile_losses(model, tasks, optimizer, args.loss_weights, args.class_weights, args.label_smoothing,
                   args.jit_compile, identity_options=args.identity_options(),
                   steps_per_execution=args.steps_per_execution, loss_balancing=args.loss_balancing,
                   class_weighting=args.class_weighting, dwa_temperature=args.dwa_temperature)
    # model.optimizer: the LossScaleOptimizer around ``optimizer`` under mixed_float16 (its own
    # variables made here too)
    model.optimizer.build(model.trainable_variables)
    if initial_step:  # a restored backup of this phase overwrites it with the saved count
        model.optimizer.iterations.assign(int(initial_step))


def _no_weight_decay(model: keras.Model) -> list:
    """The variables weight decay must not touch, in ``model`` or any model nested in it: GeM's
    exponent (decay pulls ``p`` towards 0, away from both average and max pooling) and the
    uncertainty log-variances (decay would pull every ``s_t`` to 0, i.e. back to fixed weights).
    One list for one ``exclude_from_weight_decay`` call: each call replaces the previous one's."""
    from mtl.losses import UncertaintyWeights
    from mtl.models.layers import GeMPooling

    out, stack = [], list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, GeMPooling) and layer.trainable_p:
            out.append(layer.exponent)
        elif isinstance(layer, UncertaintyWeights):
            out.append(layer.log_variance)
        stack.extend(getattr(layer, "layers", []))
    return out


@contextlib.contextmanager
def precision_policy(mixed_precision: str = "none"):
    """Set Keras's global dtype policy for building and training one model; restore it afterwards.

    The policy is global and read when a layer is made: build the model inside the block. The
    previous policy comes back on exit, whatever happens, so a mixed-precision run does not leak
    float16 layers into the next model of the process (tests, tuning trials, studies).

    Args:
        mixed_precision: ``train.mixed_precision``: none, mixed_float16 or mixed_bfloat16.

    Raises:
        ConfigError: an unknown value.
    """
    if mixed_precision not in PRECISION_POLICIES:
        raise ConfigError(f"train.mixed_precision={mixed_precision!r}: valid values: "
                          f"{', '.join(PRECISION_POLICIES)}")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(PRECISION_POLICIES[mixed_precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _check_policy(model: keras.Model, mixed_precision: str) -> None:
    """Warn when ``model`` was not built under the policy ``args`` asks for (the option would do nothing)."""
    wanted = PRECISION_POLICIES.get(mixed_precision, mixed_precision)
    built = getattr(getattr(model, "dtype_policy", None), "name", None)
    if built is not None and built != wanted:
        warnings.warn(f"train.mixed_precision={mixed_precision}: the model was built with the {built} dtype policy; "
                      "build it inside mtl.engine.precision_policy(...) for the option to take effect", stacklevel=3)


def monitor_for(tasks) -> str:
    """What early stopping and the best checkpoint watch: the masked attribute loss; with an
    identity task as well, that plus the embedding's triplet loss on the held-out people (the
    attributes alone start to overfit while the embedding still improves); identity-only runs
    watch the training loss (validation identities are not the classifier's classes)."""
    attributes = bool(attribute_tasks(tasks))
    if attributes and find_identity(tasks) is not None:
        return "val_joint_loss"
    return "val_masked_loss" if attributes else "loss"


def embedding_loss_weight(tasks: Sequence[TaskSpec], loss_weights: Mapping[str, float]) -> float | None:
    """Weight of the embedding's metric loss in ``joint_loss``; None without an identity task."""
    return float(loss_weights.get(EMBEDDING, 1.0)) if find_identity(tasks) is not None else None


def attribute_loss_weights(tasks: Sequence[TaskSpec], loss_weights: Mapping[str, float]) -> dict:
    """Weights of the attribute tasks' masked losses (what ``masked_loss`` sums)."""
    return {t.name: float(loss_weights.get(t.name, 1.0)) for t in attribute_tasks(tasks)}


def epoch_loss_metrics(tasks: Sequence[TaskSpec]) -> dict:
    """The metric that is each attribute task's epoch loss (``TaskKind.epoch_loss``: ``xent``, ``huber``)."""
    return {t.name: t.type.epoch_loss for t in attribute_tasks(tasks)}


def trunk_phases(freeze_trunk_epochs: int, epochs: int, initial_epoch: int = 0) -> list[tuple[int, int, bool]]:
    """The ``(first_epoch, last_epoch, trunk_trainable)`` fit calls of a fine-tuning run: the heads
    alone for the first ``freeze_trunk_epochs``, then everything; empty phases are left out
    (``training_phases`` without an optimizer switch)."""
    args = TrainArgs(epochs=epochs, freeze_trunk_epochs=freeze_trunk_epochs)
    return [(p.first, p.last, p.trainable_trunk) for p in training_phases(args, initial_epoch)]


@dataclass(frozen=True)
class Phase:
    """One fit call of a run: epochs ``first`` to ``last`` (0-based, ``last`` excluded) with the
    trunk trainable or frozen, and ``train.optimizer`` or, from ``train.sgd_from_epoch`` on, SGD.

    ``schedule_start``: the epoch at which the phase's learning-rate schedule is at step 0. It is
    0, and the epoch the trunk unfreezes for the phases after it (the fine-tuning phase gets its
    own warm-up, as it always did): the optimizer switch does not restart the schedule.
    """

    first: int
    last: int
    trainable_trunk: bool = True
    sgd: bool = False
    schedule_start: int = 0

    def initial_step(self, steps_per_epoch: int) -> int:
        """The schedule's step at the phase's first epoch (``compile_model``'s ``initial_step``)."""
        return (self.first - self.schedule_start) * int(steps_per_epoch)


def training_phases(args: TrainArgs, initial_epoch: int = 0) -> list[Phase]:
    """The fit calls of a run from ``initial_epoch``: a new phase where the trunk unfreezes
    (``freeze_trunk_epochs``) and where the optimizer switches to SGD (``sgd_from_epoch``, 0: never).

    Args:
        args: the training arguments.
        initial_epoch: the first epoch to train (0-based).

    Returns:
        The phases in order; empty when ``initial_epoch >= args.epochs``.
    """
    unfreeze = min(args.freeze_trunk_epochs, args.epochs)
    phases: list[Phase] = []
    for epoch in range(initial_epoch, args.epochs):
        trainable = epoch >= args.freeze_trunk_epochs
        sgd = 0 < args.sgd_from_epoch <= epoch
        last = phases[-1] if phases else None
        if last is not None and (last.trainable_trunk, last.sgd) == (trainable, sgd):
            phases[-1] = Phase(last.first, epoch + 1, trainable, sgd, last.schedule_start)
        else:
            phases.append(Phase(epoch, epoch + 1, trainable, sgd, unfreeze if trainable else 0))
    return phases


def _backup_epoch(callbacks: Sequence) -> int:
    """Epochs finished by the Keras resume backup among ``callbacks`` (0: none, or no backup)."""
    import json

    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            # Keras's own metadata file: BackupAndRestore has no public reader of it
            path = Path(callback._training_metadata_path)
            if path.is_file():
                return int(json.loads(path.read_text()).get("epoch", 0))
    return 0


def strategy_for(distribute: str):
    """The ``tf.distribute`` strategy of ``train.distribute`` (``mtl.distribute.strategy_for``)."""
    from mtl.distribute import strategy_for as make

    return make(distribute)


class _EpochRecorder(keras.callbacks.Callback):
    """Keeps every epoch's logs (after the masked loss was added)."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})


def run_callbacks(tasks: Sequence[TaskSpec], args: TrainArgs, paths: RunPaths | None = None, log=None,
                  images_per_epoch: int | None = None, backup: bool = True) -> list:
    """The engine's callbacks, in the order they must run: the masked / joint loss first (the
    others read it), the learning rate of the epoch (``learning_rate``), stop on NaN, early
    stopping (``keep="best"``), then with ``paths`` the best
    checkpoint, the history file, the resume backup and TensorBoard (``paths.tensorboard``), and
    with ``log`` the compact epoch line (``EpochLine``; ``images_per_epoch`` gives its images/s).
    ``backup=False`` leaves the Keras resume backup out (the custom loop keeps its own)."""
    if args.keep not in KEEP:
        raise ConfigError(f"train.keep={args.keep!r}: valid values: {', '.join(KEEP)}")
    monitor = monitor_for(tasks)
    history = paths.history if paths else None
    callbacks = [MaskedLossLogger(attribute_loss_weights(tasks, args.loss_weights),
                                  embedding_loss_weight(tasks, args.loss_weights), epoch_loss_metrics(tasks)),
                 EpochLearningRate(),  # after the masked loss: a one-output model's logs are renamed there
                 keras.callbacks.TerminateOnNaN()]
    if args.loss_balancing != "fixed" or args.class_weighting == "confusion":
        from mtl.balancing import LossBalanceCallback

        # after the masked loss (a one-output model's logs are renamed there), before the writers
        callbacks.insert(1, LossBalanceCallback(history))
    if args.keep == "best":
        callbacks.append(RunEarlyStopping(monitor=monitor, mode="min", patience=args.patience,
                                          restore_best_weights=True, min_delta=1e-4, epochs=args.epochs,
                                          history_path=history, weights_path=paths.best_weights if paths else None))
    if paths:
        callbacks += [AtomicBestCheckpoint(paths.best_weights, monitor, history_path=history),
                      HistoryWriter(history)]
        if backup:  # saves weights, optimizer and epoch each epoch; a rerun continues from there
            callbacks.append(AtomicBackupAndRestore(str(paths.backup), delete_checkpoint=False))
    if paths and paths.tensorboard is not None:
        identity = find_identity(tasks)
        callbacks.append(RunTensorBoard(paths.tensorboard, [identity.name] if identity else [], images_per_epoch))
    if log is not None:
        callbacks.append(EpochLine(log, monitor, [t.name for t in classification_tasks(tasks)],
                                   epochs=args.epochs, images_per_epoch=images_per_epoch))
    return callbacks


def _fit_result(tasks, stopper, recorder, start: float) -> FitResult:
    """What a fit did: the epochs it trained and the epoch whose weights the model holds (the best
    one when early stopping restored it, else the last)."""
    restored = stopper is not None and stopper.best_weights is not None
    last_epoch = recorder.rows[-1]["epoch"] + 1 if recorder.rows else None
    best = stopper.best_epoch + 1 if stopper is not None and stopper.best is not None else None
    return FitResult(epochs=recorder.rows, monitor=monitor_for(tasks),
                     kept_epoch=stopper.best_epoch + 1 if restored else last_epoch,
                     best_epoch=best, train_time_s=time.time() - start)


def train_model(model: keras.Model, tasks: Sequence[TaskSpec], train_ds, val_ds, args: TrainArgs, steps_per_epoch: int,
        fixed_steps: bool = False, paths: RunPaths | None = None, callbacks: Sequence = (), strategy=None,
        verbose: int | None = None, initial_epoch: int = 0, log=None,
        images_per_epoch: int | None = None, custom_loop: bool | None = None) -> FitResult:
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
        custom_loop: train with the engine's own loop (``_fit_custom``) instead of ``model.fit``;
            default: under ``MultiWorkerMirroredStrategy`` only, where ``fit`` fails.

    Returns:
        A ``FitResult``; the model holds the weights of ``kept_epoch``.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if custom_loop is None:
        from mtl.distribute import uses_custom_loop

        custom_loop = uses_custom_loop(strategy)
    if custom_loop:
        return _fit_custom(model, tasks, train_ds, val_ds, args, steps_per_epoch, fixed_steps, paths, callbacks,
                           strategy, initial_epoch, log, images_per_epoch)
    own = run_callbacks(tasks, args, paths, log, images_per_epoch)
    if verbose is None:
        verbose = 0 if log is not None else fit_verbosity()
    recorder = _EpochRecorder()
    all_callbacks = own + [recorder, *callbacks]
    stopper = next((c for c in own if isinstance(c, RunEarlyStopping)), None)
    start = time.time()
    phases = training_phases(args, initial_epoch)
    # a resumed run skips the phases its backup finished (their optimizer would be built only to be
    # dropped); a finished run's rerun keeps the last, whose fit restores the kept epoch's weights
    saved = _backup_epoch(own)
    phases = [p for p in phases if p.last > saved] or phases[-1:]
    for phase in phases:
        first, last = phase.first, phase.last
        with strategy.scope():
            compile_model(model, tasks, args, steps_per_epoch, trainable_trunk=phase.trainable_trunk,
                          sgd_phase=phase.sgd, initial_step=phase.initial_step(steps_per_epoch))
        with warnings.catch_warnings():
            # the first epoch of a dataset of unknown length ends by running out of data: expected
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            # a new phase's optimizer (the trunk unfrozen: more variables; SGD after AdamW: other
            # slots) does not match the backup saved at the end of the phase before: the weights
            # restore, the optimizer starts afresh (its step counter at phase.initial_step)
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.fit(train_ds, validation_data=val_ds, epochs=last, initial_epoch=first,
                      steps_per_epoch=steps_per_epoch if fixed_steps else None, shuffle=False,
                      callbacks=all_callbacks, verbose=verbose)
        if model.stop_training:
            break
    return _fit_result(tasks, stopper, recorder, start)


def _fit_custom(model, tasks, train_ds, val_ds, args: TrainArgs, steps_per_epoch: int, fixed_steps: bool,
                paths: RunPaths | None, callbacks: Sequence, strategy, initial_epoch: int, log,
                images_per_epoch: int | None) -> FitResult:
    """``train_model`` through ``mtl.custom_loop.fit_custom`` (``MultiWorkerMirroredStrategy``, where
    Keras 3's ``model.fit`` fails), with the engine's callbacks, phases, compile, losses and metrics."""
    own = run_callbacks(tasks, args, paths, log, images_per_epoch, backup=False)
    recorder = _EpochRecorder()
    stopper = next((c for c in own if isinstance(c, RunEarlyStopping)), None)

    def new_loop() -> CustomLoop:
        from mtl.balancing import balancer_of

        losses = task_losses(tasks, args.class_weights, args.label_smoothing, args.identity_options(),
                             balancer=balancer_of(model))
        unknown = set(args.loss_weights) - set(losses)
        if unknown:
            raise ConfigError(f"train.loss_weights for unknown outputs {sorted(unknown)}; "
                              f"outputs: {', '.join(losses)}")
        return CustomLoop(model, strategy, losses, args.loss_weights, lambda: task_metrics(tasks), args.jit_compile)

    start = fit_custom(model, train_ds, val_ds, steps_per_epoch, fixed_steps, [*own, recorder, *callbacks],
                       paths.backup if paths else None, strategy, initial_epoch,
                       phases=functools.partial(training_phases, args),
                       compile_phase=functools.partial(compile_model, model, tasks, args, steps_per_epoch),
                       new_loop=new_loop)
    return _fit_result(tasks, stopper, recorder, start)
