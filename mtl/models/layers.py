"""Small custom layers; each keeps its arguments, returns them from get_config and is registered."""

from __future__ import annotations

from typing import Sequence

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mtl")
class Normalize(keras.layers.Layer):
    """``(x[..., order] - mean) / std`` per channel, for [0, 255] RGB inputs.

    Args:
        mean: per-channel mean (after channel reordering).
        std: per-channel standard deviation.
        bgr: reverse RGB to BGR first (Caffe-style ResNet50 weights).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], bgr: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.bgr = bool(bgr)

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.bgr:
            x = ops.flip(x, axis=-1)
        mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        std = ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
        return (x - mean) / std

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "bgr": self.bgr}
