"""The identity task's metric losses: ``train.metric_loss``
(triplet, contrastive, centroid_triplet) and ``train.hard_mining``, each against a plain numpy
reference written from the papers' definitions, and each trained for a step and reloaded."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtl.errors import ConfigError
from mtl.reid.losses import (METRIC_LOSSES, BatchAllTripletLoss, BatchHardTripletLoss, CentroidTripletLoss,
                             ContrastiveLoss, embedding_loss, identity_losses)
from mtl.tasks import IDENTITY, TaskSpec

# three identities with 2-3 images, a singleton (3: a negative for others, never an anchor) and two
# unlabelled rows, placed among the others so that they would change every loss if they counted
LABELS = np.array([0, 0, 0, -1, 1, 1, 2, 2, 2, 3, -1], np.int32)


def _points(seed=0, dim=6):
    return np.random.default_rng(seed).normal(size=(len(LABELS), dim)).astype(np.float32)


def _value(loss, labels, points):
    return float(loss(tf.constant(labels), tf.constant(points)))


def _hinge(gap, margin):
    return np.log1p(np.exp(gap)) if margin is None else max(0.0, gap + margin)


def _dist(a, b):
    return float(np.sqrt(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def _anchors(labels):
    """Indices with at least one positive and one negative (labelled rows only)."""
    out = []
    for a, y in enumerate(labels):
        if y < 0:
            continue
        pos = [p for p, z in enumerate(labels) if z == y and p != a]
        neg = [n for n, z in enumerate(labels) if z >= 0 and z != y]
        if pos and neg:
            out.append((a, pos, neg))
    return out


def reference_triplet(labels, x, margin, hard):
    per_anchor = []
    for a, pos, neg in _anchors(labels):
        if hard:
            gap = max(_dist(x[a], x[p]) for p in pos) - min(_dist(x[a], x[n]) for n in neg)
            per_anchor.append(_hinge(gap, margin))
        else:
            per_anchor.append(np.mean([_hinge(_dist(x[a], x[p]) - _dist(x[a], x[n]), margin)
                                       for p in pos for n in neg]))
    return float(np.mean(per_anchor)) if per_anchor else 0.0


def reference_contrastive(labels, x, margin, hard, normalize=True):
    x = np.asarray(x, np.float64)
    if normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(labels)
    pos = [_dist(x[i], x[j]) ** 2 for i, j in itertools.product(range(n), repeat=2)
           if i != j and labels[i] >= 0 and labels[i] == labels[j]]
    if hard:
        neg = []
        for i in range(n):
            others = [_dist(x[i], x[j]) for j in range(n) if labels[i] >= 0 and labels[j] >= 0
                      and labels[j] != labels[i]]
            if others:
                neg.append(max(0.0, margin - min(others)) ** 2)
    else:
        neg = [max(0.0, margin - _dist(x[i], x[j])) ** 2 for i, j in itertools.product(range(n), repeat=2)
               if labels[i] >= 0 and labels[j] >= 0 and labels[i] != labels[j]]
    return 0.5 * (np.mean(pos) if pos else 0.0) + 0.5 * (np.mean(neg) if neg else 0.0)


def reference_centroid_triplet(labels, x, margin, hard):
    x = np.asarray(x, np.float64)
    per_anchor = []
    for a, pos, _ in _anchors(labels):
        own = x[pos].mean(axis=0)  # the OTHER images of the anchor's identity
        d_pos = _dist(x[a], own)
        others = sorted({int(z) for z in labels if z >= 0 and z != labels[a]})
        d_neg = [_dist(x[a], x[labels == z].mean(axis=0)) for z in others]
        if hard:
            per_anchor.append(_hinge(d_pos - min(d_neg), margin))
        else:
            per_anchor.append(np.mean([_hinge(d_pos - d, margin) for d in d_neg]))
    return float(np.mean(per_anchor)) if per_anchor else 0.0


@pytest.mark.parametrize("margin", [0.3, 2.0, None])
@pytest.mark.parametrize("hard", [True, False])
def test_triplet_matches_numpy(margin, hard):
    x = _points(1)
    loss = BatchHardTripletLoss(margin) if hard else BatchAllTripletLoss(margin)
    assert _value(loss, LABELS, x) == pytest.approx(reference_triplet(LABELS, x, margin, hard), rel=1e-5)


@pytest.mark.parametrize("margin", [0.8, 1.3, 2.0])
@pytest.mark.parametrize("hard", [True, False])
def test_contrastive_matches_numpy(margin, hard):
    x = _points(2)
    expected = reference_contrastive(LABELS, x, margin, hard)
    assert expected > 0
    assert _value(ContrastiveLoss(margin, hard), LABELS, x) == pytest.approx(expected, rel=1e-5)


def test_contrastive_on_raw_embeddings_matches_numpy():
    x = _points(3) * 0.3
    for hard in (True, False):
        expected = reference_contrastive(LABELS, x, 1.0, hard, normalize=False)
        assert _value(ContrastiveLoss(1.0, hard, normalize=False), LABELS, x) == pytest.approx(expected, rel=1e-5)


def test_contrastive_weighs_positives_and_negatives_equally():
    # two identities 1 apart on a line; pulls: d^2 = 0.01 per positive pair; pushes (margin 2):
    # (2 - 1)^2 = 1 per negative pair, whatever the counts of each
    x = np.array([[0.0, 0.0], [0.1, 0.0], [1.0, 0.0], [1.1, 0.0]], np.float32)
    x3 = np.vstack([x, [[1.05, 0.0]]]).astype(np.float32)  # one more image of identity 1
    raw = ContrastiveLoss(2.0, hard_mining=False, normalize=False)
    assert _value(raw, np.array([0, 0, 1, 1]), x) == pytest.approx(0.5 * 0.01 + 0.5 * np.mean([1.0, 0.9 ** 2, 1.1 ** 2, 1.0]),
                                                                    rel=1e-5)
    assert _value(raw, np.array([0, 0, 1, 1, 1]), x3) == pytest.approx(
        reference_contrastive(np.array([0, 0, 1, 1, 1]), x3, 2.0, False, normalize=False), rel=1e-5)


@pytest.mark.parametrize("margin", [0.3, 1.5, None])
@pytest.mark.parametrize("hard", [True, False])
def test_centroid_triplet_matches_numpy(margin, hard):
    x = _points(4)
    expected = reference_centroid_triplet(LABELS, x, margin, hard)
    assert expected > 0
    assert _value(CentroidTripletLoss(margin, hard), LABELS, x) == pytest.approx(expected, rel=1e-5)


def test_centroid_triplet_leaves_the_anchor_out_of_its_centroid_by_hand():
    # identity 0: (0,0), (2,0): each one's leave-one-out centroid is the other, 2 away; identity 1
    # at (0,3), (0,5): centroid (0,4). Anchor (0,0): 2 - 4 + 0.3 = -1.7 -> 0; anchor (2,0):
    # 2 - sqrt(20) < 0 -> 0; anchor (0,3): own centroid (0,5), 2 away; other centroid (1,0),
    # sqrt(10) away -> 2 - 3.1623 + 0.3 < 0; anchor (0,5): 2 - sqrt(26) -> 0. Move identity 1 near:
    x = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 0.5], [1.0, 1.5]], np.float32)
    # centroids: id 0 (1, 0), id 1 (1, 1). anchor 0: own (2,0) at 2, other (1,1) at sqrt(2)
    # anchor 1: own (0,0) at 2, other (1,1) at sqrt(2); anchor 2: own (1,1.5) at 1, other (1,0) at 0.5;
    # anchor 3: own (1,0.5) at 1, other (1,0) at 1.5
    gaps = [2 - np.sqrt(2), 2 - np.sqrt(2), 1 - 0.5, 1 - 1.5]
    expected = np.mean([max(0.0, g + 0.3) for g in gaps])
    assert _value(CentroidTripletLoss(0.3), np.array([0, 0, 1, 1]), x) == pytest.approx(expected, rel=1e-5)
    # a whole-class centroid (anchor included) would give other values: the leave-one-out matters
    assert expected != pytest.approx(np.mean([max(0.0, g + 0.3) for g in [1 - np.sqrt(2), 1 - np.sqrt(2),
                                                                          0.5 - 0.5, 0.5 - 1.5]]))


LOSSES = {
    "batch_all": BatchAllTripletLoss(0.3),
    "contrastive_hard": ContrastiveLoss(1.0, True),
    "contrastive_all": ContrastiveLoss(1.0, False),
    "centroid_hard": CentroidTripletLoss(0.3, True),
    "centroid_all": CentroidTripletLoss(0.3, False),
    "centroid_soft": CentroidTripletLoss(None, False),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_no_usable_rows_give_zero_not_nan(name):
    loss = LOSSES[name]
    x = _points(5, dim=3)[:4]
    assert _value(loss, np.array([-1, -1, -1, -1]), x) == 0.0
    assert _value(loss, np.array([0, 1, 2, 3]), x) == (0.0 if "contrastive" not in name else
                                                        pytest.approx(reference_contrastive(
                                                            np.array([0, 1, 2, 3]), x, 1.0, "hard" in name)))
    assert _value(loss, np.array([5, 5, 5, -1]), x) == (0.0 if "contrastive" not in name else
                                                         pytest.approx(reference_contrastive(
                                                             np.array([5, 5, 5, -1]), x, 1.0, "hard" in name)))
    assert _value(loss, np.zeros((0,), np.int32), np.zeros((0, 3), np.float32)) == 0.0


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradients_are_finite_at_identical_embeddings(name):
    # identical rows (distance 0) and an all-zero row (norm 0, for the normalised contrastive)
    x = tf.Variable([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [3.0, 1.0], [3.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    labels = tf.constant([0, 0, 1, 1, 2, 2, -1])
    with tf.GradientTape() as tape:
        value = LOSSES[name](labels, x)
    grad = tape.gradient(value, x)
    assert np.isfinite(float(value)) and np.isfinite(grad.numpy()).all()


@pytest.mark.parametrize("name", list(LOSSES))
def test_config_round_trip(name):
    loss = LOSSES[name]
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(again) is type(loss) and again.get_config() == loss.get_config()
    x = _points(6)
    assert _value(again, LABELS, x) == pytest.approx(_value(loss, LABELS, x), rel=1e-6)


def test_embedding_loss_table_and_identity_losses_default():
    assert isinstance(embedding_loss(), BatchHardTripletLoss)  # today's default
    assert isinstance(embedding_loss("triplet", hard_mining=False), BatchAllTripletLoss)
    c = embedding_loss("contrastive", contrastive_margin=0.7, hard_mining=False)
    assert isinstance(c, ContrastiveLoss) and c.margin == 0.7 and not c.hard_mining
    ct = embedding_loss("centroid_triplet", triplet_margin=0.5)
    assert isinstance(ct, CentroidTripletLoss) and ct.margin == 0.5 and ct.hard_mining
    with pytest.raises(ConfigError, match="train.metric_loss='arcface'.*centroid_triplet"):
        embedding_loss("arcface")
    spec = TaskSpec(IDENTITY, ("1", "2"), IDENTITY)
    assert isinstance(identity_losses(spec)["embedding"], BatchHardTripletLoss)
    assert isinstance(identity_losses(spec, metric_loss="centroid_triplet")["embedding"], CentroidTripletLoss)


def test_config_keys_validate_and_reach_the_engine():
    from mtl.config import parse_overrides, valid_values
    from mtl.experiment import train_args
    from conftest import tiny_config

    assert valid_values("train.metric_loss") == METRIC_LOSSES
    default = train_args(tiny_config()).identity_options()
    assert (default["metric_loss"], default["hard_mining"], default["contrastive_margin"]) == ("triplet", True, 1.0)
    cfg = tiny_config(None, parse_overrides(["train.metric_loss=contrastive", "train.hard_mining=false",
                                             "train.contrastive_margin=0.5"]))
    options = train_args(cfg).identity_options()
    assert (options["metric_loss"], options["hard_mining"], options["contrastive_margin"]) == ("contrastive", False, 0.5)
    for bad, words in [("train.metric_loss=siamese", "train.metric_loss='siamese'.*contrastive"),
                       ("train.contrastive_margin=0", "train.contrastive_margin=0"),
                       ("train.contrastive_margin=2.5", "train.contrastive_margin=2.5")]:
        with pytest.raises(ConfigError, match=words):
            tiny_config(None, parse_overrides([bad]))


# one run per loss class, covering both mining modes across them
RUNS = {"contrastive": ("contrastive", False, ContrastiveLoss),
        "centroid_triplet": ("centroid_triplet", True, CentroidTripletLoss),
        "triplet_all": ("triplet", False, BatchAllTripletLoss)}


@pytest.mark.slow
@pytest.mark.parametrize("run", list(RUNS))
def test_each_choice_trains_a_step_and_reloads(run, synthetic_root, tmp_path):
    from mtl.config import parse_overrides
    from mtl.experiment import train
    from mtl.rundir import MODEL, RunDir
    from conftest import tiny_config

    metric_loss, hard, cls = RUNS[run]
    settings = ["model.embedding_dim=16", f"train.metric_loss={metric_loss}", f"train.hard_mining={str(hard).lower()}",
                "train.steps_per_epoch=1"]
    cfg = tiny_config(synthetic_root, parse_overrides(settings), tasks="identity,gender",
                      train={"epochs": 1, "batch_size": 16, "k_images": 4})
    train(cfg, tmp_path / "run", log=None)
    history = RunDir(tmp_path / "run").read_history()
    assert np.isfinite(history[-1]["embedding_loss"]) and np.isfinite(history[-1]["val_embedding_loss"])
    path = tmp_path / "run" / MODEL
    compiled = keras.saving.load_model(path)  # compile=True
    plain = keras.saving.load_model(path, compile=False)
    assert type(compiled.loss["embedding"]) is cls
    assert compiled.loss["embedding"].get_config()["hard_mining" if cls is not BatchAllTripletLoss else "margin"] \
        == (hard if cls is not BatchAllTripletLoss else 0.3)
    x = np.random.default_rng(0).uniform(size=(2, 32, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(compiled.predict(x, verbose=0)["embedding"], plain.predict(x, verbose=0)["embedding"],
                               rtol=1e-5, atol=1e-6)
