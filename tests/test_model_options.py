"""The builder's model options: CBAM attention after trunk stages, GeM
pooling and last stride 1 (the strong re-identification baselines).

* the layers: GeM against numpy, CBAM against a numpy CBAM with the same weights, both config round
  trips, CBAM exactly the identity when inserted (pretrained features unchanged);
* the builder: blocks after the chosen stages, last stride 1 doubles the feature map (resnet_small
  and efficientnet_lite0, ImageNet weights still loaded), one-line errors for what a trunk lacks;
* the whole path: each option from ``--set`` trains a step through ``mtl.experiment.train`` and its
  ``model.keras`` reloads with plain Keras, predicting the same; the SavedModel export still works.
"""

from __future__ import annotations

import copy

import keras
import numpy as np
import pytest

from mtl.errors import ConfigError
from mtl.models.attention import CBAM
from mtl.models.builder import build_model
from mtl.models.layers import GeMPooling
from mtl.tasks import BINARY, TaskSpec

RNG = np.random.default_rng(0)
TASKS = [TaskSpec("age", ("young", "adult", "old")), TaskSpec("hat", ("no", "yes"), BINARY)]
TINY_MODEL = {"input_shape": (32, 16, 3), "width": 0.25, "private_multipliers": (4, 2)}


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# ------------------------------------------------------------------------------------------
# Layers


def test_gem_pooling_is_the_generalised_mean_and_learns_its_exponent():
    x = RNG.uniform(-1, 3, size=(2, 3, 4, 5)).astype(np.float32)  # negatives are clamped to eps
    layer = GeMPooling(p=3.0, eps=1e-6)
    expected = np.mean(np.maximum(x, 1e-6) ** 3, axis=(1, 2)) ** (1 / 3)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-5)
    layer.exponent.assign(1.0)  # p = 1: average pooling of the clamped map
    np.testing.assert_allclose(np.asarray(layer(x)), np.maximum(x, 1e-6).mean(axis=(1, 2)), rtol=1e-5)
    assert [w.name for w in layer.trainable_weights] == ["p"]
    fixed = GeMPooling(trainable_p=False)
    fixed.build((None, 3, 4, 5))
    assert not fixed.trainable_weights and [w.name for w in fixed.non_trainable_weights] == ["p"]


def test_gem_pooling_config_round_trip():
    layer = GeMPooling(p=2.5, eps=1e-5, trainable_p=False, name="pool")
    config = layer.get_config()
    clone = GeMPooling.from_config(copy.deepcopy(config))
    assert clone.get_config() == config and clone.p == 2.5 and clone.eps == 1e-5 and not clone.trainable_p
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(again) is GeMPooling and again.get_config() == config


def test_weight_decay_leaves_the_gem_exponent_alone():
    """AdamW decays every variable it is not told to skip: with no gradient, a kernel shrinks by
    lr * wd a step; GeM's ``p`` must not (decay pulls it towards 0, off both avg and max), nor the
    uncertainty log-variances, both at once (each exclude_from_weight_decay call replaces the last)."""
    from mtl.balancing import UNCERTAINTY_LAYER
    from mtl.engine import TrainArgs, compile_model

    model = build_model(TASKS, trunk="resnet_small", pooling="gem", uncertainty_weights=True, **TINY_MODEL)
    args = TrainArgs(epochs=1, optimizer="adamw", learning_rate=0.1, weight_decay=0.5, warmup_epochs=0,
                     schedule="constant", loss_balancing="uncertainty")
    compile_model(model, TASKS, args, steps_per_epoch=1)
    p, kernel = model.get_layer("pool").exponent, model.get_layer("age").kernel
    s = model.get_layer(UNCERTAINTY_LAYER).log_variance
    s.assign(keras.ops.ones_like(s))
    before_p, before_k = float(p), np.asarray(kernel).copy()
    model.optimizer.apply_gradients([(keras.ops.zeros_like(v), v) for v in (p, kernel, s)])
    assert float(p) == before_p == 3.0
    np.testing.assert_array_equal(np.asarray(s), 1.0)
    np.testing.assert_allclose(np.asarray(kernel), before_k * (1 - 0.1 * 0.5), rtol=1e-5)


def test_cbam_is_the_identity_when_inserted_and_matches_numpy_once_trained():
    x = RNG.normal(size=(2, 5, 4, 64)).astype(np.float32)
    layer = CBAM(reduction=4, kernel_size=3)
    np.testing.assert_array_equal(np.asarray(layer(x)), x)  # zero-initialised gates: exactly 1
    # weights as training would leave them: the block then is the paper's, with 2 * sigmoid gates
    for w in layer.weights:
        w.assign(RNG.normal(scale=0.3, size=w.shape).astype(np.float32))
    w1, b1, w2, b2, k, kb = (np.asarray(layer.mlp_hidden.kernel), np.asarray(layer.mlp_hidden.bias),
                             np.asarray(layer.mlp_out.kernel), np.asarray(layer.mlp_out.bias),
                             np.asarray(layer.spatial_conv.kernel), np.asarray(layer.spatial_conv.bias))
    assert w1.shape == (64, 16) and k.shape == (3, 3, 2, 1)  # hidden = channels // reduction

    def mlp(v):
        return np.maximum(v @ w1 + b1, 0) @ w2 + b2

    channel = 2 * _sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))
    y = x * channel[:, None, None, :]
    maps = np.pad(np.stack([y.mean(-1), y.max(-1)], -1), ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = np.zeros(y.shape[:3])
    for i in range(y.shape[1]):
        for j in range(y.shape[2]):
            conv[:, i, j] = np.einsum("nhwc,hwc->n", maps[:, i:i + 3, j:j + 3], k[..., 0]) + kb[0]
    expected = y * (2 * _sigmoid(conv))[..., None]
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-4, atol=1e-5)


def test_cbam_config_round_trip_and_the_papers_variant():
    layer = CBAM(reduction=4, kernel_size=5, identity_init=False, name="cbam")
    config = layer.get_config()
    clone = CBAM.from_config(copy.deepcopy(config))
    assert clone.get_config() == config and (clone.reduction, clone.kernel_size, clone.identity_init) == (4, 5, False)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(again) is CBAM and again.get_config() == config
    x = RNG.normal(size=(1, 6, 3, 8)).astype(np.float32)
    y = np.asarray(layer(x))
    assert tuple(layer.mlp_hidden.kernel.shape) == (8, 8)  # at least min(channels, 8) hidden units, not 8 // 4
    assert y.shape == x.shape
    assert np.all(np.abs(y) <= np.abs(x) + 1e-6)  # sigmoid gates only damp
    assert not np.allclose(y, x)


# ------------------------------------------------------------------------------------------
# Builder


def _trunk_output_shape(model):
    return tuple(model.get_layer("trunk").output.shape[1:3])


def test_attention_blocks_follow_the_chosen_stages_and_leave_the_features_unchanged():
    plain = build_model(TASKS, **TINY_MODEL)
    model = build_model(TASKS, attention=("stage2", "4", "last"), **TINY_MODEL)
    trunk = model.get_layer("trunk")
    assert [layer.name for layer in trunk.layers if isinstance(layer, CBAM)] == ["cbam_stage2", "cbam_stage4"]
    assert trunk.get_layer("cbam_stage2").input.name == trunk.get_layer("stage2_block1_out").output.name
    assert trunk.get_layer("stage3_block1_1_conv").input.name == trunk.get_layer("cbam_stage2").output.name
    assert trunk.output.name == trunk.get_layer("cbam_stage4").output.name
    # "last": after the trunk's output, outside the trunk sub-model, before the pooling
    assert isinstance(model.get_layer("cbam_last"), CBAM)
    assert model.get_layer("pool").input.name == model.get_layer("cbam_last").output.name
    # with the plain model's weights the features are the same: the blocks start as the identity
    from mtl.models.weights import copy_weights_by_name

    copy_weights_by_name(plain.get_layer("trunk"), trunk)
    x = RNG.uniform(0, 255, size=(2, 32, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(trunk(x)), np.asarray(plain.get_layer("trunk")(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pooling, cls", [("avg", keras.layers.GlobalAveragePooling2D), ("gem", GeMPooling),
                                          ("max", keras.layers.GlobalMaxPooling2D)])
def test_the_pooling_layer_is_named_pool(pooling, cls):
    assert type(build_model(TASKS, pooling=pooling, **TINY_MODEL).get_layer("pool")) is cls


def test_last_stride_1_doubles_the_feature_map_of_resnet_small():
    assert _trunk_output_shape(build_model(TASKS, **TINY_MODEL)) == (2, 1)
    model = build_model(TASKS, last_stride=1, **TINY_MODEL)
    assert _trunk_output_shape(model) == (4, 2)
    assert model.get_layer("trunk").get_layer("stage4_block1_1_conv").strides == (1, 1)


@pytest.mark.slow
def test_efficientnet_lite0_with_attention_and_last_stride_1_keeps_the_imagenet_weights():
    from mtl.models.weights import MissingWeightsError, checkpoint_path

    try:
        checkpoint_path("efficientnet_lite0")
    except MissingWeightsError as exc:
        pytest.skip(str(exc))
    shape = (64, 32, 3)
    plain = build_model(TASKS, shape, trunk="efficientnet_lite0", weights="imagenet")
    model = build_model(TASKS, shape, trunk="efficientnet_lite0", weights="imagenet",
                        attention=("stage3", "stage5", "last"), last_stride=1)
    assert _trunk_output_shape(plain) == (2, 1) and _trunk_output_shape(model) == (4, 2)
    net = model.get_layer("trunk").get_layer("efficientnet_lite0")
    assert [layer.name for layer in net.layers if isinstance(layer, CBAM)] == ["cbam_stage3", "cbam_stage5"]
    assert net.get_layer("block11_dw_conv").strides == (1, 1)  # stage 6's first block
    before = {v.path: np.asarray(v) for v in plain.get_layer("trunk").weights}
    after = {v.path: np.asarray(v) for v in model.get_layer("trunk").weights if "cbam" not in v.path}
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    # attention alone: the ImageNet features, exactly
    attended = build_model(TASKS, shape, trunk="efficientnet_lite0", weights="imagenet", attention=("1", "7"))
    x = RNG.uniform(0, 255, size=(2, *shape)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(attended.get_layer("trunk")(x)), np.asarray(plain.get_layer("trunk")(x)),
                               rtol=1e-6, atol=1e-6)


def test_efficientnet_lite0_random_init_with_last_stride_1_builds():
    model = build_model(TASKS, (64, 32, 3), trunk="efficientnet_lite0", attention=("stage6",), last_stride=1)
    assert _trunk_output_shape(model) == (4, 2)


@pytest.mark.parametrize("kwargs, words", [
    ({"trunk": "resnet50", "attention": ("stage1",)}, ["model.attention", "'stage1'", "valid: last"]),
    ({"attention": ("stage5",)}, ["model.attention", "'stage5'", "stage1, stage2, stage3, stage4, last"]),
    ({"trunk": "mobilenet_v2", "last_stride": 1}, ["model.last_stride", "resnet_small", "efficientnet_lite0"]),
    ({"last_stride": 4}, ["model.last_stride", "valid: 1, 2"]),
    ({"pooling": "sum"}, ["model.pooling", "'sum'", "avg, gem, max"]),
])
def test_what_a_trunk_lacks_is_a_one_line_config_error(kwargs, words):
    with pytest.raises(ConfigError) as info:
        build_model(TASKS, (32, 16, 3), **kwargs)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


# ------------------------------------------------------------------------------------------
# Config


def test_the_config_keys_reach_the_builder_and_bad_values_are_refused():
    from mtl.config import build_config, parse_overrides, valid_values
    from mtl.experiment import model_kwargs
    from mtl.models import builder

    assert valid_values("model.pooling") == tuple(builder.POOLINGS)
    defaults = model_kwargs(build_config())
    assert (defaults["attention"], defaults["pooling"], defaults["last_stride"]) == ((), "avg", 2)
    cfg = build_config(parse_overrides(["model.attention=stage2,last", "model.pooling=gem", "model.last_stride=1"]))
    kwargs = model_kwargs(cfg)
    assert (kwargs["attention"], kwargs["pooling"], kwargs["last_stride"]) == (("stage2", "last"), "gem", 1)
    for bad, key in [("model.attention=top", "model.attention"), ("model.pooling=sum", "model.pooling"),
                     ("model.last_stride=3", "model.last_stride")]:
        with pytest.raises(ConfigError, match=key):
            build_config(parse_overrides([bad]))


# ------------------------------------------------------------------------------------------
# The whole path: train a step, reload with plain Keras


RUNS = {"attention": ["model.attention=stage2,last"], "gem": ["model.pooling=gem"],
        "last_stride_max": ["model.last_stride=1", "model.pooling=max"]}


@pytest.mark.slow
@pytest.mark.parametrize("run", list(RUNS))
def test_each_option_trains_a_step_and_reloads_with_the_same_predictions(run, synthetic_root, tmp_path):
    from conftest import tiny_config
    from mtl.config import parse_overrides
    from mtl.experiment import train
    from mtl.rundir import MODEL

    cfg = tiny_config(synthetic_root, parse_overrides([*RUNS[run], "train.steps_per_epoch=1"]), tasks="age,hat",
                      train={"epochs": 1, "batch_size": 16})
    train(cfg, tmp_path / "run", log=None)
    model = keras.saving.load_model(tmp_path / "run" / MODEL, compile=False)
    trunk = model.get_layer("trunk")
    if run == "attention":  # the zero-initialised gate layers learned (so gradients reach them) and reloaded
        assert isinstance(trunk.get_layer("cbam_stage2"), CBAM)
        for name in ("cbam_last", "cbam_stage2"):
            block = model.get_layer(name) if name == "cbam_last" else trunk.get_layer(name)
            assert np.abs(np.asarray(block.mlp_out.kernel)).max() > 0
            assert np.abs(np.asarray(block.spatial_conv.kernel)).max() > 0
    elif run == "gem":
        assert isinstance(model.get_layer("pool"), GeMPooling) and float(model.get_layer("pool").exponent) != 3.0
    else:
        assert isinstance(model.get_layer("pool"), keras.layers.GlobalMaxPooling2D)
        assert tuple(trunk.output.shape[1:3]) == (4, 2)  # 2 x 1 with stride 2
    x = RNG.uniform(0, 255, size=(3, 32, 16, 3)).astype(np.float32)
    reloaded = keras.saving.load_model(tmp_path / "run" / MODEL, compile=False)
    got, again = model.predict(x, verbose=0), reloaded.predict(x, verbose=0)
    for name in got:
        np.testing.assert_array_equal(got[name], again[name])


@pytest.mark.slow
def test_a_model_with_every_option_exports_as_a_saved_model(synthetic_root, tmp_path):
    from conftest import tiny_config
    from mtl.config import parse_overrides
    from mtl.experiment import train
    from mtl.export import export_run, load_exported, max_abs_diff, predict, serving_model
    from mtl.runs import load_run

    settings = ["model.attention=stage3,last", "model.pooling=gem", "model.last_stride=1", "train.steps_per_epoch=1"]
    cfg = tiny_config(synthetic_root, parse_overrides(settings), tasks="age,hat", train={"epochs": 1, "batch_size": 16})
    train(cfg, tmp_path / "run", log=None)
    result = export_run(tmp_path / "run", "saved_model", tmp_path / "sm", check_images=2, log=None)
    run = load_run(tmp_path / "run")
    images = RNG.integers(0, 256, size=(2, 32, 16, 3), dtype=np.uint8)
    reference = predict(serving_model(run.model, run.tasks, 32, 16), images)
    diffs = max_abs_diff(reference, load_exported(result.artifact, "saved_model")(images))
    assert max(diffs.values()) <= 1e-4, diffs
