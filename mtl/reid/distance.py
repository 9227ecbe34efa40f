"""Distance matrices between embeddings, and distances that combine appearance with attributes.

Pure numpy, no TensorFlow. All functions return float32 ``(num_query, num_gallery)``
matrices. The embedding distances are computed in chunks of query rows written straight
into the output, so the only large allocation is the output itself (plus float32 copies of
the inputs where they are not float32 already, and a normalised copy for the cosine).

Attribute-combined distances (two ways used in course reports on joint re-identification
and attribute recognition):

* :func:`combine_weighted`: ``d_feat + weight * d_attr`` - the attribute distance is added
  with a fixed weight; ``weight = 0`` is the plain appearance distance;
* :func:`combine_multiplicative`: ``d_feat * (alpha + d_attr)`` - the attribute distance
  scales the appearance distance; with ``d_attr`` in [0, 1], pairs whose attributes agree
  (``d_attr = 0``) keep ``alpha * d_feat`` and pairs that disagree on everything get
  ``(alpha + 1) * d_feat``; ``alpha`` > 0 keeps pairs with identical attributes apart.

:func:`attribute_distance` gives the ``d_attr`` of both: the mean absolute difference of the
attribute probability vectors.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "euclidean_distance",
    "cosine_distance",
    "attribute_distance",
    "combine_weighted",
    "combine_multiplicative",
]

# Output elements computed per chunk (bounds the temporaries of the chunked loops).
_CHUNK_ELEMENTS = 1 << 22


def _features(name, x):
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_items, dim), got shape {x.shape}")
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _pair(a, b, a_name="a", b_name="b"):
    a = _features(a_name, a)
    b = _features(b_name, b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{a_name} and {b_name} have different dimensions: {a.shape[1]} vs {b.shape[1]}"
        )
    return a, b


def _chunk_rows(num_cols):
    return max(1, _CHUNK_ELEMENTS // max(num_cols, 1))


def euclidean_distance(a, b, squared=False):
    """Euclidean distances between the rows of ``a`` (m, d) and ``b`` (n, d): float32 (m, n).

    Computed as ``|a|^2 + |b|^2 - 2 a.b`` in float32 (one matrix product per chunk of rows),
    clipped at 0 before the square root. ``squared=True`` returns the squared distances.
    Rounding makes the distance of identical vectors about ``1e-3 * |a|`` rather than 0.
    """
    a, b = _pair(a, b)
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float32)
    a_sq = np.einsum("ij,ij->i", a, a)
    b_sq = np.einsum("ij,ij->i", b, b)
    step = _chunk_rows(b.shape[0])
    for i0 in range(0, a.shape[0], step):
        i1 = min(a.shape[0], i0 + step)
        chunk = out[i0:i1]
        np.matmul(a[i0:i1], b.T, out=chunk)
        chunk *= -2.0
        chunk += a_sq[i0:i1, None]
        chunk += b_sq[None, :]
        np.maximum(chunk, 0.0, out=chunk)
        if not squared:
            np.sqrt(chunk, out=chunk)
    return out


def _unit_rows(x):
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    return x / np.maximum(norm, np.finfo(np.float32).tiny)[:, None]


def cosine_distance(a, b):
    """Cosine distances ``1 - cos(a_i, b_j)`` between the rows of ``a`` and ``b``: float32 (m, n).

    Values lie in [0, 2]. A zero vector has cosine 0 with everything (distance 1).
    """
    a, b = _pair(a, b)
    b_unit = _unit_rows(b)
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float32)
    step = _chunk_rows(b.shape[0])
    for i0 in range(0, a.shape[0], step):
        i1 = min(a.shape[0], i0 + step)
        chunk = out[i0:i1]
        np.matmul(_unit_rows(a[i0:i1]), b_unit.T, out=chunk)
        np.subtract(1.0, chunk, out=chunk)
    return out


def attribute_distance(q_attr_probs, g_attr_probs):
    """Mean absolute difference of attribute probability vectors: float32 (num_query, num_gallery).

    ``d[i, j] = sum_k |q[i, k] - g[j, k]| / K`` for ``K`` attributes (the L1 distance divided
    by the number of attributes), so with probabilities in [0, 1] the distance is in [0, 1]:
    0 when the predicted attributes are identical, 1 when every attribute is predicted
    certain and opposite. Inputs are the per-attribute probabilities (e.g. the sigmoid
    outputs of the binary attribute heads, or one probability per class of a categorical
    attribute laid side by side); missing values are not supported.
    """
    q, g = _pair(q_attr_probs, g_attr_probs, "q_attr_probs", "g_attr_probs")
    num_attr = q.shape[1]
    if num_attr == 0:
        raise ValueError("attribute vectors are empty (0 attributes)")
    out = np.zeros((q.shape[0], g.shape[0]), dtype=np.float32)
    g_cols = np.ascontiguousarray(g.T)
    tmp = np.empty((min(q.shape[0], _chunk_rows(g.shape[0])), g.shape[0]), dtype=np.float32)
    step = tmp.shape[0]
    for i0 in range(0, q.shape[0], step):
        i1 = min(q.shape[0], i0 + step)
        chunk, buf = out[i0:i1], tmp[: i1 - i0]
        for k in range(num_attr):
            np.subtract(q[i0:i1, k, None], g_cols[k][None, :], out=buf)
            np.abs(buf, out=buf)
            chunk += buf
        chunk /= np.float32(num_attr)
    return out


def _same_shape(d_feat, d_attr):
    d_feat = np.asarray(d_feat, dtype=np.float32)
    d_attr = np.asarray(d_attr, dtype=np.float32)
    if d_feat.shape != d_attr.shape:
        raise ValueError(f"d_feat and d_attr have different shapes: {d_feat.shape} vs {d_attr.shape}")
    return d_feat, d_attr


def combine_weighted(d_feat, d_attr, weight):
    """Weighted attribute distance: ``d_feat + weight * d_attr`` (float32).

    ``d_feat`` is the appearance distance (e.g. :func:`euclidean_distance` of the
    embeddings), ``d_attr`` the attribute distance (:func:`attribute_distance`), both of
    the same shape. ``weight >= 0`` sets how many units of appearance distance a complete
    attribute disagreement costs; the scales of the two distances differ, so ``weight`` is
    tuned on validation data.
    """
    weight = float(weight)
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    d_feat, d_attr = _same_shape(d_feat, d_attr)
    out = d_attr * np.float32(weight)
    out += d_feat
    return out


def combine_multiplicative(d_feat, d_attr, alpha):
    """Multiplicative attribute distance: ``d_feat * (alpha + d_attr)`` (float32).

    The attribute distance rescales the appearance distance: pairs whose attributes agree
    are pulled together, pairs whose attributes disagree pushed apart, in proportion to
    their appearance distance. ``alpha > 0`` is the factor left when the attributes agree
    exactly (with ``alpha = 0`` such pairs would get distance 0 whatever their appearance).
    """
    alpha = float(alpha)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    d_feat, d_attr = _same_shape(d_feat, d_attr)
    out = d_attr + np.float32(alpha)
    out *= d_feat
    return out
