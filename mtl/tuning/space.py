"""The search space: one function declares it, YAML ``tune.space`` narrows or fixes it, and a
trial's values become a ``Config``.

* :func:`search_space`: *the* search space. Parameters are named after the config keys they set.
* :class:`SpaceReader`: declares each parameter as ``tune.space`` asks (its docstring lists the forms).
* :func:`config_for`: the base config with a trial's overrides, a config ``scripts/train.py
  --config`` accepts unchanged.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any, Mapping, Sequence

import keras_tuner

from mtl.config import Config, build_config, to_dict
from mtl.errors import ConfigError
from mtl.models.heads import HEAD_TYPES
from mtl.optim import OPTIMIZERS
from mtl.tasks import TaskSpec, attribute_tasks

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
    attributes = [t.name for t in attribute_tasks(tasks)]
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
