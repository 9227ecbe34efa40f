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

import dataclasses
import math
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np

from mtl.config import Config, patience_for, to_dict
from mtl.data.masks import mask_folder
from mtl.data.prepare import PreparedData, datasets, prepare_data, uses_pk_sampler
from mtl.errors import DataError
from mtl.io import ensure_writable, folder_lock
from mtl.rundir import HISTORY, NEW, PREDICTIONS, RESUME, TENSORBOARD, DataInfo, ModelInfo, RunDir, clear, plan
from mtl.tasks import CATEGORICAL, JUNK, KINDS, attribute_tasks, classification_tasks


# ---------------------------------------------------------------------------------------------
# Config -> plain arguments (the only place library arguments are read from a Config)
# ---------------------------------------------------------------------------------------------

def data_args(cfg: Config) -> dict:
    """``mtl.data.prepare.prepare_data`` arguments."""
    d = cfg.data
    return {"root": d.path, "format": d.format, "tasks": cfg.tasks, "rare_threshold": d.rare_threshold,
            "max_images": d.max_images, "split_seed": d.split_seed, "val_fraction": d.val_fraction,
            "val_identities": d.val_identities, "stratify": d.stratify, "junk": d.junk_fraction > 0}


def dataset_args(cfg: Config, repeat: bool = False) -> dict:
    """``mtl.data.prepare.datasets`` arguments (besides the prepared data)."""
    a, t = cfg.augment, cfg.train
    return {"height": cfg.data.image_height, "width": cfg.data.image_width, "batch_size": t.batch_size,
            "augment": {"flip": a.flip, "pad_crop": a.pad_crop, "color_jitter": a.color_jitter,
                        "random_erasing": a.random_erasing},
            "sampler": t.sampler, "p_identities": t.p_identities, "k_images": t.k_images,
            "center_loss": t.center_loss > 0, "cache": cfg.data.cache, "seed": t.seed, "repeat": repeat,
            "junk_fraction": cfg.data.junk_fraction, "person_mask": cfg.data.person_mask}


def model_kwargs(cfg: Config) -> dict:
    """``mtl.models.builder.build_model`` arguments (besides the tasks)."""
    m = cfg.model
    return {"input_shape": (cfg.data.image_height, cfg.data.image_width, input_channels(cfg)), "trunk": m.trunk,
            "weights": m.weights, "width": m.width, "head": m.head, "public_units": m.public_units,
            "private_multipliers": m.private_multipliers, "task_units": m.task_units, "dropout": m.dropout,
            "embedding_dim": m.embedding_dim, "center_loss": cfg.train.center_loss > 0,
            "attention": m.attention, "pooling": m.pooling, "last_stride": m.last_stride,
            "uncertainty_weights": cfg.train.loss_balancing == "uncertainty"}


def input_channels(cfg: Config) -> int:
    """The model's input channels: RGB, plus the person mask of ``data.person_mask`` (``mtl.data.masks``)."""
    return 4 if cfg.data.person_mask else 3


def train_args(cfg: Config, data: PreparedData | None = None):
    """``mtl.engine.TrainArgs`` of the config; class weights need the prepared training split.

    Each field of ``TrainArgs`` is the ``train`` key of the same name, except the three computed
    here: ``patience`` (null in the config: the seeds' rule), ``loss_weights`` (a copy) and
    ``class_weights`` (from the training split). A new ``TrainArgs`` field needs a ``train`` key of
    its name or an entry here, else this fails on the first run.
    """
    from mtl.engine import TrainArgs

    t = cfg.train
    computed = {"patience": patience_for(t.epochs, t.patience), "loss_weights": dict(t.loss_weights),
                "class_weights": class_weights_for(data, t.class_weighting) if data is not None else None}
    return TrainArgs(**{f.name: computed[f.name] if f.name in computed else getattr(t, f.name)
                        for f in dataclasses.fields(TrainArgs)})


def prepare(cfg: Config) -> PreparedData:
    """The run's data: source, tasks, unreadable images dropped, split by identity."""
    return prepare_data(**data_args(cfg))


def steps_per_epoch(cfg: Config, data: PreparedData) -> tuple[int, bool]:
    """``(steps, fixed)``: optimizer steps per epoch, and whether each epoch runs exactly that many
    (P x K batches are infinite; so is the training data with ``train.steps_per_epoch``)."""
    steps = cfg.train.steps_per_epoch or math.ceil(len(data.train) / cfg.train.batch_size)
    return steps, bool(cfg.train.steps_per_epoch) or uses_pk_sampler(cfg.train.sampler, data.tasks)


def evaluation_args(cfg: Config, data: PreparedData) -> dict:
    """``mtl.evaluation.held_out_metrics`` arguments (besides the model, tasks and table): the one
    post-training evaluation of training and of each tuning trial."""
    return {"height": cfg.data.image_height, "width": cfg.data.image_width, "batch_size": cfg.train.batch_size,
            "seed": cfg.data.split_seed, "masks": mask_folder(cfg.data.person_mask, data.source.root)}


def class_weights_for(data: PreparedData, mode: str = "inverse") -> dict | None:
    """The static class weights of ``train.class_weighting`` from the training split (None for
    ``none``, and for ``confusion``, whose weights start at 1 and change in training: ``mtl.balancing``).

    ``inverse``: inverse frequency for every attribute task; ``positive``: ``exp(p)`` / ``exp(1 - p)``
    for the binary ones (``mtl.losses.positive_ratio_weights``), inverse frequency for the categorical.
    """
    from mtl.losses import inverse_frequency_weights, positive_ratio_weights

    if mode in ("none", "confusion"):
        return None
    weights = {}
    # junk: its training labels are made per batch (data.junk_fraction), not the table's zeros
    for t in classification_tasks(data.tasks):
        if t.name == JUNK:
            continue
        labels = data.train[t.name].to_numpy()
        weights[t.name] = (positive_ratio_weights(labels) if mode == "positive" and t.type.yes_no
                           else inverse_frequency_weights(labels, t.num_classes))
    return weights


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

def train(cfg: Config, run_dir: str | Path, command: str | None = None, overwrite: bool = False,
          log=print, verbose: bool = False) -> dict:
    """Train a model for ``cfg`` into ``run_dir`` and evaluate it on the validation split.

    Args:
        cfg: the resolved (validated) config.
        run_dir: the output folder (rules: module docstring).
        command: the command line recorded in the run (default: ``sys.argv``).
        overwrite: start afresh over an existing run in ``run_dir``.
        log: where the run's lines go (``print``, called with ``flush=True``): the data, the tasks,
            the model, one compact line per epoch, the epoch kept and the validation results
            (:func:`result_lines`). ``None``: none of them (Keras's own epoch output instead).
        verbose: also Keras's line of every metric, each epoch.

    Returns:
        The metrics dict also written to ``metrics.json``.

    Raises:
        MtlError: the folder cannot be used, the data cannot train the tasks, a file cannot be written.
    """
    from mtl import distribute

    # before any TensorFlow op: MultiWorkerMirroredStrategy configures the collective ops at start
    strategy = distribute.strategy_for(cfg.train.distribute)
    if distribute.uses_custom_loop(strategy):
        # only the chief writes the run directory; every other worker writes the same files to a
        # folder of its own (tf.distribute's convention), where a restarted worker finds its state
        run_dir = distribute.worker_dir(run_dir)
    say = (lambda text: log(text, flush=True)) if log else None
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
            from mtl.engine import precision_policy

            # the model is built, trained and evaluated under train.mixed_precision's dtype policy;
            # the process's policy is restored afterwards (also when training fails)
            with precision_policy(cfg.train.mixed_precision):
                metrics = _train_locked(cfg, run, data, command, mode, say, verbose, strategy)
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
    attributes = attribute_tasks(data.tasks)
    run_attributes = [saved[t.name] for t in attributes]
    train, _ = relabel(data.train, attributes, run_attributes)
    val, _ = relabel(data.val, attributes, run_attributes)
    return PreparedData(data.source, [saved[t.name] for t in data.tasks], train, val, data.skipped)


def _train_locked(cfg: Config, run: RunDir, data: PreparedData, command: str, mode: str, log,
                  verbose: bool = False, strategy=None) -> dict:
    from mtl import engine
    from mtl.evaluation import held_out_metrics
    from mtl.models.builder import build_model

    show = log or (lambda text: None)
    seed_run(cfg)
    run.begin_session(command)
    if mode == NEW:
        run.write_config(cfg)
        run.write_command(command)
    info = write_data_files(run, cfg, data)
    for line in data_lines(info, data.tasks):
        show(line)
    steps, fixed = steps_per_epoch(cfg, data)
    train_ds, val_ds = datasets(data, **dataset_args(cfg, repeat=bool(cfg.train.steps_per_epoch)))
    strategy = strategy or engine.strategy_for(cfg.train.distribute)
    with strategy.scope():
        model = build_model(data.tasks, **model_kwargs(cfg))
    info = model_info(model, cfg, data.tasks)
    run.write_model_info(info)
    show(model_line(info, cfg))
    args = train_args(cfg, data)
    show(start_line(run, mode, args, engine.monitor_for(data.tasks)))
    result = engine.train_model(model, data.tasks, train_ds, val_ds, args, steps, fixed,
                        paths=run.engine_paths(tensorboard=cfg.train.tensorboard), strategy=strategy,
                        verbose=2 if verbose else None, log=log,
                        images_per_epoch=steps * cfg.train.batch_size if fixed else len(data.train))
    run.save_model(model)
    metrics, predictions = held_out_metrics(model, data.tasks, data.val, **evaluation_args(cfg, data))
    run.write_csv(PREDICTIONS, predictions)
    summary = run.training_summary(result.monitor, result.kept_epoch, result.train_time_s)
    metrics["training"] = {k: v for k, v in vars(summary).items()}
    history = run.read_history()
    show(kept_line(summary, args.keep, cfg.train.epochs, history))
    if cfg.train.tensorboard and history:
        write_reid_scalars(run, metrics.get("reid"), step=history[-1]["epoch"] - 1)
    for line in result_lines(metrics):
        show(line)
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
                     input_shape=[cfg.data.image_height, cfg.data.image_width, input_channels(cfg)],
                     outputs=list(model.output_names),
                     params_total=count(model.weights), params_trainable=count(model.trainable_weights),
                     params_trunk=count(get_trunk(model).weights),
                     classes={t.name: list(t.classes) for t in tasks},
                     # what mtl.data.pipeline.decode_image does before the model (and nothing more)
                     preprocessing={"resize": f"to {cfg.data.image_height}x{cfg.data.image_width}, bilinear with "
                                              "antialiasing (tf.image.resize)",
                                    "dtype": "float32 RGB in [0, 255], not normalised",
                                    "normalization": "inside the model (the trunk's first layers)",
                                    **({"person_mask": "4th channel: the image's mtl-masks PNG (255 = person), "
                                                       "resized like the image, in [0, 255]"}
                                       if cfg.data.person_mask else {})})


def write_data_files(run: RunDir, cfg: Config, data: PreparedData) -> DataInfo:
    """``tasks.json``, ``data.json``, ``split.csv`` and ``skipped_images.csv`` of a run; returns ``data.json``'s info."""
    run.write_tasks(data.tasks)
    info = DataInfo(format=data.source.name, root=str(data.source.root), embedded_default=cfg.data.path is None,
                    splits={name: {"images": int(len(df)), "identities": int(df["identity"].nunique())}
                            for name, df in (("train", data.train), ("val", data.val))},
                    skipped=int(len(data.skipped)))
    run.write_data(info, data.train, data.val, data.skipped)
    return info


# ---------------------------------------------------------------------------------------------
# What a training run prints (before and after the epoch lines of mtl.callbacks.EpochLine)
# ---------------------------------------------------------------------------------------------

def data_lines(info: DataInfo, tasks) -> list[str]:
    """The data summary (format, folder, images and identities per split, images skipped) and the
    tasks with their class counts."""
    where = f"{info.root} (embedded synthetic dataset)" if info.embedded_default else info.root
    splits = "; ".join(f"{name} {s['images']} images, {s['identities']} identities" for name, s in info.splits.items())
    skipped = f"{info.skipped} unreadable image{'s' if info.skipped != 1 else ''} skipped"
    return [f"data: {info.format} format, {where}",
            f"      {splits}; {skipped}",
            "tasks: " + ", ".join(f"{t.name} ({t.type.size(t)})" for t in tasks)]


def model_line(info: ModelInfo, cfg: Config) -> str:
    """The model: trunk, weights, head and parameter counts."""
    width = f" (width {cfg.model.width:g})" if cfg.model.width != 1 else ""
    return (f"model: {info.trunk}{width} trunk, weights {info.weights or 'none (random init)'}, {info.head} head; "
            f"{info.params_total:,} parameters ({info.params_trainable:,} trainable, {info.params_trunk:,} in the "
            f"trunk), input {info.input_shape[0]}x{info.input_shape[1]}")


def start_line(run: RunDir, mode: str, args, monitor: str) -> str:
    """Where the run goes, how many epochs, and what decides the epoch kept."""
    rule = (f"keep=best: the epoch of lowest {monitor}, early stopping after {args.patience} epochs without "
            "improvement" if args.keep == "best" else "keep=last: the last epoch")
    if mode == RESUME:
        done = len(run.read_history())
        return f"resuming {run.path} after epoch {done} of {args.epochs} ({rule})"
    return f"training into {run.path}: {args.epochs} epoch{'s' if args.epochs != 1 else ''} at most ({rule})"


def kept_line(summary, keep: str, epochs: int, history: list[dict]) -> str:
    """Which epoch the saved model holds, and why."""
    ran = summary.epochs_run
    stopped = f"; stopped early after epoch {ran} of {epochs}" if ran < epochs else ""
    if summary.kept_epoch is None:
        return "no epoch trained"
    if keep == "best":
        best = summary.best_epoch
        row = next((e for e in history if e.get("epoch") == best), {})
        value = f" {row[summary.monitor]:.4f}" if summary.monitor in row else ""
        return f"kept epoch {summary.kept_epoch} (keep=best: lowest {summary.monitor}{value} at epoch {best}){stopped}"
    return f"kept epoch {summary.kept_epoch} (keep=last){stopped}"


def result_lines(metrics: dict) -> list[str]:
    """The validation results: one line per attribute task (the identity task's classifier has no
    validation figure: validation people are not its classes), the mean, and re-identification."""
    lines = ["validation:"] if metrics.get("tasks") else []
    for name, r in metrics.get("tasks", {}).items():
        lines.append(f"  {name:12s} {KINDS[r.get('kind', CATEGORICAL)].result_line(r)}")
    summary = metrics.get("summary") or {}
    if summary.get("mean_accuracy") is not None:
        ma = f"  mA {summary['mA']:.3f}" if summary.get("mA") is not None else ""
        lines.append(f"  mean accuracy {summary['mean_accuracy']:.3f}{ma}")
    from mtl.scoring import instance_line

    if line := instance_line(summary):  # the instance-based PAR metrics
        lines.append(f"  {line}")
    reid = metrics.get("reid") or {}
    if "plain" in reid:
        reranked = f", re-ranked mAP {reid['reranked']['mAP']:.3f}" if "reranked" in reid else ""
        lines.append(f"re-identification on the validation people: mAP {reid['plain']['mAP']:.3f}  "
                     f"rank-1 {reid['plain']['rank1']:.3f}{reranked}  (random ranking: mAP {reid['chance']['mAP']:.3f})")
    elif "skipped" in reid:
        lines.append(f"re-identification not evaluated: {reid['skipped']}")
    return lines


def write_reid_scalars(run: RunDir, reid: dict | None, step: int) -> None:
    """The validation mAP / rank-1 (computed once, after training) as TensorBoard scalars at ``step``."""
    from mtl.callbacks import write_scalars

    if not reid or "plain" not in reid:
        return
    values = {"reid/mAP": reid["plain"].get("mAP"), "reid/rank1": reid["plain"].get("rank1")}
    if "reranked" in reid:
        values.update({"reid/reranked_mAP": reid["reranked"].get("mAP"),
                       "reid/reranked_rank1": reid["reranked"].get("rank1")})
    write_scalars(run.file(TENSORBOARD), values, step)
