"""The custom training loop: the engine's recipe where ``model.fit`` cannot run.

Under ``MultiWorkerMirroredStrategy`` Keras 3's ``model.fit`` fails, so ``mtl.engine.train_model``
trains through :func:`fit_custom`: the same phases, losses, masked metrics and callbacks, with each
replica's loss scaled to the global batch (:func:`replica_losses`) and the input sharded by DATA.
The engine hands it what it owns (its callbacks, how to compile a phase, the losses and metrics):
this module knows the distributed steps, not the recipe.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import keras
import tensorflow as tf

from mtl.distribute import EpochCheckpoint, distribute_dataset


def phase_at(phases: Sequence, epoch: int):
    """The phase that trains 0-based ``epoch``, or None."""
    return next((p for p in phases if p.first <= epoch < p.last), None)


def _as_dict(outputs, names: Sequence[str]) -> dict:
    if isinstance(outputs, Mapping):
        return dict(outputs)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return dict(zip(names, outputs))


def replica_losses(losses: Mapping, loss_weights: Mapping[str, float], y: Mapping, outputs: Mapping) -> dict:
    """This replica's share of each weighted loss of the GLOBAL batch: summed over the replicas
    (the optimizer all-reduces gradients by SUM) they give the single-device value of the whole batch.

    * a masked loss (one with ``label_weight``: ``mtl.losses``' masked cross-entropies and Huber
      loss) is a weighted mean over the labelled rows; the replica's mean is multiplied by its share of the
      global label weight (``W_replica / W_global``, all-reduced): exactly the masked mean over the
      labelled rows of the global batch, however the labels fall across replicas;
    * any other loss (the embedding's triplet and center losses) is a batch mean, scaled by the
      replica's share of the global batch's rows. Triplets are mined within a replica's slice (the
      P x K layout gives each replica whole identities), as with ``model.fit`` under a strategy.

    Must run in a replica context (``strategy.run``).
    """
    context = tf.distribute.get_replica_context()
    parts = {}
    for name, loss in losses.items():
        value = tf.cast(loss.call(y[name], outputs[name]), tf.float32)  # the batch mean, unscaled
        if getattr(loss, "label_weight", None) is not None:
            local = loss.label_weight(y[name])
        else:
            local = tf.cast(tf.shape(outputs[name])[0], tf.float32)
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, local)
        share = tf.math.divide_no_nan(local, total)
        parts[name] = float(loss_weights.get(name, 1.0)) * tf.where(local > 0, value * share, 0.0)
    return parts


ROWS = "_rows"  # a step's images over every replica (not logged)


class CustomLoop:
    """One phase's traced train and test steps under ``strategy`` (see ``replica_losses``).

    Args:
        model: the compiled model.
        strategy: the ``tf.distribute`` strategy.
        losses: ``{output: loss}`` (``mtl.engine.task_losses``).
        loss_weights: ``{output: weight}`` (1 where absent).
        new_metrics: makes ``{output: [metrics]}`` (``mtl.engine.task_metrics``): called twice,
            for training and validation, under the strategy's scope.
        jit_compile: XLA-compile the train step.
    """

    def __init__(self, model, strategy, losses: Mapping, loss_weights: Mapping[str, float],
                 new_metrics: Callable[[], dict], jit_compile: bool = False):
        self.model, self.strategy = model, strategy
        self.names = list(model.output_names)
        self.losses = losses
        self.loss_weights = dict(loss_weights)
        with strategy.scope():  # sync-on-read variables: read, they sum over every replica
            self.metrics = {"": new_metrics(), "val_": new_metrics()}
        self._losses: dict = {}
        self.train_step = tf.function(self._train_step, jit_compile=jit_compile or None)
        self.test_step = tf.function(self._test_step)

    def _forward(self, x, y, training: bool, prefix: str):
        outputs = _as_dict(self.model(x, training=training), self.names)
        parts = replica_losses(self.losses, self.loss_weights, y, outputs)
        total = tf.add_n(list(parts.values()))
        if training and self.model.losses:  # regularisation: the same on every replica
            total += tf.add_n(self.model.losses) / self.strategy.num_replicas_in_sync
        for name, metrics in self.metrics[prefix].items():
            for metric in metrics:
                metric.update_state(y[name], outputs[name])
        return total, parts

    def _replica_train(self, x, y):
        with tf.GradientTape() as tape:
            total, parts = self._forward(x, y, True, "")
            scaled = self.model.optimizer.scale_loss(total)  # mixed_float16: the loss-scaling wrapper's
        variables = self.model.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.model.optimizer.apply_gradients(zip(grads, variables))  # all-reduces the gradients (SUM)
        return {"loss": total, **parts, ROWS: tf.cast(tf.shape(x)[0], tf.float32)}

    def _replica_test(self, x, y):
        total, parts = self._forward(x, y, False, "val_")
        return {"loss": total, **parts, ROWS: tf.cast(tf.shape(x)[0], tf.float32)}

    def _reduce(self, values):
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in values.items()}

    def _train_step(self, batch):
        x, y = batch[0], batch[1]
        return self._reduce(self.strategy.run(self._replica_train, args=(x, y)))

    def _test_step(self, batch):
        x, y = batch[0], batch[1]
        return self._reduce(self.strategy.run(self._replica_test, args=(x, y)))

    def reset(self, prefix: str):
        for metrics in self.metrics[prefix].values():
            for metric in metrics:
                metric.reset_state()
        self._losses = {}

    def add(self, values: Mapping):
        """Accumulate one step's global losses, weighted by its global rows (as Keras' loss trackers)."""
        rows = float(values[ROWS])
        for key, value in values.items():
            if key == ROWS:
                continue
            total, count = self._losses.get(key, (0.0, 0))
            self._losses[key] = (total + float(value) * rows, count + rows)

    def logs(self, prefix: str) -> dict:
        """Keras's epoch logs: ``loss``, ``<output>_loss`` and the masked metrics (one-output
        models without the output prefix, as ``fit`` names them)."""
        single = len(self.names) == 1
        logs = {}
        for key, (total, count) in self._losses.items():
            bare = key if key == "loss" or single else f"{key}_loss"
            logs[f"{prefix}{bare}"] = total / max(count, 1)
        for name, metrics in self.metrics[prefix].items():
            for metric in metrics:
                bare = metric.name if single else f"{name}_{metric.name}"
                logs[f"{prefix}{bare}"] = float(metric.result())
        return logs


def fit_custom(model, train_ds, val_ds, steps_per_epoch: int, fixed_steps: bool, callbacks: Sequence,
               backup: Path | None, strategy, initial_epoch: int, phases: Callable[[int], Sequence],
               compile_phase: Callable[..., None], new_loop: Callable[[], CustomLoop]) -> float:
    """``mtl.engine.train_model`` as a custom loop under ``strategy`` (``MultiWorkerMirroredStrategy``, where Keras 3's
    ``model.fit`` fails): the same phases, losses (``replica_losses``: scaled to the global batch),
    masked metrics and callbacks (through a ``keras.callbacks.CallbackList``, unchanged), with the
    input split across replicas and sharded by DATA. The Keras resume backup is replaced by
    ``mtl.distribute.EpochCheckpoint`` in ``backup`` (model, optimizer, epochs finished): a
    rerun of the job (every worker restarted) continues after the last finished epoch.

    The logged ``<output>_loss`` / ``loss`` of an epoch are the row-weighted mean of the step values
    (Keras' convention); the masked metrics are epoch totals over every replica.

    Args:
        callbacks: every callback of the run, in order (the engine's own without the Keras backup,
            its epoch recorder, the caller's).
        backup: the folder of the epoch checkpoint; None keeps none.
        phases: ``initial_epoch -> the training phases from there`` (``mtl.engine.training_phases``).
        compile_phase: compiles the model for a phase (``mtl.engine.compile_model``'s keyword
            arguments ``trainable_trunk``, ``sgd_phase``, ``initial_step``).
        new_loop: the ``CustomLoop`` of a phase, made after it is compiled.

    Returns:
        The time training started (``time.time()``).
    """
    checkpoint = EpochCheckpoint(backup) if backup else None
    saved = checkpoint.saved_epoch() if checkpoint else 0
    start_epoch = max(initial_epoch, saved)
    dist_train = distribute_dataset(strategy, train_ds)
    dist_val = distribute_dataset(strategy, val_ds) if val_ds is not None else None
    train_iter = iter(dist_train) if fixed_steps else None
    model.stop_training = False
    start = time.time()
    saved_phase = phase_at(phases(0), saved - 1) if saved else None
    for phase in phases(start_epoch):
        first, last = phase.first, phase.last
        resuming = checkpoint is not None and saved and first == start_epoch
        # the optimizer's state carries on within a phase; a new phase (trunk unfrozen, SGD after
        # AdamW) starts it afresh, its step counter at phase.initial_step
        same_phase = saved_phase is not None and \
            (saved_phase.trainable_trunk, saved_phase.sgd) == (phase.trainable_trunk, phase.sgd)
        if resuming and not same_phase:
            # the checkpoint reaches the optimizer through the model too, matching its variables by
            # position: read it with an optimizer of the saved phase's kind, then compile this phase's
            with strategy.scope():
                compile_phase(trainable_trunk=saved_phase.trainable_trunk, sgd_phase=saved_phase.sgd)
            checkpoint.restore(model, model.optimizer)
        with strategy.scope():
            compile_phase(trainable_trunk=phase.trainable_trunk, sgd_phase=phase.sgd,
                          initial_step=phase.initial_step(steps_per_epoch))
        if resuming and same_phase:
            checkpoint.restore(model, model.optimizer)
        loop = new_loop()
        hooks = keras.callbacks.CallbackList(list(callbacks), add_history=False, add_progbar=False,
                                             model=model, epochs=last, verbose=0,
                                             steps=steps_per_epoch if fixed_steps else None)
        hooks.on_train_begin()
        for epoch in range(first, last):
            hooks.on_epoch_begin(epoch)
            loop.reset("")
            step = 0
            batches = (next(train_iter) for _ in range(steps_per_epoch)) if fixed_steps else iter(dist_train)
            for batch in batches:
                values = loop.train_step(batch)
                loop.add(values)
                hooks.on_train_batch_end(step, {"loss": float(values["loss"])})
                step += 1
            logs = loop.logs("")
            if dist_val is not None:
                hooks.on_test_begin()
                loop.reset("val_")
                for batch in dist_val:
                    loop.add(loop.test_step(batch))
                val_logs = loop.logs("val_")
                hooks.on_test_end(val_logs)
                logs.update(val_logs)
            hooks.on_epoch_end(epoch, logs)  # history first: a resumed run never lacks a saved epoch's row
            if checkpoint is not None:
                checkpoint.save(model, model.optimizer, epoch + 1)
            if model.stop_training:
                break
        hooks.on_train_end()
        if model.stop_training:
            break
    return start
