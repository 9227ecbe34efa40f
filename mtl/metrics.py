"""Masked metrics for training (Keras objects); the evaluation after training is ``mtl.scoring``.

``MaskedAccuracy`` and ``MaskedCrossentropy`` accumulate over *labelled* rows across the whole
epoch (Keras' stock ``accuracy`` counts ``-1`` rows as wrong, and the logged loss averages
per-batch values, counting fully-masked batches as 0). ``MaskedMeanAbsoluteError`` and
``MaskedHuberMetric`` do the same for a regression output, whose missing labels are NaN.
"""

from __future__ import annotations

import keras
from keras import ops

from mtl.crossentropy import binary_rows, categorical_rows


def _predicted_class(y_pred):
    # (N, 1) sigmoid outputs are binary; (N, K) softmax outputs are categorical
    if y_pred.shape[-1] == 1:
        return ops.cast(ops.reshape(y_pred, (-1,)) > 0.5, "int32")
    return ops.cast(ops.argmax(y_pred, axis=-1), "int32")


class _EpochMean(keras.metrics.Metric):
    """Sum of a per-row value over the labelled rows / their number, over an epoch."""

    def __init__(self, name, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def _add(self, values, valid):
        valid = ops.cast(valid, "float32")
        self.total.assign_add(ops.sum(ops.where(valid > 0, values, ops.zeros_like(values))))
        self.count.assign_add(ops.sum(valid))

    def result(self):
        return ops.where(self.count > 0, self.total / ops.maximum(self.count, 1.0), 0.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


class _MaskedMean(_EpochMean):
    """An epoch mean over the rows with a class label (``-1`` = missing)."""

    def per_row(self, labels, y_pred):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        safe = ops.where(labels >= 0, labels, ops.zeros_like(labels))
        self._add(self.per_row(safe, ops.cast(y_pred, "float32")), labels >= 0)


@keras.saving.register_keras_serializable(package="mtl")
class MaskedAccuracy(_MaskedMean):
    """Accuracy over labelled rows (label ``-1`` ignored); works for sigmoid and softmax outputs."""

    def __init__(self, name="accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def per_row(self, labels, y_pred):
        return ops.cast(ops.equal(_predicted_class(y_pred), labels), "float32")


@keras.saving.register_keras_serializable(package="mtl")
class MaskedCrossentropy(_MaskedMean):
    """Cross-entropy averaged over all labelled rows of the epoch (the true epoch loss of a task)."""

    def __init__(self, name="xent", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def per_row(self, labels, y_pred):
        if y_pred.shape[-1] == 1:
            return binary_rows(ops.cast(labels, "float32"), ops.reshape(y_pred, (-1,)))
        return categorical_rows(ops.one_hot(labels, ops.shape(y_pred)[-1]), y_pred)


class _MaskedValueMean(_EpochMean):
    """An epoch mean over the rows with a finite value label (regression; NaN = missing)."""

    def per_row(self, error):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        target = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        valid = ops.logical_not(ops.isnan(target))
        error = ops.reshape(ops.cast(y_pred, "float32"), (-1,)) - ops.where(valid, target, ops.zeros_like(target))
        self._add(self.per_row(error), valid)


@keras.saving.register_keras_serializable(package="mtl")
class MaskedMeanAbsoluteError(_MaskedValueMean):
    """Mean absolute error over the rows with a label (NaN = missing), in the labels' units."""

    def __init__(self, name="mae", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def per_row(self, error):
        return ops.abs(error)


@keras.saving.register_keras_serializable(package="mtl")
class MaskedHuberMetric(_MaskedValueMean):
    """The epoch's mean of ``mtl.losses.MaskedHuber``'s per-row loss (the regression task's term of
    ``masked_loss``, as ``MaskedCrossentropy`` is a classification task's).

    Args:
        scale: the error is measured in units of ``scale`` (the training labels' spread).
    """

    def __init__(self, scale: float = 1.0, name="huber", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.scale = float(scale)

    def per_row(self, error):
        return keras.losses.huber(ops.zeros_like(error)[:, None], (error / self.scale)[:, None])

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}
