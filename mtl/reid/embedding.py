"""Embedding sub-models and batched feature extraction.

``embedding_model(model)`` is ``keras.Model(model.input, <embedding layer>.output)``: the layers
and weights of the trained model itself, so training and retrieval share every layer and no code
branches on a ``training`` flag. The descriptor is the output of the batch-norm neck
(``embedding``, what BoT uses at test time); a model trained without the identity task falls back
to the pooled trunk features (``pool``), the "features of the attribute model" baseline.

Descriptors are L2-normalised by default (``extract_embeddings(normalize=True)``): the cosine
distance is then ``|a - b|^2 / 2`` and the Euclidean distance ranks the gallery the same way.
Pass ``normalize=False`` to measure the raw Euclidean distance of the neck's output.

Extraction is ``mtl.inference.extract_features`` (bounded memory).
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from mtl.inference import extract_features
from mtl.reid.heads import EMBEDDING

POOL = "pool"  # the global pooling layer of mtl.models.builder


def embedding_layer_name(model: keras.Model) -> str:
    """``embedding`` when the model has the identity head, else ``pool`` (pooled trunk features)."""
    names = {layer.name for layer in model.layers}
    if EMBEDDING in names:
        return EMBEDDING
    if POOL in names:
        return POOL
    raise ValueError(f"model {model.name!r} has neither an {EMBEDDING!r} nor a {POOL!r} layer")


def embedding_model(model: keras.Model, layer: str | None = None) -> keras.Model:
    """The sub-model image -> descriptor, sharing the trained model's layers.

    Args:
        model: a model from ``mtl.models.builder.build_model`` (or reloaded from ``model.keras``).
        layer: the layer whose output is the descriptor; default ``embedding_layer_name(model)``.
    """
    layer = layer or embedding_layer_name(model)
    return keras.Model(model.input, model.get_layer(layer).output, name=f"{model.name}_{layer}")


def feature_model(model: keras.Model, outputs: Sequence[str]) -> keras.Model:
    """The sub-model image -> ``{name: output of layer name}`` for the named layers (shared weights)."""
    return keras.Model(model.input, {name: model.get_layer(name).output for name in outputs},
                       name=f"{model.name}_features")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (in place for a writable float32 array, else on a copy; zero rows
    stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    if not x.flags.writeable:  # e.g. np.asarray of a TensorFlow tensor
        x = x.copy()
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    x /= np.maximum(norms, np.finfo(np.float32).tiny)[:, None]
    return x


def extract_embeddings(model: keras.Model, paths: Sequence[str], height: int, width: int, batch_size: int = 64,
                       normalize: bool = True, layer: str | None = None,
                       desc: str = "extracting embeddings") -> np.ndarray:
    """Descriptors ``(N, D)`` float32 of the images, from ``embedding_model(model, layer)``.

    Args:
        model: the trained multi-task model (or a sub-model of it that keeps the descriptor layer).
        paths, height, width, batch_size, desc: see ``extract_features``.
        normalize: L2-normalise each descriptor (the default; see the module docstring).
        layer: descriptor layer, default ``embedding`` (or ``pool`` without the identity head).
    """
    features = extract_features(embedding_model(model, layer), paths, height, width, batch_size, desc)["output"]
    features = features.reshape(len(features), -1)
    return l2_normalize(features) if normalize else features
