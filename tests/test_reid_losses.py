"""Identity losses against values worked out by hand."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtl.losses import MaskedSparseCategoricalCrossentropy
from mtl.reid.heads import CenterDistances
from mtl.reid.losses import BatchHardTripletLoss, CenterLoss, identity_losses, pairwise_distances
from mtl.tasks import TaskSpec

# Two identities (0 and 1), two unlabelled rows (-1) placed where they would be the hardest
# negative / each other's positive if they were not ignored, and a singleton (2, no positive).
POINTS = np.array([
    [0.0, 0.0],   # a0, label 0
    [3.0, 0.0],   # a1, label 0
    [0.0, 4.0],   # b0, label 1
    [1.0, 0.0],   # b1, label 1
    [0.0, 0.5],   # -1: 0.5 from a0, would be its hardest negative
    [0.0, 0.6],   # -1: 0.1 from the row above
    [20.0, 20.0],  # label 2: no positive, so never an anchor; far from everyone
], np.float32)
LABELS = np.array([0, 0, 1, 1, -1, -1, 2], np.int32)
# By hand: d(a0,a1)=3, d(a0,b0)=4, d(a0,b1)=1, d(a1,b0)=5, d(a1,b1)=2, d(b0,b1)=sqrt(17).
# anchor: hardest positive - hardest negative
GAPS = [3 - 1,              # a0: positive a1 (3), negatives b0 (4), b1 (1)
        3 - 2,              # a1: positive a0 (3), negatives b0 (5), b1 (2)
        math.sqrt(17) - 4,  # b0: positive b1, negatives a0 (4), a1 (5)
        math.sqrt(17) - 1]  # b1: positive b0, negatives a0 (1), a1 (2)


def _loss(loss, labels, points):
    return float(loss(tf.constant(labels), tf.constant(points)))


def test_batch_hard_triplet_with_margin_matches_hand_computation():
    expected = np.mean([max(0.0, g + 0.3) for g in GAPS])  # (2.3 + 1.3 + 0.4231 + 3.4231) / 4
    assert expected == pytest.approx(1.86155, abs=1e-4)
    assert _loss(BatchHardTripletLoss(0.3), LABELS, POINTS) == pytest.approx(expected, rel=1e-5)


def test_soft_margin_matches_hand_computation():
    expected = np.mean([math.log1p(math.exp(g)) for g in GAPS])
    assert _loss(BatchHardTripletLoss(None), LABELS, POINTS) == pytest.approx(expected, rel=1e-5)


def test_a_satisfied_margin_gives_zero_and_unlabelled_rows_change_nothing():
    # identity 0 around x=0, identity 1 around x=10: every hardest positive is 1, negative >= 9
    points = np.array([[0, 0], [1, 0], [10, 0], [11, 0]], np.float32)
    labels = np.array([0, 0, 1, 1], np.int32)
    assert _loss(BatchHardTripletLoss(0.3), labels, points) == pytest.approx(0.0, abs=1e-6)
    # an unlabelled row right on top of identity 0 would be a hardest negative of 0.0 distance
    with_unlabelled = np.vstack([points, [[0.0, 0.0]]]).astype(np.float32)
    assert _loss(BatchHardTripletLoss(0.3), np.append(labels, -1), with_unlabelled) == pytest.approx(0.0, abs=1e-6)


def test_no_usable_anchor_gives_zero_not_nan():
    points = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    assert _loss(BatchHardTripletLoss(0.3), np.array([-1, -1, -1, -1], np.int32), points) == 0.0
    assert _loss(BatchHardTripletLoss(0.3), np.array([0, 1, 2, 3], np.int32), points) == 0.0  # no positives
    assert _loss(BatchHardTripletLoss(0.3), np.array([5, 5, 5, -1], np.int32), points) == 0.0  # no negatives


def test_gradient_is_finite_for_identical_embeddings():
    x = tf.Variable([[1.0, 2.0], [1.0, 2.0], [3.0, 1.0], [3.0, 1.0]])
    with tf.GradientTape() as tape:
        loss = BatchHardTripletLoss(0.3)(tf.constant([0, 0, 1, 1]), x)
    grad = tape.gradient(loss, x)
    assert np.isfinite(grad.numpy()).all()
    d = pairwise_distances(tf.constant(POINTS[:4])).numpy()
    assert d[0, 3] == pytest.approx(1.0) and d[2, 3] == pytest.approx(math.sqrt(17), rel=1e-5)


def test_center_loss_and_center_distances():
    d2 = np.array([[1.0, 4.0], [9.0, 16.0], [2.0, 3.0]], np.float32)
    # rows 0 and 1 are labelled 1 and 0: own squared distances 4 and 9; row 2 unlabelled
    assert _loss(CenterLoss(1.0), np.array([1, 0, -1], np.int32), d2) == pytest.approx(0.5 * 6.5)
    assert _loss(CenterLoss(0.01), np.array([1, 0, -1], np.int32), d2) == pytest.approx(0.01 * 0.5 * 6.5)
    assert _loss(CenterLoss(1.0), np.array([-1, -1, -1], np.int32), d2) == 0.0
    layer = CenterDistances(3)
    x = np.array([[0.0, 1.0], [2.0, 2.0]], np.float32)
    out = np.asarray(layer(x))
    centers = np.asarray(layer.centers)
    np.testing.assert_allclose(out, ((x[:, None, :] - centers[None]) ** 2).sum(-1), rtol=1e-5, atol=1e-5)


def test_losses_and_layer_serialise():
    for obj in (BatchHardTripletLoss(None), BatchHardTripletLoss(0.5), CenterLoss(5e-4), CenterDistances(7)):
        config = obj.get_config()
        clone = type(obj).from_config(config)
        assert clone.get_config() == config
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
        assert type(restored) is type(obj) and restored.get_config() == config


def test_identity_losses_keys_and_options():
    spec = TaskSpec("identity", ("1", "2", "3"), "identity")
    losses = identity_losses(spec, triplet_margin=None, label_smoothing=0.2)
    assert set(losses) == {"identity", "embedding"}
    assert isinstance(losses["identity"], MaskedSparseCategoricalCrossentropy)
    assert losses["identity"].label_smoothing == 0.2 and losses["embedding"].margin is None
    with_center = identity_losses(spec, center_loss=5e-4)
    assert set(with_center) == {"identity", "embedding", "center"} and with_center["center"].weight == 5e-4
