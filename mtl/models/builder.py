"""The one way to build a model: training, tuning, evaluation and tests all call ``build_model``."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import keras

from mtl.errors import ConfigError, DataError
from mtl.models.attention import CBAM
from mtl.models.heads import attribute_heads
from mtl.models.layers import GeMPooling, MaskFusion
from mtl.models.trunks import attention_stages, build_trunk
from mtl.rundir import MODEL
from mtl.tasks import TaskSpec, find_identity

# model.pooling -> the global pooling layer (the names: mtl.choices.POOLINGS)
POOLINGS = {"avg": keras.layers.GlobalAveragePooling2D, "gem": GeMPooling, "max": keras.layers.GlobalMaxPooling2D}


def build_model(tasks: Sequence[TaskSpec], input_shape=(128, 64, 3), trunk: str = "resnet_small",
                weights: str | None = None, width: float = 1.0, head: str = "private",
                public_units: Sequence[int] = (384, 384), private_multipliers: Sequence[int] = (16, 8),
                task_units: int = 128, dropout: float = 0.3, embedding_dim: int = 256,
                center_loss: bool = False, attention: Sequence[str | int] = (), pooling: str = "avg",
                last_stride: int = 2, uncertainty_weights: bool = False) -> keras.Model:
    """Functional multi-task model: image -> trunk -> global pooling -> task heads.

    Args:
        tasks: the task specs; one output per task, named after it (the identity task adds an
            ``embedding`` output too, see ``mtl.reid.heads``).
        input_shape: (height, width, 3); images are float RGB in [0, 255]. (height, width, 4): RGB
            plus a person mask (``mtl.data.masks``), fused into 3 channels by a ``MaskFusion``
            layer (``mask_fusion``, the identity on RGB at first) before the trunk.
        trunk, weights, width: see ``mtl.models.trunks``.
        head, public_units, private_multipliers, task_units, dropout: see ``mtl.models.heads``.
        embedding_dim: size of the identity embedding.
        center_loss: give the identity head its ``center`` output (for the centre loss).
        attention: where CBAM blocks go (``mtl.models.attention``): trunk stage names
            (``stage3``) or numbers, inside the trunk (``mtl.models.trunks.STAGES`` lists the
            trunks built stage by stage), and/or ``last``: one block after the trunk's output, for
            every trunk. The ``last`` block sits outside the ``trunk`` sub-model, like the pooling:
            it trains at the heads' learning rate and is not frozen with the trunk. Blocks start
            as the identity, so pretrained features are unchanged at first.
        pooling: ``avg`` (global average), ``gem`` (generalised mean, learned exponent,
            ``mtl.models.layers.GeMPooling``) or ``max``; the layer is named ``pool`` either way.
        last_stride: 2, or 1: the trunk's last downsampling stage keeps the resolution (a feature
            map twice as large per side; trunks of ``mtl.models.trunks.STAGES``).
        uncertainty_weights: add the learnt log-variances of ``train.loss_balancing: uncertainty``
            (``mtl.balancing.uncertainty_layer``: a pass-through layer after the pooling).

    Returns:
        A ``keras.Model`` named ``mtl`` whose outputs are a dict keyed by task name.

    Raises:
        ConfigError: an attention stage, pooling or last stride this trunk does not take.
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"model.pooling: {pooling!r} is not valid; valid: {', '.join(POOLINGS)}")
    stages, attention_last = attention_stages(trunk, attention)
    inputs = keras.Input(tuple(input_shape), name="image")
    # a person-mask channel is fused into RGB before the trunk, which keeps its 3-channel input (and weights)
    rgb = MaskFusion(name="mask_fusion")(inputs) if input_shape[-1] == 4 else inputs
    input_shape = (*input_shape[:-1], 3)
    feature_map = build_trunk(trunk, input_shape, weights, width, stages, last_stride)(rgb)
    if attention_last:
        feature_map = CBAM(name="cbam_last")(feature_map)
    features = POOLINGS[pooling](name="pool")(feature_map)
    if uncertainty_weights:
        from mtl.balancing import uncertainty_layer

        features = uncertainty_layer(tasks)(features)
    outputs = attribute_heads(features, tasks, head, public_units, private_multipliers, task_units, dropout)
    identity = find_identity(tasks)
    if identity is not None:
        from mtl.reid.heads import identity_head

        outputs.update(identity_head(features, identity, embedding_dim, center_loss))
    return keras.Model(inputs, outputs, name="mtl")


def get_trunk(model: keras.Model) -> keras.Model:
    return model.get_layer("trunk")


def load_model(path: str | Path, compile: bool = False) -> keras.Model:
    """Load a saved model: ``keras.saving.load_model``, with one-line errors for a bad file.

    Nothing else is needed: importing this module imported ``mtl`` and Keras, which registers
    mtl's Keras objects (see ``mtl/__init__.py``), so plain ``keras.saving.load_model`` works too.

    Args:
        path: a ``.keras`` file, or a run folder (its ``model.keras``).
        compile: also restore the optimizer (with its state), losses and metrics, to train on;
            False (default) gives the model for prediction.

    Returns:
        The ``keras.Model``.

    Raises:
        DataError: the file is missing, is not a complete ``.keras`` (zip) archive (truncated,
            corrupt, another format), or Keras cannot rebuild the model from it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL
    if not path.is_file():
        raise DataError(f"model file not found: {path}")
    # Keras calls a .keras file that is not a zip archive "File not found", and reads the weights
    # out of the archive without checking every CRC: test the whole archive first (fast next to
    # loading it)
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
        problem = None if broken is None else f"member {broken} is corrupt"
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        problem = f"truncated or not a zip archive: {exc}"
    if problem:
        raise DataError(f"cannot load model {path}: not a valid .keras file ({problem})")
    try:
        return keras.saving.load_model(str(path), compile=compile)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a model it cannot rebuild
        lines = str(exc).strip().splitlines()
        raise DataError(f"cannot load model {path}: {type(exc).__name__}: {lines[0] if lines else ''}") from exc
