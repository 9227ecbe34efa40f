"""The evaluation of the attribute heads after training, in numpy (no TensorFlow).

Per task (``evaluate_task``: its kind's own evaluation, ``TaskKind.evaluate``): accuracy, macro
F1, per-class precision / recall / F1 / support and the majority-class baseline of a
classification task, a regression task's mean absolute error, RMSE and R^2; across tasks: mA for
binary attributes, the mean over attributes of (TPR + TNR) / 2, the label-based metric of the
pedestrian-attribute literature (PETA, RAP, Market-1501 attributes); and the literature's
instance-based accuracy, precision, recall and F1 (``instance_metrics``, over every attribute of
an image at once). ``evaluate_attributes`` computes all of them for a set of tasks.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mtl.tasks import AUXILIARY, TaskSpec, attribute_tasks, classification_tasks

def class_probabilities(pred: np.ndarray, spec: TaskSpec) -> np.ndarray:
    """Model output of a task -> what it reports (``TaskKind.probabilities``): ``(N, K)`` class
    probabilities (a sigmoid unit becomes 2 columns), or a regression task's ``(N, 1)`` values."""
    return spec.type.probabilities(pred, spec)


def evaluate_task(y_true: np.ndarray, probs: np.ndarray, spec: TaskSpec) -> dict:
    """Metrics of one task over its labelled rows: its kind's evaluation (``TaskKind.evaluate``:
    accuracy, macro F1, majority baseline, per class P/R/F1 and, for a binary task, the balanced
    accuracy; a regression task's MAE, RMSE and R^2).

    Args:
        y_true: class indices, ``-1`` = missing (a regression task: values, NaN = missing).
        probs: ``(N, K)`` class probabilities (``class_probabilities``; a regression task: ``(N, 1)``).
        spec: the task.
    """
    return spec.type.evaluate(y_true, np.asarray(probs), spec)


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


# --------------------------------------------------------------------------------------------
# Instance-based metrics (Jia et al. 2021, "Rethinking of Pedestrian Attribute Recognition")

# The eps Rethinking_of_PAR adds to every denominator: an empty set gives 0, never NaN
PAR_EPSILON = 1e-20
INSTANCE_KEYS = ("instance_accuracy", "instance_precision", "instance_recall", "instance_f1")


def attribute_matrix(labels: Mapping[str, np.ndarray], predicted: Mapping[str, np.ndarray],
                     tasks: Sequence[TaskSpec]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The tasks' labels and predicted classes as one row of binary attributes per image.

    A binary task is one attribute, present when its class is 1 (the second class: ``yes``,
    ``female``, ``long``: Market-1501's code 2). A categorical task with ``K`` classes becomes
    ``K`` one-hot attributes named ``<task>=<class>`` (``age=young``, ``upcolor=black``), as PAR
    papers on Market-1501 binarise age and as its colour columns are annotated: each labelled
    categorical task adds exactly one true and one predicted positive to an image, whatever ``K``.
    A missing label (``-1``) makes every attribute of its task ``-1`` for that image.

    Args:
        labels: ``{task: (N,) class indices}``, ``-1`` = missing.
        predicted: ``{task: (N,) predicted class indices}``.
        tasks: the tasks, in column order; identity tasks are skipped.

    Returns:
        ``(truth, prediction, names)``: ``(N, A)`` int arrays (truth in ``{-1, 0, 1}``,
        prediction in ``{0, 1}``) and the ``A`` attribute names.
    """
    truth_cols, pred_cols, names = [], [], []
    for spec in tasks:
        if not spec.type.has_classes:
            continue
        y = np.asarray(labels[spec.name]).astype(np.int64).reshape(-1)
        p = np.asarray(predicted[spec.name]).astype(np.int64).reshape(-1)
        if spec.type.yes_no:
            truth_cols.append(y[:, None])
            pred_cols.append((p == 1).astype(np.int64)[:, None])
            names.append(spec.name)
            continue
        classes = np.arange(spec.num_classes)
        onehot = (y[:, None] == classes).astype(np.int64)
        truth_cols.append(np.where(y[:, None] >= 0, onehot, -1))
        pred_cols.append((p[:, None] == classes).astype(np.int64))
        names += [f"{spec.name}={c}" for c in spec.classes]
    n = len(next(iter(labels.values()))) if labels else 0
    if not names:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.int64), []
    return np.concatenate(truth_cols, axis=1), np.concatenate(pred_cols, axis=1), names


def instance_metrics(truth: np.ndarray, prediction: np.ndarray) -> dict:
    """Instance-based accuracy, precision, recall and F1 over binary attributes, as Rethinking_of_PAR
    (``get_pedestrian_metrics``) reports them on PETA, RAP and PA-100K.

    Protocol, per image ``i`` with true positive set ``G_i`` and predicted positive set ``P_i``
    (over the attributes labelled for that image only: a ``-1`` attribute is in neither set,
    whatever was predicted for it): accuracy ``|P ∩ G| / (|P ∪ G| + eps)``, precision
    ``|P ∩ G| / (|P| + eps)``, recall ``|P ∩ G| / (|G| + eps)``, with ``eps = 1e-20`` as theirs, so
    an empty denominator scores 0 (an image with no true and no predicted positive scores 0 on all
    three, as in their code). Each is averaged over images; F1 is ``2 P R / (P + R + eps)`` of the
    *averaged* P and R (their choice, not the mean of per-image F1s). Images with no labelled
    attribute are left out (their code has no missing labels; counting such an image as 0 would
    punish the model for the annotation).

    Args:
        truth: ``(N, A)`` in ``{-1, 0, 1}`` (``-1`` = not labelled).
        prediction: ``(N, A)`` in ``{0, 1}`` (e.g. ``attribute_matrix``).

    Returns:
        ``instance_accuracy``, ``instance_precision``, ``instance_recall``, ``instance_f1`` (None
        when no image has a labelled attribute) and ``num_images`` (the images counted).
    """
    truth = np.asarray(truth)
    prediction = np.asarray(prediction)
    labelled = truth >= 0
    counted = labelled.any(axis=1)
    if not counted.any():
        return {**dict.fromkeys(INSTANCE_KEYS), "num_images": 0}
    true_pos = (truth == 1) & labelled
    pred_pos = (prediction == 1) & labelled
    true_pos, pred_pos = true_pos[counted], pred_pos[counted]
    intersection = (true_pos & pred_pos).sum(axis=1).astype(np.float64)
    union = (true_pos | pred_pos).sum(axis=1).astype(np.float64)
    accuracy = float(np.mean(intersection / (union + PAR_EPSILON)))
    precision = float(np.mean(intersection / (pred_pos.sum(axis=1) + PAR_EPSILON)))
    recall = float(np.mean(intersection / (true_pos.sum(axis=1) + PAR_EPSILON)))
    f1 = 2 * precision * recall / (precision + recall + PAR_EPSILON)
    return {"instance_accuracy": accuracy, "instance_precision": precision, "instance_recall": recall,
            "instance_f1": float(f1), "num_images": int(counted.sum())}


def evaluate_attributes(labels: Mapping[str, np.ndarray], probabilities: Mapping[str, np.ndarray],
                        tasks: Sequence[TaskSpec]) -> dict:
    """Every attribute metric of a labelled set of images: per task, the summary (mean accuracy,
    macro F1, majority baseline, label-based mA over the binary tasks, instance-based accuracy /
    precision / recall / F1 over the binary tasks and the one-hot classes of the categorical ones).

    A regression task has its own result (``evaluate_regression``) and is in no summary figure.

    Args:
        labels: ``{task: (N,) class indices}``, ``-1`` = missing (a regression task: values, NaN
            = missing).
        probabilities: ``{task: (N, K) class probabilities}`` (``class_probabilities``; a
            regression task: ``(N, 1)`` values).
        tasks: the tasks; the identity task, and tasks without labels or probabilities, are skipped.

    Returns:
        ``{"tasks": {task: evaluate_task result}, "summary": summarize(...) plus INSTANCE_KEYS,
        "instance": {"attributes": [names of the attributes counted (attribute_matrix)],
        "num_images": images with a labelled attribute}}``.
    """
    evaluated = [t for t in attribute_tasks(tasks) if t.name in labels and t.name in probabilities]
    results = {t.name: evaluate_task(labels[t.name], probabilities[t.name], t) for t in evaluated}
    specs = classification_tasks(evaluated)
    predicted = {t.name: np.asarray(probabilities[t.name]).argmax(axis=1) for t in specs}
    # the auxiliary tasks (camera, junk) have their own results, but the summary describes the
    # person's attributes only
    main = [t for t in specs if t.name not in AUXILIARY]
    truth, prediction, names = attribute_matrix({t.name: labels[t.name] for t in main}, predicted, main)
    instance = instance_metrics(truth, prediction)
    summary = summarize({t.name: results[t.name] for t in main}) | {k: instance[k] for k in INSTANCE_KEYS}
    return {"tasks": results, "summary": summary,
            "instance": {"attributes": names, "num_images": instance["num_images"]}}


def instance_line(summary: Mapping) -> str | None:
    """The instance-based metrics of a summary as one line of text, or None when it has none (a
    run written before they existed, or no labelled attribute)."""
    values = [summary.get(k) for k in INSTANCE_KEYS]
    if any(v is None for v in values):
        return None
    acc, prec, rec, f1 = values
    return f"instance accuracy {acc:.3f}  precision {prec:.3f}  recall {rec:.3f}  F1 {f1:.3f}"
