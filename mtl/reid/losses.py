"""Losses of the identity task: identity cross-entropy, a metric loss on the embedding, centre loss.

The identity head (:mod:`mtl.reid.heads`) has up to three outputs, each with its own loss; their
labels are the index of the image's identity among the *training* identities, ``-1`` for an image
whose identity is not a training class (the ``embedding`` output's labels give validation people
codes of their own, see ``mtl.reid.heads.embedding_labels``: the triplet loss only compares labels):

* ``identity`` (softmax over training identities): masked sparse cross-entropy with label
  smoothing (:class:`mtl.losses.MaskedSparseCategoricalCrossentropy`, BoT uses 0.1);
* ``embedding`` (the batch-norm neck): the metric loss chosen by ``train.metric_loss`` and
  ``train.hard_mining`` (:func:`embedding_loss`):

  ``triplet`` (default): :class:`BatchHardTripletLoss` with hard mining (the default), else
  :class:`BatchAllTripletLoss`; ``contrastive`` (the Siamese pair loss, Hadsell, Chopra and
  LeCun 2006): :class:`ContrastiveLoss`; ``centroid_triplet`` (Wieczorek et al.
  2021): :class:`CentroidTripletLoss`. These two take each anchor's hardest negative in the
  batch with hard mining, else every negative;
* ``center`` (squared distances to learnt class centres, optional): :class:`CenterLoss`.

Their sum (weighted by ``train.loss_weights``) is the joint ID + triplet loss of the
"bag of tricks" baseline (Luo et al. 2019). Rows labelled ``-1`` take no part in any of them:
they are neither anchors, nor positives, nor negatives. Every metric loss is the mean of a
per-anchor (or, for the contrastive loss, per-pair) value over what the batch makes usable, 0
(not NaN) when nothing is; ``call`` returns that batch mean (the ``"sum"`` reduction passes it on).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
from keras import ops

from mtl.choices import METRIC_LOSSES

if TYPE_CHECKING:  # the identity task's kind (mtl.tasks) builds these losses: no import back at run time
    from mtl.tasks import TaskSpec

# squared distances are clipped here before the square root: its gradient at 0 is infinite
_MIN_SQUARED_DISTANCE = 1e-12
# stands for "no such pair" in the min over negatives (embeddings are far below this); also the
# ``initial`` of those mins, so that an empty batch gives 0 rather than Keras's eager "min of an
# empty tensor" error
_FAR = 1e9


def cross_squared_distances(a, b):
    """Squared Euclidean distances between the rows of ``a`` (N, D) and of ``b`` (M, D): (N, M), >= 0."""
    a, b = ops.cast(a, "float32"), ops.cast(b, "float32")
    d2 = (ops.sum(a * a, axis=1)[:, None] + ops.sum(b * b, axis=1)[None, :]
          - 2.0 * ops.matmul(a, ops.transpose(b)))
    return ops.maximum(d2, 0.0)


def _safe_sqrt(d2):
    # clipped before the square root: its gradient at 0 is infinite (identical embeddings)
    return ops.sqrt(ops.maximum(d2, _MIN_SQUARED_DISTANCE))


def pairwise_distances(x):
    """Euclidean distances between the rows of ``x`` (N, D): (N, N), differentiable everywhere."""
    return _safe_sqrt(cross_squared_distances(x, x))


def unit_rows(x):
    """The rows of ``x`` scaled to unit length (a zero row stays zero), differentiable everywhere."""
    x = ops.cast(x, "float32")
    return x / ops.sqrt(ops.maximum(ops.sum(x * x, axis=1, keepdims=True), _MIN_SQUARED_DISTANCE))


def pair_masks(y_true):
    """``(labels, positive, negative)``: the labels as int32 (N,), and (N, N) boolean masks.

    ``positive[i, j]``: ``j != i`` has ``i``'s label; ``negative[i, j]``: another label. Rows
    labelled ``-1`` are in neither mask, in their row or their column.
    """
    labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
    valid = labels >= 0
    both_valid = ops.logical_and(valid[:, None], valid[None, :])
    same = ops.equal(labels[:, None], labels[None, :])
    not_self = ops.logical_not(ops.cast(ops.eye(ops.shape(labels)[0]), "bool"))
    positive = ops.logical_and(ops.logical_and(same, not_self), both_valid)
    negative = ops.logical_and(ops.logical_not(same), both_valid)
    return labels, positive, negative


def _hinge(gap, margin):
    """``max(0, gap + margin)``, or the soft margin ``log(1 + exp(gap))`` when ``margin`` is None."""
    return ops.softplus(gap) if margin is None else ops.relu(gap + margin)


def _masked_mean(values, mask, axis=None):
    """Mean of ``values`` where ``mask`` holds (over ``axis``, all by default); 0 where it never holds.

    ``values`` must be finite everywhere (masked-out entries included): 0 x inf would be NaN.
    """
    w = ops.cast(mask, "float32")
    count = ops.sum(w, axis=axis)
    return ops.where(count > 0, ops.sum(values * w, axis=axis) / ops.maximum(count, 1.0), ops.zeros_like(count))


class _TripletLoss(keras.losses.Loss):
    """What the triplet losses share: the margin (``None``: soft margin) and the batch-mean reduction."""

    def __init__(self, margin: float | None = 0.3, name="triplet", **kwargs):
        kwargs.setdefault("reduction", "sum")  # call() already returns the batch mean
        super().__init__(name=name, **kwargs)
        self.margin = None if margin is None else float(margin)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


@keras.saving.register_keras_serializable(package="mtl")
class BatchHardTripletLoss(_TripletLoss):
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
        super().__init__(margin, name=name, **kwargs)

    def call(self, y_true, y_pred):
        _, positive, negative = pair_masks(y_true)
        d = pairwise_distances(y_pred)
        hardest_positive = ops.max(ops.where(positive, d, ops.zeros_like(d)), axis=1, initial=0.0)
        hardest_negative = ops.min(ops.where(negative, d, ops.full_like(d, _FAR)), axis=1, initial=_FAR)
        per_anchor = _hinge(hardest_positive - hardest_negative, self.margin)
        return _masked_mean(per_anchor, ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1)))



@keras.saving.register_keras_serializable(package="mtl")
class BatchAllTripletLoss(_TripletLoss):
    """Batch-all triplet loss (Hermans et al. 2017): every triplet of the batch, no mining.

    For every anchor ``a``, over all its positives ``p`` and negatives ``n`` (Euclidean ``d``)::

        loss_a = mean_{p, n} max(0, d(a, p) - d(a, n) + margin)   (soft margin: log(1 + exp(.)))

    The loss is the mean of ``loss_a`` over anchors with at least one positive and one negative,
    0 when there is none (easy triplets count as 0, so the loss shrinks as they become easy: the
    "BA" variant, not "BA != 0"). In a P x K batch every anchor has ``(K-1)(N-K)`` triplets, so this
    is also the mean over all triplets. It holds an (N, N, N) tensor: fine for batches of a few
    hundred. Rows with label ``-1`` are ignored.

    Args:
        margin: the margin, or ``None`` for the soft margin.
    """

    def __init__(self, margin: float | None = 0.3, name="batch_all_triplet", **kwargs):
        super().__init__(margin, name=name, **kwargs)

    def call(self, y_true, y_pred):
        _, positive, negative = pair_masks(y_true)
        d = pairwise_distances(y_pred)
        per_triplet = _hinge(d[:, :, None] - d[:, None, :], self.margin)  # [a, p, n]
        triplets = ops.logical_and(positive[:, :, None], negative[:, None, :])
        per_anchor = _masked_mean(per_triplet, triplets, axis=(1, 2))
        return _masked_mean(per_anchor, ops.any(triplets, axis=(1, 2)))


@keras.saving.register_keras_serializable(package="mtl")
class ContrastiveLoss(keras.losses.Loss):
    """Contrastive loss on the pairs of the batch (Hadsell, Chopra and LeCun 2006; a Siamese loss).

    On the L2-normalised embeddings (``normalize``), with Euclidean distances ``d`` (in [0, 2])::

        positive pairs (same label)   pull  d^2
        negative pairs                push  max(0, margin - d)^2
        loss = 0.5 * mean_{positive pairs} d^2 + 0.5 * mean_{negatives} max(0, margin - d)^2

    The two means make positives and negatives weigh the same, however many of each the batch
    holds (a P x K batch has ``K - 1`` positives but ``N - K`` negatives per image: summed pair by
    pair, the push would outweigh the pull about ``(P - 1)`` times); with as many of each it is
    exactly Hadsell's ``0.5 d^2`` / ``0.5 max(0, m - d)^2`` per pair. The negatives are, with
    ``hard_mining``, each anchor's hardest (nearest) negative (the mean over anchors with one),
    else every negative pair. A mean with nothing to average is 0; rows labelled ``-1`` are ignored.

    Why normalised: the ``embedding`` output is a batch-norm neck whose scale is a trained weight
    and whose size is ``model.embedding_dim``, so a fixed margin on raw distances would mean
    something different for each model, and the loss could be lowered by rescaling alone. On the
    unit sphere the margin is scale-free, and it is the geometry retrieval ranks by (the cosine of
    L2-normalised descriptors, :mod:`mtl.reid.embedding`): ``d^2 = 2 - 2 cos``. The default margin
    1.0 pushes a negative until its cosine is below 0.5 (two random directions in many dimensions
    sit at ``d`` about 1.41, cosine 0, already clear of it).

    Args:
        margin: the distance beyond which a negative pair costs nothing, in (0, 2] when normalised.
        hard_mining: only each anchor's hardest negative (True) or every negative pair (False).
        normalize: L2-normalise the embeddings first (False: raw Euclidean distances).
    """

    def __init__(self, margin: float = 1.0, hard_mining: bool = True, normalize: bool = True,
                 name="contrastive", **kwargs):
        kwargs.setdefault("reduction", "sum")  # call() already returns the batch mean
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)
        self.hard_mining = bool(hard_mining)
        self.normalize = bool(normalize)

    def call(self, y_true, y_pred):
        _, positive, negative = pair_masks(y_true)
        x = unit_rows(y_pred) if self.normalize else ops.cast(y_pred, "float32")
        d2 = cross_squared_distances(x, x)
        pull = _masked_mean(d2, positive)  # d^2 itself: no square root, so no clip in its gradient
        if self.hard_mining:
            nearest = ops.min(ops.where(negative, _safe_sqrt(d2), ops.full_like(d2, _FAR)), axis=1, initial=_FAR)
            push = _masked_mean(ops.square(ops.relu(self.margin - nearest)), ops.any(negative, axis=1))
        else:
            push = _masked_mean(ops.square(ops.relu(self.margin - _safe_sqrt(d2))), negative)
        return 0.5 * pull + 0.5 * push

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "hard_mining": self.hard_mining,
                "normalize": self.normalize}


@keras.saving.register_keras_serializable(package="mtl")
class CentroidTripletLoss(keras.losses.Loss):
    """Centroid triplet loss (Wieczorek et al. 2021, "On the unreasonable effectiveness of centroids
    in image retrieval"): each image against class centroids instead of other images.

    For every anchor ``a`` (label ``y``) with at least one other image of ``y`` in the batch and
    at least one image of another label, using Euclidean distances::

        positive centroid  c_a = mean of the OTHER images of y in the batch (leave-one-out, so
                                 the anchor does not pull its own centroid towards itself)
        negative centroids c_z = mean of ALL the batch's images of label z, for each z != y
        loss_a = max(0, d(a, c_a) - min_z d(a, c_z) + margin)            (hard_mining)
        loss_a = mean_z max(0, d(a, c_a) - d(a, c_z) + margin)           (otherwise)

    (soft margin ``log(1 + exp(.))`` with ``margin=None``). The loss is the mean of ``loss_a``
    over such anchors, 0 when there is none; gradients flow through the centroids too, as in the
    paper. Every other label counts once in the mean, however many images it has. Rows labelled
    ``-1`` are ignored (in no centroid).

    Args:
        margin: the margin (``train.triplet_margin``), or ``None`` for the soft margin.
        hard_mining: only the nearest negative centroid (True) or every one (False).
    """

    def __init__(self, margin: float | None = 0.3, hard_mining: bool = True, name="centroid_triplet", **kwargs):
        kwargs.setdefault("reduction", "sum")  # call() already returns the batch mean
        super().__init__(name=name, **kwargs)
        self.margin = None if margin is None else float(margin)
        self.hard_mining = bool(hard_mining)

    def call(self, y_true, y_pred):
        labels, positive, negative = pair_masks(y_true)
        x = ops.cast(y_pred, "float32")
        valid = labels >= 0
        # same[i, j]: j has i's label, i itself included (labelled rows only)
        same = ops.cast(ops.logical_and(ops.equal(labels[:, None], labels[None, :]),
                                        ops.logical_and(valid[:, None], valid[None, :])), "float32")
        count = ops.sum(same, axis=1)  # images of each row's label (0 for -1 rows)
        total = ops.matmul(same, x)
        centroid = total / ops.maximum(count, 1.0)[:, None]  # row j -> the centroid of j's label
        others = (total - x) / ops.maximum(count - 1.0, 1.0)[:, None]  # leave-one-out
        d_pos = _safe_sqrt(ops.sum(ops.square(x - others), axis=1))
        d_neg = _safe_sqrt(cross_squared_distances(x, centroid))  # [i, j]: i to the centroid of j's label
        if self.hard_mining:
            nearest = ops.min(ops.where(negative, d_neg, ops.full_like(d_neg, _FAR)), axis=1, initial=_FAR)
            per_anchor = _hinge(d_pos - nearest, self.margin)
        else:
            # each negative image j weighs 1 / (images of its label): every label counts once
            weight = ops.where(negative, 1.0 / ops.maximum(count, 1.0)[None, :], ops.zeros_like(d_neg))
            per_anchor = (ops.sum(weight * _hinge(d_pos[:, None] - d_neg, self.margin), axis=1)
                          / ops.maximum(ops.sum(weight, axis=1), 1e-12))
        return _masked_mean(per_anchor, ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1)))

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "hard_mining": self.hard_mining}


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


def embedding_loss(metric_loss: str = "triplet", triplet_margin: float | None = 0.3,
                   contrastive_margin: float = 1.0, hard_mining: bool = True) -> keras.losses.Loss:
    """The metric loss of the ``embedding`` output (``train.metric_loss``, ``train.hard_mining``).

    Args:
        metric_loss: ``triplet``, ``contrastive`` or ``centroid_triplet`` (``METRIC_LOSSES``).
        triplet_margin: margin of ``triplet`` and ``centroid_triplet``; ``None``: soft margin.
        contrastive_margin: margin of ``contrastive`` (on L2-normalised embeddings).
        hard_mining: each anchor's hardest negative in the batch (``triplet``: batch-hard, its
            hardest positive too) or every negative (``triplet``: batch-all).

    Returns:
        The loss object.

    Raises:
        ConfigError: an unknown ``metric_loss`` (the message lists the valid ones).
    """
    if metric_loss == "triplet":
        return BatchHardTripletLoss(triplet_margin) if hard_mining else BatchAllTripletLoss(triplet_margin)
    if metric_loss == "contrastive":
        return ContrastiveLoss(contrastive_margin, hard_mining)
    if metric_loss == "centroid_triplet":
        return CentroidTripletLoss(triplet_margin, hard_mining)
    from mtl.errors import ConfigError

    raise ConfigError(f"train.metric_loss={metric_loss!r}: must be one of {', '.join(METRIC_LOSSES)}")


def identity_losses(spec: TaskSpec, triplet_margin: float | None = 0.3, label_smoothing: float = 0.1,
                    center_loss: float = 0.0, metric_loss: str = "triplet", contrastive_margin: float = 1.0,
                    hard_mining: bool = True) -> dict:
    """``{output name: loss}`` for the outputs of the identity head.

    Args:
        spec: the identity task (its name is the classifier output's name).
        triplet_margin: margin of the triplet / centroid triplet loss on ``embedding``; ``None``
            for the soft margin.
        label_smoothing: of the identity cross-entropy (BoT: 0.1).
        center_loss: weight of the centre loss on ``center``; 0 leaves it out (the model then
            has no ``center`` output either).
        metric_loss, contrastive_margin, hard_mining: the ``embedding`` output's loss, see
            :func:`embedding_loss` (default: today's batch-hard triplet).

    Returns:
        A dict keyed by output name: the task's name, ``embedding`` and, with a centre loss,
        ``center``.
    """
    # imported here, not at the top: when this module is imported by the registration that follows
    # Keras's first import, mtl.losses may be the half-imported module that imported Keras
    from mtl.losses import MaskedSparseCategoricalCrossentropy

    losses = {
        spec.name: MaskedSparseCategoricalCrossentropy(label_smoothing=label_smoothing, name="identity_xent_loss"),
        "embedding": embedding_loss(metric_loss, triplet_margin, contrastive_margin, hard_mining),
    }
    if center_loss > 0:
        losses["center"] = CenterLoss(center_loss)
    return losses
