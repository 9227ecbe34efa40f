"""Optimizers and learning-rate schedules: Adam / AdamW / SGD with a lower learning rate for the
trunk (fine-tuning a pretrained trunk), warm-up followed by a cosine, step or constant schedule,
and the optimizer of each training phase (``phase_optimizer``: AdamW first, then SGD).
Every class is registered with Keras, so a compiled ``model.keras`` reloads with ``compile=True``.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
from keras import ops

from mtl.choices import OPTIMIZERS, SCHEDULES
from mtl.errors import ConfigError


@keras.saving.register_keras_serializable(package="mtl")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``base_lr / 10`` over ``warmup_steps``, then cosine decay to 1% of
    ``base_lr`` at ``total_steps``, or a step decay (x ``step_factor`` every ``step_size`` steps
    after the warm-up: 0.1 divides by 10, 0.5 halves), or constant.

    Args:
        base_lr: the peak learning rate (after the warm-up).
        total_steps: steps of the whole run (the cosine's end).
        warmup_steps: steps of the linear warm-up (0: none).
        kind: cosine, step or constant.
        step_size: step schedule: steps between two decays (0: constant).
        step_factor: step schedule: what each decay multiplies the rate by.
    """

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
                 step_size: int = 0, step_factor: float = 0.1):
        if kind not in SCHEDULES:
            raise ConfigError(f"unknown schedule {kind!r}; valid: {', '.join(SCHEDULES)}")
        self.base_lr = float(base_lr)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.kind = kind
        self.step_size = int(step_size)
        self.step_factor = float(step_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = float(self.warmup_steps)
        base = self.base_lr
        if self.kind == "cosine":
            progress = ops.clip((step - warm) / max(1.0, self.total_steps - warm), 0.0, 1.0)
            lr = base * (0.01 + 0.99 * 0.5 * (1 + ops.cos(math.pi * progress)))
        elif self.kind == "step" and self.step_size > 0:
            lr = base * ops.power(self.step_factor, ops.floor(ops.maximum(step - warm, 0.0) / self.step_size))
        else:
            lr = base * ops.ones_like(step)
        if self.warmup_steps:
            ramp = base * (0.1 + 0.9 * ops.minimum(step / warm, 1.0))
            lr = ops.where(step < warm, ramp, lr)
        return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "kind": self.kind, "step_size": self.step_size, "step_factor": self.step_factor}


def _with_trunk_lr(base):
    """An optimizer class whose updates of trunk variables use ``lr * trunk_lr_multiplier``.

    Keras has no per-layer learning rate; trunk variables are recognised by their paths, which
    are stable across save/reload. Only the subclassing contract of ``keras.optimizers.Optimizer``
    is used (``build``, ``update_step``, ``get_config`` and ``_get_variable_index``, which its
    docstring's example optimizer calls in ``update_step``).

    Args (of the class made):
        trunk_lr_multiplier: factor on the learning rate of the trunk variables.
        trunk_paths: ``Variable.path`` of each trunk variable.
        **kwargs: arguments of ``base``.
    """

    class TrunkLR(base):
        def __init__(self, trunk_lr_multiplier: float = 1.0, trunk_paths: Sequence[str] = (), **kwargs):
            super().__init__(**kwargs)
            self.trunk_lr_multiplier = float(trunk_lr_multiplier)
            self.trunk_paths = list(trunk_paths)
            self._trunk_indices = frozenset()

        def build(self, variables):
            super().build(variables)
            trunk = set(self.trunk_paths)
            # update_step gets the backend's own variable, without its path: keep the indices
            self._trunk_indices = frozenset(i for i, v in enumerate(variables) if v.path in trunk)

        def update_step(self, gradient, variable, learning_rate):
            if self.trunk_lr_multiplier != 1.0 and self._get_variable_index(variable) in self._trunk_indices:
                learning_rate = ops.multiply(learning_rate, self.trunk_lr_multiplier)
            return super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(), "trunk_lr_multiplier": self.trunk_lr_multiplier,
                    "trunk_paths": self.trunk_paths}

    TrunkLR.__name__ = TrunkLR.__qualname__ = f"TrunkLR{base.__name__}"
    return keras.saving.register_keras_serializable(package="mtl")(TrunkLR)


TrunkLRAdam = _with_trunk_lr(keras.optimizers.Adam)
TrunkLRAdamW = _with_trunk_lr(keras.optimizers.AdamW)
TrunkLRSGD = _with_trunk_lr(keras.optimizers.SGD)


def make_optimizer(name: str, learning_rate, weight_decay: float = 0.0, trunk_lr_multiplier: float = 1.0,
                   trunk_paths: Sequence[str] = ()) -> keras.optimizers.Optimizer:
    """Adam, AdamW or SGD with Nesterov momentum 0.9; ``learning_rate`` may be a schedule."""
    common = {"learning_rate": learning_rate, "trunk_lr_multiplier": trunk_lr_multiplier,
              "trunk_paths": list(trunk_paths), "clipnorm": 5.0}
    if name == "adam":
        return TrunkLRAdam(**common)
    if name == "adamw":
        return TrunkLRAdamW(weight_decay=weight_decay, **common)
    if name == "sgd":
        return TrunkLRSGD(momentum=0.9, nesterov=True, weight_decay=weight_decay or None, **common)
    raise ConfigError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


# Adam's steps are normalised per parameter (about lr each), SGD's are lr x the gradient: the same
# training needs a larger SGD rate. 10x is the usual ratio (e.g. Adam 3.5e-4 in the BoT ReID
# baseline vs SGD 1e-2 - 3.5e-2 in the SGD baselines of ReID and PAR); tied to learning_rate, a
# search over learning_rate moves both.
SGD_LR_FACTOR = 10.0


def phase_optimizer(optimizer: str, learning_rate: float, sgd_phase: bool = False,
                    sgd_learning_rate: float | None = None) -> tuple[str, float]:
    """The optimizer and peak learning rate of a training phase (``train.sgd_from_epoch``).

    Args:
        optimizer: ``train.optimizer`` (the phases before the switch).
        learning_rate: ``train.learning_rate``.
        sgd_phase: a phase after the switch: SGD with Nesterov momentum 0.9.
        sgd_learning_rate: its peak rate; None: ``SGD_LR_FACTOR`` x ``learning_rate``.

    Returns:
        ``(name, peak learning rate)`` for ``make_optimizer`` and ``WarmupSchedule``.
    """
    if not sgd_phase:
        return optimizer, float(learning_rate)
    return "sgd", float(sgd_learning_rate if sgd_learning_rate is not None else SGD_LR_FACTOR * learning_rate)
