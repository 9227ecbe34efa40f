"""Losses of the identity task: identity cross-entropy, batch-hard triplet loss, centre loss.

The identity head (:mod:`mtl.reid.heads`) has up to three outputs, each with its own loss; their
labels are the index of the image's identity among the *training* identities, ``-1`` for an image
whose identity is not a training class (the ``embedding`` output's labels give validation people
codes of their own, see ``mtl.reid.heads.embedding_labels``: the triplet loss only compares labels):

* ``identity`` (softmax over training identities): masked sparse cross-entropy with label
  smoothing (:class:`mtl.losses.MaskedSparseCategoricalCrossentropy`, BoT uses 0.1);
* ``embedding`` (the batch-norm neck): :class:`BatchHardTripletLoss`;
* ``center`` (squared distances to learnt class centres, optional): :class:`CenterLoss`.

Their sum (weighted by ``train.loss_weights``) is the joint ID + triplet loss of the
"bag of tricks" baseline (Luo et al. 2019). Rows labelled ``-1`` take no part in any of them:
they are neither anchors, nor positives, nor negatives.
"""

from __future__ import annotations

import keras
from keras import ops

from mtl.tasks import TaskSpec

# squared distances are clipped here before the square root: its gradient at 0 is infinite
_MIN_SQUARED_DISTANCE = 1e-12
# stands for "no such pair" in the min over negatives (embeddings are far below this)
_FAR = 1e9


def pairwise_distances(x):
    """Euclidean distances between the rows of ``x`` (N, D): (N, N), differentiable everywhere."""
    x = ops.cast(x, "float32")
    sq = ops.sum(x * x, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * ops.matmul(x, ops.transpose(x))
    return ops.sqrt(ops.maximum(d2, _MIN_SQUARED_DISTANCE))


@keras.saving.register_keras_serializable(package="mtl")
class BatchHardTripletLoss(keras.losses.Loss):
    """Batch-hard triplet loss (Hermans et al. 2017, "In defense of the triplet loss").

    For every anchor ``a`` of the batch with at least one positive (another row with its
    label) and one negative (a row with another label), using Euclidean distances ``d``::

        hardest positive  d_ap = max_{p: y_p = y_a, p != a} d(a, p)
        hardest negative  d_an = min_{n: y_n != y_a} d(a, n)
        loss_a = max(0, d_ap - d_an + margin)       (margin given)
        loss_a = log(1 + exp(d_ap - d_an))           (margin None: soft margin)

    The loss is the mean of ``loss_a`` over such anchors, 0 when there is none. Rows with label
    ``-1`` are ignored completely. Batches from the P x K sampler
    (:mod:`mtl.data.sampler`) give every anchor ``K - 1`` positives.

    Args:
        margin: the margin, or ``None`` for the soft margin.
    """

    def __init__(self, margin: float | None = 0.3, name="batch_hard_triplet", **kwargs):
        kwargs.setdefault("reduction", "sum")  # call() already returns the batch mean
        super().__init__(name=name, **kwargs)
        self.margin = None if margin is None else float(margin)

    def call(self, y_true, y_pred):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        d = pairwise_distances(y_pred)
        valid = labels >= 0
        both_valid = ops.logical_and(valid[:, None], valid[None, :])
        same = ops.equal(labels[:, None], labels[None, :])
        not_self = ops.logical_not(ops.cast(ops.eye(ops.shape(labels)[0]), "bool"))
        positive = ops.logical_and(ops.logical_and(same, not_self), both_valid)
        negative = ops.logical_and(ops.logical_not(same), both_valid)
        hardest_positive = ops.max(ops.where(positive, d, ops.zeros_like(d)), axis=1)
        hardest_negative = ops.min(ops.where(negative, d, ops.full_like(d, _FAR)), axis=1)
        gap = hardest_positive - hardest_negative
        per_anchor = ops.softplus(gap) if self.margin is None else ops.relu(gap + self.margin)
        usable = ops.cast(ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1)), "float32")
        count = ops.sum(usable)
        return ops.where(count > 0, ops.sum(per_anchor * usable) / ops.maximum(count, 1.0), ops.zeros_like(count))

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


@keras.saving.register_keras_serializable(package="mtl")
class CenterLoss(keras.losses.Loss):
    """Centre loss (Wen et al. 2016) on the ``center`` output of the identity head.

    The ``center`` output holds, for each image, its squared distance to every identity centre
    (``(N, num_ids)``, see :class:`mtl.reid.heads.CenterDistances`); the loss is
    ``weight * 0.5 * mean_i d2(x_i, c_{y_i})`` over labelled rows (0 without any). The centres are
    weights of the model, learnt by the optimiser with the rest.

    Args:
        weight: the factor (BoT uses 5e-4); kept in the loss so that ``train.center_loss`` is the
            one setting a user changes.
    """

    def __init__(self, weight: float = 5e-4, name="center_loss", **kwargs):
        kwargs.setdefault("reduction", "sum")
        super().__init__(name=name, **kwargs)
        self.weight = float(weight)

    def call(self, y_true, y_pred):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        valid = labels >= 0
        safe = ops.where(valid, labels, ops.zeros_like(labels))
        d2 = ops.cast(y_pred, "float32")
        own = ops.sum(d2 * ops.one_hot(safe, ops.shape(d2)[-1], dtype="float32"), axis=-1)
        w = ops.cast(valid, "float32")
        count = ops.sum(w)
        mean = ops.where(count > 0, ops.sum(own * w) / ops.maximum(count, 1.0), ops.zeros_like(count))
        return self.weight * 0.5 * mean

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}


def identity_losses(spec: TaskSpec, triplet_margin: float | None = 0.3, label_smoothing: float = 0.1,
                    center_loss: float = 0.0) -> dict:
    """``{output name: loss}`` for the outputs of the identity head.

    Args:
        spec: the identity task (its name is the classifier output's name).
        triplet_margin: margin of the batch-hard triplet loss on ``embedding``; ``None`` for the
            soft margin.
        label_smoothing: of the identity cross-entropy (BoT: 0.1).
        center_loss: weight of the centre loss on ``center``; 0 leaves it out (the model then
            has no ``center`` output either).

    Returns:
        A dict keyed by output name: the task's name, ``embedding`` and, with a centre loss,
        ``center``.
    """
    # imported here, not at the top: when this module is imported by the registration that follows
    # Keras's first import, mtl.losses may be the half-imported module that imported Keras
    from mtl.losses import MaskedSparseCategoricalCrossentropy

    losses = {
        spec.name: MaskedSparseCategoricalCrossentropy(label_smoothing=label_smoothing, name="identity_xent_loss"),
        "embedding": BatchHardTripletLoss(triplet_margin),
    }
    if center_loss > 0:
        losses["center"] = CenterLoss(center_loss)
    return losses
