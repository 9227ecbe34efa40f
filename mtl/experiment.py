"""One training run, from a resolved ``Config`` to a run directory: the top of the package.

This is the one place where a ``Config`` is turned into plain arguments (``data_args``,
``dataset_args``, ``model_kwargs``, ``train_args``) for the library below it: data preparation
(``mtl.data.prepare``), the builder (``mtl.models.builder``), the engine (``mtl.engine``), the
run directory (``mtl.rundir``) and inference (``mtl.inference``). ``train`` is the function behind
``mtl-train``; tuning and the task-set study use the same adapters and the same engine.

Rules for the output folder (``mtl.rundir.plan``): a new folder trains; an unfinished run with the
same resolved config resumes after its last finished epoch; a finished run or a different config
is an error naming the keys that differ, unless ``overwrite``. A lock keeps a second process out.
A command that fails before training starts changes nothing in an existing run and leaves no new
folder: everything is checked and the data read before the first file is written.
"""

from __future__ import annotations

import math
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np

from mtl.config import Config, patience_for, to_dict
from mtl.data.prepare import PreparedData, datasets, prepare_data, uses_pk_sampler
from mtl.errors import DataError
from mtl.io import ensure_writable, folder_lock
from mtl.rundir import HISTORY, NEW, PREDICTIONS, RESUME, DataInfo, ModelInfo, RunDir, clear, plan
from mtl.tasks import BINARY, CATEGORICAL, IDENTITY


# ---------------------------------------------------------------------------------------------
# Config -> plain arguments (the only place library arguments are read from a Config)
# ---------------------------------------------------------------------------------------------

def data_args(cfg: Config) -> dict:
    """``mtl.data.prepare.prepare_data`` arguments."""
    d = cfg.data
    return {"root": d.path, "format": d.format, "tasks": cfg.tasks, "rare_threshold": d.rare_threshold,
            "max_images": d.max_images, "split_seed": d.split_seed, "val_fraction": d.val_fraction,
            "val_identities": d.val_identities, "stratify": d.stratify}


def dataset_args(cfg: Config, repeat: bool = False) -> dict:
    """``mtl.data.prepare.datasets`` arguments (besides the prepared data)."""
    a, t = cfg.augment, cfg.train
    return {"height": cfg.data.image_height, "width": cfg.data.image_width, "batch_size": t.batch_size,
            "augment": {"flip": a.flip, "pad_crop": a.pad_crop, "color_jitter": a.color_jitter,
                        "random_erasing": a.random_erasing},
            "sampler": t.sampler, "p_identities": t.p_identities, "k_images": t.k_images,
            "center_loss": t.center_loss > 0, "cache": cfg.data.cache, "seed": t.seed, "repeat": repeat}


def model_kwargs(cfg: Config) -> dict:
    """``mtl.models.builder.build_model`` arguments (besides the tasks)."""
    m = cfg.model
    return {"input_shape": (cfg.data.image_height, cfg.data.image_width, 3), "trunk": m.trunk,
            "weights": m.weights, "width": m.width, "head": m.head, "public_units": m.public_units,
            "private_multipliers": m.private_multipliers, "task_units": m.task_units, "dropout": m.dropout,
            "embedding_dim": m.embedding_dim, "center_loss": cfg.train.center_loss > 0}


def train_args(cfg: Config, data: PreparedData | None = None):
    """``mtl.engine.TrainArgs`` of the config; class weights need the prepared training split."""
    from mtl.engine import TrainArgs

    t = cfg.train
    return TrainArgs(
        epochs=t.epochs, optimizer=t.optimizer, learning_rate=t.learning_rate, weight_decay=t.weight_decay,
        trunk_lr_multiplier=t.trunk_lr_multiplier, freeze_trunk_epochs=t.freeze_trunk_epochs,
        warmup_epochs=t.warmup_epochs, schedule=t.schedule, step_epochs=t.step_epochs,
        patience=patience_for(t.epochs, t.patience), keep=t.keep, loss_weights=dict(t.loss_weights),
        class_weights=class_weights_for(data) if t.class_weighting and data is not None else None,
        label_smoothing=t.label_smoothing, jit_compile=t.jit_compile, triplet_margin=t.triplet_margin,
        id_label_smoothing=t.id_label_smoothing, center_loss=t.center_loss)


def prepare(cfg: Config) -> PreparedData:
    """The run's data: source, tasks, unreadable images dropped, split by identity."""
    return prepare_data(**data_args(cfg))


def steps_per_epoch(cfg: Config, data: PreparedData) -> tuple[int, bool]:
    """``(steps, fixed)``: optimizer steps per epoch, and whether each epoch runs exactly that many
    (P x K batches are infinite; so is the training data with ``train.steps_per_epoch``)."""
    steps = cfg.train.steps_per_epoch or math.ceil(len(data.train) / cfg.train.batch_size)
    return steps, bool(cfg.train.steps_per_epoch) or uses_pk_sampler(cfg.train.sampler, data.tasks)


def class_weights_for(data: PreparedData) -> dict:
    from mtl.losses import inverse_frequency_weights

    return {t.name: inverse_frequency_weights(data.train[t.name].to_numpy(), t.num_classes)
            for t in data.tasks if t.kind in (BINARY, CATEGORICAL)}


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

def train(cfg: Config, run_dir: str | Path, command: str | None = None, overwrite: bool = False,
          log=print) -> dict:
    """Train a model for ``cfg`` into ``run_dir`` and evaluate it on the validation split.

    Args:
        cfg: the resolved (validated) config.
        run_dir: the output folder (rules: module docstring).
        command: the command line recorded in the run (default: ``sys.argv``).
        overwrite: start afresh over an existing run in ``run_dir``.
        log: where progress lines go (``print``; ``None`` for quiet).

    Returns:
        The metrics dict also written to ``metrics.json``.

    Raises:
        MtlError: the folder cannot be used, the data cannot train the tasks, a file cannot be written.
    """
    log = log or (lambda *a, **k: None)
    run = RunDir(run_dir)
    command = command or shlex.join(sys.argv)
    config = to_dict(cfg)
    plan(run.path, config, overwrite)  # fail early, before reading any image
    existed = run.path.exists()
    ensure_writable(run.path)
    data = prepare(cfg)  # reads the source and checks every image: nothing is written before this
    created = not existed
    try:
        with folder_lock(run.path, "training"):
            mode = plan(run.path, config, overwrite)  # again, under the lock
            if mode == NEW and run.status() is not None:
                clear(run.path)
            if mode == RESUME:
                data = _same_labels_as_run(run, data)
            log(f"{'resuming' if mode == RESUME else 'training'} into {run.path}", flush=True)
            metrics = _train_locked(cfg, run, data, command, mode, log)
            created = False  # a run exists now: never removed
            return metrics
    finally:
        if created and run.path.is_dir() and not run.file(HISTORY).is_file():
            shutil.rmtree(run.path, ignore_errors=True)  # failed before its first epoch: leave no folder


def _same_labels_as_run(run: RunDir, data: PreparedData) -> PreparedData:
    """A resumed run trains on the class table it started with (by name): the data may have changed."""
    from mtl.data.relabel import relabel

    saved = {t.name: t for t in run.read_tasks()}
    new = {t.name: t for t in data.tasks}
    if set(saved) != set(new):
        raise DataError(f"{run.path} was trained on tasks {', '.join(saved)}; the data now gives "
                        f"{', '.join(new)}: pass --overwrite to start afresh")
    attributes = [t for t in data.tasks if t.kind != IDENTITY]
    run_attributes = [saved[t.name] for t in attributes]
    train, _ = relabel(data.train, attributes, run_attributes)
    val, _ = relabel(data.val, attributes, run_attributes)
    return PreparedData(data.source, [saved[t.name] for t in data.tasks], train, val, data.skipped)


def _train_locked(cfg: Config, run: RunDir, data: PreparedData, command: str, mode: str, log) -> dict:
    import keras

    from mtl import engine
    from mtl.inference import evaluate_model
    from mtl.models.builder import build_model

    seed_run(cfg)
    if cfg.train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    run.begin_session(command)
    if mode == NEW:
        run.write_config(cfg)
        run.write_command(command)
    write_data_files(run, cfg, data)
    steps, fixed = steps_per_epoch(cfg, data)
    train_ds, val_ds = datasets(data, **dataset_args(cfg, repeat=bool(cfg.train.steps_per_epoch)))
    strategy = engine.strategy_for(cfg.train.distribute)
    with strategy.scope():
        model = build_model(data.tasks, **model_kwargs(cfg))
    run.write_model_info(model_info(model, cfg, data.tasks))
    result = engine.fit(model, data.tasks, train_ds, val_ds, train_args(cfg, data), steps, fixed,
                        paths=run.engine_paths(), strategy=strategy)
    run.save_model(model)
    h, w, batch = cfg.data.image_height, cfg.data.image_width, cfg.train.batch_size
    metrics, predictions = evaluate_model(model, data.tasks, data.val, h, w, batch)
    run.write_csv(PREDICTIONS, predictions)
    if any(t.kind == IDENTITY for t in data.tasks):
        from mtl.reid.protocol import evaluate_holdout

        metrics["reid"] = evaluate_holdout(model, data.val, h, w, batch, seed=cfg.data.split_seed)
    summary = run.training_summary(result.monitor, result.kept_epoch, result.train_time_s)
    metrics["training"] = {k: v for k, v in vars(summary).items()}
    run.write_metrics(metrics)
    run.finish()
    return metrics


def seed_run(cfg: Config) -> None:
    """Seed every generator of a run from ``train.seed`` (and make ops deterministic on request)."""
    from mtl.reproducibility import seed_everything

    seed_everything(cfg.train.seed, cfg.train.deterministic)


def model_info(model, cfg: Config, tasks=()) -> ModelInfo:
    """``model.json`` of a built model.

    Args:
        model: the built (or trained) model.
        cfg: the run's config.
        tasks: the run's task specs, whose class names ``classes`` records (none: ``{}``).
    """
    from mtl.models.builder import get_trunk

    count = lambda variables: int(sum(np.prod(v.shape) for v in variables))  # noqa: E731
    return ModelInfo(trunk=cfg.model.trunk, weights=cfg.model.weights, head=cfg.model.head,
                     input_shape=[cfg.data.image_height, cfg.data.image_width, 3], outputs=list(model.output_names),
                     params_total=count(model.weights), params_trainable=count(model.trainable_weights),
                     params_trunk=count(get_trunk(model).weights),
                     classes={t.name: list(t.classes) for t in tasks},
                     # what mtl.data.pipeline.decode_image does before the model (and nothing more)
                     preprocessing={"resize": f"to {cfg.data.image_height}x{cfg.data.image_width}, bilinear with "
                                              "antialiasing (tf.image.resize)",
                                    "dtype": "float32 RGB in [0, 255], not normalised",
                                    "normalization": "inside the model (the trunk's first layers)"})


def write_data_files(run: RunDir, cfg: Config, data: PreparedData) -> None:
    """``tasks.json``, ``data.json``, ``split.csv`` and ``skipped_images.csv`` of a run."""
    run.write_tasks(data.tasks)
    info = DataInfo(format=data.source.name, root=str(data.source.root), embedded_default=cfg.data.path is None,
                    splits={name: {"images": int(len(df)), "identities": int(df["identity"].nunique())}
                            for name, df in (("train", data.train), ("val", data.val))},
                    skipped=int(len(data.skipped)))
    run.write_data(info, data.train, data.val, data.skipped)
