"""MobileNetV2 (width 1.0) as a Keras 3 functional model with torch's padding.

This is *not* ``keras.applications.MobileNetV2``: the weight mapping would fit, but Keras pads its
stride-2 convolutions TensorFlow-style (nothing before, one pixel after, for even sizes) while the
torch model whose ImageNet weights ``mtl.models.weights`` converts pads one pixel on every side, so
the ImageNet features would be computed on inputs shifted by a pixel at each of the 5 stride-2
layers. ``mobilenet_v2_torch`` rebuilds the same architecture with the Keras application's layer
names and explicit symmetric ``ZeroPadding2D`` + ``valid`` convolutions, which reproduces the
torch model exactly.
"""

from __future__ import annotations

import keras
from keras import layers

__all__ = ["mobilenet_v2_torch", "MBV2_BLOCKS", "MBV2_BN_EPSILON", "block_layer_prefix"]

MBV2_BLOCKS = (  # expand t, channels c, repeats n, stride s (torchvision / tonylins order)
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
MBV2_BN_EPSILON = 1e-5  # torch default
MBV2_BN_MOMENTUM = 0.99
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def block_layer_prefix(index: int) -> str:
    """Keras-applications name prefix of inverted-residual block ``index`` (torch features.<index+1>)."""
    return "expanded_conv_" if index == 0 else f"block_{index}_"


def mobilenet_v2_torch(
    input_shape=(None, None, 3),
    include_top: bool = False,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    name: str = "mobilenet_v2",
) -> keras.Model:
    """MobileNetV2 (width 1.0) matching torchvision's layout and padding; [0,255] RGB in.

    Layer names follow ``keras.applications.MobileNetV2`` (``Conv1``, ``block_3_expand``...,
    ``out_relu``) so feature taps read the same; stride-2 layers get a symmetric one-pixel
    ``ZeroPadding2D`` and ``valid`` padding like torch's ``padding=1``. The model normalises its
    input with the torchvision ImageNet mean/std itself.
    """

    def bn(n):
        return layers.BatchNormalization(epsilon=MBV2_BN_EPSILON, momentum=MBV2_BN_MOMENTUM, name=n)

    def relu6(n):
        return layers.ReLU(max_value=6.0, name=n)

    image = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Normalization(
        mean=[255.0 * m for m in IMAGENET_MEAN],
        variance=[(255.0 * s) ** 2 for s in IMAGENET_STD],
        name="normalize",
    )(image)
    x = layers.ZeroPadding2D(1, name="Conv1_pad")(x)
    x = layers.Conv2D(32, 3, strides=2, padding="valid", use_bias=False, name="Conv1")(x)
    x = bn("bn_Conv1")(x)
    x = relu6("Conv1_relu")(x)
    in_ch = 32
    index = 0
    for t, c, n, s in MBV2_BLOCKS:
        for r in range(n):
            stride = s if r == 0 else 1
            p = block_layer_prefix(index)
            inputs = x
            if t != 1:
                x = layers.Conv2D(in_ch * t, 1, use_bias=False, name=p + "expand")(x)
                x = bn(p + "expand_BN")(x)
                x = relu6(p + "expand_relu")(x)
            if stride == 2:
                x = layers.ZeroPadding2D(1, name=p + "pad")(x)
                x = layers.DepthwiseConv2D(3, strides=2, padding="valid", use_bias=False, name=p + "depthwise")(x)
            else:
                x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=p + "depthwise")(x)
            x = bn(p + "depthwise_BN")(x)
            x = relu6(p + "depthwise_relu")(x)
            x = layers.Conv2D(c, 1, use_bias=False, name=p + "project")(x)
            x = bn(p + "project_BN")(x)
            if stride == 1 and in_ch == c:
                x = layers.Add(name=p + "add")([inputs, x])
            in_ch = c
            index += 1
    x = layers.Conv2D(1280, 1, use_bias=False, name="Conv_1")(x)
    x = bn("Conv_1_bn")(x)
    x = relu6("out_relu")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(0.2, name="top_dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    return keras.Model(image, x, name=name)
