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


@keras.saving.register_keras_serializable(package="mtl")
class GeMPooling(keras.layers.Layer):
    """Generalised-mean pooling (Radenovic et al. 2018): ``(mean_hw max(x, eps) ** p) ** (1 / p)``.

    ``p = 1`` is average pooling and ``p -> inf`` max pooling; ``p`` is learned (one scalar,
    initialised to 3 as in the paper and the strong re-identification baselines). The power is
    taken in float32 whatever the dtype policy: ``x ** 3`` of ordinary activations overflows
    float16.

    Args:
        p: the initial exponent (> 0).
        eps: inputs are clamped to at least ``eps`` first (a fractional power of 0 or of a
            negative number has no useful gradient).
        trainable_p: learn ``p``; False keeps it fixed.

    Input ``(N, H, W, C)``; output ``(N, C)``.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, trainable_p: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.p = float(p)
        self.eps = float(eps)
        self.trainable_p = bool(trainable_p)
        if not self.p > 0:
            raise ValueError(f"GeM pooling needs p > 0, got {p}")

    def build(self, input_shape):
        # autocast off: the exponent stays float32 under a mixed-precision policy
        self.exponent = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.p),
                                        trainable=self.trainable_p, autocast=False, name="p")

    def call(self, x):
        p = ops.cast(self.exponent, "float32")
        x = ops.maximum(ops.cast(x, "float32"), self.eps)
        pooled = ops.power(ops.mean(ops.power(x, p), axis=(1, 2)), 1.0 / p)
        return ops.cast(pooled, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "p": self.p, "eps": self.eps, "trainable_p": self.trainable_p}


@keras.saving.register_keras_serializable(package="mtl")
class MaskFusion(keras.layers.Layer):
    """A learned 1x1 fusion of RGB plus a person-mask channel into the 3 channels a trunk takes.

    ``out = x @ kernel + bias`` per pixel, with ``kernel`` (4, 3) initialised to the identity on RGB
    and zero on the mask, and ``bias`` to zero: at first the output is exactly the RGB input, so a
    pretrained trunk sees the images it was trained on, and the mask's weight is learned from there.
    The inputs are [0, 255] (the mask too, 255 = person), the scale of the trunk's own input.

    Input ``(N, H, W, 4)``; output ``(N, H, W, 3)``.
    """

    def build(self, input_shape):
        if input_shape[-1] != 4:
            raise ValueError(f"MaskFusion takes RGB + mask (4 channels), got {input_shape[-1]}")
        identity = keras.initializers.Identity()  # (4, 3): ones on the diagonal, the mask row 0
        self.kernel = self.add_weight(shape=(4, 3), initializer=identity, name="kernel")
        self.bias = self.add_weight(shape=(3,), initializer="zeros", name="bias")

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        return ops.matmul(x, ops.cast(self.kernel, self.compute_dtype)) + ops.cast(self.bias, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)
