"""Batched inference over image files: the one loop that runs a model over images (prediction,
evaluation, embedding extraction), and per-task evaluation of a model on a labelled table.

Extraction runs batch by batch into arrays allocated once: ``N`` images need their outputs plus
one batch of images in memory, whatever ``N``.
"""

from __future__ import annotations

import math
import weakref
from typing import Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from mtl.data.pipeline import AUTOTUNE, decode_image, decode_image_and_mask
from mtl.errors import DataError
from mtl.scoring import class_probabilities, evaluate_attributes
from mtl.progress import progress
from mtl.tasks import attribute_tasks


def image_batches(paths: Sequence[str], height: int, width: int, batch_size: int,
                  mask_paths: Sequence[str] | None = None) -> tf.data.Dataset:
    """Decoded, resized images in order, batched (no augmentation, no cache, nothing skipped);
    with ``mask_paths`` (aligned with ``paths``) the person mask is a 4th channel."""
    if mask_paths is None:
        ds = tf.data.Dataset.from_tensor_slices(list(map(str, paths)))
        ds = ds.map(lambda p: decode_image(p, height, width), num_parallel_calls=AUTOTUNE)
    else:
        ds = tf.data.Dataset.from_tensor_slices((list(map(str, paths)), list(map(str, mask_paths))))
        ds = ds.map(lambda p, m: decode_image_and_mask(p, m, height, width), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def input_mask_paths(model: keras.Model, paths: Sequence[str], masks=None) -> list[str] | None:
    """The person-mask files ``model`` needs for ``paths``: None for an RGB model (``masks`` is then
    not used), ``masks.paths(paths)`` for a model whose input has 4 channels (``data.person_mask``).

    Args:
        model: the model (its input's last dimension says whether it takes a mask).
        paths: the image files.
        masks: a ``mtl.data.masks.MaskFolder`` (or any object with ``paths(images) -> files``).

    Raises:
        DataError: a 4-channel model without ``masks``, or a mask file missing.
    """
    if model.input_shape[-1] != 4:
        return None
    if masks is None:
        raise DataError("this model takes a person mask as a 4th input channel (trained with data.person_mask) "
                        "and no mask folder was given: write the masks with mtl-masks and pass them")
    return masks.paths(paths)


class UnreadableImageError(DataError):
    """An image of a batch cannot be read or decoded by the pipeline (``extract_features``).

    Callers that skip such images (``mtl.predictions``) catch this, find the files with
    ``mtl.data.pipeline.drop_unreadable`` and extract again without them.
    """


# errors of reading / decoding one file in the input pipeline (not of the model: out of memory stays itself)
_IMAGE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.PermissionDeniedError,
                 tf.errors.DataLossError)

# one traced inference function per model, kept while the model lives: a caller that extracts
# chunk after chunk with the same model (mtl.predictions) must not retrace it for every chunk
_INFER: "weakref.WeakKeyDictionary[keras.Model, tf.types.experimental.GenericFunction]" = weakref.WeakKeyDictionary()


def _inference_function(model: keras.Model):
    """``model(images, training=False)`` as one traced function (cached per model)."""
    infer = _INFER.get(model)
    if infer is None:
        # unlike `predict_on_batch`, it also runs a model built under a MirroredStrategy on the whole
        # batch once (predict_on_batch hands each replica the full batch)
        # the function holds a weak reference: a strong one (the value keeping its own key alive)
        # would keep every model ever run in memory (tuning trials, studies)
        ref = weakref.ref(model)
        infer = tf.function(lambda images: ref()(images, training=False), reduce_retracing=True)
        _INFER[model] = infer
    return infer


def extract_features(model: keras.Model, paths: Sequence[str], height: int, width: int, batch_size: int = 64,
                     desc: str = "extracting features", progress_bar=None, masks=None) -> dict[str, np.ndarray]:
    """Run ``model`` over images batch by batch; returns ``{output: float32 (N, ...)}``.

    The output arrays are allocated once, after the first batch; memory is the outputs plus one
    batch. A progress bar shows on a terminal (``MTL_PROGRESS`` forces it on or off).

    Args:
        model: a model with a single image input and one output or a dict of outputs.
        paths: image files, in the order of the returned rows.
        height, width: the model's input size.
        batch_size: images per batch.
        desc: label of the progress bar.
        progress_bar: a bar (``mtl.progress.progress(None, total=...)``) to advance by the images of
            each batch, for one bar over several calls; None: a bar of its own.
        masks: where the person masks of ``paths`` are (``mtl.data.masks.MaskFolder``), for a model
            trained with ``data.person_mask`` (4 input channels); not used by an RGB model.

    Raises:
        UnreadableImageError: an image cannot be read or decoded (its path is not known to tf.data;
            the batch is). A ``DataError``.
        DataError: a 4-channel model without ``masks``, or a mask missing (``input_mask_paths``).
    """
    paths = list(map(str, paths))
    if not paths:
        raise DataError("no images to extract features from")
    outputs: dict[str, np.ndarray] = {}
    start = 0
    batches = image_batches(paths, height, width, batch_size, input_mask_paths(model, paths, masks))
    infer = _inference_function(model)
    if progress_bar is None:
        batches = progress(batches, total=math.ceil(len(paths) / batch_size), desc=desc, min_items=10)
    try:
        for batch in batches:
            result = infer(batch)
            if not isinstance(result, dict):
                result = {"output": result}
            n = None
            for name, value in result.items():
                value = np.asarray(value, dtype=np.float32)
                if name not in outputs:
                    outputs[name] = np.empty((len(paths),) + value.shape[1:], dtype=np.float32)
                outputs[name][start:start + len(value)] = value
                n = len(value)
            start += n
            if progress_bar is not None:
                progress_bar.update(n)
    except _IMAGE_ERRORS as exc:
        first = paths[start] if start < len(paths) else "?"
        raise UnreadableImageError(f"cannot decode (or read) an image of the batch starting at {first}: "
                                   f"{exc.message.splitlines()[0]}") from None
    return outputs


def evaluate_model(model: keras.Model, tasks, table: pd.DataFrame, height: int, width: int,
                   batch_size: int = 64, masks=None) -> tuple[dict, pd.DataFrame]:
    """Per-task metrics on labelled images, and a table of true / predicted class and confidence
    per image and task (what reports show as examples).

    Args:
        model: the multi-task model (outputs named after the tasks).
        tasks: the task specs; identity tasks are left out (see ``mtl.reid.protocol``).
        table: images (``path``, ``identity``, ``camera``) with a label column per task.
        height, width, batch_size: the model's input size and the inference batch.
        masks: the person masks of a 4-channel model (``extract_features``).

    Returns:
        ``({"tasks": {task: metrics}, "summary": ..., "instance": ..., "num_images": N}, predictions
        frame)`` (``mtl.scoring.evaluate_attributes``: the summary holds mA and the instance-based
        accuracy / precision / recall / F1).
    """
    outputs = extract_features(model, table["path"], height, width, batch_size, desc="predicting", masks=masks)
    attributes = attribute_tasks(tasks)
    labels = {spec.name: table[spec.name].to_numpy() for spec in attributes}
    probabilities = {spec.name: class_probabilities(outputs[spec.name], spec) for spec in attributes}
    frame = table[["path", "identity", "camera"]].copy()
    for spec in attributes:
        probs = probabilities[spec.name]
        frame[f"{spec.name}_true"] = labels[spec.name]
        if not spec.type.has_classes:  # a regression task's value
            frame[f"{spec.name}_pred"] = probs[:, 0].round(4)
            continue
        frame[f"{spec.name}_pred"] = probs.argmax(1)
        frame[f"{spec.name}_conf"] = probs.max(1).round(4)
    return {**evaluate_attributes(labels, probabilities, attributes), "num_images": int(len(table))}, frame
