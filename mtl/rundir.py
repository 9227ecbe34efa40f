"""The run directory: its file names, the schema of each file, their writers and readers, the
rules for reusing a folder and the lock that keeps two processes out of one.

Every command that writes or reads a run goes through this module: training (``mtl.experiment``),
``evaluate``, ``predict``, tuning, the study and the report. A run directory holds:

==========================  =================================================================
``run.json``                manifest: schema version, package version, status (``training`` /
                            ``finished``), the sessions (command, start, end) that wrote it
``config.yaml``             the resolved config (``--config`` accepts it unchanged)
``command.txt``             the command of the first session (all sessions: ``run.json``)
``tasks.json``              the task specs (names, kinds, class names) in output order: the
                            run's class table, by which any other data is labelled
``data.json``               ``DataInfo``: format, folder, images / identities per split, skipped
``split.csv``               every image used, with its split (``train`` / ``val``)
``skipped_images.csv``      images left out because the pipeline cannot decode them (path, reason)
``model.json``              ``ModelInfo``: trunk, head, input contract, parameter counts, outputs
``model.keras``             the trained model (the epoch ``train.keep`` chose)
``history.json``            per-epoch logs (``epoch`` 1-based, ``time_s``, losses and metrics)
``checkpoints/``            ``best.weights.h5`` (lowest monitored loss) and ``backup/`` (resume)
``metrics.json``            validation metrics per task, ``summary`` (mean accuracy, mA, and
                            the later ``instance_accuracy/precision/recall/f1``: absent in older
                            runs, readers use ``.get``), ``instance`` (the attributes counted),
                            ``training`` summary, ``reid``; later ``evaluation`` (``mtl-evaluate``)
``val_predictions.csv``     per validation image: true / predicted class and confidence per task
``reid_examples.json``      ranked retrieval examples (``mtl-evaluate``)
``tensorboard/``            TensorBoard event files (``train.tensorboard``): ``tensorboard --logdir runs``
``export/<format>/``        ``mtl-export``: the artifact (``EXPORT_FILES``) and its ``model.json``
                            (with the ``serving`` section: input contract, named outputs)
``predictions/``            ``mtl-predict --images``: ``predictions.csv`` (a row per image: class
                            and probability per task), ``embeddings.npy`` (row i = csv row i),
                            ``skipped_images.csv`` (owner: ``mtl.predictions``)
``index/``                  ``mtl-search``: the gallery's predictions and embeddings, and its
                            index (``index.json`` + ``index.npy`` / ``index.faiss``, ``mtl.reid.index``)
==========================  =================================================================

Writes are atomic (``mtl.io``): an interruption never leaves a half-written file. ``RunDir``'s
readers are strict (a broken file is a ``DataError``); the readers at the end (``load``) are the
report's: they tolerate missing or broken files and note why. This module imports neither
TensorFlow nor Keras: a finished run with its model is loaded by ``mtl.runs.load_run``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import pandas as pd
import yaml

from mtl.errors import DataError, MtlError
from mtl.io import atomic_path, atomic_write_json, atomic_write_text

SCHEMA_VERSION = 1

RUN_JSON = "run.json"
CONFIG = "config.yaml"
COMMAND = "command.txt"
TASKS = "tasks.json"
DATA = "data.json"
SPLIT = "split.csv"
SKIPPED = "skipped_images.csv"
MODEL_JSON = "model.json"
MODEL = "model.keras"
HISTORY = "history.json"
METRICS = "metrics.json"
PREDICTIONS = "val_predictions.csv"
REID_EXAMPLES = "reid_examples.json"
INDEX = "index"  # folder: a gallery's embedding index and attributes (mtl.reid.index, mtl.search; mtl-search)
CHECKPOINTS = "checkpoints"
BEST_WEIGHTS = "checkpoints/best.weights.h5"
BACKUP = "checkpoints/backup"
TENSORBOARD = "tensorboard"  # TensorBoard event files (train/, validation/): tensorboard --logdir runs
LOCK = ".lock"
# mtl-export (mtl.export): RUN/export/<format>/ holds the artifact below and a model.json
EXPORT = "export"
EXPORT_FILES = {"saved_model": "saved_model", "litert": "model.tflite", "onnx": "model.onnx"}
# mtl-predict --images writes into <run>/predictions/ unless --out says otherwise (mtl.predictions)
PREDICTIONS_DIR = "predictions"
PREDICTIONS_CSV = "predictions.csv"  # one row per image: path, per task the class name and its probability
EMBEDDINGS = "embeddings.npy"  # (rows of predictions.csv, D) float32, L2-normalised, in the CSV's row order

# tuning and study folders (written by mtl.tuning / mtl.study, read by the report)
TRIALS = "trials.csv"
TUNING_JSON = "tuning.json"
BEST_CONFIG = "best_config.yaml"
SEARCH_JSON = "search.json"  # a search's settings and their fingerprint, written when it starts
STUDY_CSV = "study.csv"
STUDY_RUNS_CSV = "study_runs.csv"
STUDY_JSON = "study.json"

RUN = "run"
TUNING = "tuning"
STUDY = "study"

RUN_FILES = (METRICS, HISTORY, CONFIG, PREDICTIONS, TASKS)
TUNING_FILES = (TRIALS, TUNING_JSON)
STUDY_FILES = (STUDY_CSV, STUDY_JSON)

NEW, RESUME = "new", "resume"  # what ``plan`` decides for an --out folder
TRAINING, FINISHED = "training", "finished"  # run.json status


@dataclass(frozen=True)
class DataInfo:
    """``data.json``: where the run's images came from and how they were split.

    Attributes:
        format: the source format (``mtl.data.sources.FORMATS``).
        root: the data folder (absolute).
        embedded_default: trained on the embedded synthetic dataset.
        splits: ``{split: {"images": n, "identities": n}}``.
        skipped: images left out as unreadable (listed in ``skipped_images.csv``).
    """

    format: str
    root: str
    embedded_default: bool
    splits: dict
    skipped: int = 0
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, d: Mapping) -> "DataInfo":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class ModelInfo:
    """``model.json``: the model and its input contract (what a serving user needs).

    Attributes:
        trunk, weights, head: how it was built.
        input_shape: ``[height, width, 3]``; images are RGB floats in ``[0, 255]`` (resized, not
            normalised: the trunk normalises).
        outputs: output names (tasks, ``embedding``).
        params_total, params_trainable, params_trunk: parameter counts.
        channel_order, value_range: of the input images.
        classes: ``{task: [class names]}`` in the order of each task's output (binary tasks: one
            sigmoid unit, the probability of the second class).
        preprocessing: what the caller does to an image and what the model does inside
            (``resize``, ``dtype``, ``normalization``).
        serving: only in an export folder's ``model.json`` (``mtl.export``): ``format``, ``file``,
            ``input`` (name, shape, dtype ``uint8``, channel order, value range, resizing),
            ``outputs`` (``{name: {shape, dtype, kind, classes, ...}}``), ``output_names``,
            ``size_bytes`` and the measured ``parity`` with the Keras model.
    """

    trunk: str
    weights: str | None
    head: str
    input_shape: list
    outputs: list
    params_total: int
    params_trainable: int
    params_trunk: int
    channel_order: str = "RGB"
    value_range: list = field(default_factory=lambda: [0, 255])
    classes: dict = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)
    serving: dict | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, d: Mapping) -> "ModelInfo":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class TrainingSummary:
    """``metrics.json["training"]``.

    Attributes:
        train_time_s: the epochs of every session of the run, summed.
        epochs_run: epochs in ``history.json``.
        best_epoch: 1-based epoch with the lowest ``monitor``.
        kept_epoch: 1-based epoch whose weights ``model.keras`` holds.
        mean_epoch_time_s: mean epoch time.
        monitor: the logged loss early stopping and the best checkpoint watched.
    """

    train_time_s: float
    epochs_run: int
    best_epoch: int | None
    kept_epoch: int | None
    mean_epoch_time_s: float | None
    monitor: str | None = None


@dataclass(frozen=True)
class RunPaths:
    """Where ``mtl.engine.train_model`` keeps a run's training state (``RunDir.engine_paths`` gives them);
    ``tensorboard``: the TensorBoard log folder, None for none."""

    history: Path
    best_weights: Path
    backup: Path
    tensorboard: Path | None = None


class RunDir:
    """One run directory: paths of its files, their writers and readers.

    Args:
        path: the folder (need not exist yet).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    # ---- state ---------------------------------------------------------------------------
    def manifest(self) -> dict | None:
        """``run.json``, or None where absent (a folder written before it existed counts as
        finished when it has ``metrics.json``)."""
        p = self.file(RUN_JSON)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{p}: unreadable ({exc})") from None

    def status(self) -> str | None:
        """``None`` (no run here), ``"training"`` (unfinished) or ``"finished"``."""
        manifest = self.manifest()
        if manifest is not None:
            return manifest.get("status", TRAINING)
        if self.file(METRICS).is_file():
            return FINISHED
        if self.file(CONFIG).is_file() or self.file(HISTORY).is_file():
            return TRAINING
        return None

    def begin_session(self, command: str) -> None:
        """Record a training session in ``run.json`` (status ``training``)."""
        from mtl import __version__

        manifest = self.manifest() or {"schema_version": SCHEMA_VERSION, "mtl_version": __version__, "sessions": []}
        manifest["status"] = TRAINING
        manifest["sessions"] = [*manifest.get("sessions", []),
                                {"command": command, "started": _now(), "ended": None}]
        atomic_write_json(self.file(RUN_JSON), manifest)

    def finish(self) -> None:
        """Mark the run finished (``run.json``): a later train into this folder is refused."""
        manifest = self.manifest() or {"schema_version": SCHEMA_VERSION, "sessions": []}
        manifest["status"] = FINISHED
        if manifest.get("sessions"):
            manifest["sessions"][-1]["ended"] = _now()
        atomic_write_json(self.file(RUN_JSON), manifest)

    # ---- writers -------------------------------------------------------------------------
    def write_config(self, cfg) -> None:
        from mtl.config import to_dict

        atomic_write_text(self.file(CONFIG), yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def write_command(self, command: str) -> None:
        atomic_write_text(self.file(COMMAND), command.rstrip("\n") + "\n")

    def write_tasks(self, tasks) -> None:
        atomic_write_json(self.file(TASKS), [t.to_dict() for t in tasks])

    def write_data(self, info: DataInfo, train: pd.DataFrame, val: pd.DataFrame,
                   skipped: pd.DataFrame | None = None) -> None:
        """``data.json``, ``split.csv`` and (when images were skipped) ``skipped_images.csv``."""
        atomic_write_json(self.file(DATA), dataclasses.asdict(info))
        split = pd.concat([train.assign(split="train"), val.assign(split="val")])
        self.write_csv(SPLIT, split[["path", "identity", "camera", "split"]])
        if skipped is not None and len(skipped):
            self.write_csv(SKIPPED, skipped)

    def write_model_info(self, info: ModelInfo) -> None:
        atomic_write_json(self.file(MODEL_JSON), dataclasses.asdict(info))

    def save_model(self, model) -> None:
        with atomic_path(self.file(MODEL)) as tmp:
            model.save(str(tmp))

    def write_metrics(self, metrics: Mapping) -> None:
        atomic_write_json(self.file(METRICS), {"schema_version": SCHEMA_VERSION, **metrics})

    def write_csv(self, name: str, frame: pd.DataFrame) -> None:
        with atomic_path(self.file(name)) as tmp:
            frame.to_csv(tmp, index=False)

    def write_json(self, name: str, value) -> None:
        atomic_write_json(self.file(name), value)

    # ---- readers -------------------------------------------------------------------------
    def read_json(self, name: str, default=None):
        p = self.file(name)
        if not p.is_file():
            return default
        try:
            return json.loads(p.read_text(), parse_constant=lambda c: math.nan)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {p}: {exc}") from None

    def read_config(self):
        """The run's resolved ``Config`` (validated like any config)."""
        from mtl.config import build_config, load_yaml

        return build_config(load_yaml(self.file(CONFIG)))

    def read_config_dict(self) -> dict | None:
        p = self.file(CONFIG)
        if not p.is_file():
            return None
        try:
            value = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise DataError(f"cannot read {p}: {str(exc).splitlines()[0]}") from None
        return value if isinstance(value, dict) else None

    def read_tasks(self) -> list:
        from mtl.tasks import TaskSpec

        rows = self.read_json(TASKS)
        if rows is None:
            raise DataError(f"{self.path}: not a finished run ({TASKS} missing)")
        return [TaskSpec.from_dict(d) for d in rows]

    def read_data_info(self) -> DataInfo | None:
        d = self.read_json(DATA)
        return DataInfo.from_dict(d) if d else None

    def read_split(self) -> pd.DataFrame | None:
        p = self.file(SPLIT)
        return pd.read_csv(p) if p.is_file() else None

    def read_history(self) -> list[dict]:
        return self.read_json(HISTORY, default=[]) or []

    def read_metrics(self) -> dict | None:
        return self.read_json(METRICS)

    def engine_paths(self, tensorboard: bool = True) -> RunPaths:
        """Where the engine keeps training state (``RunPaths``); ``tensorboard``: write
        TensorBoard logs into ``tensorboard/`` (``train.tensorboard``)."""
        return RunPaths(history=self.file(HISTORY), best_weights=self.file(BEST_WEIGHTS), backup=self.file(BACKUP),
                        tensorboard=self.file(TENSORBOARD) if tensorboard else None)

    def training_summary(self, monitor: str, kept_epoch: int | None, session_time_s: float) -> TrainingSummary:
        """``TrainingSummary`` from ``history.json``: ``train_time_s`` sums the epochs of every
        session of a resumed run (this session's wall time when no history was written);
        ``best_epoch`` has the lowest ``monitor``; ``kept_epoch`` is the epoch the model holds
        (the engine's; the last epoch when the engine trained none this session)."""
        import numpy as np

        history = self.read_history()
        best = min((e for e in history if monitor in e), key=lambda e: e[monitor], default=None)
        times = [e["time_s"] for e in history]
        kept = kept_epoch if kept_epoch is not None else (history[-1]["epoch"] if history else None)
        return TrainingSummary(
            train_time_s=round(float(np.sum(times)) if times else session_time_s, 1), epochs_run=len(history),
            best_epoch=best["epoch"] if best else None, kept_epoch=kept,
            mean_epoch_time_s=round(float(np.mean(times)), 1) if times else None, monitor=monitor)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


_MISSING = object()


def _flatten(d, prefix="") -> dict:
    out = {}
    if isinstance(d, Mapping):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and d and all(isinstance(x, Mapping) for x in d):
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def config_diff(old: Mapping, new: Mapping, limit: int = 6) -> list[str]:
    """Human-readable differences ``key: old -> new`` between two configs (or tuning settings):
    ``["train.epochs: 2 -> 3", ...]``, at most ``limit`` lines."""
    a, b = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, _MISSING) != b.get(key, _MISSING):
            short = lambda v: "(absent)" if v is _MISSING else (repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "...")  # noqa: E731
            lines.append(f"{key}: {short(a.get(key, _MISSING))} -> {short(b.get(key, _MISSING))}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


def plan(path: str | Path, config: Mapping, overwrite: bool = False) -> str:
    """What training into ``path`` must do, by the rules for ``--out``; reads only.

    * no folder, or an empty one: ``"new"``;
    * an unfinished run with the same resolved config: ``"resume"``;
    * anything else (a finished run, a different config, a folder that is not a run) is an error
      naming what differs, unless ``overwrite`` (then ``"new"``: the caller clears the folder,
      which is never done for a folder that is not a run).

    Args:
        path: the ``--out`` folder.
        config: the new resolved config as a dict (``mtl.config.to_dict``).
        overwrite: start afresh over an existing run.

    Raises:
        MtlError: the folder cannot be used (the message says why and what to do).
    """
    run = RunDir(path)
    if run.path.exists() and not run.path.is_dir():
        raise MtlError(f"--out {run.path} is a file, not a folder")
    if not run.path.is_dir() or not any(p.name != LOCK for p in run.path.iterdir()):
        return NEW
    status = run.status()
    if status is None:
        raise MtlError(f"--out {run.path} exists and is not a run folder (no {RUN_JSON} or {CONFIG}); "
                       "choose another --out")
    if overwrite:
        return NEW
    diff = config_diff(run.read_config_dict() or {}, config)
    if status == FINISHED:
        what = f"with another config ({'; '.join(diff)})" if diff else "with this config"
        raise MtlError(f"{run.path} holds a finished run {what}; pass --overwrite to train it again from scratch "
                       "(its files are replaced), or choose another --out")
    if diff:
        raise MtlError(f"{run.path} holds an unfinished run with another config ({'; '.join(diff)}); rerun with "
                       "the same config to resume it, pass --overwrite to start afresh, or choose another --out")
    return RESUME


def clear(path: str | Path) -> None:
    """Delete the files of the run in ``path`` (``--overwrite``), keeping the folder and its lock."""
    run = RunDir(path)
    if run.status() is None:
        raise MtlError(f"{run.path} is not a run folder; refusing to delete its files")
    for p in run.path.iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def detect_kind(path: str | Path) -> str:
    """What kind of directory ``path`` is, judged by its files.

    Args:
        path: a directory.

    Returns:
        ``"study"``, ``"tuning"`` or ``"run"`` (checked in that order: a study folder may hold a
        tuning's files, and both may hold a run's).

    Raises:
        DataError: not a directory, or none of the known files is there.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: not a directory (expected a run, tuning or study directory)")
    for kind, names in ((STUDY, STUDY_FILES), (TUNING, TUNING_FILES), (RUN, RUN_FILES)):
        if any((path / n).is_file() for n in names):
            return kind
    raise DataError(f"{path}: no run, tuning or study files found (looked for "
                    f"{', '.join(RUN_FILES + TUNING_FILES + STUDY_FILES)})")


@dataclass
class RunFiles:
    """The parsed files of one directory; ``None`` where a file is missing or unreadable."""

    path: Path
    kind: str
    config: dict | None = None
    config_text: str | None = None
    command: str | None = None
    tasks: list | None = None
    data: dict | None = None
    model: dict | None = None
    history: list | None = None
    metrics: dict | None = None
    predictions: pd.DataFrame | None = None
    split: pd.DataFrame | None = None
    reid_examples: list | None = None
    trials: pd.DataFrame | None = None
    best_config_text: str | None = None
    tuning: dict | None = None
    study: pd.DataFrame | None = None
    study_info: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.resolve().name


def load(path: str | Path) -> RunFiles:
    """Read everything a report can show from ``path`` (see the package docstring).

    Raises:
        DataError: ``path`` is not a run, tuning or study directory.
    """
    path = Path(path)
    rf = RunFiles(path=path, kind=detect_kind(path))
    rf.config_text = _read(rf, CONFIG, lambda p: p.read_text())
    rf.config = _read(rf, CONFIG, lambda p: _mapping(yaml.safe_load(p.read_text())))
    rf.command = _read(rf, COMMAND, lambda p: p.read_text().strip() or None)
    rf.tasks = _read(rf, TASKS, lambda p: _list(_json(p)))
    rf.data = _read(rf, DATA, lambda p: _mapping(_json(p)))
    rf.model = _read(rf, MODEL_JSON, lambda p: _mapping(_json(p)))
    rf.history = _read(rf, HISTORY, lambda p: [e for e in _list(_json(p)) if isinstance(e, dict)])
    rf.metrics = _read(rf, METRICS, lambda p: _mapping(_json(p)))
    rf.predictions = _read(rf, PREDICTIONS, pd.read_csv)
    rf.split = _read(rf, SPLIT, pd.read_csv)
    rf.reid_examples = _read(rf, REID_EXAMPLES, lambda p: [q for q in _list(_json(p)) if isinstance(q, dict)])
    # trial ids are names ("03"), not numbers: keep their leading zeros
    rf.trials = _read(rf, TRIALS, lambda p: pd.read_csv(p, dtype={"trial_id": str}))
    rf.best_config_text = _read(rf, BEST_CONFIG, lambda p: p.read_text())
    rf.tuning = _read(rf, TUNING_JSON, lambda p: _mapping(_json(p)))
    rf.study = _read(rf, STUDY_CSV, pd.read_csv)
    rf.study_info = _read(rf, STUDY_JSON, lambda p: _mapping(_json(p)))
    return rf


def sub_runs(path: str | Path, depth: int = 2) -> list[Path]:
    """Folders below ``path`` that are runs (hold a ``metrics.json``), at most ``depth`` levels down
    (a study keeps its runs in ``<set>/seed<k>``), sorted by their path."""
    found = []
    for p in sorted(Path(path).iterdir()):
        if not p.is_dir():
            continue
        if (p / METRICS).is_file():
            found.append(p)
        elif depth > 1:
            found.extend(sub_runs(p, depth - 1))
    return found


def _read(rf: RunFiles, name: str, parse):
    p = rf.path / name
    if not p.is_file():
        return None
    try:
        return parse(p)
    except Exception as exc:  # noqa: BLE001 - any parse failure becomes a note, never a crash
        rf.notes.append(f"{name}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})")
        return None


def _json(p: Path):
    # history.json may hold NaN / Infinity (a diverged epoch): Python's json accepts them
    return json.loads(p.read_text(), parse_constant=lambda c: math.nan)


def _mapping(value) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, got {type(value).__name__}")
    return value


def _list(value) -> list:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return value
