"""CBAM: channel then spatial attention on a feature map (Woo et al., ECCV 2018).

``CBAM`` re-weights a ``(N, H, W, C)`` feature map twice:

1. channel attention: a shared two-layer MLP (``C -> C / r -> C``, ReLU between; ``C / r`` at least
   ``min(C, 8)``) applied to the
   global average- and max-pooled features; the two outputs are summed and gated;
2. spatial attention: a 7x7 convolution (one filter) over the channel-wise mean and max maps
   ``(N, H, W, 2)``, gated; applied to the channel-refined map.

Initialisation near the identity (``identity_init=True``, the default). The paper's gate is
``sigmoid(z)``: a freshly initialised block then multiplies every feature by about 0.25 (0.5 per
gate), which shifts the statistics every later layer of a pretrained trunk was trained on (its
batch norms above all) and throws away much of what ImageNet taught it. Here the gate is
``2 * sigmoid(z)`` (in (0, 2), still a smooth bounded gate, able to damp or amplify), and the
layers that produce ``z`` (the MLP's second layer, the spatial convolution) start with zero
kernels and biases, so ``z = 0``, the gate is exactly 1 and the block is exactly the identity when
inserted. Their gradients are not zero (they depend on the first MLP layer's activations and on
the pooled maps), so the block starts learning at once: the same reasoning as zero-initialising
the last batch-norm scale of each residual block (Goyal et al. 2017) or SkipInit/ReZero.
``identity_init=False`` gives the paper's block (``sigmoid`` gates, default initialisers).
"""

from __future__ import annotations

import keras
from keras import ops

CBAM_REDUCTION = 16  # the paper's r
CBAM_KERNEL = 7  # the paper's spatial kernel
# the channel MLP is at least this wide (or as wide as the map): C / 16 of a 16-channel map is one
# ReLU unit, which may be dead from the start and then never lets the gate depend on the input
MIN_HIDDEN = 8


@keras.saving.register_keras_serializable(package="mtl")
class CBAM(keras.layers.Layer):
    """Convolutional block attention module: channel attention, then spatial attention.

    Args:
        reduction: the channel MLP's hidden width is ``channels // reduction``, at least
            ``min(channels, MIN_HIDDEN)``.
        kernel_size: side of the spatial attention's convolution.
        identity_init: gates ``2 * sigmoid`` with zero-initialised last layers, so the block is
            the identity when inserted (see the module docstring); False: the paper's ``sigmoid``
            gates and default initialisers.

    Input and output: ``(N, H, W, C)`` (channels last), same shape.
    """

    def __init__(self, reduction: int = CBAM_REDUCTION, kernel_size: int = CBAM_KERNEL,
                 identity_init: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.reduction = int(reduction)
        self.kernel_size = int(kernel_size)
        self.identity_init = bool(identity_init)
        if self.reduction < 1 or self.kernel_size < 1:
            raise ValueError(f"CBAM needs reduction >= 1 and kernel_size >= 1, got {reduction}, {kernel_size}")

    def build(self, input_shape):
        channels = int(input_shape[-1])
        hidden = max(channels // self.reduction, min(channels, MIN_HIDDEN))
        last_init = "zeros" if self.identity_init else "glorot_uniform"
        # sub-layers are built here (they need the channel count) and tracked as attributes, so
        # their weights save under this layer's name and load back in the .keras file
        self.mlp_hidden = keras.layers.Dense(hidden, activation="relu",
                                             kernel_initializer="he_normal", dtype=self.dtype_policy,
                                             name="mlp_hidden")
        self.mlp_out = keras.layers.Dense(channels, kernel_initializer=last_init,
                                          dtype=self.dtype_policy, name="mlp_out")
        self.spatial_conv = keras.layers.Conv2D(1, self.kernel_size, padding="same",
                                                kernel_initializer=last_init, dtype=self.dtype_policy,
                                                name="spatial_conv")
        self.mlp_hidden.build((None, channels))
        self.mlp_out.build((None, hidden))
        self.spatial_conv.build((None, None, None, 2))

    def _gate(self, z):
        gate = ops.sigmoid(z)
        return 2.0 * gate if self.identity_init else gate

    def channel_gate(self, x):
        """``(N, 1, 1, C)`` channel weights of feature map ``x``."""
        avg = ops.mean(x, axis=(1, 2))
        peak = ops.max(x, axis=(1, 2))
        z = self.mlp_out(self.mlp_hidden(avg)) + self.mlp_out(self.mlp_hidden(peak))
        return self._gate(z)[:, None, None, :]

    def spatial_gate(self, x):
        """``(N, H, W, 1)`` spatial weights of feature map ``x``."""
        maps = ops.concatenate([ops.mean(x, axis=-1, keepdims=True), ops.max(x, axis=-1, keepdims=True)], axis=-1)
        return self._gate(self.spatial_conv(maps))

    def call(self, x):
        x = x * self.channel_gate(x)
        return x * self.spatial_gate(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "reduction": self.reduction, "kernel_size": self.kernel_size,
                "identity_init": self.identity_init}
