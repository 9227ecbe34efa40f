"""P x K identity sampling in tf.data: every batch holds P distinct identities, K images of each.

Metric losses need positives in the batch: with a plain shuffle, most images of a batch of 64
drawn from 600 people have no other image of their person. The P x K sampler of Hermans et al.
(2017), used by BoT / torchreid / fast-reid, builds each batch from ``P`` identities and ``K``
images of each; an identity with fewer than ``K`` images is sampled with replacement.

Everything is tf.data and TensorFlow ops (no Python generator), so the dataset is fast,
deterministic for a seed, and can be distributed by ``tf.distribute`` strategies:

* identities are visited in a fresh random order on every pass over them (``shuffle`` with
  ``reshuffle_each_iteration``), ``P`` at a time; the last ``num_ids mod P`` of a pass are left
  for that pass, so a batch never repeats an identity;
* the ``K`` images of each identity are drawn with stateless random ops seeded by
  ``(seed, batch number)``, and each batch is augmented (``augment_batch``, per-image draws) with
  stateless random ops seeded by ``(seed, batch number)``: the same seed gives the same batches,
  in any parallelism;
* batches are laid out identity by identity (``K`` consecutive rows per identity). A
  ``MirroredStrategy`` with ``R`` replicas splits a global batch into ``R`` consecutive slices,
  so each replica gets ``P / R`` whole identities when ``R`` divides ``P``.

The dataset is infinite: train with ``steps_per_epoch``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from mtl.data.pipeline import (AUGMENT_STREAM, AUTOTUNE, add_junk, augment_batch, decode_image, decode_image_and_mask,
                               stream_seed)
from mtl.errors import ConfigError, DataError


def pk_index_dataset(identities: Sequence[int], p: int, k: int, seed: int = 0) -> tf.data.Dataset:
    """Infinite dataset of int64 row-index vectors of length ``p * k``.

    Each vector lists ``k`` rows of each of ``p`` distinct identities, identity by identity.

    Args:
        identities: identity of each row (any integers); rows with identity ``< 0`` are never drawn.
        p: identities per batch.
        k: images per identity (drawn without replacement when the identity has ``>= k`` images,
            with replacement otherwise).
        seed: makes the sequence of batches deterministic.

    Raises:
        ConfigError: ``p`` or ``k`` below 1; DataError: fewer than ``p`` identities.
    """
    if p < 1 or k < 1:
        raise ConfigError(f"P x K sampling needs P >= 1 and K >= 1, got P={p}, K={k}")
    identities = np.asarray(identities, dtype=np.int64)
    rows = np.flatnonzero(identities >= 0)
    uniq, code = np.unique(identities[rows], return_inverse=True)
    if len(uniq) < p:
        raise DataError(f"P x K sampling needs at least P={p} identities with images, found {len(uniq)}; "
                        f"lower train.p_identities or train.batch_size")
    order = np.argsort(code, kind="stable")
    members = tf.constant(rows[order], tf.int64)  # rows grouped by identity
    counts_np = np.bincount(code).astype(np.int64)
    counts = tf.constant(counts_np)
    starts = tf.constant(np.cumsum(counts_np) - counts_np)
    width = int(max(counts_np.max(), k))  # columns of the random keys; >= k so top-k always exists
    seed = int(seed)

    def pick(step, ids):
        c = tf.gather(counts, ids)[:, None]  # (p, 1)
        s = tf.gather(starts, ids)[:, None]
        key = tf.random.stateless_uniform((p, width), seed=tf.stack([tf.constant(seed, tf.int64), 2 * step]))
        # without replacement: the k smallest random keys among the identity's own columns
        key = tf.where(tf.range(width, dtype=tf.int64)[None, :] < c, key, 2.0)
        without = tf.argsort(key, axis=1)[:, :k]
        draw = tf.random.stateless_uniform((p, k), seed=tf.stack([tf.constant(seed, tf.int64), 2 * step + 1]))
        with_replacement = tf.minimum(tf.cast(draw * tf.cast(c, tf.float32), tf.int64), c - 1)
        position = tf.where(c >= k, tf.cast(without, tf.int64), with_replacement)
        return tf.reshape(tf.gather(members, s + position), [-1])

    ids = tf.data.Dataset.range(len(uniq)).shuffle(len(uniq), seed=seed, reshuffle_each_iteration=True)
    ids = ids.batch(p, drop_remainder=True).repeat()
    return ids.enumerate().map(pick, num_parallel_calls=AUTOTUNE)


def pk_dataset(paths: Sequence[str], labels: Mapping[str, np.ndarray], identities: Sequence[int], p: int, k: int,
               height: int, width: int, augment: Mapping | None = None, seed: int = 0,
               junk_fraction: float = 0.0, mask_paths: Sequence[str] | None = None) -> tf.data.Dataset:
    """Infinite training dataset of P x K batches: ``(images (P*K, h, w, 3 or 4), {task: (P*K,)})``.

    Images are decoded from disk on every draw (small crops decode in well under a millisecond;
    a per-image cache would not fit random access) and augmented like ``make_dataset`` does.

    Args:
        paths: image files.
        labels: ``{output: int array}`` aligned with ``paths`` (``-1`` = missing).
        identities: the identity of each row used for grouping (``< 0``: never drawn), e.g. the
            identity-class index.
        p, k, seed: see ``pk_index_dataset``; ``seed`` also keys the augmentation.
        height, width: model input size.
        augment: keyword arguments of ``mtl.data.pipeline.augment_batch``.
        junk_fraction: share of each batch replaced by junk crops before the augmentation
            (``mtl.data.pipeline.add_junk``; ``labels`` must hold ``junk``); 0: none.
        mask_paths: person-mask files aligned with ``paths`` (``mtl.data.masks.mask_paths``): a 4th
            channel (``mtl.data.pipeline.decode_image_and_mask``); None: RGB only.
    """
    paths_t = tf.constant(list(map(str, paths)))
    if mask_paths is not None and len(mask_paths) != len(paths_t):
        raise ValueError(f"{len(mask_paths)} mask paths for {len(paths_t)} images")
    masks_t = tf.constant(list(map(str, mask_paths))) if mask_paths is not None else None
    labels_t = {name: tf.constant(np.asarray(v, dtype=np.int32)) for name, v in labels.items()}
    aug = dict(augment or {})
    augment_seed = tf.constant(stream_seed(seed, AUGMENT_STREAM), tf.int64)

    def load(i):
        image = (decode_image(paths_t[i], height, width) if masks_t is None
                 else decode_image_and_mask(paths_t[i], masks_t[i], height, width))
        return image, {name: v[i] for name, v in labels_t.items()}

    def augment(step, batch):
        images, labels_batch = batch
        batch_seed = tf.stack([augment_seed, step])
        if junk_fraction > 0:  # junk rows lose their identity: the P x K groups keep K - (junk) images
            images, labels_batch = add_junk(images, labels_batch, junk_fraction, batch_seed)
        # stateless augmentation of the whole batch keyed by (seed, batch number): the same in any parallelism
        return augment_batch(images, height, width, seed=batch_seed, **aug), labels_batch

    ds = pk_index_dataset(identities, p, k, seed).unbatch()
    # deterministic map keeps the order, so each batch of P*K is exactly one sampled group
    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(p * k, drop_remainder=True).enumerate()
    return ds.map(augment, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)


def pk_shape(batch_size: int, p: int = 0, k: int = 4) -> tuple[int, int]:
    """(P, K) from the config: ``p = 0`` means ``batch_size // k`` (a batch of 64 with K=4: 16 x 4)."""
    if k < 1:
        raise ConfigError(f"train.k_images must be >= 1, got {k}")
    p = p or batch_size // k
    if p < 1:
        raise ConfigError(f"train.batch_size {batch_size} is smaller than train.k_images {k}: no identity fits")
    return p, k
