"""Per-row cross-entropies of probability outputs (``keras.ops``): the one formula behind the
masked losses (``mtl.losses``) and the epoch metrics (``mtl.metrics``), which must agree.

This module registers no Keras object, so both registration modules may import it.
"""

from __future__ import annotations

from keras import ops

EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON] before the log


def categorical_rows(target, y_pred, from_logits: bool = False):
    """``-sum_k target_k log p_k`` per row: ``target`` ``(N, K)`` (one-hot or smoothed),
    ``y_pred`` ``(N, K)`` softmax probabilities (or logits)."""
    log_probs = ops.log_softmax(y_pred, axis=-1) if from_logits else ops.log(ops.clip(y_pred, EPSILON, 1.0))
    return -ops.sum(target * log_probs, axis=-1)


def binary_rows(target, p, from_logits: bool = False):
    """``-(t log p + (1 - t) log(1 - p))`` per row: ``target`` and ``p`` ``(N,)`` (``p`` a sigmoid
    probability, or a logit: the stable form)."""
    if from_logits:
        return ops.maximum(p, 0) - p * target + ops.log1p(ops.exp(-ops.abs(p)))
    p = ops.clip(p, EPSILON, 1 - EPSILON)
    return -(target * ops.log(p) + (1 - target) * ops.log(1 - p))
