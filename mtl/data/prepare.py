"""Source + tasks + split for a run, and its tf.data datasets, from plain arguments.

``prepare_data`` reads the on-disk format into one table, resolves the task names, drops the
images the pipeline cannot decode and splits by identity. ``datasets`` turns the prepared split
into the training and validation ``tf.data`` pipelines (P x K batches with the identity task).
The top of the package (``mtl.experiment``) turns a ``Config`` into these arguments.

Importing this module imports no TensorFlow: the pipeline (``mtl.data.pipeline``: the image
check of ``prepare_data`` and the datasets) is imported by the functions that run it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mtl import tasks as task_lib
from mtl.choices import SAMPLERS
from mtl.data.masks import mask_paths
from mtl.data.sources import load_source
from mtl.data.sources.base import SourceData
from mtl.data.splits import split_by_identity
from mtl.data.synthetic import ensure_synthetic
from mtl.errors import ConfigError, DataError
from mtl.tasks import (AUXILIARY, CAMERA, IDENTITY, JUNK, TaskSpec, camera_task, classification_tasks, find_identity,
                       junk_task)


@dataclass
class PreparedData:
    """A run's data: the source, the resolved tasks (output order) and the identity-disjoint split.

    ``skipped``: the images left out because the pipeline cannot decode them (``path``, ``reason``).
    """

    source: SourceData
    tasks: list[TaskSpec]
    train: pd.DataFrame
    val: pd.DataFrame
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))


def data_root(path: str | None) -> Path:
    """The data folder, generating the embedded synthetic dataset when ``path`` is unset."""
    return Path(path) if path else ensure_synthetic()


def task_names(tasks: str | Sequence[str]) -> list[str]:
    """``"age,color"`` or ``["age", "color"]`` -> ``["age", "color"]``."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    return [n.strip() for n in names if n.strip()]


def resolve_tasks(names: Sequence[str], source: SourceData) -> tuple[list[TaskSpec], bool]:
    """The attribute tasks named, and whether the identity task is asked for (it is made after the
    split, from the training identities).

    ``camera`` (auxiliary, by name only) is the camera of each image as the file names give it
    (``mtl.tasks.camera_task``); a source without cameras cannot train it.

    Raises:
        ConfigError: an unknown name, or ``junk`` (made by ``data.junk_fraction``, not named).
        DataError: ``camera`` asked of a source whose images have no camera.
    """
    identity_possible = IDENTITY not in source.tasks and bool((source.table["identity"] >= 0).any())
    want_identity = IDENTITY in names and identity_possible
    rest = [n for n in names if n != IDENTITY] if want_identity else list(names)
    table = dict(source.tasks)
    if CAMERA in rest and CAMERA not in table:
        cameras = source.subset("train")["camera"]
        if not (cameras >= 0).any():
            raise DataError(f"task {CAMERA!r} is not available for the {source.name} data in {source.root}: its "
                            "image file names give no camera")
        table[CAMERA] = camera_task(cameras)
    if JUNK in rest and JUNK not in table:
        raise ConfigError(f"task {JUNK!r} is not chosen with tasks: set data.junk_fraction > 0 (the share of each "
                          "training batch replaced by zoomed-in crops labelled junk)")
    tasks = task_lib.resolve(rest, table, source.aliases,
                             also_valid=(IDENTITY,) if identity_possible else ()) if rest else []
    return tasks, want_identity


def prepare_data(root: str | Path | None, format: str = "auto", tasks: str | Sequence[str] = "all",
                 rare_threshold: float = 0.01, max_images: int = 0, split_seed: int = 0,
                 val_fraction: float = 0.2, val_identities: int = 0,
                 stratify: str | None = None, junk: bool = False) -> PreparedData:
    """Read the source, resolve the tasks, drop unreadable images and split by identity.

    The identity task (``identity`` among ``tasks``) is made after the split: its classes are the
    training split's identities (``mtl.reid.heads.identity_task``). Without attribute tasks (and
    without ``stratify``) the split is stratified on all the dataset's attributes, so
    ``identity`` and ``identity,all`` hold out the same people.

    Args:
        root: the data folder (None: the embedded synthetic dataset).
        format: a key of ``mtl.data.sources.FORMATS`` or ``auto``.
        tasks: task names, aliases or ``all``.
        rare_threshold: product data: classes rarer than this are grouped as ``other``.
        max_images: > 0: a deterministic subset of whole identities with at most this many images.
        split_seed: seed of the subset and of the split.
        val_fraction: share of identities held out for validation.
        val_identities: > 0: hold out exactly this many identities (overrides ``val_fraction``).
        stratify: tasks the split is stratified on (default: the trained tasks but the auxiliary ones).
        junk: add the auxiliary binary ``junk`` task (``mtl.tasks.junk_task``; training replaces a
            share of each batch by junk crops, ``datasets(junk_fraction=...)``): every real image
            is labelled 0 (a ``junk`` column of the splits).

    Returns:
        The prepared data.

    Raises:
        ConfigError: unknown task names, or ``val_identities`` out of range for this data.
        DataError: the data cannot train the tasks.
    """
    source = load_source(data_root(str(root) if root else None), format, rare_threshold=rare_threshold)
    specs, want_identity = resolve_tasks(task_names(tasks), source)
    labelled = source.subset("train")
    if max_images:
        ids = np.random.default_rng(split_seed).permutation(labelled["identity"].unique())
        counts = labelled.groupby("identity").size().loc[ids].cumsum()
        keep = counts.index[counts <= max_images]
        labelled = labelled[labelled["identity"].isin(keep)].reset_index(drop=True)
    from mtl.data.pipeline import drop_unreadable  # decodes with TensorFlow

    labelled, skipped = drop_unreadable(labelled)
    # the split is stratified on classes: a value (regression) has none
    if stratify:
        on = [t.name for t in classification_tasks(task_lib.resolve(stratify, source.tasks, source.aliases))]
    else:
        on = [t.name for t in classification_tasks(specs) if t.name not in AUXILIARY]
        if not on:
            on = [t.name for t in classification_tasks(source.tasks.values())]
    fraction = val_fraction
    if val_identities:
        num_ids = labelled["identity"].nunique()
        if not 0 < val_identities < num_ids:
            raise ConfigError(f"data.val_identities={val_identities}: must be between 1 and "
                              f"{num_ids - 1} (the data has {num_ids} identities)")
        fraction = val_identities / num_ids
    train, val = split_by_identity(labelled, on, fraction, split_seed)
    # what a task learns from its training labels (a regression task's centre and spread)
    specs = [spec.type.fit_labels(spec, train[spec.name]) for spec in specs]
    if want_identity:
        specs.append(identity_task_for(train))
    if junk:
        if JUNK in source.tasks:
            raise ConfigError(f"data.junk_fraction: the {source.name} data has a task named {JUNK!r} already")
        specs.append(junk_task())
        train, val = train.assign(**{JUNK: 0}), val.assign(**{JUNK: 0})  # every real image is a person
    return PreparedData(source, specs, train, val, _skipped_frame(skipped))


def _skipped_frame(skipped) -> pd.DataFrame:
    if isinstance(skipped, pd.DataFrame):
        return skipped
    return pd.DataFrame({"path": list(skipped), "reason": list(skipped.values())}, columns=["path", "reason"])


def identity_task_for(train: pd.DataFrame) -> TaskSpec:
    """The identity task of a training split; a clear error when the data cannot train it."""
    from mtl.reid.heads import identity_task

    ids = train["identity"][train["identity"] >= 0]
    if ids.nunique() < 2 or ids.value_counts().median() < 2:
        raise DataError("the identity task needs identities with several images each; this data has "
                        f"{ids.nunique()} known identities for {len(train)} training images")
    return identity_task(ids)


def task_labels(table: pd.DataFrame, tasks, center_loss: bool = False) -> dict[str, np.ndarray]:
    """``{output: int32 labels}`` for the model's outputs: attribute columns, and for the identity
    task the index of each row's identity among its classes (``-1`` if none) for each of its outputs."""
    from mtl.reid.heads import identity_targets

    labels = {}
    for spec in tasks:
        if spec.type.head == "identity":
            labels.update(identity_targets(table["identity"], spec, center_loss))
        else:
            labels[spec.name] = spec.type.labels(table[spec.name])
    return labels


def uses_pk_sampler(sampler: str, tasks) -> bool:
    """P x K batches: with the identity task unless ``sampler="random"``."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown train.sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    has_identity = find_identity(tasks) is not None
    if sampler == "pk" and not has_identity:
        raise ConfigError("train.sampler=pk needs the identity task (--tasks identity,...)")
    return has_identity and sampler != "random"


def datasets(data: PreparedData, height: int, width: int, batch_size: int, augment: Mapping[str, float],
             sampler: str = "auto", p_identities: int = 0, k_images: int = 4, center_loss: bool = False,
             cache: bool = True, seed: int = 0, repeat: bool = False, junk_fraction: float = 0.0,
             person_mask: str | Path | None = None):
    """Training and validation datasets.

    With the identity task, training batches are P x K (``mtl.data.sampler``, infinite: train with
    a fixed number of steps per epoch); otherwise shuffled batches (``repeat``: infinite too).

    Args:
        data: the prepared data.
        height, width: image size.
        batch_size: images per batch.
        augment: ``mtl.data.pipeline.augment_image`` options (flip, pad_crop, color_jitter, random_erasing).
        sampler, p_identities, k_images: batch sampling (``uses_pk_sampler``, ``mtl.data.sampler.pk_shape``).
        center_loss: the identity head has its centre-loss output (its labels are added).
        cache: keep decoded images in memory.
        seed: shuffling and augmentation seed.
        repeat: repeat the training data (training with a fixed ``steps_per_epoch``).
        junk_fraction: share of each training batch replaced by junk crops
            (``mtl.data.pipeline.add_junk``); needs the ``junk`` task (``prepare_data(junk=True)``).
        person_mask: the folder of person masks (``mtl.data.masks``, the data's layout): every
            image gets its mask as a 4th channel; None: RGB only.

    Returns:
        ``(train_ds, val_ds)``.

    Raises:
        ConfigError: ``junk_fraction > 0`` without the ``junk`` task among the data's tasks.
        DataError: a person mask is missing.
    """
    from mtl.data.pipeline import make_dataset

    if junk_fraction > 0 and not any(t.name == JUNK for t in data.tasks):
        raise ConfigError(f"data.junk_fraction={junk_fraction}: the prepared data has no {JUNK!r} task "
                          "(prepare_data(junk=True))")
    train_labels = task_labels(data.train, data.tasks, center_loss)
    train_masks, val_masks = (None, None) if person_mask is None else (
        mask_paths(split["path"], data.source.root, person_mask) for split in (data.train, data.val))
    if uses_pk_sampler(sampler, data.tasks):
        from mtl.data.sampler import pk_dataset, pk_shape

        p, k = pk_shape(batch_size, p_identities, k_images)
        identity = find_identity(data.tasks).name
        train_ds = pk_dataset(data.train["path"], train_labels, train_labels[identity], p, k, height, width,
                              dict(augment), seed=seed, junk_fraction=junk_fraction, mask_paths=train_masks)
    else:
        train_ds = make_dataset(data.train["path"], train_labels, height, width, batch_size, training=True,
                                augment=dict(augment), cache=cache, seed=seed, repeat=repeat,
                                junk_fraction=junk_fraction, mask_paths=train_masks)
    val_ds = make_dataset(data.val["path"], task_labels(data.val, data.tasks, center_loss), height, width,
                          batch_size, cache=cache, mask_paths=val_masks)
    return train_ds, val_ds
