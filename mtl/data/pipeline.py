"""tf.data input pipelines: decode, resize, augment, batch, prefetch.

Images enter models as float32 RGB in [0, 255]; each trunk normalises for itself, so a
pretrained trunk gets the scaling its weights expect. A training dataset yields
``(image, {task: label})`` with ``-1`` where a label is missing.
"""

from __future__ import annotations

import re
import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from mtl.progress import progress

AUTOTUNE = tf.data.AUTOTUNE


# The check resizes to this tiny size: decoding is what can fail and what costs; the resize is the
# pipeline's own step, kept so that the check runs exactly ``decode_image``.
CHECK_SIZE = 8
_CHECK_BATCH = 256


def _error_reason(exc: BaseException) -> str:
    """One line for a decode failure: TensorFlow's message without its ``{{function_node ...}}`` prefix."""
    message = getattr(exc, "message", None) or str(exc)
    message = re.sub(r"\{\{[^}]*\}\}\s*", "", message).strip().splitlines()[0] if message.strip() else ""
    message = re.sub(r"\s*\[Op:[^\]]*\].*$", "", message)  # eager ops append "[Op:DecodeImage] name:"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _check_one(path: str) -> str | None:
    """Decode one file eagerly with ``decode_image`` (the pipeline's decoder); the reason it fails, or None."""
    try:
        decode_image(tf.constant(str(path)), CHECK_SIZE, CHECK_SIZE)
        return None
    except (tf.errors.OpError, ValueError) as exc:  # any decoder failure means the pipeline cannot use the file
        return _error_reason(exc)


def find_unreadable(paths: Sequence[str], workers: int | None = None) -> dict[str, str]:
    """Decode every image once with the pipeline's decoder; return ``{path: reason}`` for the failures.

    One parallel ``tf.data`` pass runs ``decode_image`` (the function ``make_dataset`` and feature
    extraction decode with) over the files and keeps the index of each one that decodes
    (``ignore_errors``); the few files missing from that set are decoded once more, eagerly, for
    their error message. So a file the check keeps is one the pipeline reads (a TIFF or a 1-bit BMP
    named ``.jpg`` that Pillow opens is caught), and the check is as fast as one epoch's decoding.

    Args:
        paths: image files.
        workers: parallel decode calls; default ``AUTOTUNE``.

    Returns:
        ``{path: "ErrorType: message"}`` for each file that cannot be decoded, in input order.
    """
    paths = list(map(str, paths))
    if not paths:
        return {}
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64), paths))
    # the output depends on the pixels, so graph optimisation cannot prune the decode away
    ds = ds.map(lambda i, p: (i, tf.reduce_max(decode_image(p, CHECK_SIZE, CHECK_SIZE))),
                num_parallel_calls=workers or AUTOTUNE)
    ds = ds.ignore_errors().map(lambda i, _: i).batch(_CHECK_BATCH).prefetch(AUTOTUNE)
    ok = np.zeros(len(paths), bool)
    for batch in progress(ds, total=-(-len(paths) // _CHECK_BATCH), desc="checking images", min_items=20):
        ok[batch.numpy()] = True
    return {paths[i]: _check_one(paths[i]) or "cannot be decoded" for i in np.flatnonzero(~ok)}


def drop_unreadable(table: pd.DataFrame, workers: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Remove the rows whose image the pipeline cannot decode, with one warning that counts them.

    Args:
        table: a source table (a ``path`` column).
        workers: parallel decode calls (``find_unreadable``).

    Returns:
        ``(kept, skipped)``: the table without those rows (index reset), and one row per skipped
        file with the columns ``path`` and ``reason`` (empty when every image decodes; the caller
        logs it).
    """
    bad = find_unreadable(table["path"].tolist(), workers)
    skipped = pd.DataFrame({"path": list(bad), "reason": list(bad.values())}, columns=["path", "reason"])
    if bad:
        examples = "; ".join(f"{p} ({r})" for p, r in list(bad.items())[:3])
        warnings.warn(f"skipped {len(bad)} unreadable image(s) of {len(table)}: {examples}", stacklevel=2)
        table = table[~table["path"].isin(bad)].reset_index(drop=True)
    return table, skipped


def decode_image(path: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Read, decode (JPEG/PNG/BMP/GIF) and resize one image to float32 [0, 255]."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.cast(image, tf.float32)
    image.set_shape([None, None, 3])
    # an image already at the size (Market-1501 crops at 128x64) skips the resize: it is an exact
    # identity there, and cost more than the decode itself (bench/bench_pipeline.py)
    shape = tf.shape(image)
    at_size = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
    image = tf.cond(at_size, lambda: image, lambda: tf.image.resize(image, (height, width), antialias=True))
    image.set_shape([height, width, 3])
    return tf.clip_by_value(image, 0.0, 255.0)


def augment_image(image: tf.Tensor, height: int, width: int, flip: bool = True, pad_crop: int = 0,
                  color_jitter: float = 0.0, random_erasing: float = 0.0, seed: tf.Tensor | None = None) -> tf.Tensor:
    """Training augmentation of one [0, 255] image; each part is switchable.

    Random erasing (Zhong et al.) fills a random rectangle (2-40% of the area, aspect 0.3-3.3)
    with uniform noise, with the given probability.

    Every random choice is a stateless random op keyed by ``seed``: the result is a function of
    the image and the seed alone, so it does not depend on which thread of a parallel ``map``
    runs the image first (stateful ops such as ``tf.image.random_flip_left_right`` share one
    random state between threads, which made two runs of one command differ).

    Args:
        image: ``(height, width, 3)`` float32 image in [0, 255].
        height, width: the image size (and the size of the random crop).
        flip, pad_crop, color_jitter, random_erasing: see ``mtl.config.AugmentConfig``.
        seed: ``[2]`` int32/int64 tensor, one per image (``make_dataset`` derives it from its seed
            and the element). ``None`` draws one from TensorFlow's global generator: for
            interactive use, not reproducible under a parallel map.

    Returns:
        The augmented image, same shape, in [0, 255].
    """
    if seed is None:
        seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
    # one independent stream per random choice, so switching a part off leaves the others as they were
    flip_seed, crop_seed, brightness_seed, contrast_seed, saturation_seed, erase_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=6))
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if pad_crop > 0:
        image = tf.pad(image, [[pad_crop, pad_crop], [pad_crop, pad_crop], [0, 0]], mode="REFLECT")
        image = tf.image.stateless_random_crop(image, (height, width, 3), crop_seed)
    if color_jitter > 0:
        image = image / 255.0
        image = tf.image.stateless_random_brightness(image, color_jitter, brightness_seed)
        image = tf.image.stateless_random_contrast(image, 1 - color_jitter, 1 + color_jitter, contrast_seed)
        image = tf.image.stateless_random_saturation(image, 1 - color_jitter, 1 + color_jitter, saturation_seed)
        image = tf.clip_by_value(image, 0.0, 1.0) * 255.0
    if random_erasing > 0:
        image = _random_erase(image, height, width, random_erasing, erase_seed)
    return image


def _random_erase(image, height, width, probability, seed):
    """Random erasing with stateless random ops keyed by ``seed`` (``[2]`` ints)."""
    area_seed, ratio_seed, y_seed, x_seed, apply_seed, noise_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=6))
    area = tf.cast(height * width, tf.float32)
    target = tf.random.stateless_uniform([], area_seed, 0.02, 0.4) * area
    log_ratio = tf.random.stateless_uniform([], ratio_seed, np.log(0.3), np.log(1 / 0.3))
    ratio = tf.exp(log_ratio)
    h = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32), 1, height)
    w = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32), 1, width)
    y0 = tf.random.stateless_uniform([], y_seed, 0, height - h + 1, dtype=tf.int32)
    x0 = tf.random.stateless_uniform([], x_seed, 0, width - w + 1, dtype=tf.int32)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = (rows >= y0) & (rows < y0 + h) & (cols >= x0) & (cols < x0 + w)
    apply = tf.random.stateless_uniform([], apply_seed) < probability

    def erase():
        noise = tf.random.stateless_uniform(tf.shape(image), noise_seed, 0.0, 255.0)
        return tf.where(inside[:, :, None], noise, image)

    # the image-sized noise is drawn only for the images erased: about 15% less CPU per training
    # image (bench/bench_pipeline.py); the same seeds give the same pixels as before
    return tf.cond(apply, erase, lambda: image)


def stream_seed(seed: int, stream: int) -> int:
    """A seed for one named use (``stream``) of a run's ``seed``, independent of the others.

    The shuffle and the augmentation of one dataset must not draw from the same random numbers
    (with one op seed, the first element's shuffle draw would also be its augmentation seed).

    Args:
        seed: the run's seed.
        stream: a small constant per use (``AUGMENT_STREAM``, ...).

    Returns:
        A non-negative int31, the same for the same ``(seed, stream)`` on every machine.
    """
    return int(np.random.SeedSequence([int(seed) % 2**32, stream]).generate_state(1)[0] >> 1)


AUGMENT_STREAM = 1  # stream_seed(seed, AUGMENT_STREAM): the augmentation seeds of make_dataset / pk_dataset


def labels_dict(table: pd.DataFrame, tasks: Sequence[str]) -> dict[str, np.ndarray]:
    return {t: table[t].to_numpy(np.int32) for t in tasks}


def make_dataset(paths: Sequence[str], labels: Mapping[str, np.ndarray] | None, height: int, width: int,
                 batch_size: int, training: bool = False, augment: Mapping | None = None,
                 cache: bool = True, seed: int = 0, repeat: bool = False) -> tf.data.Dataset:
    """Build the tf.data pipeline.

    Args:
        paths: image files (already checked with ``drop_unreadable``).
        labels: ``{task: int array}`` aligned with ``paths``; ``None`` yields images only.
        height, width: model input size.
        batch_size: batch size.
        training: shuffle and augment.
        augment: keyword arguments of ``augment_image`` (flip, pad_crop, color_jitter, random_erasing).
        cache: keep decoded images in memory after the first pass.
        seed: shuffle and augmentation seed: the same seed gives the same batches, epoch after
            epoch, in any process (each pass reshuffles and re-draws the augmentation, from the seed).
        repeat: repeat forever (for ``steps_per_epoch``).
    """
    paths = list(map(str, paths))
    if not paths:
        raise ValueError("no images to build a dataset from")
    ds = tf.data.Dataset.from_tensor_slices(paths)
    if labels is not None:
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(dict(labels))))
    else:
        ds = ds.map(lambda p: (p,))

    def decode(p, *rest):
        return (decode_image(p, height, width), *rest)

    # deterministic=True (the default, spelled out): the order of the decoded images is what the
    # seeded shuffle permutes, so it must not depend on which file a thread finishes first
    ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)
    # a file that became unreadable after the check must not crash an epoch
    ds = ds.ignore_errors(log_warning=True)
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(min(len(paths), 10_000), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        aug = dict(augment or {})
        # one augmentation seed per element, from a seeded random stream that is drawn afresh on
        # every pass (epoch), the same way in every process: stateless augmentation keyed by it
        # stays parallel and reproducible
        element_seeds = tf.data.Dataset.random(seed=stream_seed(seed, AUGMENT_STREAM),
                                               rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, element_seeds))

        def do_augment(element, element_seed):
            image, *rest = element
            return (augment_image(image, height, width, seed=element_seed, **aug), *rest)

        ds = ds.map(do_augment, num_parallel_calls=AUTOTUNE, deterministic=True)
    if labels is None:
        ds = ds.map(lambda image: image)
    ds = ds.batch(batch_size, drop_remainder=False)
    return ds.prefetch(AUTOTUNE)
