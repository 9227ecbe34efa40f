import math

import numpy as np
import pytest

from mtl.losses import MaskedBinaryCrossentropy, MaskedSparseCategoricalCrossentropy, inverse_frequency_weights
from mtl.metrics import MaskedAccuracy, MaskedCrossentropy
from mtl.scoring import evaluate_task, mean_accuracy_ma, summarize
from mtl.tasks import TaskSpec

PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.25, 0.25, 0.5]], np.float32)


def test_masked_sparse_ce_is_mean_over_labelled_rows():
    y = np.array([0, -1, 2, -1])
    loss = float(MaskedSparseCategoricalCrossentropy()(y, PROBS))
    # rows 0 and 2 are labelled: (-ln 0.7 - ln 0.4) / 2
    assert loss == pytest.approx((-math.log(0.7) - math.log(0.4)) / 2, rel=1e-5)


def test_masked_sparse_ce_is_zero_not_nan_without_labels():
    loss = float(MaskedSparseCategoricalCrossentropy()(np.array([-1, -1, -1, -1]), PROBS))
    assert loss == 0.0


def test_class_weights_weight_rows_and_normalise_by_weight_sum():
    y = np.array([0, 1, -1, 2])
    w = [1.0, 2.0, 4.0]
    loss = float(MaskedSparseCategoricalCrossentropy(class_weights=w)(y, PROBS))
    expected = (1 * -math.log(0.7) + 2 * -math.log(0.8) + 4 * -math.log(0.5)) / (1 + 2 + 4)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_label_smoothing_by_hand():
    y = np.array([0, -1, -1, -1])
    loss = float(MaskedSparseCategoricalCrossentropy(label_smoothing=0.3)(y, PROBS))
    target = np.array([0.7 + 0.1, 0.1, 0.1])
    assert loss == pytest.approx(-(target * np.log(PROBS[0])).sum(), rel=1e-5)


def test_masked_binary_ce_by_hand_and_all_masked():
    p = np.array([[0.9], [0.2], [0.6]], np.float32)
    y = np.array([1, -1, 0])
    loss = float(MaskedBinaryCrossentropy()(y, p))
    assert loss == pytest.approx((-math.log(0.9) - math.log(0.4)) / 2, rel=1e-5)
    assert float(MaskedBinaryCrossentropy()(np.array([-1, -1, -1]), p)) == 0.0
    weighted = float(MaskedBinaryCrossentropy(class_weights=[1.0, 3.0])(y, p))
    assert weighted == pytest.approx((3 * -math.log(0.9) + 1 * -math.log(0.4)) / 4, rel=1e-5)


def test_masked_metrics_accumulate_over_labelled_rows_across_batches():
    acc, xent = MaskedAccuracy(), MaskedCrossentropy()
    for m in (acc, xent):
        m.update_state(np.array([0, -1]), PROBS[:2])  # row 0 right
        m.update_state(np.array([-1, -1]), PROBS[2:])  # nothing labelled: must not count
        m.update_state(np.array([1, 2]), PROBS[2:])  # row 2 wrong (predicts 2), row 3 right
    assert float(acc.result()) == pytest.approx(2 / 3)
    assert float(xent.result()) == pytest.approx((-math.log(0.7) - math.log(0.3) - math.log(0.5)) / 3, rel=1e-5)
    binary = MaskedAccuracy()
    binary.update_state(np.array([1, 0, -1]), np.array([[0.9], [0.7], [0.1]], np.float32))
    assert float(binary.result()) == pytest.approx(0.5)


def test_evaluate_task_per_class_and_baseline():
    spec = TaskSpec("color", ("a", "b", "c"))
    y = np.array([0, 0, 1, 2, -1])
    probs = np.array([[.9, .1, 0], [.1, .9, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)
    r = evaluate_task(y, probs, spec)
    assert r["support"] == 4 and r["accuracy"] == pytest.approx(0.75)
    assert r["majority_accuracy"] == pytest.approx(0.5)
    a, b, c = r["per_class"]
    assert (a["precision"], a["recall"]) == (1.0, 0.5)
    assert b["precision"] == pytest.approx(0.5) and b["recall"] == 1.0
    assert r["macro_f1"] == pytest.approx(np.mean([2 / 3, 2 / 3, 1.0]))


def test_mA_is_mean_of_balanced_accuracies():
    spec = TaskSpec("hat", ("no", "yes"), "binary")
    y = np.array([0, 0, 0, 1])
    probs = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)  # TNR 2/3, TPR 1
    r = evaluate_task(y, probs, spec)
    assert r["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert mean_accuracy_ma({"hat": r, "bag": {**r, "balanced_accuracy": 0.5}}) == pytest.approx(((2 / 3 + 1) / 2 + 0.5) / 2)
    assert summarize({"hat": r})["mean_accuracy"] == pytest.approx(0.75)


def test_inverse_frequency_weights():
    w = inverse_frequency_weights(np.array([0, 0, 0, 1, -1]), 3, cap=10)
    # n / (K n_c) over the 4 labelled rows; the absent class gets the cap; mean 1 over rows
    raw = np.array([4 / (3 * 3), 4 / (3 * 1), 10.0])
    assert np.allclose(w, raw / raw[[0, 0, 0, 1]].mean())
