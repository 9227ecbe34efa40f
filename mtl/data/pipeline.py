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


def decode_image_and_mask(path: tf.Tensor, mask_path: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """``decode_image`` with the person mask (``mtl.data.masks``) as a 4th channel: ``(H, W, 4)`` in [0, 255]."""
    mask = tf.io.decode_image(tf.io.read_file(mask_path), channels=1, expand_animations=False)
    mask = tf.cast(mask, tf.float32)
    mask.set_shape([None, None, 1])
    mask = tf.image.resize(mask, (height, width), antialias=True)  # an identity at the image's own size
    return tf.concat([decode_image(path, height, width), tf.clip_by_value(mask, 0.0, 255.0)], axis=-1)


def augment_batch(images: tf.Tensor, height: int, width: int, flip: bool = True, pad_crop: int = 0,
                  color_jitter: float = 0.0, random_erasing: float = 0.0, seed: tf.Tensor | None = None) -> tf.Tensor:
    """Training augmentation of a batch of [0, 255] images, each image with its own random draws.

    The recipe, per image: a left-right flip (probability 1/2); a reflect pad of ``pad_crop``
    pixels and a random crop back to size; colour jitter (brightness shift up to ``color_jitter``
    of the range, contrast and saturation factors in ``[1 - color_jitter, 1 + color_jitter]``);
    random erasing (Zhong et al.): with probability ``random_erasing``, a random rectangle (2-40%
    of the area, aspect 0.3-3.3) is filled with uniform noise. Each part is switchable.

    The whole batch is augmented at once (about 1.5x less CPU per image than one image at a time,
    bench/bench_pipeline.py): each part draws its per-image parameters with one stateless random
    call of shape ``[B]`` / ``[B, k]``; flip and pad-crop are one gather of the source pixels
    (the reflect padding is an index mapping, never materialised); jitter factors broadcast per
    image over channel planes; the erased rectangle is a mask built from coordinate grids, and
    noise is drawn for the erased pixels only.

    Every random choice is a stateless random op keyed by ``seed``: the result is a function of
    the images and the seed alone, so it does not depend on which thread of a parallel ``map``
    runs the batch first (stateful ops share one random state between threads, which made two
    runs of one command differ).

    Args:
        images: ``(B, height, width, 3)`` float32 images in [0, 255]; or ``(B, height, width, 4)``
            with a person mask last, which is flipped and cropped with its image but never
            jittered or erased.
        height, width: the image size (and the size of the random crop).
        flip, pad_crop, color_jitter, random_erasing: see ``mtl.config.AugmentConfig``.
        seed: ``[2]`` int32/int64 tensor, one per batch (``make_dataset`` draws it from a seeded
            stream). ``None`` draws one from TensorFlow's global generator: for interactive use,
            not reproducible under a parallel map.

    Returns:
        The augmented images, same shape, in [0, 255].
    """
    if seed is None:
        seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
    images = tf.convert_to_tensor(images, tf.float32)
    batch = tf.shape(images)[0]
    # one independent stream per part, so switching a part off leaves the others as they were
    flip_seed, crop_seed, jitter_seed, erase_seed, noise_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=5))
    if flip or pad_crop > 0:
        images = _flip_and_crop(images, height, width, batch, flip, pad_crop, flip_seed, crop_seed)
    # a person-mask channel (4th) takes the geometric changes above, not the colour ones below
    images, mask = (images[..., :3], images[..., 3:]) if images.shape[-1] == 4 else (images, None)
    if color_jitter > 0:
        images = _color_jitter(images, height, width, batch, color_jitter, jitter_seed)
    if random_erasing > 0:
        images = _random_erase(images, height, width, batch, random_erasing, erase_seed, noise_seed)
    return images if mask is None else tf.concat([images, mask], axis=-1)


def augment_image(image: tf.Tensor, height: int, width: int, flip: bool = True, pad_crop: int = 0,
                  color_jitter: float = 0.0, random_erasing: float = 0.0, seed: tf.Tensor | None = None) -> tf.Tensor:
    """``augment_batch`` of one ``(height, width, 3)`` image (a batch of one, the same recipe).

    Args:
        image: ``(height, width, 3)`` float32 image in [0, 255].
        height, width, flip, pad_crop, color_jitter, random_erasing, seed: see ``augment_batch``.

    Returns:
        The augmented image, same shape, in [0, 255].
    """
    return augment_batch(image[None], height, width, flip=flip, pad_crop=pad_crop, color_jitter=color_jitter,
                         random_erasing=random_erasing, seed=seed)[0]


def _reflect(index, size):
    """Index into a dimension of ``size`` as ``tf.pad(mode="REFLECT")`` maps an index of the padded one."""
    index = tf.abs(index)
    return tf.clip_by_value(tf.where(index >= size, 2 * (size - 1) - index, index), 0, size - 1)


def _flip_and_crop(images, height, width, batch, flip, pad_crop, flip_seed, crop_seed):
    """Per-image flip, then reflect pad + random crop, as one gather of source pixels."""
    rows = tf.tile(tf.range(height)[None, :], [batch, 1])  # (B, H): source row of each output row
    cols = tf.tile(tf.range(width)[None, :], [batch, 1])
    if pad_crop > 0:
        # crop offset in the padded image, uniform in [0, 2 * pad_crop] (as tf.image's random crop)
        offset = tf.random.stateless_uniform([batch, 2], crop_seed, 0, 2 * pad_crop + 1, dtype=tf.int32)
        rows = _reflect(rows + offset[:, :1] - pad_crop, height)
        cols = _reflect(cols + offset[:, 1:] - pad_crop, width)
    if flip:
        # the flip comes first: the crop reads the mirrored image, column c of which is column W-1-c
        flipped = tf.random.stateless_uniform([batch], flip_seed) < 0.5
        cols = tf.where(flipped[:, None], width - 1 - cols, cols)
    index = rows[:, :, None] * width + cols[:, None, :]  # (B, H, W) into the flattened image
    channels = images.shape[-1]  # 3, or 4 with the person mask: the mask moves with its pixels
    flat = tf.reshape(images, [batch, height * width, channels])
    out = tf.gather(flat, tf.reshape(index, [batch, height * width]), batch_dims=1)
    return tf.reshape(out, [batch, height, width, channels])


def _color_jitter(images, height, width, batch, strength, seed):
    """Per-image brightness, contrast and saturation, the distributions of ``tf.image.stateless_random_*``."""
    # columns: brightness shift (fraction of the range), contrast factor, saturation factor
    draw = tf.random.stateless_uniform([batch, 3], seed, -strength, strength)
    delta = draw[:, 0, None] * 255.0
    contrast = 1.0 + draw[:, 1, None]
    saturation = 1.0 + draw[:, 2, None]
    # (B, H*W) planes, one per channel: per-image factors broadcast as (B, 1), about 4x cheaper in
    # TensorFlow than broadcasting over (B, H, W, 3)
    pixels = tf.reshape(images, [batch, height * width, 3])
    mean = tf.unstack(tf.reduce_mean(pixels, axis=1), axis=-1)  # per image and channel, as adjust_contrast
    # brightness then contrast (tf.image: no clip between them) is one affine map per image and
    # channel: (x + d - mean(x + d)) * c + mean(x + d) = c * x + (1 - c) * mean(x) + d
    planes = tf.unstack(pixels, axis=-1)
    planes = [p * contrast + ((1.0 - contrast) * m[:, None] + delta) for p, m in zip(planes, mean)]
    # tf.image.adjust_saturation in closed form: scaling the HSV saturation at fixed hue and value moves
    # each channel c to V - f * (V - c) (V = max channel); the saturation is clipped at 1, i.e. f at
    # V / (V - min). No HSV round trip (the most costly op of the per-image recipe).
    value = tf.maximum(tf.maximum(planes[0], planes[1]), planes[2])
    spread = value - tf.minimum(tf.minimum(planes[0], planes[1]), planes[2])
    limit = tf.math.divide_no_nan(tf.maximum(value, 0.0), spread)
    factor = tf.where(spread > 0, tf.minimum(saturation, limit), 1.0)
    images = tf.stack([value + factor * (p - value) for p in planes], axis=-1)
    return tf.reshape(tf.clip_by_value(images, 0.0, 255.0), [batch, height, width, 3])


def _random_erase(images, height, width, batch, probability, seed, noise_seed):
    """Random erasing of a batch: one rectangle per image (a coordinate-grid mask), noise inside."""
    # columns: area fraction, log aspect ratio, row and column position, apply
    u = tf.random.stateless_uniform([batch, 5], seed)
    area = float(height * width)
    target = (0.02 + 0.38 * u[:, 0]) * area
    ratio = tf.exp(np.log(0.3) + (np.log(1 / 0.3) - np.log(0.3)) * u[:, 1])
    h = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32), 1, height)
    w = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32), 1, width)
    # uniform integer positions in [0, H - h] and [0, W - w]
    y0 = tf.minimum(tf.cast(u[:, 2] * tf.cast(height - h + 1, tf.float32), tf.int32), height - h)
    x0 = tf.minimum(tf.cast(u[:, 3] * tf.cast(width - w + 1, tf.float32), tf.int32), width - w)
    apply = u[:, 4] < probability
    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + h)[:, None]) & apply[:, None]  # (B, H)
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + w)[:, None])  # (B, W)
    inside = tf.where(in_rows[:, :, None] & in_cols[:, None, :])  # (N, 3): (image, row, column) erased
    # noise for the erased pixels only (about a tenth of the batch at probability 0.5), written in
    # place: drawing an image-sized noise tensor cost more than the rest of the augmentation
    noise = tf.random.stateless_uniform([tf.shape(inside)[0], 3], noise_seed, 0.0, 255.0)
    return tf.tensor_scatter_nd_update(images, inside, noise)


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


AUGMENT_STREAM = 1  # stream_seed(seed, AUGMENT_STREAM): the per-batch augmentation seeds of make_dataset / pk_dataset
JUNK_STREAM = 2  # folded into a batch's augmentation seed: the junk draws of add_junk
JUNK_AREA = (0.1, 0.3)  # a junk crop covers this share of the image's area (a zoom on some part of it)
JUNK_ASPECT = (0.5, 2.0)  # and its height / width ratio is this many times the image's


def add_junk(images: tf.Tensor, labels: Mapping[str, tf.Tensor], fraction: float, seed: tf.Tensor,
             junk: str = "junk") -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Replace a share of a batch by junk images: random zoomed-in crops of its own images.

    ``round(fraction * B)`` rows, chosen at random, become a crop of their own image covering
    ``JUNK_AREA`` of it (aspect ``JUNK_ASPECT`` times the image's, uniform position), resized back
    to the full size: a patch of clothing or background, no whole person. Those rows are labelled
    ``1`` in the ``junk`` task and ``-1`` (missing) in every other output, the identity ones
    included (NaN in a regression output), so a junk crop is never an identity class, an anchor
    or a positive; the other rows
    keep their labels (``junk`` 0). Every draw is a stateless op keyed by ``seed``.

    Args:
        images: ``(B, H, W, C)`` float32 images.
        labels: ``{output: (B, ...) int labels}``; must hold ``junk``.
        fraction: share of the batch replaced, in [0, 1).
        seed: ``[2]`` int32/int64 tensor, the batch's seed (``make_dataset`` / ``pk_dataset``).
        junk: the name of the junk output.

    Returns:
        ``(images, labels)`` of the same shapes and dtypes.
    """
    if junk not in labels:
        raise ValueError(f"add_junk: the labels have no {junk!r} output")
    images = tf.convert_to_tensor(images, tf.float32)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    pick_seed, box_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, JUNK_STREAM), num=2))
    count = tf.cast(tf.round(fraction * tf.cast(batch, tf.float32)), tf.int32)
    # the rows of the `count` smallest of B uniform draws: a random subset of exactly that size
    rank = tf.argsort(tf.argsort(tf.random.stateless_uniform([batch], pick_seed)))
    is_junk = rank < count
    rows = tf.cast(tf.where(is_junk)[:, 0], tf.int32)
    # columns: area share, log aspect, row and column position (fractions of the free range)
    u = tf.random.stateless_uniform([tf.size(rows), 4], box_seed)
    area = JUNK_AREA[0] + (JUNK_AREA[1] - JUNK_AREA[0]) * u[:, 0]
    aspect = tf.exp(np.log(JUNK_ASPECT[0]) + (np.log(JUNK_ASPECT[1]) - np.log(JUNK_ASPECT[0])) * u[:, 1])
    h = tf.minimum(tf.sqrt(area * aspect), 1.0)
    w = tf.minimum(tf.sqrt(area / aspect), 1.0)
    y0, x0 = (1.0 - h) * u[:, 2], (1.0 - w) * u[:, 3]
    boxes = tf.stack([y0, x0, y0 + h, x0 + w], axis=1)  # normalised [y1, x1, y2, x2]
    crops = tf.image.crop_and_resize(images, boxes, rows, tf.stack([height, width]))
    images = tf.tensor_scatter_nd_update(images, rows[:, None], tf.clip_by_value(crops, 0.0, 255.0))
    out = {}
    for name, value in labels.items():
        flag = tf.reshape(is_junk, tf.concat([[batch], tf.ones([tf.rank(value) - 1], tf.int32)], 0))
        # missing: -1 for a class index, NaN for a value (a regression label)
        missing = tf.fill(tf.shape(value), tf.constant(np.nan if value.dtype.is_floating else -1, value.dtype))
        out[name] = tf.where(flag, tf.ones_like(value) if name == junk else missing, value)
    return images, out


def make_dataset(paths: Sequence[str], labels: Mapping[str, np.ndarray] | None, height: int, width: int,
                 batch_size: int, training: bool = False, augment: Mapping | None = None,
                 cache: bool = True, seed: int = 0, repeat: bool = False,
                 junk_fraction: float = 0.0, mask_paths: Sequence[str] | None = None) -> tf.data.Dataset:
    """Build the tf.data pipeline.

    Args:
        paths: image files (already checked with ``drop_unreadable``).
        labels: ``{task: int array}`` aligned with ``paths``; ``None`` yields images only.
        height, width: model input size.
        batch_size: batch size.
        training: shuffle and augment.
        augment: keyword arguments of ``augment_batch`` (flip, pad_crop, color_jitter, random_erasing).
        cache: keep decoded images in memory after the first pass.
        seed: shuffle and augmentation seed: the same seed gives the same batches, epoch after
            epoch, in any process (each pass reshuffles and re-draws the augmentation, from the seed).
        repeat: repeat forever (for ``steps_per_epoch``).
        junk_fraction: training: share of each batch replaced by junk crops before the augmentation
            (``add_junk``; the labels must hold ``junk``); 0: none.
        mask_paths: person-mask files aligned with ``paths`` (``mtl.data.masks.mask_paths``): images
            get the mask as a 4th channel (``decode_image_and_mask``), which the augmentation's flip
            and crop move with the pixels; None: RGB only.
    """
    paths = list(map(str, paths))
    if mask_paths is not None and len(mask_paths) != len(paths):
        raise ValueError(f"{len(mask_paths)} mask paths for {len(paths)} images")
    if junk_fraction > 0 and (labels is None or "junk" not in labels):
        raise ValueError("junk_fraction > 0 needs labels with a 'junk' output")
    if not paths:
        raise ValueError("no images to build a dataset from")
    # with masks, each element's "path" is the pair [image, mask]
    ds = tf.data.Dataset.from_tensor_slices(paths if mask_paths is None else
                                            np.stack([paths, list(map(str, mask_paths))], axis=1))
    if labels is not None:
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(dict(labels))))
    else:
        ds = ds.map(lambda p: (p,))

    def decode(p, *rest):
        if mask_paths is not None:
            return (decode_image_and_mask(p[0], p[1], height, width), *rest)
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
    ds = ds.batch(batch_size, drop_remainder=False)
    if training:
        aug = dict(augment or {})
        # one augmentation seed per batch, from a seeded random stream that is drawn afresh on
        # every pass (epoch), the same way in every process: stateless augmentation keyed by it
        # stays parallel and reproducible; the batch is augmented at once (augment_batch)
        batch_seeds = tf.data.Dataset.random(seed=stream_seed(seed, AUGMENT_STREAM),
                                             rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, batch_seeds))

        def do_augment(element, batch_seed):
            images, *rest = element
            if junk_fraction > 0:  # before the augmentation: junk crops are flipped and jittered too
                images, labels_batch = add_junk(images, rest[0], junk_fraction, batch_seed)
                rest = [labels_batch]
            return (augment_batch(images, height, width, seed=batch_seed, **aug), *rest)

        ds = ds.map(do_augment, num_parallel_calls=AUTOTUNE, deterministic=True)
    if labels is None:
        ds = ds.map(lambda images: images)
    return ds.prefetch(AUTOTUNE)
