"""Hyperparameter search with keras-tuner over the one model builder.

A trial maps its hyperparameter values onto a ``Config`` (:func:`config_for`) and builds and
compiles the model exactly as ``scripts/train.py`` does (``mtl.models.builder.build_model`` and
``mtl.experiment.compile_for``), so the best values are written as a config file that
``scripts/train.py --config`` accepts unchanged.

Pieces, in order:

* :func:`search_space`: *the* search space, one function. YAML (``tune.space``) narrows or fixes
  any of its parameters (:class:`SpaceReader` documents the forms).
* :func:`resolve_objective`: a short name (``age.accuracy``), a mean of several, or a metric
  computed after each trial (``mA``, ``reid_mAP``, ``age.f1``) -> what keras-tuner optimises.
* :class:`MtlHyperModel`: ``build`` (config -> model) and ``fit`` (early stopping inside the trial,
  post-trial metrics, the objective value at the epoch whose weights are kept).
* :func:`make_tuner`: random / bayesian / hyperband tuners that record memory per trial and
  keep the trials table up to date.
* :func:`prepare_out_dir`: an existing search is never reused silently (``resume`` / ``overwrite``
  and a fingerprint of the search settings).
* :func:`write_results`: ``trials.csv``, ``best_config.yaml``, ``tuning.json``.

Distributed search is keras-tuner's own: with ``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``
and ``KERASTUNER_ORACLE_PORT`` set, the process whose id contains ``chief`` serves the oracle and
the others run trials (:func:`distributed_role`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import math
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import keras
import keras_tuner
import numpy as np
from keras_tuner.src.engine.tuner_utils import SaveBestEpoch
import pandas as pd

from mtl.config import Config, build_config, patience_for, save_config, to_dict
from mtl.errors import ConfigError, MtlError
from mtl.io import atomic_path, atomic_write_json
from mtl.models.heads import HEAD_TYPES
from mtl.tasks import BINARY, CATEGORICAL, IDENTITY, TaskSpec
from mtl.training import OPTIMIZERS, trunk_phases

TUNERS = ("random", "bayesian", "hyperband")
PROJECT = "tuner"  # keras-tuner's project folder inside the output folder
SEARCH_FILE = "search.json"  # settings and fingerprint of the search, written when it starts
RESULT_FILES = ("trials.csv", "best_config.yaml", "tuning.json")
CHIEF_WAIT_S = 1800  # a worker waits this long for its chief (which prepares the data before it serves)

# ---------------------------------------------------------------------------------------------
# Search space
# ---------------------------------------------------------------------------------------------

_RANGE_KEYS = {"min", "max", "step", "sampling"}
_SPEC_KEYS = _RANGE_KEYS | {"values"}


def search_space(hp: keras_tuner.HyperParameters, tasks: Sequence[TaskSpec],
                 space: Mapping[str, Any] | None = None) -> dict:
    """Declare the search space on ``hp`` and return the config overrides for the values it holds.

    The same function declares the space (keras-tuner reads the declarations) and, inside a
    trial, reads the trial's values. Parameters are named after the config keys they set.

    Args:
        hp: keras-tuner hyperparameters.
        tasks: the tasks of the model (one loss weight per attribute task when there are several).
        space: ``tune.space`` from the config: narrows or fixes parameters (see ``SpaceReader``).

    Returns:
        Nested dict of config overrides, e.g. ``{"model": {"head": "public", ...}, "train": {...}}``;
        parameters of an inactive branch (private widths of a public head) are left out.
    """
    p = SpaceReader(hp, space)
    model: dict = {}
    train: dict = {}
    model["head"] = p.choice("model.head", list(HEAD_TYPES))
    with p.only_if("model.head", "public"):
        model["public_units"] = p.units("model.public_units", [[256], [384, 384], [512, 256]])
        model["task_units"] = p.choice("model.task_units", [64, 128, 256])
    with p.only_if("model.head", "private"):
        # private hidden widths are multiples of each task's class count
        model["private_multipliers"] = p.units("model.private_multipliers", [[8, 4], [16, 8], [32, 16]])
    model["dropout"] = p.number("model.dropout", 0.0, 0.5, step=0.1, default=0.3)
    model["width"] = p.number("model.width", tuned=False)  # trunk width: tuned only when the space names it
    train["optimizer"] = p.choice("train.optimizer", list(OPTIMIZERS))
    train["learning_rate"] = p.number("train.learning_rate", 1e-4, 3e-3, sampling="log", default=1e-3)
    attributes = [t.name for t in tasks if t.kind in (BINARY, CATEGORICAL)]
    if len(attributes) > 1:  # with one task a loss weight only rescales the learning rate
        train["loss_weights"] = {name: p.number(f"train.loss_weights.{name}", 0.25, 4.0, sampling="log",
                                                default=1.0, fallback="train.loss_weights")
                                 for name in attributes}
    p.check_all_used()
    return _drop_none({"model": model, "train": train})


class SpaceReader:
    """Declares each parameter of ``search_space`` as the YAML ``tune.space`` asks.

    A space entry is keyed by the parameter's config key, flat (``model.dropout: ...``) or
    nested (``model: {dropout: ...}``); its value is one of:

    * a single value: the parameter is fixed (``model.head: public``, ``train.loss_weights: 1``);
    * a list: a choice among these values (``model.dropout: [0.1, 0.3]``;
      list-valued parameters take a list of lists: ``model.public_units: [[256], [512, 256]]``);
    * ``{values: [...]}``: the same as a list;
    * ``{min: a, max: b, step: s, sampling: linear|log}``: a range (numbers only).

    ``train.loss_weights.<task>`` narrows one task's weight, ``train.loss_weights`` all of them.
    An unknown key is an error listing the valid ones.
    """

    def __init__(self, hp, space: Mapping[str, Any] | None):
        self.hp = hp
        self.space = flatten_space(space or {})
        self.disabled = 0  # > 0 inside a branch that a fixed parent excludes
        self.valid: list[str] = []  # every key search_space asked for (unknown-key check)

    # -- declaration helpers used by search_space ----------------------------------------------

    def choice(self, name: str, default: list):
        """A categorical parameter (strings or numbers)."""
        spec = self._spec(name)
        if spec is _UNSET:
            spec = default
        return self._declare(name, spec, kind="choice", allowed=default if isinstance(default[0], str) else None)

    def units(self, name: str, default: list[list[int]]):
        """A parameter whose value is a list of layer widths (a choice among lists, as strings)."""
        spec = self._spec(name)
        if spec is _UNSET:
            spec = default
        if isinstance(spec, Mapping) and set(spec) == {"values"}:
            spec = spec["values"]
        if isinstance(spec, (list, tuple)) and spec and all(isinstance(v, (list, tuple, str)) for v in spec):
            spec = [_units_text(v, name) for v in spec]
        elif isinstance(spec, (list, tuple, str, int)):
            spec = _units_text(spec, name)  # one list of widths: fixed
        else:
            raise ConfigError(f"tune.space {name}: give a list of widths or a list of such lists, got {spec!r}")
        value = self._declare(name, spec, kind="choice")
        return None if value is None else [int(v) for v in str(value).split(",")]

    def number(self, name: str, low: float | None = None, high: float | None = None, step: float | None = None,
               sampling: str = "linear", tuned: bool = True, fallback: str | None = None,
               default: float | None = None):
        """A float parameter: a range by default, ``tuned=False`` keeps the config value unless the
        space names it; ``fallback`` is a broader key that applies when ``name`` is absent;
        ``default`` is the value keras-tuner starts from where it needs one (when in the range)."""
        spec = self._spec(name)
        if spec is _UNSET and fallback:
            spec = self._spec(fallback)
        if spec is _UNSET:
            if not tuned:
                return None
            spec = {"min": low, "max": high, "step": step, "sampling": sampling}
        return _round(self._declare(name, spec, kind="float", default=default))

    @contextlib.contextmanager
    def only_if(self, parent: str, value):
        """Parameters declared inside are active only when ``parent`` takes ``value``.

        A tuned parent opens a keras-tuner conditional scope; a fixed parent simply skips the
        branch it excludes (a conditional scope that can never be active would never end
        keras-tuner's search for inactive scopes).
        """
        fixed, fixed_value = _fixed_value(self.space.get(parent, _UNSET))
        if self.disabled or (fixed and fixed_value != value):
            self.disabled += 1
            try:
                yield
            finally:
                self.disabled -= 1
        elif fixed:
            yield
        else:
            with self.hp.conditional_scope(parent, [value]):
                yield

    def check_all_used(self):
        unknown = sorted(set(self.space) - set(self.valid) - {"train.loss_weights"})
        if unknown:
            valid = sorted(set(self.valid) | ({"train.loss_weights"} if any(
                v.startswith("train.loss_weights.") for v in self.valid) else set()))
            raise ConfigError(f"unknown tune.space key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")

    # -- internals -------------------------------------------------------------------------------

    def _spec(self, name):
        self.valid.append(name)
        return self.space.get(name, _UNSET)

    def _declare(self, name, spec, kind, allowed=None, default=None):
        if self.disabled:
            return None
        if isinstance(spec, Mapping):
            unknown = set(spec) - _SPEC_KEYS
            if unknown:
                raise ConfigError(f"tune.space {name}: unknown key(s) {sorted(unknown)}; use values, or min/max/step/sampling")
            if "values" in spec:
                spec = list(spec["values"])
        if isinstance(spec, (list, tuple)):
            values = list(spec)
            if not values:
                raise ConfigError(f"tune.space {name}: empty list of values")
            if kind == "float":
                values = [_as_float(v, name) for v in values]
            elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                values = [float(v) for v in values] if any(isinstance(v, float) for v in values) else values
            _check_values(name, values, allowed)
            if len(values) == 1:
                return self.hp.Fixed(name, values[0])
            return self.hp.Choice(name, values, ordered=False)
        if isinstance(spec, Mapping):
            if kind != "float" and not (isinstance(spec.get("min"), int) and isinstance(spec.get("max"), int)):
                raise ConfigError(f"tune.space {name}: a range needs numbers; give a list of values instead")
            low, high = spec.get("min"), spec.get("max")
            if low is None or high is None or float(low) > float(high):
                raise ConfigError(f"tune.space {name}: a range needs min <= max, got {dict(spec)}")
            sampling = spec.get("sampling") or "linear"
            if sampling not in ("linear", "log", "reverse_log"):
                raise ConfigError(f"tune.space {name}: sampling must be linear or log, got {sampling!r}")
            _check_values(name, [low, high], allowed)
            if kind != "float":
                return self.hp.Int(name, int(low), int(high), step=int(spec.get("step") or 1), sampling=sampling)
            step = spec.get("step")
            if float(low) == float(high):
                return self.hp.Fixed(name, float(low))
            inside = default is not None and float(low) <= default <= float(high)
            return self.hp.Float(name, float(low), float(high), step=float(step) if step else None,
                                 sampling=sampling, default=default if inside else None)
        value = _as_float(spec, name) if kind == "float" else spec
        _check_values(name, [value], allowed)
        return self.hp.Fixed(name, value)


def _fixed_value(spec) -> tuple[bool, Any]:
    """(True, value) when a space entry fixes its parameter (a value, or a list of one)."""
    if isinstance(spec, Mapping) and set(spec) == {"values"}:
        spec = spec["values"]
    if isinstance(spec, (list, tuple)):
        return (True, spec[0]) if len(spec) == 1 else (False, None)
    if spec is _UNSET or isinstance(spec, Mapping):
        return False, None
    return True, spec


class _Unset:
    def __repr__(self):
        return "<unset>"


_UNSET = _Unset()


def flatten_space(space: Mapping[str, Any], prefix: str = "") -> dict:
    """``{model: {dropout: [..]}}`` -> ``{"model.dropout": [..]}``; a mapping whose keys are
    ``values`` / ``min`` / ``max`` / ``step`` / ``sampling`` is a range spec, not a level."""
    flat: dict = {}
    for key, value in (space or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not set(value) <= _SPEC_KEYS:
            flat.update(flatten_space(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _units_text(value, name: str) -> str:
    items = value.split(",") if isinstance(value, str) else ([value] if isinstance(value, int) else list(value))
    try:
        units = [int(v) for v in items]
    except (TypeError, ValueError):
        raise ConfigError(f"tune.space {name}: layer widths must be integers, got {value!r}") from None
    if not units or min(units) < 1:
        raise ConfigError(f"tune.space {name}: layer widths must be positive integers, got {value!r}")
    return ",".join(str(u) for u in units)


def _as_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"tune.space {name}: expected a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"tune.space {name}: expected a number, got {value!r}") from None


_LIMITS = {  # config key prefix -> (lowest allowed, highest allowed, inclusive high)
    "model.dropout": (0.0, 1.0, False),
    "model.width": (1e-6, math.inf, True),
    "model.task_units": (1, math.inf, True),
    "train.learning_rate": (1e-12, math.inf, True),
    "train.loss_weights": (0.0, math.inf, True),
}


def _check_values(name: str, values, allowed):
    if allowed is not None:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ConfigError(f"tune.space {name}: unknown value(s) {bad}; valid: {', '.join(map(str, allowed))}")
    for prefix, (low, high, inclusive) in _LIMITS.items():
        if name == prefix or name.startswith(prefix + "."):
            for v in values:
                if not isinstance(v, (int, float)) or v < low or v > high or (v == high and not inclusive):
                    raise ConfigError(f"tune.space {name}: {v!r} is out of range [{low}, {high}"
                                      f"{']' if inclusive else ')'}")


def _round(value):
    """6 significant digits: ``0.30000000000000004`` (a stepped range) reads as ``0.3``."""
    return float(f"{value:.6g}") if isinstance(value, float) else value


def _drop_none(d):
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d


def declared_space(tasks: Sequence[TaskSpec], space: Mapping[str, Any] | None) -> keras_tuner.HyperParameters:
    """The whole search space (every branch) declared on fresh hyperparameters."""
    hp = keras_tuner.HyperParameters()
    search_space(hp, tasks, space)
    return hp


def config_for(base: Config, overrides: Mapping[str, Any]) -> Config:
    """``base`` with a trial's overrides (loss weights merge with the base's own)."""
    layer = json.loads(json.dumps(overrides))
    weights = layer.get("train", {}).get("loss_weights")
    if weights is not None:
        layer["train"]["loss_weights"] = {**base.train.loss_weights, **weights}
    return build_config(to_dict(base), layer)


def hp_values(hp: keras_tuner.HyperParameters) -> dict:
    """The active values of a trial (keras-tuner's own ``tuner/...`` bookkeeping included)."""
    return {k: _round(v) for k, v in hp.values.items() if hp.is_active(k) or k.startswith("tuner/")}


# ---------------------------------------------------------------------------------------------
# Objectives
# ---------------------------------------------------------------------------------------------

_TASK_METRICS = {"accuracy": "accuracy", "acc": "accuracy", "xent": "xent", "loss": "xent",
                 "f1": "macro_f1", "macro_f1": "macro_f1"}
_POST_SUFFIXES = ("_macro_f1",)
_GLOBAL_SHORT = {"loss": "val_loss", "masked_loss": "val_masked_loss", "ma": "mA", "map": "reid_mAP",
                 "reid_map": "reid_mAP", "rank1": "reid_rank1", "reid_rank1": "reid_rank1",
                 "mean_accuracy": "mean_accuracy", "mean_macro_f1": "mean_macro_f1", "mean_f1": "mean_macro_f1"}


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a search optimises.

    Args:
        name: the metric name keras-tuner records (``val_age_accuracy``, ``mean_val_accuracy``, ``mA``).
        direction: ``min`` or ``max``.
        parts: the metrics averaged (one for a single metric).
        text: what the user wrote.
    """

    name: str
    direction: str
    parts: tuple[str, ...]
    text: str

    @property
    def post_trial(self) -> bool:
        """True when some part is computed after the trial (keras does not log it per epoch)."""
        return any(is_post_trial(p) for p in self.parts)

    def keras_tuner(self) -> keras_tuner.Objective:
        return keras_tuner.Objective(self.name, self.direction)

    def to_dict(self) -> dict:
        return {"name": self.name, "direction": self.direction, "parts": list(self.parts), "text": self.text,
                "post_trial": self.post_trial}


def is_post_trial(metric: str) -> bool:
    return metric in ("mA", "reid_mAP", "reid_rank1", "mean_accuracy", "mean_macro_f1") or \
        metric.endswith(_POST_SUFFIXES)


def objective_metrics(tasks: Sequence[TaskSpec]) -> list[str]:
    """Every metric name a search over ``tasks`` can optimise (logged per epoch or post-trial)."""
    attributes = [t.name for t in tasks if t.kind in (BINARY, CATEGORICAL)]
    names = ["val_loss"]
    if attributes:
        names += ["val_masked_loss", "mean_accuracy", "mean_macro_f1"]
    for t in attributes:
        names += [f"val_{t}_accuracy", f"val_{t}_xent", f"val_{t}_macro_f1"]
    if any(t.kind == BINARY for t in tasks):
        names.append("mA")
    if any(t.kind == IDENTITY for t in tasks):
        names += ["reid_mAP", "reid_rank1"]
    return names


def direction_of(metric: str) -> str:
    return "min" if metric.endswith(("loss", "xent")) else "max"


def resolve_objective(text: str, tasks: Sequence[TaskSpec],
                      aliases: Mapping[str, Sequence[str]] | None = None) -> Objective:
    """Turn the user's objective into the metric keras-tuner optimises.

    Accepted: a logged name (``val_age_accuracy``), a short one (``age.accuracy``, ``age.xent``,
    ``masked_loss``), a post-trial one (``mA``, ``reid_mAP``, ``age.f1``, ``mean_accuracy``),
    an alias standing for several tasks (``color.accuracy`` -> mean over upcolor and downcolor),
    and a mean of several (``age.accuracy,gender.accuracy`` or ``mean(age.accuracy,gender.accuracy)``).

    Raises:
        ConfigError: unknown name (the message lists the valid ones), or a mean of metrics
            with opposite directions.
    """
    raw = (text or "").strip()
    inner = raw[5:-1] if raw.lower().startswith("mean(") and raw.endswith(")") else raw
    items = [s.strip() for s in inner.split(",") if s.strip()]
    if not items:
        raise ConfigError("empty objective; " + _valid_objectives_text(tasks))
    valid = objective_metrics(tasks)
    parts: list[str] = []
    for item in items:
        for metric in _resolve_metric(item, tasks, aliases or {}, valid):
            if metric not in parts:
                parts.append(metric)
    directions = {direction_of(p) for p in parts}
    if len(directions) > 1:
        raise ConfigError(f"objective {raw!r} averages metrics to minimise and to maximise ({', '.join(parts)}); "
                          "use metrics of one direction")
    direction = directions.pop()
    if len(parts) == 1:
        name = parts[0]
    else:
        suffixes = {_suffix(p) for p in parts}
        name = f"mean_val_{suffixes.pop()}" if len(suffixes) == 1 and None not in suffixes else \
            "mean(" + ",".join(parts) + ")"
    return Objective(name, direction, tuple(parts), raw)


def _suffix(metric: str) -> str | None:
    for s in ("accuracy", "xent", "macro_f1"):
        if metric.startswith("val_") and metric.endswith("_" + s):
            return s
    return None


def _resolve_metric(item: str, tasks, aliases, valid) -> list[str]:
    if item in valid:
        return [item]
    if item.lower() in _GLOBAL_SHORT and _GLOBAL_SHORT[item.lower()] in valid:
        return [_GLOBAL_SHORT[item.lower()]]
    if "." in item:
        task, metric = item.rsplit(".", 1)
        names = {t.name for t in tasks}
        members = [task] if task in names else [n for n in aliases.get(task, ()) if n in names]
        suffix = _TASK_METRICS.get(metric.lower())
        if members and suffix and all(f"val_{m}_{suffix}" in valid for m in members):
            return [f"val_{m}_{suffix}" for m in members]
    raise ConfigError(f"unknown objective {item!r}; " + _valid_objectives_text(tasks))


def _valid_objectives_text(tasks) -> str:
    attributes = [t.name for t in tasks if t.kind in (BINARY, CATEGORICAL)]
    globals_ = [n for n in objective_metrics(tasks) if not n.startswith("val_") or n in ("val_loss", "val_masked_loss")]
    text = "valid objectives: " + ", ".join(globals_)
    if attributes:
        text += (f"; per task: <task>.accuracy, <task>.xent (logged as val_<task>_accuracy, val_<task>_xent), "
                 f"<task>.f1 (macro F1, computed after each trial) for task in {', '.join(attributes)}")
    return text + "; a mean of several: a.accuracy,b.accuracy"


# ---------------------------------------------------------------------------------------------
# HyperModel
# ---------------------------------------------------------------------------------------------

class MtlHyperModel(keras_tuner.HyperModel):
    """Builds and trains one trial's model with the training recipe of ``mtl.experiment``.

    Args:
        base: the config every trial starts from (data, augmentation, epochs, ...).
        data: ``mtl.experiment.PreparedData``, prepared once and shared by all trials.
        objective: the resolved objective.
        patience: early-stopping patience inside each trial.
        verbose: Keras fit verbosity.
    """

    def __init__(self, base: Config, data, objective: Objective, patience: int, verbose: int = 2):
        super().__init__(name="mtl")
        self.base = base
        self.data = data
        self.tasks = list(data.tasks)
        self.objective = objective
        self.patience = int(patience)
        self.verbose = verbose
        self.steps = base.train.steps_per_epoch or math.ceil(len(data.train) / base.train.batch_size)
        self._datasets = None
        self._declaring = False

    @contextlib.contextmanager
    def declaring(self):
        """While keras-tuner only collects the space (tuner construction), ``build`` makes no model."""
        self._declaring = True
        try:
            yield
        finally:
            self._declaring = False

    def trial_config(self, hp) -> Config:
        return config_for(self.base, search_space(hp, self.tasks, self.base.tune.space))

    def build(self, hp):
        """Config of the trial -> the one builder -> compiled as ``scripts/train.py`` compiles."""
        from mtl.models.builder import build_model, model_kwargs

        cfg = self.trial_config(hp)
        if self._declaring:
            return None
        keras.utils.set_random_seed(cfg.train.seed)  # every trial starts from the same initial state
        model = build_model(self.tasks, **model_kwargs(cfg))
        self.compile(model, cfg, trainable_trunk=not cfg.train.freeze_trunk_epochs)
        return model

    def compile(self, model, cfg: Config, trainable_trunk: bool) -> None:
        """``mtl.experiment.compile_for``, then the optimizer's slots are made eagerly.

        Why: left to ``fit``, Keras creates them inside the traced train step (one conditional
        per slot variable, about 170 for this trunk), which made the first epoch of every trial
        about three times slower to trace.
        """
        from mtl.experiment import compile_for

        compile_for(model, cfg, self.data, self.steps, trainable_trunk=trainable_trunk)
        model.optimizer.build(model.trainable_variables)

    def datasets(self):
        """Training / validation datasets, built once (decoded images stay cached across trials)."""
        if self._datasets is None:
            from mtl.experiment import datasets

            self._datasets = datasets(self.base, self.data, repeat=bool(self.base.train.steps_per_epoch))
        return self._datasets

    def fit(self, hp, model, *args, callbacks=None, epochs=None, initial_epoch=0, verbose=None, **kwargs):
        """Train with early stopping on the masked validation loss (the best epoch's weights are
        kept, as in training), then report the objective and the other metrics of that epoch.

        Returns:
            ``{metric: value}`` with the objective, the logged validation metrics of the kept
            epoch, post-trial metrics (mean accuracy / macro F1, mA, re-identification mAP),
            ``epochs_run``, ``best_epoch`` and ``trial_seconds``.
        """
        from mtl.experiment import evaluate_model, monitor_for, uses_pk_sampler
        from mtl.training import MaskedLossLogger, RunEarlyStopping, attribute_loss_weights, embedding_loss_weight

        start = time.time()
        cfg = self.trial_config(hp)
        train_ds, val_ds = self.datasets()
        epochs = int(epochs or cfg.train.epochs)
        # one stopper over the frozen-trunk and fine-tuning fits: restores the trial's best epoch once, at its end
        stopper = RunEarlyStopping(monitor=monitor_for(self.tasks), mode="min", patience=self.patience,
                                   restore_best_weights=True, min_delta=1e-4, epochs=epochs)
        recorder = _EpochRecorder()
        tuner_callbacks = list(callbacks or [])
        # ours first: the masked loss must be in the logs before anything reads them
        own = [MaskedLossLogger(attribute_loss_weights(self.tasks, cfg.train.loss_weights),
                                embedding_loss_weight(self.tasks, cfg.train.loss_weights)),
               keras.callbacks.TerminateOnNaN(), stopper, recorder]
        compiled_trainable = not cfg.train.freeze_trunk_epochs
        fixed_steps = bool(cfg.train.steps_per_epoch) or uses_pk_sampler(cfg, self.tasks)  # P x K: infinite
        for first, last, trainable in trunk_phases(cfg.train.freeze_trunk_epochs, epochs, initial_epoch):
            if trainable != compiled_trainable:
                self.compile(model, cfg, trainable_trunk=trainable)
                compiled_trainable = trainable
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                model.fit(train_ds, validation_data=val_ds, epochs=last, initial_epoch=first,
                          steps_per_epoch=self.steps if fixed_steps else None, shuffle=False,
                          callbacks=own + tuner_callbacks, verbose=self.verbose if verbose is None else verbose)
            if model.stop_training:
                break
        if not recorder.rows:
            raise keras_tuner.errors.FailedTrialError("the trial ran no epoch")
        best = stopper.best_epoch if stopper.best_weights is not None else recorder.rows[-1]["epoch"]
        row = next((r for r in recorder.rows if r["epoch"] == best), recorder.rows[-1])
        metrics, _ = evaluate_model(model, self.tasks, self.data.val, cfg)
        # recorded per trial: the objective's parts and the summary metrics (a readable table)
        available = {**{k: float(v) for k, v in row.items() if k.startswith("val_")}, **post_trial_metrics(metrics)}
        keep = set(self.objective.parts) | {"val_loss", "val_masked_loss", "mean_accuracy", "mean_macro_f1", "mA"}
        results = {k: v for k, v in available.items() if k in keep}
        if any(t.kind == IDENTITY for t in self.tasks):
            results.update(reid_metrics(model, self.data.val, cfg))
        missing = [p for p in self.objective.parts if results.get(p) is None or not np.isfinite(results[p])]
        if missing:
            raise keras_tuner.errors.FailedTrialError(
                f"objective part(s) {', '.join(missing)} missing or not finite (diverged, or no labelled "
                "validation rows)")
        results[self.objective.name] = float(np.mean([results[p] for p in self.objective.parts]))
        results.update(epochs_run=float(len(recorder.rows)), best_epoch=float(best + 1),
                       trial_seconds=round(time.time() - start, 1))
        # keras-tuner's per-trial checkpoint: make it hold the weights kept (those of `best`)
        for cb in tuner_callbacks:
            if isinstance(cb, SaveBestEpoch):
                cb.on_epoch_end(best, logs={})
        return {k: v for k, v in results.items() if v is not None}


class _EpochRecorder(keras.callbacks.Callback):
    """Keeps every epoch's logs (after the masked loss was added)."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})

    def __deepcopy__(self, memo):  # keras-tuner deep-copies callbacks; a fresh recorder is right
        return _EpochRecorder()


def post_trial_metrics(metrics: Mapping) -> dict:
    """Metrics keras does not log per epoch, from ``mtl.experiment.evaluate_model``'s result."""
    out = {f"val_{name}_macro_f1": r.get("macro_f1") for name, r in metrics["tasks"].items()}
    summary = metrics["summary"]
    out.update(mean_accuracy=summary.get("mean_accuracy"), mean_macro_f1=summary.get("mean_macro_f1"),
               mA=summary.get("mA"))
    return {k: float(v) for k, v in out.items() if v is not None}


def reid_metrics(model, table: pd.DataFrame, cfg: Config) -> dict:
    """Re-identification mAP / rank-1 on held-out identities, as training reports them
    (``mtl.reid.protocol.evaluate_holdout``: one query per identity and camera, plain distance)."""
    from mtl.reid.protocol import evaluate_holdout

    result = evaluate_holdout(model, table, cfg.data.image_height, cfg.data.image_width, cfg.train.batch_size,
                              seed=cfg.data.split_seed, rerank="no")
    if "skipped" in result:
        raise keras_tuner.errors.FailedTrialError(f"no re-identification metrics: {result['skipped']}")
    return {"reid_mAP": float(result["plain"]["mAP"]), "reid_rank1": float(result["plain"]["rank1"])}


# ---------------------------------------------------------------------------------------------
# Tuners
# ---------------------------------------------------------------------------------------------

def rss_mb() -> float:
    """Resident memory of this process in MB (``/proc/self/status``; peak RSS where absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextlib.contextmanager
def exclusive_folder(folder: str | Path, what: str = "search"):
    """Hold the lock on ``folder`` (``.lock`` inside it) while the block runs: ``mtl.io.folder_lock``.

    Two processes writing the same run folders at once (the same command started twice) would
    mix their files; the second one stops with an ``MtlError`` naming the holder's pid instead. The
    lock goes away with its process, so a killed run never leaves a stale lock.
    """
    from mtl.io import folder_lock

    with folder_lock(folder, what):
        yield


def _gradient_registry() -> dict | None:
    try:
        from tensorflow.python.framework import ops as tf_ops

        return tf_ops.gradient_registry._registry
    except (ImportError, AttributeError):  # another backend, or TensorFlow changed: nothing to prune
        return None


def gradient_registry_mark() -> set:
    """The custom-gradient entries registered so far (see ``release_graph_memory``)."""
    registry = _gradient_registry()
    return set(registry) if registry is not None else set()


def release_graph_memory(keep: set | None = None) -> None:
    """Free what the models trained since ``keep = gradient_registry_mark()`` left behind.

    Why: Keras 3's TensorFlow optimizer all-reduces gradients even with one replica, through a
    ``tf.custom_gradient``; traced, that registers a gradient function in TensorFlow's global
    registry which holds the whole traced train step (25-70 MB for a small trunk) for the life of
    the process. Between trainings nothing is being traced, so these entries are dead and
    dropping them frees the graphs. Then the Keras session is cleared, garbage collected, and
    freed heap pages go back to the system (glibc), so that resident memory measures what is used.
    """
    keras.backend.clear_session()
    registry = _gradient_registry()
    if registry is not None:
        for key in [k for k in registry if k.startswith("CustomGradient-") and k not in (keep or set())]:
            del registry[key]
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class _MtlTunerMixin:
    """Frees each trial's graphs when it ends (memory stays flat across trials), records the
    process's memory, and calls ``after_trial`` (the search keeps ``trials.csv`` current)."""

    memory_mb: list
    after_trial = None
    _registry_mark: set = set()

    def on_trial_begin(self, trial):
        self._registry_mark = gradient_registry_mark()
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        release_graph_memory(keep=self._registry_mark)
        self.memory_mb.append({"trial_id": trial.trial_id, "rss_mb": round(rss_mb(), 1)})
        if self.after_trial is not None:
            self.after_trial(self)


class RandomSearch(_MtlTunerMixin, keras_tuner.RandomSearch):
    pass


class BayesianOptimization(_MtlTunerMixin, keras_tuner.BayesianOptimization):
    pass


class Hyperband(_MtlTunerMixin, keras_tuner.Hyperband):
    pass


def make_tuner(kind: str, hypermodel: MtlHyperModel, objective: Objective, directory: str | Path,
               max_trials: int, epochs: int, seed: int = 0, overwrite: bool = False):
    """A keras-tuner tuner of ``kind`` (random | bayesian | hyperband) over ``hypermodel``.

    Args:
        directory: the search's output folder (keras-tuner's state goes in ``<directory>/tuner``).
        max_trials: total number of trials (also caps hyperband, whose own budget is
            ``epochs`` and a reduction factor of 3).
        epochs: maximum epochs of a trial (hyperband's ``max_epochs``).
        overwrite: start keras-tuner's state afresh (the folder rules are ``prepare_out_dir``'s).
    """
    common = {"hypermodel": hypermodel, "objective": objective.keras_tuner(), "directory": str(directory),
              "project_name": PROJECT, "overwrite": overwrite, "seed": seed, "max_consecutive_failed_trials": 3}
    with hypermodel.declaring():
        if kind == "random":
            tuner = RandomSearch(max_trials=max_trials, **common)
        elif kind == "bayesian":
            tuner = BayesianOptimization(max_trials=max_trials, **common)
        elif kind == "hyperband":
            tuner = Hyperband(max_epochs=max(2, int(epochs)), factor=3, **common)
            tuner.oracle.max_trials = max_trials  # the oracle stops creating trials past it
        else:
            raise ConfigError(f"unknown tuner {kind!r}; valid: {', '.join(TUNERS)}")
    tuner.memory_mb = []
    return tuner


def distributed_role() -> str | None:
    """``chief`` or ``worker`` under keras-tuner's distributed mode (``KERASTUNER_*`` variables), else None."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if v not in os.environ]
    if missing:
        raise ConfigError(f"KERASTUNER_ORACLE_IP is set but {', '.join(missing)} is not: set all three "
                          "(see docs/tuning.md)")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


# ---------------------------------------------------------------------------------------------
# Output folder: fingerprint, resume / overwrite
# ---------------------------------------------------------------------------------------------

def search_settings(cfg: Config, data, objective: Objective, tuner: str) -> dict:
    """Everything that makes trials comparable: tasks, data, resolved space, objective, tuner and
    the rest of the config. ``tune.max_trials`` is left out (a resumed search may run longer)."""
    config = to_dict(cfg)
    config["tune"].pop("max_trials", None)
    config["tune"].pop("space", None)  # represented by the resolved space below
    config["data"].pop("path", None)  # represented by the absolute data folder below
    space = declared_space(data.tasks, cfg.tune.space).get_config()["space"]
    return {
        "tasks": [t.to_dict() for t in data.tasks],
        "data": {"root": str(Path(data.source.root).resolve()), "format": data.source.name,
                 "train_images": int(len(data.train)), "val_images": int(len(data.val))},
        "objective": objective.to_dict(),
        "tuner": tuner,
        "space": {p["config"]["name"]: {"type": p["class_name"],
                                        **{k: v for k, v in p["config"].items() if k != "name"}} for p in space},
        "config": config,
    }


def fingerprint(settings: Mapping) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def settings_diff(old: Mapping, new: Mapping, limit: int = 6) -> list[str]:
    """Human-readable differences ``key: old -> new`` between two ``search_settings``."""
    a, b = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, _UNSET) != b.get(key, _UNSET):
            short = lambda v: "(absent)" if v is _UNSET else (repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "...")  # noqa: E731
            lines.append(f"{key}: {short(a.get(key, _UNSET))} -> {short(b.get(key, _UNSET))}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


def prepare_out_dir(out: str | Path, settings: Mapping, resume: bool = False, overwrite: bool = False) -> str:
    """Apply the rules of an output folder before a search starts.

    * a folder with a search in it needs ``resume`` (continue it) or ``overwrite`` (delete the
      search's files and start again); neither is an error that says so;
    * ``resume`` with settings (search space, tasks, data, objective, tuner, config) other than
      those saved when the search started is an error that lists the differences;
    * otherwise ``search.json`` (settings and fingerprint) is written.

    Returns:
        ``"new"`` or ``"resume"``.
    """
    out = Path(out)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    saved = out / SEARCH_FILE
    exists = saved.is_file() or (out / PROJECT).exists()
    if exists and not (resume or overwrite):
        raise MtlError(f"{out} already holds a search; pass --resume to continue it, --overwrite to delete it "
                       "and start again, or choose another --out")
    if exists and resume:
        if not saved.is_file():
            raise MtlError(f"cannot --resume {out}: keras-tuner state without {SEARCH_FILE} (not started by "
                           "scripts/tune.py?); use --overwrite or another --out")
        old = json.loads(saved.read_text())
        if old.get("fingerprint") != fingerprint(settings):
            diff = settings_diff(old.get("settings", {}), settings)
            raise MtlError(f"cannot --resume {out}: the search space or settings changed since it started "
                           f"({'; '.join(diff) or 'fingerprint differs'}); use --overwrite to start again or another --out")
        return "resume"
    if exists and overwrite:
        if (out / PROJECT).exists():
            shutil.rmtree(out / PROJECT)
        for name in (SEARCH_FILE, *RESULT_FILES):  # other files (the lock, the user's) stay
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, {"fingerprint": fingerprint(settings), "settings": settings,
                              "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return "new"


def wait_for_chief(host: str, port: str | int, timeout_s: float = CHIEF_WAIT_S, poll_s: float = 1.0) -> None:
    """Block until the chief accepts connections: it serves only after it prepared ``--out``.

    Raises:
        MtlError: no chief after ``timeout_s`` seconds.
    """
    deadline = time.time() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=poll_s):
                return
        except OSError:
            if time.time() >= deadline:
                raise MtlError(f"worker: no chief at {host}:{port} after {timeout_s:.0f} s; start one with the same "
                               "command and KERASTUNER_TUNER_ID=chief") from None
            time.sleep(poll_s)


def check_worker_settings(out: str | Path, settings: Mapping) -> None:
    """A worker's settings must be the chief's (read from ``search.json``, written before the chief serves)."""
    saved = Path(out) / SEARCH_FILE
    if not saved.is_file():
        raise MtlError(f"worker: {saved} not found; start the chief with the same --out (a folder both can read)")
    old = json.loads(saved.read_text())
    if old.get("fingerprint") != fingerprint(settings):
        diff = settings_diff(old.get("settings", {}), settings)
        raise MtlError(f"worker: settings differ from the chief's ({'; '.join(diff)}); run the same command")


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

_FIRST_COLUMNS = ("trial_id", "status", "objective", "trial_seconds", "epochs_run", "best_epoch")


def trials_table(oracle, objective: Objective) -> pd.DataFrame:
    """One row per trial: id, status, objective value, seconds, epochs, hyperparameters, metrics."""
    rows, hp_columns, metric_columns = [], [], []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        metrics = {name: trial.metrics.get_last_value(name) for name in trial.metrics.metrics}
        values = hp_values(trial.hyperparameters)
        hp_columns += [k for k in values if k not in hp_columns]
        metric_columns += [k for k in metrics if k not in metric_columns]
        rows.append({"trial_id": trial_id, "status": str(trial.status), "objective": metrics.get(objective.name),
                     **values, **metrics})
    order = [h.name for h in oracle.get_space().space]  # the search space's own order
    hp_columns.sort(key=lambda c: (order.index(c) if c in order else len(order), c))
    others = sorted(c for c in metric_columns if c not in _FIRST_COLUMNS and c != objective.name)
    frame = pd.DataFrame(rows, columns=[*_FIRST_COLUMNS, *hp_columns, *others])
    for col in ("epochs_run", "best_epoch"):
        frame[col] = frame[col].astype("Int64")
    return frame


def best_trial(oracle, objective: Objective):
    """The completed trial with the best objective value, or None."""
    done = [t for t in oracle.trials.values()
            if str(t.status) == "COMPLETED" and t.metrics.exists(objective.name)]
    if not done:
        return None
    sign = 1 if objective.direction == "min" else -1
    return min(done, key=lambda t: (sign * t.metrics.get_last_value(objective.name), t.trial_id))


def write_results(out: str | Path, tuner, hypermodel: MtlHyperModel, objective: Objective,
                  command: str | None = None) -> dict:
    """Write ``trials.csv``, ``best_config.yaml`` (a config ``scripts/train.py --config`` reads)
    and ``tuning.json``; returns the summary written to ``tuning.json``."""
    out = Path(out)
    oracle = tuner.oracle
    table = trials_table(oracle, objective)
    with atomic_path(out / "trials.csv") as tmp:
        table.to_csv(tmp, index=False)
    best = best_trial(oracle, objective)
    summary: dict = {
        "objective": objective.to_dict(),
        "tuner": hypermodel.base.tune.tuner,
        "max_trials": oracle.max_trials,
        "trials": int(len(table)),
        "completed": int((table["status"] == "COMPLETED").sum()) if len(table) else 0,
        "memory_mb": list(getattr(tuner, "memory_mb", [])),
        "command": command,
        "best": None,
    }
    if best is not None:
        cfg = hypermodel.trial_config(best.hyperparameters)
        save_config(cfg, out / "best_config.yaml")
        summary["best"] = {"trial_id": best.trial_id, "value": best.metrics.get_last_value(objective.name),
                           "hyperparameters": hp_values(best.hyperparameters), "config": "best_config.yaml"}
    atomic_write_json(out / "tuning.json", summary)
    return summary


def trial_patience(cfg: Config) -> int:
    """Early-stopping patience inside a trial: ``tune.patience``, else the training rule."""
    return int(cfg.tune.patience) if cfg.tune.patience is not None else patience_for(cfg.train.epochs,
                                                                                       cfg.train.patience)


def run_search(cfg: Config, out: str | Path, resume: bool = False, overwrite: bool = False,
               command: str | None = None, verbose: int | None = None) -> dict:
    """The whole search for ``cfg`` (its ``tune`` section) into ``out``.

    In keras-tuner's distributed mode the chief applies the folder rules, serves the oracle and
    writes the results; a worker checks its settings against the chief's and runs trials.

    Returns:
        The ``tuning.json`` summary (a worker returns ``{"role": "worker", "trials_run": n}``).
    """
    from mtl.experiment import prepare_data
    from mtl.training import fit_verbosity

    if cfg.tune.tuner not in TUNERS:
        raise ConfigError(f"unknown tuner {cfg.tune.tuner!r}; valid: {', '.join(TUNERS)}")
    if cfg.tune.max_trials < 1:
        raise ConfigError(f"tune.max_trials must be at least 1, got {cfg.tune.max_trials}")
    role = distributed_role()
    out = Path(out)
    keras.utils.set_random_seed(cfg.train.seed)
    print("preparing data ...", flush=True)
    data = prepare_data(cfg)
    objective = resolve_objective(cfg.tune.objective, data.tasks, data.source.aliases)
    config_for(cfg, search_space(keras_tuner.HyperParameters(), data.tasks, cfg.tune.space))  # values are valid
    settings = search_settings(cfg, data, objective, cfg.tune.tuner)
    hypermodel = MtlHyperModel(cfg, data, objective, trial_patience(cfg),
                               verbose=fit_verbosity() if verbose is None else verbose)
    if role == "worker":
        if resume or overwrite:
            print("worker: --resume / --overwrite are the chief's to apply; ignored here", flush=True)
        host, port = os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"]
        print(f"worker {os.environ['KERASTUNER_TUNER_ID']}: waiting for the chief at {host}:{port} ...", flush=True)
        # before building the tuner: that creates the keras-tuner folder in --out, and a chief that
        # has not checked --out yet would take it for an earlier search and stop (workers then wait forever)
        wait_for_chief(host, port)
        tuner = make_tuner(cfg.tune.tuner, hypermodel, objective, out, cfg.tune.max_trials, cfg.train.epochs,
                           seed=cfg.train.seed, overwrite=False)
        check_worker_settings(out, settings)
        tuner.search(verbose=hypermodel.verbose)
        return {"role": "worker", "trials_run": len(tuner.memory_mb), "memory_mb": tuner.memory_mb}
    with exclusive_folder(out, "search"):
        return _run_chief_or_single(cfg, out, data, objective, settings, hypermodel, role, resume, overwrite, command)


def _run_chief_or_single(cfg, out, data, objective, settings, hypermodel, role, resume, overwrite, command) -> dict:
    """``run_search`` for the process that owns the folder (the chief, or the only process)."""
    mode = prepare_out_dir(out, settings, resume=resume, overwrite=overwrite)
    print(f"{'resuming' if mode == 'resume' else 'starting'} {cfg.tune.tuner} search in {out}: objective "
          f"{objective.name} ({objective.direction}), at most {cfg.tune.max_trials} trials", flush=True)
    tuner = make_tuner(cfg.tune.tuner, hypermodel, objective, out, cfg.tune.max_trials, cfg.train.epochs,
                       seed=cfg.train.seed, overwrite=(mode == "new"))
    tuner.after_trial = lambda t: write_results(out, t, hypermodel, objective, command)
    if role == "chief":
        print(f"chief: serving the oracle on {os.environ['KERASTUNER_ORACLE_IP']}:"
              f"{os.environ['KERASTUNER_ORACLE_PORT']}; start the workers", flush=True)
    tuner.search(verbose=hypermodel.verbose)
    summary = write_results(out, tuner, hypermodel, objective, command)
    if summary["best"] is None:
        messages = [t.message for t in tuner.oracle.trials.values() if getattr(t, "message", None)]
        last = (messages[-1].strip().splitlines() or [""])[-1] if messages else "no trial ran"
        raise MtlError(f"no trial completed ({summary['trials']} tried); last error: {last}")
    return summary
