"""Masked metrics for training, and the evaluation metrics computed after training.

During training: ``MaskedAccuracy`` and ``MaskedCrossentropy`` accumulate over *labelled*
rows across the whole epoch (Keras' stock ``accuracy`` counts ``-1`` rows as wrong, and the
logged loss averages per-batch values, counting fully-masked batches as 0).

After training (plain numpy, ``evaluate_task`` / ``mean_accuracy_ma``): per-task accuracy, macro
F1, per-class precision/recall/F1/support and the majority-class baseline; mA for binary
attributes: the mean over attributes of (TPR + TNR) / 2, the label-based metric of the
pedestrian-attribute literature (PETA, RAP, Market-1501 attributes).
"""

from __future__ import annotations

from typing import Mapping

import keras
import numpy as np
from keras import ops
from sklearn.metrics import precision_recall_fscore_support

from mtl.tasks import BINARY, TaskSpec

EPSILON = 1e-7


def _predicted_class(y_pred):
    # (N, 1) sigmoid outputs are binary; (N, K) softmax outputs are categorical
    if y_pred.shape[-1] == 1:
        return ops.cast(ops.reshape(y_pred, (-1,)) > 0.5, "int32")
    return ops.cast(ops.argmax(y_pred, axis=-1), "int32")


class _MaskedMean(keras.metrics.Metric):
    """Sum of a per-row value over labelled rows / number of labelled rows, over an epoch."""

    def __init__(self, name, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def per_row(self, labels, y_pred):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        valid = ops.cast(labels >= 0, "float32")
        safe = ops.where(labels >= 0, labels, ops.zeros_like(labels))
        values = self.per_row(safe, ops.cast(y_pred, "float32"))
        self.total.assign_add(ops.sum(values * valid))
        self.count.assign_add(ops.sum(valid))

    def result(self):
        return ops.where(self.count > 0, self.total / ops.maximum(self.count, 1.0), 0.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


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
            p = ops.clip(ops.reshape(y_pred, (-1,)), EPSILON, 1 - EPSILON)
            t = ops.cast(labels, "float32")
            return -(t * ops.log(p) + (1 - t) * ops.log(1 - p))
        probs = ops.clip(y_pred, EPSILON, 1.0)
        return -ops.sum(ops.one_hot(labels, ops.shape(y_pred)[-1]) * ops.log(probs), axis=-1)


def class_probabilities(pred: np.ndarray, spec: TaskSpec) -> np.ndarray:
    """Model output of a task -> ``(N, K)`` class probabilities (a sigmoid unit becomes 2 columns)."""
    pred = np.asarray(pred, dtype=np.float32)
    if spec.kind == BINARY:
        p = pred.reshape(-1)
        return np.stack([1 - p, p], axis=1)
    return pred


def evaluate_task(y_true: np.ndarray, probs: np.ndarray, spec: TaskSpec) -> dict:
    """Metrics of one task over its labelled rows.

    Args:
        y_true: class indices, ``-1`` = missing (ignored).
        probs: ``(N, K)`` class probabilities (see ``class_probabilities``).
        spec: the task.

    Returns:
        ``accuracy``, ``macro_f1`` (over classes present in truth or prediction), ``majority_accuracy``
        (always predicting the most frequent true class), ``support``, ``per_class`` (a list of
        ``{class, precision, recall, f1, support}``), and for binary tasks ``balanced_accuracy``
        ((TPR + TNR) / 2, the per-attribute term of mA).
    """
    y_true = np.asarray(y_true)
    keep = y_true >= 0
    y, p = y_true[keep], np.asarray(probs)[keep]
    out: dict = {"task": spec.name, "kind": spec.kind, "support": int(keep.sum())}
    if not len(y):
        return out | {"accuracy": None, "macro_f1": None, "majority_accuracy": None, "per_class": []}
    pred = p.argmax(axis=1)
    labels = np.arange(spec.num_classes)
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    present = np.isin(labels, np.union1d(y, pred))
    counts = np.bincount(y, minlength=spec.num_classes)
    out |= {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(f1[present].mean()),
        "majority_accuracy": float(counts.max() / len(y)),
        "per_class": [
            {"class": spec.classes[i], "precision": float(prec[i]), "recall": float(rec[i]),
             "f1": float(f1[i]), "support": int(sup[i])}
            for i in labels
        ],
    }
    if spec.kind == BINARY:
        out["balanced_accuracy"] = _balanced_accuracy(y, pred)
    return out


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    terms = [float((pred[y == c] == c).mean()) for c in (0, 1) if (y == c).any()]
    return float(np.mean(terms))


def mean_accuracy_ma(results: Mapping[str, dict]) -> float | None:
    """mA: mean of the binary attributes' balanced accuracies ((TPR + TNR) / 2)."""
    values = [r["balanced_accuracy"] for r in results.values() if r.get("balanced_accuracy") is not None]
    return float(np.mean(values)) if values else None


def summarize(results: Mapping[str, dict]) -> dict:
    """Mean accuracy / macro F1 over tasks, and mA over binary attributes."""
    accs = [r["accuracy"] for r in results.values() if r.get("accuracy") is not None]
    f1s = [r["macro_f1"] for r in results.values() if r.get("macro_f1") is not None]
    base = [r["majority_accuracy"] for r in results.values() if r.get("majority_accuracy") is not None]
    return {
        "mean_accuracy": float(np.mean(accs)) if accs else None,
        "mean_macro_f1": float(np.mean(f1s)) if f1s else None,
        "mean_majority_accuracy": float(np.mean(base)) if base else None,
        "mA": mean_accuracy_ma(results),
    }
