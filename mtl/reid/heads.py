"""The identity head: pooled trunk features -> embedding with a batch-norm neck -> identity classifier.

The "bag of tricks" baseline for re-identification (Luo et al. 2019, "BoT")::

    pooled features --Dense(embedding_dim, no bias)--> BatchNormalization "embedding" (the neck)
                    --Dense(num_ids, no bias, softmax)--> "identity"

* the triplet loss acts on the ``embedding`` output and the identity cross-entropy on the
  classifier behind it (the BN neck lets the two losses agree);
* at test time the ``embedding`` output is the descriptor (``mtl.reid.embedding``): the same
  layers as in training, no branch on a ``training`` flag;
* the neck's BN has no shift (``center=False``, BoT freezes it at 0) and momentum 0.9 (BoT's
  PyTorch 0.1), so its moving statistics settle within a few hundred steps;
* an optional ``center`` output (``CenterDistances``) holds the squared distance of each
  embedding to learnt identity centres, for the centre loss.

All outputs are float32, also under mixed precision. ``embedding_dim <= 0`` puts the neck straight
on the pooled features (BoT with ResNet-50: 2048-d).
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
from keras import ops

from mtl.tasks import IDENTITY, TaskSpec

EMBEDDING = "embedding"
CENTER = "center"


@keras.saving.register_keras_serializable(package="mtl")
class CenterDistances(keras.layers.Layer):
    """Squared Euclidean distances of each input row to ``num_centers`` learnt centres: (N, num_centers).

    Args:
        num_centers: number of centres (training identities).
    """

    def __init__(self, num_centers: int, **kwargs):
        super().__init__(**kwargs)
        self.num_centers = int(num_centers)

    def build(self, input_shape):
        self.centers = self.add_weight(shape=(self.num_centers, int(input_shape[-1])), name="centers",
                                       initializer=keras.initializers.RandomNormal(stddev=1.0))

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        c = ops.cast(self.centers, self.compute_dtype)
        d2 = (ops.sum(x * x, axis=1, keepdims=True) + ops.sum(c * c, axis=1)[None, :]
              - 2.0 * ops.matmul(x, ops.transpose(c)))
        return ops.maximum(d2, 0.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_centers)

    def get_config(self):
        return {**super().get_config(), "num_centers": self.num_centers}


def identity_head(features, spec: TaskSpec, embedding_dim: int = 256, center_loss: bool = False) -> dict:
    """Build the identity outputs on pooled ``features``.

    Args:
        features: pooled trunk features ``(N, C)``.
        spec: the identity task; its classes are the training identities.
        embedding_dim: size of the embedding; ``<= 0`` keeps the pooled features' size (no Dense).
        center_loss: add the ``center`` output used by the centre loss.

    Returns:
        ``{spec.name: (N, num_ids) softmax, "embedding": (N, D)}`` plus ``"center": (N, num_ids)``
        with ``center_loss``.
    """
    x = features
    if embedding_dim and embedding_dim > 0:
        x = keras.layers.Dense(embedding_dim, use_bias=False, kernel_initializer="he_normal",
                               name="embedding_dense")(x)
    embedding = keras.layers.BatchNormalization(center=False, momentum=0.9, dtype="float32", name=EMBEDDING)(x)
    # BoT: a classifier without bias, initialised with a small normal, so early logits are near 0
    identity = keras.layers.Dense(spec.num_classes, use_bias=False, activation="softmax", dtype="float32",
                                  kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
                                  name=spec.name)(embedding)
    outputs = {spec.name: identity, EMBEDDING: embedding}
    if center_loss:
        outputs[CENTER] = CenterDistances(spec.num_classes, dtype="float32", name=CENTER)(embedding)
    return outputs


def identity_task(train_identities, name: str = IDENTITY) -> TaskSpec:
    """The identity task of a training split: its classes are the split's identities, sorted.

    Args:
        train_identities: identities of the training images (``-1`` = unknown, ignored).
        name: the task / output name.
    """
    ids = np.unique(np.asarray(train_identities))
    ids = ids[ids >= 0]
    return TaskSpec(name, tuple(str(int(i)) for i in ids), IDENTITY)


def identity_labels(identities, spec: TaskSpec) -> np.ndarray:
    """Class index of each identity in ``spec.classes`` (int32), ``-1`` where it is not a class."""
    lookup = pd.Series(np.arange(spec.num_classes, dtype=np.int32), index=[int(c) for c in spec.classes])
    return lookup.reindex(np.asarray(identities, dtype=np.int64)).fillna(-1).to_numpy(np.int32)


def embedding_labels(identities, spec: TaskSpec) -> np.ndarray:
    """Labels of the ``embedding`` output (the triplet loss only compares them for equality).

    A training identity gets its class index; another known identity (``>= 0``, e.g. a validation
    person) a code of its own above the class indices, so that the validation triplet loss
    (``val_embedding_loss``) measures how well unseen people are separated; ``-1`` stays ``-1``.
    """
    identities = np.asarray(identities, dtype=np.int64)
    labels = identity_labels(identities, spec)
    other = (labels < 0) & (identities >= 0)
    if other.any():
        _, codes = np.unique(identities[other], return_inverse=True)
        labels = labels.copy()
        labels[other] = spec.num_classes + codes.reshape(-1).astype(np.int32)
    return labels


def identity_targets(identities, spec: TaskSpec, center_loss: bool = False) -> dict[str, np.ndarray]:
    """Labels of every identity output: the classifier (and ``center``) get the class index or -1
    (``identity_labels``), ``embedding`` gets ``embedding_labels``."""
    labels = identity_labels(identities, spec)
    targets = {spec.name: labels, EMBEDDING: embedding_labels(identities, spec)}
    if center_loss:
        targets[CENTER] = labels
    return targets
