"""One training run, from a resolved ``Config`` to a run directory.

Run directory contents (each written atomically):

* ``config.yaml``: the resolved config (``scripts/train.py --config`` accepts it unchanged);
* ``command.txt``: the command line that produced the run;
* ``tasks.json``: the task specs (names, kinds, classes) in output order;
* ``data.json``: source format and folder, images / identities per split;
* ``split.csv``: every image used, with its split (``train`` / ``val``);
* ``model.json``: trunk, head, input shape, parameter counts, output names;
* ``model.keras``: the trained model (the epoch ``train.keep`` chose), reloadable in a fresh process;
* ``history.json``: per-epoch logs; ``checkpoints/``: best weights and the resume backup;
* ``metrics.json``: validation metrics per task (accuracy, macro F1, per-class P/R/F1, mA);
* ``val_predictions.csv``: per validation image, true / predicted class and confidence per task.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from mtl import tasks as task_lib
from mtl.config import Config, patience_for, save_config
from mtl.data.pipeline import drop_unreadable, labels_dict, make_dataset
from mtl.data.sources import load_source
from mtl.data.sources.base import SourceData
from mtl.data.splits import split_by_identity
from mtl.data.synthetic import ensure_synthetic
from mtl.errors import ConfigError, DataError
from mtl.io import atomic_path, atomic_write_json, atomic_write_text
from mtl.losses import inverse_frequency_weights
from mtl.progress import progress
from mtl.metrics import class_probabilities, evaluate_task, summarize
from mtl.models.builder import build_model, get_trunk, model_kwargs
from mtl.tasks import BINARY, CATEGORICAL, IDENTITY, TaskSpec
from mtl.training import (attribute_loss_weights, compile_model, fit_verbosity, make_callbacks, make_optimizer,
                          embedding_loss_weight, trunk_phases, WarmupSchedule)


@dataclass
class PreparedData:
    source: SourceData
    tasks: list[TaskSpec]
    train: pd.DataFrame
    val: pd.DataFrame


def data_root(cfg: Config) -> Path:
    """The data folder of the config, generating the embedded synthetic dataset when unset."""
    return Path(cfg.data.path) if cfg.data.path else ensure_synthetic()


def prepare_data(cfg: Config) -> PreparedData:
    """Read the source, resolve the tasks, drop unreadable images and split by identity.

    The identity task (``--tasks identity,...``) is made after the split: its classes are the
    training split's identities (``mtl.reid.heads.identity_task``). Without attribute tasks (and
    without ``data.stratify``) the split is stratified on all the dataset's attributes, so
    ``--tasks identity`` and ``--tasks identity,all`` hold out the same people.
    ``data.val_identities`` holds out an exact number of identities.
    """
    source = load_source(data_root(cfg), cfg.data.format, rare_threshold=cfg.data.rare_threshold)
    names = [n.strip() for n in cfg.tasks.split(",") if n.strip()]
    want_identity = IDENTITY in names and IDENTITY not in source.tasks
    rest = [n for n in names if n != IDENTITY] if want_identity else names
    tasks = task_lib.resolve(rest, source.tasks, source.aliases) if rest else []
    labelled = source.subset("train")
    if cfg.data.max_images:
        ids = np.random.default_rng(cfg.data.split_seed).permutation(labelled["identity"].unique())
        counts = labelled.groupby("identity").size().loc[ids].cumsum()
        keep = counts.index[counts <= cfg.data.max_images]
        labelled = labelled[labelled["identity"].isin(keep)].reset_index(drop=True)
    labelled, _ = drop_unreadable(labelled)
    if cfg.data.stratify:
        stratify = [t.name for t in task_lib.resolve(cfg.data.stratify, source.tasks, source.aliases)
                    if t.kind != IDENTITY]
    else:
        stratify = [t.name for t in tasks if t.kind != IDENTITY]
        if want_identity and not stratify:
            stratify = [n for n, t in source.tasks.items() if t.kind != IDENTITY]
    fraction = cfg.data.val_fraction
    if cfg.data.val_identities:
        num_ids = labelled["identity"].nunique()
        if not 0 < cfg.data.val_identities < num_ids:
            raise ConfigError(f"data.val_identities={cfg.data.val_identities}: must be between 1 and "
                              f"{num_ids - 1} (the data has {num_ids} identities)")
        fraction = cfg.data.val_identities / num_ids
    train, val = split_by_identity(labelled, stratify, fraction, cfg.data.split_seed)
    if want_identity:
        tasks.append(identity_task_for(train))
    return PreparedData(source, tasks, train, val)


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

    labels = labels_dict(table, [t.name for t in tasks if t.kind != IDENTITY])
    for spec in tasks:
        if spec.kind == IDENTITY:
            labels.update(identity_targets(table["identity"], spec, center_loss))
    return labels


def uses_pk_sampler(cfg: Config, tasks) -> bool:
    """P x K batches: with the identity task unless ``train.sampler=random``."""
    if cfg.train.sampler not in ("auto", "pk", "random"):
        raise ConfigError(f"unknown train.sampler {cfg.train.sampler!r}; valid: auto, pk, random")
    has_identity = any(t.kind == IDENTITY for t in tasks)
    if cfg.train.sampler == "pk" and not has_identity:
        raise ConfigError("train.sampler=pk needs the identity task (--tasks identity,...)")
    return has_identity and cfg.train.sampler != "random"


def datasets(cfg: Config, data: PreparedData, repeat: bool = False):
    """Training and validation datasets; with the identity task, training batches are P x K
    (``mtl.data.sampler``, infinite: train with ``steps_per_epoch``)."""
    h, w = cfg.data.image_height, cfg.data.image_width
    aug = {"flip": cfg.augment.flip, "pad_crop": cfg.augment.pad_crop, "color_jitter": cfg.augment.color_jitter,
           "random_erasing": cfg.augment.random_erasing}
    center = cfg.train.center_loss > 0
    train_labels = task_labels(data.train, data.tasks, center)
    if uses_pk_sampler(cfg, data.tasks):
        from mtl.data.sampler import pk_dataset, pk_shape

        p, k = pk_shape(cfg.train.batch_size, cfg.train.p_identities, cfg.train.k_images)
        identity = next(t.name for t in data.tasks if t.kind == IDENTITY)
        train_ds = pk_dataset(data.train["path"], train_labels, train_labels[identity], p, k, h, w, aug,
                              seed=cfg.train.seed)
    else:
        train_ds = make_dataset(data.train["path"], train_labels, h, w, cfg.train.batch_size, training=True,
                                augment=aug, cache=cfg.data.cache, seed=cfg.train.seed, repeat=repeat)
    val_ds = make_dataset(data.val["path"], task_labels(data.val, data.tasks, center), h, w, cfg.train.batch_size,
                          cache=cfg.data.cache)
    return train_ds, val_ds


def class_weights_for(data: PreparedData) -> dict:
    return {t.name: inverse_frequency_weights(data.train[t.name].to_numpy(), t.num_classes)
            for t in data.tasks if t.kind in (BINARY, CATEGORICAL)}


def compile_for(model, cfg: Config, data: PreparedData, steps_per_epoch: int, trainable_trunk: bool = True):
    t = cfg.train
    schedule = WarmupSchedule(t.learning_rate, t.epochs * steps_per_epoch, t.warmup_epochs * steps_per_epoch,
                              t.schedule, t.step_epochs * steps_per_epoch)
    trunk = get_trunk(model)
    trunk.trainable = trainable_trunk
    optimizer = make_optimizer(t.optimizer, schedule, t.weight_decay, t.trunk_lr_multiplier,
                               [v.path for v in trunk.trainable_variables])
    compile_model(model, data.tasks, optimizer, t.loss_weights,
                  class_weights_for(data) if t.class_weighting else None, t.label_smoothing, t.jit_compile,
                  identity_options={"triplet_margin": t.triplet_margin, "label_smoothing": t.id_label_smoothing,
                                    "center_loss": t.center_loss})


def strategy_for(cfg: Config):
    if cfg.train.distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    if cfg.train.distribute != "none":
        raise ValueError(f"unknown distribute {cfg.train.distribute!r}; valid: none, mirrored")
    return tf.distribute.get_strategy()


def train(cfg: Config, run_dir: str | Path, command: str | None = None) -> dict:
    """Train a model for ``cfg`` into ``run_dir`` and evaluate it on the validation split.

    Rerunning into the same folder after an interruption resumes from the last finished epoch.

    Returns:
        The metrics dict also written to ``metrics.json``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    save_config(cfg, run_dir / "config.yaml")
    atomic_write_text(run_dir / "command.txt", (command or shlex.join(sys.argv)) + "\n")

    data = prepare_data(cfg)
    write_data_files(run_dir, cfg, data)
    steps = cfg.train.steps_per_epoch or math.ceil(len(data.train) / cfg.train.batch_size)
    train_ds, val_ds = datasets(cfg, data, repeat=bool(cfg.train.steps_per_epoch))
    fixed_steps = bool(cfg.train.steps_per_epoch) or uses_pk_sampler(cfg, data.tasks)  # P x K: infinite

    strategy = strategy_for(cfg)
    with strategy.scope():
        model = build_model(data.tasks, **model_kwargs(cfg))
    write_model_summary(run_dir, model, cfg)
    weights = attribute_loss_weights(data.tasks, cfg.train.loss_weights)
    monitor = monitor_for(data.tasks)
    callbacks = make_callbacks(run_dir, weights, patience_for(cfg.train.epochs, cfg.train.patience), monitor=monitor,
                               embedding_weight=embedding_loss_weight(data.tasks, cfg.train.loss_weights),
                               keep=cfg.train.keep, epochs=cfg.train.epochs)
    start = time.time()
    for first, last, trunk_trainable in trunk_phases(cfg.train.freeze_trunk_epochs, cfg.train.epochs):
        with strategy.scope():
            compile_for(model, cfg, data, steps, trainable_trunk=trunk_trainable)
        with warnings.catch_warnings():
            # the first epoch of a dataset of unknown length ends by running out of data: expected
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            # unfreezing the trunk gives the optimizer more variables than the backup saved at the
            # end of the frozen phase: its weights restore, its (heads-only) moments start afresh
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.fit(train_ds, validation_data=val_ds, epochs=last, initial_epoch=first,
                      steps_per_epoch=steps if fixed_steps else None, shuffle=False,
                      callbacks=callbacks, verbose=fit_verbosity())
        if model.stop_training:
            break
    train_time = time.time() - start
    with atomic_path(run_dir / "model.keras") as tmp:
        model.save(str(tmp))
    metrics, predictions = evaluate_model(model, data.tasks, data.val, cfg)
    with atomic_path(run_dir / "val_predictions.csv") as tmp:
        predictions.to_csv(tmp, index=False)
    if any(t.kind == IDENTITY for t in data.tasks):
        from mtl.reid.protocol import evaluate_holdout

        metrics["reid"] = evaluate_holdout(model, data.val, cfg.data.image_height, cfg.data.image_width,
                                           cfg.train.batch_size, seed=cfg.data.split_seed)
    stopper = next((c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)), None)
    metrics["training"] = training_summary(run_dir, train_time, monitor, stopper)
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


def monitor_for(tasks) -> str:
    """What early stopping and the best checkpoint watch: the masked attribute loss; with an
    identity task as well, that plus the embedding's triplet loss on the held-out people (the
    attributes alone start to overfit while the embedding still improves); identity-only runs
    watch the training loss (validation identities are not the classifier's classes)."""
    attributes = any(t.kind in (BINARY, CATEGORICAL) for t in tasks)
    if attributes and any(t.kind == IDENTITY for t in tasks):
        return "val_joint_loss"
    return "val_masked_loss" if attributes else "loss"


def predict_outputs(model, paths, cfg: Config, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Run the model over images batch by batch; returns ``{output: array}`` (bounded memory)."""
    paths = list(paths)
    ds = make_dataset(paths, None, cfg.data.image_height, cfg.data.image_width,
                      batch_size or cfg.train.batch_size, cache=False)
    chunks: dict[str, list] = {}
    size = batch_size or cfg.train.batch_size
    for batch in progress(ds, total=math.ceil(len(paths) / size), desc="predicting", min_items=20):
        out = model(batch, training=False)
        for k, v in out.items():
            chunks.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in chunks.items()}


def evaluate_model(model, tasks, table: pd.DataFrame, cfg: Config) -> tuple[dict, pd.DataFrame]:
    """Per-task metrics on labelled images, and a table of true / predicted class and confidence
    per image and task (what reports show as examples)."""
    outputs = predict_outputs(model, table["path"], cfg)
    results = {}
    frame = table[["path", "identity", "camera"]].copy()
    for spec in tasks:
        if spec.kind not in (BINARY, CATEGORICAL):
            continue
        probs = class_probabilities(outputs[spec.name], spec)
        results[spec.name] = evaluate_task(table[spec.name].to_numpy(), probs, spec)
        frame[f"{spec.name}_true"] = table[spec.name].to_numpy()
        frame[f"{spec.name}_pred"] = probs.argmax(1)
        frame[f"{spec.name}_conf"] = probs.max(1).round(4)
    return {"tasks": results, "summary": summarize(results), "num_images": int(len(table))}, frame


def training_summary(run_dir: Path, train_time: float, monitor: str,
                     stopper: keras.callbacks.EarlyStopping | None = None) -> dict:
    """``train_time_s`` sums the epochs of every session of a resumed run (this session's wall time
    when no history was written); ``best_epoch`` has the lowest ``monitor`` (``monitor_for``);
    ``kept_epoch`` is the one whose weights the model holds: the best one when early stopping
    restored it (``train.keep: best``), else the last."""
    history = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").is_file() else []
    best = min((e for e in history if monitor in e), key=lambda e: e[monitor], default=None)
    times = [e["time_s"] for e in history]
    restored = stopper is not None and stopper.best_weights is not None
    kept = stopper.best_epoch + 1 if restored else (history[-1]["epoch"] if history else None)
    return {"train_time_s": round(float(np.sum(times)) if times else train_time, 1), "epochs_run": len(history),
            "best_epoch": best["epoch"] if best else None, "kept_epoch": kept,
            "mean_epoch_time_s": round(float(np.mean(times)), 1) if times else None}


def write_model_summary(run_dir: Path, model, cfg: Config) -> None:
    count = lambda variables: int(sum(np.prod(v.shape) for v in variables))  # noqa: E731
    trunk = get_trunk(model)
    atomic_write_json(run_dir / "model.json", {
        "trunk": cfg.model.trunk, "weights": cfg.model.weights, "head": cfg.model.head,
        "input_shape": [cfg.data.image_height, cfg.data.image_width, 3],
        "params_total": count(model.weights), "params_trainable": count(model.trainable_weights),
        "params_trunk": count(trunk.weights), "outputs": list(model.output_names),
    })


def write_data_files(run_dir: Path, cfg: Config, data: PreparedData) -> None:
    atomic_write_json(run_dir / "tasks.json", [t.to_dict() for t in data.tasks])
    atomic_write_json(run_dir / "data.json", {
        "format": data.source.name, "root": data.source.root,
        "embedded_default": cfg.data.path is None,
        "splits": {name: {"images": int(len(df)), "identities": int(df["identity"].nunique())}
                   for name, df in (("train", data.train), ("val", data.val))},
    })
    split = pd.concat([data.train.assign(split="train"), data.val.assign(split="val")])
    with atomic_path(run_dir / "split.csv") as tmp:
        split[["path", "identity", "camera", "split"]].to_csv(tmp, index=False)


@dataclass
class LoadedRun:
    """What later commands (evaluate, predict) need from a run directory."""

    run_dir: Path
    config: Config
    tasks: list[TaskSpec]
    model: keras.Model
    data: dict  # data.json
    split: pd.DataFrame | None  # split.csv (path, identity, camera, split)

    def data_root(self) -> Path:
        """The folder the run was trained on (the embedded default is regenerated if it is gone)."""
        root = self.data.get("root") or self.config.data.path
        if root and Path(root).is_dir():
            return Path(root)
        if self.data.get("embedded_default") or not self.config.data.path:
            return ensure_synthetic()
        raise DataError(f"{self.run_dir}: the run's data folder {root} is gone; give --data")


def load_run(run_dir: str | Path) -> LoadedRun:
    """Read a finished run: resolved config, task specs, trained model, data description and split.

    Raises:
        DataError: the folder is not a finished run (names the missing file).
    """
    from mtl.config import build_config, load_yaml
    from mtl.models.builder import load_model

    run_dir = Path(run_dir)
    for name in ("config.yaml", "tasks.json", "model.keras"):
        if not (run_dir / name).is_file():
            raise DataError(f"{run_dir}: not a finished run ({name} missing)")
    tasks = [TaskSpec.from_dict(d) for d in json.loads((run_dir / "tasks.json").read_text())]
    data = json.loads((run_dir / "data.json").read_text()) if (run_dir / "data.json").is_file() else {}
    split = pd.read_csv(run_dir / "split.csv") if (run_dir / "split.csv").is_file() else None
    return LoadedRun(run_dir, build_config(load_yaml(run_dir / "config.yaml")), tasks,
                     load_model(run_dir / "model.keras"), data, split)
