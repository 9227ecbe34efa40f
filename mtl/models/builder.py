"""The one way to build a model: training, tuning, evaluation and tests all call ``build_model``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import keras

from mtl.models.heads import attribute_heads
from mtl.models.trunks import build_trunk
from mtl.tasks import IDENTITY, TaskSpec


def build_model(tasks: Sequence[TaskSpec], input_shape=(128, 64, 3), trunk: str = "resnet_small",
                weights: str | None = None, width: float = 1.0, head: str = "private",
                public_units: Sequence[int] = (384, 384), private_multipliers: Sequence[int] = (16, 8),
                task_units: int = 128, dropout: float = 0.3, embedding_dim: int = 256,
                center_loss: bool = False) -> keras.Model:
    """Functional multi-task model: image -> trunk -> global average pooling -> task heads.

    Args:
        tasks: the task specs; one output per task, named after it (the identity task adds an
            ``embedding`` output too, see ``mtl.reid.heads``).
        input_shape: (height, width, 3); images are float RGB in [0, 255].
        trunk, weights, width: see ``mtl.models.trunks``.
        head, public_units, private_multipliers, task_units, dropout: see ``mtl.models.heads``.
        embedding_dim: size of the identity embedding.
        center_loss: give the identity head its ``center`` output (for the centre loss).

    Returns:
        A ``keras.Model`` named ``mtl`` whose outputs are a dict keyed by task name.
    """
    inputs = keras.Input(tuple(input_shape), name="image")
    feature_map = build_trunk(trunk, input_shape, weights, width)(inputs)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(feature_map)
    outputs = attribute_heads(features, tasks, head, public_units, private_multipliers, task_units, dropout)
    identity = [t for t in tasks if t.kind == IDENTITY]
    if identity:
        from mtl.reid.heads import identity_head

        outputs.update(identity_head(features, identity[0], embedding_dim, center_loss))
    return keras.Model(inputs, outputs, name="mtl")


def model_kwargs(cfg) -> dict:
    """Unpack the ``ModelConfig`` and image size of a ``Config`` into ``build_model`` arguments."""
    m = cfg.model
    return {
        "input_shape": (cfg.data.image_height, cfg.data.image_width, 3),
        "trunk": m.trunk, "weights": m.weights, "width": m.width, "head": m.head,
        "public_units": m.public_units, "private_multipliers": m.private_multipliers,
        "task_units": m.task_units, "dropout": m.dropout, "embedding_dim": m.embedding_dim,
        "center_loss": cfg.train.center_loss > 0,
    }


def get_trunk(model: keras.Model) -> keras.Model:
    return model.get_layer("trunk")


def load_model(path: str | Path) -> keras.Model:
    """Reload a saved ``model.keras`` (custom layers, losses and metrics are registered on import)."""
    import mtl.losses  # noqa: F401  (registers serialisable objects)
    import mtl.metrics  # noqa: F401
    import mtl.models.layers  # noqa: F401
    import mtl.reid.heads  # noqa: F401
    import mtl.reid.losses  # noqa: F401
    import mtl.training  # noqa: F401

    return keras.saving.load_model(str(path), compile=False)
