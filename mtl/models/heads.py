"""Task heads on pooled trunk features, as the product-attribute report defines them.

* ``private``: every task has its own hidden layers, sized from its class count
  (``16 x K`` then ``8 x K`` units by default; ``TaskKind.head_size``), then its output: no sharing above the trunk.
* ``public``: shared hidden layers (``384, 384`` by default) used by all tasks, then a small
  per-task layer (``128`` units) and the output: tasks help each other through the shared layers.

Each task ends in its kind's output layer (``TaskKind.output_layer``: one sigmoid unit, a softmax,
a scaled linear unit); outputs are float32 (also under mixed precision) and named after their task.
"""

from __future__ import annotations

from typing import Sequence

import keras

from mtl.choices import HEAD_TYPES
from mtl.errors import ConfigError
from mtl.tasks import TaskSpec, attribute_tasks


def _dense(units, name, activation="relu"):
    return keras.layers.Dense(units, activation=activation, kernel_initializer="he_normal", name=name)


def attribute_heads(features, tasks: Sequence[TaskSpec], head: str = "private",
                    public_units: Sequence[int] = (384, 384), private_multipliers: Sequence[int] = (16, 8),
                    task_units: int = 128, dropout: float = 0.3) -> dict:
    """Build the attribute outputs on pooled ``features``; returns ``{task: output tensor}``."""
    if head not in HEAD_TYPES:
        raise ConfigError(f"unknown head type {head!r}; valid: {', '.join(HEAD_TYPES)}")
    tasks = attribute_tasks(tasks)
    if not tasks:
        return {}
    x = keras.layers.Dropout(dropout, name="head_dropout")(features) if dropout else features
    outputs = {}
    if head == "public":
        for i, units in enumerate(public_units):
            x = _dense(units, f"public_dense{i + 1}")(x)
        for spec in tasks:
            y = _dense(task_units, f"{spec.name}_dense")(x) if task_units else x
            outputs[spec.name] = spec.type.output_layer(y, spec)
    else:
        for spec in tasks:
            y = x
            for i, m in enumerate(private_multipliers):
                y = _dense(m * spec.type.head_size(spec), f"{spec.name}_private{i + 1}")(y)
            outputs[spec.name] = spec.type.output_layer(y, spec)
    return outputs
