"""Masked losses: labels of ``-1`` are missing and contribute nothing.

Every loss here returns the batch value already reduced: the (weighted) mean over the
*labelled* rows only, and exactly 0 (not NaN) for a batch without a labelled row. Keras' stock
``SparseCategoricalCrossentropy(ignore_class=-1)`` divides by the labelled count too, but with
sample or class weights it normalises differently; here the rule is explicit and tested:

    loss = sum_i w_i * l_i / sum_i w_i      over labelled rows i, w_i = class weight of y_i (1 if none)

Models output probabilities (softmax / sigmoid), so ``from_logits`` is False by default.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from keras import ops

EPSILON = 1e-7


def _masked_weighted_mean(per_row, valid, weights):
    w = ops.where(valid, weights, ops.zeros_like(weights))
    total = ops.sum(w)
    # divide_no_nan: a batch with no labelled row gives exactly 0
    return ops.where(total > 0, ops.sum(per_row * w) / ops.maximum(total, EPSILON), ops.zeros_like(total))


def _class_weight_lookup(labels, class_weights):
    if class_weights is None:
        return ops.ones_like(labels, dtype="float32")
    table = ops.convert_to_tensor(np.asarray(class_weights, dtype="float32"))
    return ops.take(table, labels)


@keras.saving.register_keras_serializable(package="mtl")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy over labelled rows (label ``-1`` = missing).

    Args:
        class_weights: optional per-class weights (length = number of classes).
        label_smoothing: mass spread uniformly over all classes (0 = none).
        from_logits: whether predictions are logits instead of probabilities.
    """

    def __init__(self, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0,
                 from_logits: bool = False, name="masked_sparse_categorical_crossentropy", **kwargs):
        kwargs.setdefault("reduction", "sum")  # call() already returns the batch mean
        super().__init__(name=name, **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.label_smoothing = float(label_smoothing)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        valid = labels >= 0
        safe = ops.where(valid, labels, ops.zeros_like(labels))
        num_classes = ops.shape(y_pred)[-1]
        log_probs = ops.log_softmax(y_pred, axis=-1) if self.from_logits else ops.log(ops.clip(y_pred, EPSILON, 1.0))
        onehot = ops.one_hot(safe, num_classes, dtype="float32")
        if self.label_smoothing:
            onehot = onehot * (1 - self.label_smoothing) + self.label_smoothing / ops.cast(num_classes, "float32")
        per_row = -ops.sum(onehot * log_probs, axis=-1)
        return _masked_weighted_mean(per_row, valid, _class_weight_lookup(safe, self.class_weights))

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights,
                "label_smoothing": self.label_smoothing, "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="mtl")
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy over labelled rows; predictions are ``(N, 1)`` probabilities.

    Args:
        class_weights: optional ``[w_negative, w_positive]``.
        label_smoothing: targets become ``y * (1 - s) + s / 2``.
        from_logits: whether predictions are logits.
    """

    def __init__(self, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0,
                 from_logits: bool = False, name="masked_binary_crossentropy", **kwargs):
        kwargs.setdefault("reduction", "sum")
        super().__init__(name=name, **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.label_smoothing = float(label_smoothing)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        p = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        valid = labels >= 0
        safe = ops.where(valid, labels, ops.zeros_like(labels))
        target = ops.cast(safe, "float32")
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / 2
        if self.from_logits:
            per_row = ops.maximum(p, 0) - p * target + ops.log1p(ops.exp(-ops.abs(p)))
        else:
            p = ops.clip(p, EPSILON, 1 - EPSILON)
            per_row = -(target * ops.log(p) + (1 - target) * ops.log(1 - p))
        return _masked_weighted_mean(per_row, valid, _class_weight_lookup(safe, self.class_weights))

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights,
                "label_smoothing": self.label_smoothing, "from_logits": self.from_logits}


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
