"""Masked losses: labels of ``-1`` are missing and contribute nothing.

Every loss here returns the batch value already reduced: the (weighted) mean over the
*labelled* rows only, and exactly 0 (not NaN) for a batch without a labelled row. Keras' stock
``SparseCategoricalCrossentropy(ignore_class=-1)`` divides by the labelled count too, but with
sample or class weights it normalises differently; here the rule is explicit and tested:

    loss = sum_i w_i * l_i / sum_i w_i      over labelled rows i, w_i = class weight of y_i (1 if none)

Models output probabilities (softmax / sigmoid), so ``from_logits`` is False by default. A
regression output's labels are floats, NaN where missing (``MaskedHuber``).

Balancing during training (``mtl.balancing``) hooks into these losses at compile time without
changing their saved config: a masked loss's ``term`` (a callable that turns the batch value into
the balanced value and records what the balancer needs) and ``class_weight_variable`` (class
weights updated every epoch); :class:`BalancedLoss` gives another loss (the identity embedding's
metric loss) the same hook, and :class:`UncertaintyWeights` holds the learnt log-variances of
uncertainty weighting in the model itself, so that they are trained, saved and restored with it.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from keras import ops

from mtl.crossentropy import EPSILON, binary_rows, categorical_rows


def _masked_weighted_mean(per_row, valid, weights):
    w = ops.where(valid, weights, ops.zeros_like(weights))
    total = ops.sum(w)
    # divide_no_nan: a batch with no labelled row gives exactly 0
    return ops.where(total > 0, ops.sum(per_row * w) / ops.maximum(total, EPSILON), ops.zeros_like(total))


def _class_weight_lookup(labels, class_weights):
    """Each label's class weight: ``class_weights`` a sequence, a ``keras.Variable`` (weights that
    ``mtl.balancing`` updates every epoch) or None (all 1)."""
    if class_weights is None:
        return ops.ones_like(labels, dtype="float32")
    if isinstance(class_weights, keras.Variable):
        table = ops.cast(class_weights, "float32")
    else:
        table = ops.convert_to_tensor(np.asarray(class_weights, dtype="float32"))
    return ops.take(table, labels)


class _MaskedLoss(keras.losses.Loss):
    """What the masked losses share: their arguments, their config and the balancing hooks.

    Runtime attributes, set by ``mtl.balancing`` at compile time and never saved:

    * ``class_weight_variable``: a ``keras.Variable`` of per-class weights that replaces the
      static ``class_weights`` (``train.class_weighting: confusion`` updates it every epoch);
      ``class_weights`` returns it when set, so the engine's custom loop weighs the same labels;
    * ``term``: ``term(value, labels, valid, y_pred) -> value``: the balanced loss term
      (uncertainty or DWA factor) and what it records (the raw loss, the training confusion).
    """

    def __init__(self, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0,
                 from_logits: bool = False, name=None, **kwargs):
        kwargs.setdefault("reduction", "sum")  # call() already returns the batch mean
        super().__init__(name=name, **kwargs)
        self._class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.label_smoothing = float(label_smoothing)
        self.from_logits = bool(from_logits)
        self.class_weight_variable = None
        self.term = None

    @property
    def class_weights(self):
        """The class weights in use: the balancer's variable when set, else the static list (or None)."""
        return self.class_weight_variable if self.class_weight_variable is not None else self._class_weights

    def label_weight(self, y_true):
        """What the loss divides by for these labels: the class weights of the labelled rows (the
        engine's custom loop shares a global batch's mean out across replicas by it)."""
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        valid = labels >= 0
        weights = ops.cast(_class_weight_lookup(ops.where(valid, labels, ops.zeros_like(labels)), self.class_weights),
                           "float32")
        return ops.sum(ops.where(valid, weights, ops.zeros_like(weights)))

    def _reduce(self, per_row, labels, valid, y_pred):
        value = _masked_weighted_mean(per_row, valid, _class_weight_lookup(labels, self.class_weights))
        return value if self.term is None else self.term(value, labels, valid, y_pred)

    def get_config(self):
        return {**super().get_config(), "class_weights": self._class_weights,
                "label_smoothing": self.label_smoothing, "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="mtl")
class MaskedSparseCategoricalCrossentropy(_MaskedLoss):
    """Sparse categorical cross-entropy over labelled rows (label ``-1`` = missing).

    Args:
        class_weights: optional per-class weights (length = number of classes).
        label_smoothing: mass spread uniformly over all classes (0 = none).
        from_logits: whether predictions are logits instead of probabilities.
    """

    def __init__(self, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0,
                 from_logits: bool = False, name="masked_sparse_categorical_crossentropy", **kwargs):
        super().__init__(class_weights, label_smoothing, from_logits, name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        valid = labels >= 0
        safe = ops.where(valid, labels, ops.zeros_like(labels))
        num_classes = ops.shape(y_pred)[-1]
        onehot = ops.one_hot(safe, num_classes, dtype="float32")
        if self.label_smoothing:
            onehot = onehot * (1 - self.label_smoothing) + self.label_smoothing / ops.cast(num_classes, "float32")
        per_row = categorical_rows(onehot, y_pred, self.from_logits)
        return self._reduce(per_row, safe, valid, y_pred)


@keras.saving.register_keras_serializable(package="mtl")
class MaskedBinaryCrossentropy(_MaskedLoss):
    """Binary cross-entropy over labelled rows; predictions are ``(N, 1)`` probabilities.

    Args:
        class_weights: optional ``[w_negative, w_positive]``.
        label_smoothing: targets become ``y * (1 - s) + s / 2``.
        from_logits: whether predictions are logits.
    """

    def __init__(self, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0,
                 from_logits: bool = False, name="masked_binary_crossentropy", **kwargs):
        super().__init__(class_weights, label_smoothing, from_logits, name=name, **kwargs)

    def call(self, y_true, y_pred):
        p = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        valid = labels >= 0
        safe = ops.where(valid, labels, ops.zeros_like(labels))
        target = ops.cast(safe, "float32")
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / 2
        per_row = binary_rows(target, p, self.from_logits)
        return self._reduce(per_row, safe, valid, y_pred)


@keras.saving.register_keras_serializable(package="mtl")
class MaskedHuber(keras.losses.Loss):
    """Huber loss of a regression output over the rows with a label (NaN = missing), the error
    measured in units of ``scale``: a one-spread error costs what a cross-entropy of 0.5 does,
    whatever the labels' units; exactly 0 for a batch without a labelled row. Balancing wraps it
    in ``BalancedLoss`` (it has no class weights).

    Args:
        scale: the unit of the error (the training labels' standard deviation).
        delta: where the loss turns from quadratic to linear, in units of ``scale``.
    """

    def __init__(self, scale: float = 1.0, delta: float = 1.0, name="masked_huber", **kwargs):
        kwargs.setdefault("reduction", "sum")  # call() already returns the batch mean
        super().__init__(name=name, **kwargs)
        self.scale = float(scale)
        self.delta = float(delta)

    def call(self, y_true, y_pred):
        target = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        valid = ops.logical_not(ops.isnan(target))
        error = (ops.reshape(ops.cast(y_pred, "float32"), (-1,)) - ops.where(valid, target, ops.zeros_like(target)))
        # Keras's Huber of each row's error: e^2 / 2 up to |e| = delta, linear beyond
        per_row = keras.losses.huber(ops.zeros_like(error)[:, None], (error / self.scale)[:, None], self.delta)
        return _masked_weighted_mean(per_row, valid, ops.ones_like(per_row))

    def label_weight(self, y_true):
        """The labelled rows' count (see ``_MaskedLoss.label_weight``)."""
        target = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        return ops.sum(ops.cast(ops.logical_not(ops.isnan(target)), "float32"))

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "delta": self.delta}


@keras.saving.register_keras_serializable(package="mtl")
class BalancedLoss(keras.losses.Loss):
    """Another loss with the balancing hook of the masked losses (``term``, see ``_MaskedLoss``):
    the identity embedding's metric loss under ``train.loss_balancing: uncertainty | dwa``.

    Args:
        loss: the wrapped loss (its ``__call__`` gives the batch value); a serialised loss from a config.
    """

    def __init__(self, loss, name=None, **kwargs):
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        kwargs.setdefault("reduction", "sum")  # the wrapped loss returns its reduced batch value
        super().__init__(name=name or loss.name, **kwargs)
        self.loss = loss
        self.term = None
        # a wrapped masked loss is still a mean over its labelled rows (mtl.engine.replica_losses)
        self.label_weight = getattr(loss, "label_weight", None)

    def call(self, y_true, y_pred):
        value = ops.cast(self.loss(y_true, y_pred), "float32")
        return value if self.term is None else self.term(value, None, None, y_pred)

    def get_config(self):
        return {**super().get_config(), "loss": keras.saving.serialize_keras_object(self.loss)}


@keras.saving.register_keras_serializable(package="mtl")
class UncertaintyWeights(keras.layers.Layer):
    """The learnt log-variances ``s_t`` of uncertainty weighting (Kendall, Gal and Cipolla 2018),
    one per balanced loss term (``mtl.balancing.balanced_terms``), in the model's graph.

    It passes its input through unchanged; it sits in the graph (after the pooling) only so that
    its variable is one of ``model.trainable_variables`` (trained by the model's optimizer under
    ``model.fit`` and the engine's custom loop alike), is saved in the ``.keras`` file and in the
    checkpoints, and is restored with the weights. The losses read it (``mtl.balancing``).

    Args:
        terms: names of the loss terms, in the order of the variable's entries.
    """

    def __init__(self, terms: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        self.terms = [str(t) for t in terms]

    def build(self, input_shape):
        # s_t = 0: every term starts at weight exp(-s_t) = 1, i.e. at fixed weighting
        self.log_variance = self.add_weight(shape=(len(self.terms),), initializer="zeros", name="log_variance",
                                            trainable=True, dtype="float32")

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "terms": list(self.terms)}


def inverse_frequency_weights(labels: np.ndarray, num_classes: int, cap: float = 10.0) -> list[float]:
    """Class weights ``n / (K * n_c)`` over labelled rows, capped at ``cap``, mean 1 over rows.

    Classes absent from ``labels`` get weight ``cap`` (they cannot affect the loss anyway).
    """
    labels = np.asarray(labels)
    labels = labels[labels >= 0]
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    with np.errstate(divide="ignore"):
        w = np.where(counts > 0, len(labels) / (num_classes * counts), cap)
    w = np.minimum(w, cap)
    if len(labels):
        w = w / (w[labels].mean())  # keep the loss scale comparable to unweighted training
    return w.tolist()


def positive_ratio_weights(labels: np.ndarray) -> list[float]:
    """``[w_negative, w_positive]`` of a binary attribute from its positive ratio (the
    frequency weighting of Li, Chen and Huang 2015, DeepMAR; the weighting of the PAR
    literature): ``w_pos = exp(1 - p)``, ``w_neg = exp(p)``, ``p`` = positives / labelled rows.

    A rare positive (small ``p``) weighs up to ``e`` times a negative. The masked losses divide by
    the sum of the row weights (see the module docstring), so only the ratio ``exp(1 - 2p)`` of the
    two weights changes what is learned, as in DeepMAR.

    Args:
        labels: 0 / 1 labels, ``-1`` for missing (ignored); no labelled row gives ``p = 0.5``.
    """
    labels = np.asarray(labels)
    labels = labels[labels >= 0]
    p = float(np.mean(labels == 1)) if len(labels) else 0.5
    return [float(np.exp(p)), float(np.exp(1.0 - p))]
