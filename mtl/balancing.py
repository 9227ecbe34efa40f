"""Loss weights and class weights that change during training.

``train.loss_balancing`` (the weight of each loss term):

* ``fixed`` (default): ``train.loss_weights`` alone, as before.
* ``uncertainty`` (Kendall, Gal and Cipolla 2018, "Multi-Task Learning Using Uncertainty to Weigh
  Losses"): one learnt log-variance ``s_t`` per term; the term becomes
  ``w_t * (exp(-s_t) * L_t + s_t)`` with ``w_t`` its ``train.loss_weights`` entry (default 1).
  Choices: no 0.5 factors (the common form ``exp(-s) L + s`` of the classification case; its
  optimum is ``exp(-s_t) = 1 / L_t``); ``w_t`` scales the whole term, so a fixed weight keeps its
  meaning (in ``exp(-s_t) w_t L_t + s_t`` it would cancel at the optimum). ``s_t`` lives in the
  model (``mtl.losses.UncertaintyWeights``, built by ``build_model(uncertainty_weights=True)``): it
  is trained by the model's optimizer, without weight decay (``mtl.engine.compile_model``), and
  saved in the ``.keras`` file.
* ``dwa`` (Liu, Johns and Davison 2019, "End-to-End Multi-Task Learning with Attention"):
  ``w_t(e) = T * softmax_t(r_t / temperature)``, ``r_t = L_t(e-1) / L_t(e-2)``, 1 for the first two
  epochs; ``L_t`` is the term's mean training loss over the epoch (``train.dwa_temperature``,
  default 2.0). The weights multiply ``train.loss_weights``.

The balanced terms (:func:`balanced_terms`): every attribute task, and with an identity task its
classifier and its embedding's metric loss, each with its own weight (they differ in kind and in
scale). The centre loss keeps its fixed weight: it is a regulariser with a weight of its own.

``train.class_weighting`` (the weight of each class within an attribute task's loss):

* ``none``; ``inverse``: inverse frequency (``mtl.losses.inverse_frequency_weights``, as before);
* ``positive``: binary attributes from their positive ratio ``p`` (DeepMAR, Li et al. 2015):
  ``w_pos = exp(1 - p)``, ``w_neg = exp(p)`` (``mtl.losses.positive_ratio_weights``); categorical
  tasks get inverse frequency (DeepMAR's rule is for binary attributes);
* ``confusion``: per-class weights updated at the end of every epoch from the
  epoch's training recall (:func:`confusion_weights`): classes with the lowest recall weigh more.
  They start at 1; the identity classifier is left unweighted.

What is logged into each epoch's logs (``history.json``, TensorBoard): ``loss_weight/<term>``
(the factor in effect: ``exp(-s_t)`` at the epoch's end, or the DWA weight of the epoch) and
``task_loss/<term>`` (the term's mean training loss before that factor) with ``uncertainty`` and
``dwa``; ``class_weight/<task>/<class index>`` (the weights in effect during the epoch),
``class_recall/<task>/<class index>`` and ``class_rows/<task>/<class index>`` (the epoch's training
recall and labelled rows of each class present) with ``confusion``. A resumed run rebuilds its
state from ``history.json`` exactly: the DWA losses, and the confusion weights of the next epoch
from the last finished epoch's weights, recall and rows.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Mapping, Sequence

import keras
import numpy as np
from keras import ops

from mtl.choices import CLASS_WEIGHTING, LOSS_BALANCING
from mtl.errors import ConfigError
from mtl.losses import BalancedLoss, UncertaintyWeights, _MaskedLoss
from mtl.reid.heads import EMBEDDING
from mtl.tasks import TaskSpec, attribute_tasks, classification_tasks, find_identity

UNCERTAINTY_LAYER = "loss_uncertainty"  # the UncertaintyWeights layer's name in a model

# confusion weighting: target w_c = (1 - recall_c + EPS) ** GAMMA, normalised to mean 1 over the
# epoch's labelled rows, then w <- (1 - MOMENTUM) w + MOMENTUM target, clipped to [1 / CAP, CAP].
# EPS keeps a class with perfect recall in the loss; the momentum damps the epoch-to-epoch swings
# (rather than multiplying the weakest classes' weights by a fixed 1.1 each epoch)
CONFUSION_GAMMA = 1.0
CONFUSION_EPS = 0.1
CONFUSION_MOMENTUM = 0.5
CONFUSION_CAP = 10.0

WEIGHT_KEY = "loss_weight/{}"
TASK_LOSS_KEY = "task_loss/{}"
CLASS_WEIGHT_KEY = "class_weight/{}/{}"
# confusion: each class's training recall in the epoch and its labelled rows (absent: no row)
CLASS_RECALL_KEY = "class_recall/{}/{}"
CLASS_ROWS_KEY = "class_rows/{}/{}"


def balanced_terms(tasks: Sequence[TaskSpec]) -> list[str]:
    """The output names whose losses are balanced: the attribute tasks, then the identity task's
    classifier and ``embedding`` (the centre loss keeps its fixed weight)."""
    terms = [t.name for t in attribute_tasks(tasks)]
    identity = find_identity(tasks)
    return terms + ([identity.name, EMBEDDING] if identity else [])


def uncertainty_layer(tasks: Sequence[TaskSpec]) -> UncertaintyWeights:
    """The layer ``build_model(uncertainty_weights=True)`` puts after the pooling."""
    return UncertaintyWeights(balanced_terms(tasks), name=UNCERTAINTY_LAYER)


# ---------------------------------------------------------------------------------------------
# The arithmetic (numpy; the tests check it against hand-worked values)
# ---------------------------------------------------------------------------------------------

def uncertainty_term(loss: float, log_variance: float, weight: float = 1.0) -> float:
    """One uncertainty-weighted term: ``weight * (exp(-s) * loss + s)``."""
    return float(weight * (np.exp(-log_variance) * loss + log_variance))


def dwa_weights(previous: Sequence[float], before: Sequence[float], temperature: float = 2.0) -> np.ndarray:
    """DWA weights from the terms' losses of the last two epochs: ``T * softmax(r / temperature)``,
    ``r = previous / before`` (1 where ``before`` is not positive: a term with no labelled row).

    Args:
        previous: ``L_t(e-1)``.
        before: ``L_t(e-2)``.
        temperature: larger: closer to equal weights.

    Returns:
        The weights (sum ``T``).
    """
    previous, before = np.asarray(previous, np.float64), np.asarray(before, np.float64)
    ratio = np.where(before > 0, previous / np.where(before > 0, before, 1.0), 1.0)
    z = ratio / float(temperature)
    e = np.exp(z - z.max())
    return len(e) * e / e.sum()


def dwa_schedule(losses: Mapping[int, Sequence[float]], epoch: int, temperature: float = 2.0) -> np.ndarray | None:
    """The DWA weights of 0-based ``epoch`` from ``{epoch: losses}`` of the epochs before it; 1 for
    the first two epochs; None when an epoch it needs is missing."""
    if epoch < 2:
        return None
    if epoch - 1 not in losses or epoch - 2 not in losses:
        return None
    return dwa_weights(losses[epoch - 1], losses[epoch - 2], temperature)


def confusion_weights(current: Sequence[float], correct: Sequence[float], total: Sequence[float],
                      gamma: float = CONFUSION_GAMMA, eps: float = CONFUSION_EPS,
                      momentum: float = CONFUSION_MOMENTUM, cap: float = CONFUSION_CAP) -> np.ndarray:
    """The next epoch's class weights from this epoch's training confusion.

    ``target_c = (1 - recall_c + eps) ** gamma`` (a class absent this epoch keeps its weight),
    normalised to mean 1 over the epoch's labelled rows; then ``(1 - momentum) * current +
    momentum * target``, normalised again and clipped to ``[1 / cap, cap]``.

    Args:
        current: the weights in effect this epoch.
        correct: per class, labelled rows predicted as their class.
        total: per class, labelled rows.

    Returns:
        The weights, one per class.
    """
    current = np.asarray(current, np.float64)
    correct, total = np.asarray(correct, np.float64), np.asarray(total, np.float64)
    seen = total > 0
    if not seen.any():
        return current.copy()
    recall = np.where(seen, correct / np.where(seen, total, 1.0), 1.0)
    target = np.where(seen, (1.0 - recall + eps) ** gamma, current)

    def row_mean_one(w):
        return w / (np.sum(w * total) / np.sum(total))

    weights = row_mean_one((1.0 - momentum) * current + momentum * row_mean_one(target))
    return np.clip(weights, 1.0 / cap, cap)


# ---------------------------------------------------------------------------------------------
# The training state: variables the losses read, trackers they update, the epoch callback
# ---------------------------------------------------------------------------------------------

class _RecallCounts(keras.metrics.Metric):
    """Per class: labelled training rows and those predicted right (summed over replicas)."""

    def __init__(self, num_classes: int, threshold: float = 0.5, name="recall_counts", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.correct = self.add_variable(shape=(self.num_classes,), initializer="zeros", name="correct",
                                         aggregation="sum")
        self.total = self.add_variable(shape=(self.num_classes,), initializer="zeros", name="total",
                                       aggregation="sum")

    def update_state(self, labels, valid, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        if self.num_classes == 2 and y_pred.shape[-1] == 1:  # a binary head's (N, 1) probability
            predicted = ops.cast(ops.reshape(y_pred, (-1,)) >= self.threshold, "int32")
        else:
            predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        mask = ops.cast(valid, "float32")
        onehot = ops.one_hot(labels, self.num_classes, dtype="float32") * mask[:, None]
        hit = ops.cast(ops.equal(predicted, labels), "float32") * mask
        self.total.assign_add(ops.sum(onehot, axis=0))
        self.correct.assign_add(ops.sum(onehot * hit[:, None], axis=0))

    def result(self):
        return ops.divide_no_nan(self.correct, self.total)

    def reset_state(self):
        self.correct.assign(ops.zeros_like(self.correct))
        self.total.assign(ops.zeros_like(self.total))


class _Term:
    """The hook of one loss term (``mtl.losses._MaskedLoss.term``): records the raw value and the
    training confusion, and returns the balanced value."""

    def __init__(self, balancer: "LossBalancer", name: str):
        self.balancer = balancer
        self.name = name
        self.index = balancer.terms.index(name) if name in balancer.terms else None
        self.tracker = balancer.loss_trackers.get(name)
        self.recall = balancer.recall.get(name)

    def __call__(self, value, labels=None, valid=None, y_pred=None):
        b = self.balancer
        value = ops.cast(value, "float32")
        if self.tracker is not None:
            # weighted by the batch's rows, as Keras averages its logged <output>_loss
            rows = ops.cast(ops.shape(y_pred)[0], "float32")
            self.tracker.update_state(value, sample_weight=rows)
        if self.recall is not None and labels is not None:
            self.recall.update_state(labels, valid, y_pred)
        if self.index is None or b.loss_balancing == "fixed":
            return value
        if b.loss_balancing == "uncertainty":
            s = ops.cast(b.log_variance[self.index], "float32")
            return ops.exp(-s) * value + s
        return ops.cast(b.dwa[self.index], "float32") * value


class LossBalancer:
    """The variables and trackers of one model's balancing (made under the strategy's scope, by
    ``mtl.engine.compile_losses``, once per model: the phases of a run share them).

    Args:
        model: the model (with ``uncertainty``: built with ``uncertainty_weights=True``).
        tasks: its task specs.
        loss_balancing: fixed, uncertainty or dwa.
        class_weighting: none, inverse, positive or confusion (only confusion needs state here).
        dwa_temperature: DWA's temperature.

    Raises:
        ConfigError: an unknown choice, or ``uncertainty`` for a model without the layer.
    """

    def __init__(self, model: keras.Model, tasks: Sequence[TaskSpec], loss_balancing: str = "fixed",
                 class_weighting: str = "none", dwa_temperature: float = 2.0):
        if loss_balancing not in LOSS_BALANCING:
            raise ConfigError(f"train.loss_balancing={loss_balancing!r}: valid values: {', '.join(LOSS_BALANCING)}")
        if class_weighting not in CLASS_WEIGHTING:
            raise ConfigError(f"train.class_weighting={class_weighting!r}: valid values: "
                              f"{', '.join(CLASS_WEIGHTING)}")
        self.loss_balancing, self.class_weighting = loss_balancing, class_weighting
        self.dwa_temperature = float(dwa_temperature)
        self.terms = balanced_terms(tasks)
        self.key = (tuple(self.terms), loss_balancing, class_weighting, self.dwa_temperature)
        self.log_variance = self.dwa = None
        if loss_balancing == "uncertainty":
            layer = next((l for l in model.layers if isinstance(l, UncertaintyWeights)), None)
            if layer is None:
                raise ConfigError("train.loss_balancing=uncertainty: the model has no UncertaintyWeights layer; "
                                  "build it with mtl.models.builder.build_model(..., uncertainty_weights=True)")
            if list(layer.terms) != self.terms:
                raise ConfigError(f"train.loss_balancing=uncertainty: the model's layer balances {layer.terms}, "
                                  f"the tasks give {self.terms}")
            self.log_variance = layer.log_variance
        if loss_balancing == "dwa":
            self.dwa = keras.Variable(np.ones(len(self.terms), np.float32), trainable=False, name="dwa_weights")
        self.loss_trackers = ({t: keras.metrics.Mean(name=f"{t}_balanced_raw_loss") for t in self.terms}
                              if loss_balancing != "fixed" else {})
        self.recall: dict[str, _RecallCounts] = {}
        self.class_weights: dict[str, keras.Variable] = {}
        if class_weighting == "confusion":
            for t in classification_tasks(tasks):
                self.recall[t.name] = _RecallCounts(t.num_classes, name=f"{t.name}_recall_counts")
                self.class_weights[t.name] = keras.Variable(np.ones(t.num_classes, np.float32), trainable=False,
                                                            name=f"{t.name}_class_weights")

    def wrap(self, losses: Mapping[str, keras.losses.Loss]) -> dict:
        """``losses`` with the hooks set: masked losses get ``term`` (and the class-weight variable
        with ``confusion``), any other balanced loss (the embedding's) is wrapped in ``BalancedLoss``."""
        out = {}
        for name, loss in losses.items():
            if name not in self.terms and name not in self.class_weights:
                out[name] = loss
                continue
            if not isinstance(loss, _MaskedLoss):
                loss = BalancedLoss(loss)
            loss.term = _Term(self, name)
            if name in self.class_weights:
                loss.class_weight_variable = self.class_weights[name]
                if getattr(loss, "from_logits", False):
                    self.recall[name].threshold = 0.0
            out[name] = loss
        return out

    # what the callback reads and sets
    def factors(self) -> dict[str, float]:
        """The factor of each term now: ``exp(-s_t)`` or the DWA weight (empty with ``fixed``)."""
        if self.log_variance is not None:
            values = np.exp(-np.asarray(keras.ops.convert_to_numpy(self.log_variance), np.float64))
        elif self.dwa is not None:
            values = np.asarray(keras.ops.convert_to_numpy(self.dwa), np.float64)
        else:
            return {}
        return dict(zip(self.terms, values.tolist()))

    def raw_losses(self) -> dict[str, float]:
        return {t: float(keras.ops.convert_to_numpy(m.result())) for t, m in self.loss_trackers.items()}

    def confusion_counts(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {t: (np.asarray(keras.ops.convert_to_numpy(m.correct), np.float64),
                    np.asarray(keras.ops.convert_to_numpy(m.total), np.float64)) for t, m in self.recall.items()}

    def reset(self) -> None:
        for metric in [*self.loss_trackers.values(), *self.recall.values()]:
            metric.reset_state()


_BALANCERS: "weakref.WeakKeyDictionary[keras.Model, LossBalancer]" = weakref.WeakKeyDictionary()


def attach(model: keras.Model, tasks: Sequence[TaskSpec], loss_balancing: str = "fixed",
           class_weighting: str = "none", dwa_temperature: float = 2.0) -> LossBalancer | None:
    """The model's ``LossBalancer`` (made on the first call, under the current strategy's scope;
    kept while the settings stay the same), or None when nothing changes during training
    (``fixed`` weights and no ``confusion`` class weights)."""
    if loss_balancing == "fixed" and class_weighting != "confusion":
        if loss_balancing not in LOSS_BALANCING or class_weighting not in CLASS_WEIGHTING:
            LossBalancer(model, tasks, loss_balancing, class_weighting)  # raises the one-line error
        _BALANCERS.pop(model, None)
        return None
    key = (tuple(balanced_terms(tasks)), loss_balancing, class_weighting, float(dwa_temperature))
    existing = _BALANCERS.get(model)
    if existing is not None and existing.key == key:
        return existing
    balancer = LossBalancer(model, tasks, loss_balancing, class_weighting, dwa_temperature)
    _BALANCERS[model] = balancer
    return balancer


def balancer_of(model: keras.Model) -> LossBalancer | None:
    """The balancer ``attach`` made for ``model`` (None: none)."""
    return _BALANCERS.get(model)


class LossBalanceCallback(keras.callbacks.Callback):
    """Runs the balancer of the model it trains (``balancer_of``) at the epoch boundaries: resets
    its trackers when an epoch starts and sets the DWA weights of the epoch; reads the training
    values before validation starts (the losses also run on validation batches); at the epoch's
    end adds the weights in effect (and the raw term losses) to the logs and updates the confusion
    class weights for the next epoch. Must come after ``MaskedLossLogger`` and before the callbacks
    that write the logs (history, TensorBoard).

    Args:
        history_path: ``history.json`` of the run: a resumed run rebuilds its state from it.
    """

    def __init__(self, history_path: str | Path | None = None):
        super().__init__()
        self.history_path = history_path
        self.losses: dict[int, list[float]] = {}  # 0-based epoch -> the terms' raw training losses
        self._rebuilt = False
        self._in_epoch = False
        self._snapshot = None

    def _balancer(self) -> LossBalancer | None:
        return balancer_of(self.model) if self.model is not None else None

    def on_epoch_begin(self, epoch, logs=None):
        b = self._balancer()
        if b is None:
            return
        if not self._rebuilt:
            self._rebuilt = True
            self._rebuild(b, epoch)
        b.reset()
        if b.dwa is not None:
            weights = dwa_schedule(self.losses, epoch, b.dwa_temperature)
            b.dwa.assign(np.ones(len(b.terms), np.float32) if weights is None else weights.astype(np.float32))
        self._in_epoch, self._snapshot = True, None

    def on_test_begin(self, logs=None):
        b = self._balancer()
        if b is not None and self._in_epoch and self._snapshot is None:
            self._snapshot = (b.raw_losses(), b.confusion_counts())

    def on_epoch_end(self, epoch, logs=None):
        b = self._balancer()
        if b is None or logs is None:
            return
        raw, counts = self._snapshot or (b.raw_losses(), b.confusion_counts())
        self._in_epoch = False
        for term, factor in b.factors().items():
            logs[WEIGHT_KEY.format(term)] = float(factor)
        if raw:
            for term, value in raw.items():
                logs[TASK_LOSS_KEY.format(term)] = float(value)
            self.losses[epoch] = [float(raw[t]) for t in b.terms]
        for task, variable in b.class_weights.items():
            current = np.asarray(keras.ops.convert_to_numpy(variable), np.float64)
            for index, weight in enumerate(current):
                logs[CLASS_WEIGHT_KEY.format(task, index)] = float(weight)
            correct, total = counts[task]
            for index in np.flatnonzero(total > 0):
                logs[CLASS_RECALL_KEY.format(task, index)] = float(correct[index] / total[index])
                logs[CLASS_ROWS_KEY.format(task, index)] = int(total[index])
            variable.assign(confusion_weights(current, correct, total).astype(np.float32))

    def _rebuild(self, b: LossBalancer, epoch: int) -> None:
        """A resumed run: the terms' losses of the finished epochs (DWA) and the class weights of
        ``epoch`` (confusion)."""
        from mtl.callbacks import completed_epochs

        rows = completed_epochs(self.history_path, epoch) if self.history_path else []
        for row in rows:
            keys = [TASK_LOSS_KEY.format(t) for t in b.terms]
            if all(k in row for k in keys):
                self.losses[int(row["epoch"]) - 1] = [float(row[k]) for k in keys]
        if rows:
            last = rows[-1]
            for task, variable in b.class_weights.items():
                keys = [CLASS_WEIGHT_KEY.format(task, i) for i in range(int(variable.shape[0]))]
                if not all(k in last for k in keys):
                    continue
                weights = np.asarray([last[k] for k in keys], np.float64)
                # that epoch's update, redone from its logged confusion (as on_epoch_end made it)
                total = np.asarray([last.get(CLASS_ROWS_KEY.format(task, i), 0) for i in range(len(keys))], np.float64)
                recall = np.asarray([last.get(CLASS_RECALL_KEY.format(task, i), 0.0) for i in range(len(keys))])
                variable.assign(confusion_weights(weights, recall * total, total).astype(np.float32))
