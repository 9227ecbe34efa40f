import copy

import keras
import numpy as np
import pytest

from mtl.errors import ConfigError
from mtl.models.builder import build_model, get_trunk, load_model
from mtl.models.trunks import TRUNKS, build_trunk
from mtl.tasks import TaskSpec
from mtl.engine import compile_losses as compile_model
from mtl.optim import make_optimizer

TASKS = [TaskSpec("hat", ("no", "yes"), "binary"), TaskSpec("color", ("r", "g", "b", "multi"))]
SMALL = {"input_shape": (32, 16, 3), "width": 0.25}


@pytest.mark.parametrize("head", ["private", "public"])
def test_outputs_are_named_after_tasks_with_the_right_shapes(head):
    model = build_model(TASKS, head=head, public_units=(16, 8), task_units=8, **SMALL)
    out = model(np.zeros((2, 32, 16, 3), np.float32))
    assert set(out) == {"hat", "color"}
    assert out["hat"].shape == (2, 1) and out["color"].shape == (2, 4)
    assert np.allclose(np.asarray(out["color"]).sum(1), 1, atol=1e-5)
    names = [layer.name for layer in model.layers]
    if head == "public":
        assert "public_dense1" in names and "color_private1" not in names
    else:
        # private widths are sized from the class count: 16 x K then 8 x K
        assert model.get_layer("color_private1").units == 64 and model.get_layer("color_private2").units == 32
        assert "public_dense1" not in names


def test_config_round_trip_and_keras_reload(tmp_path):
    model = build_model(TASKS, head="public", public_units=(16,), task_units=8, **SMALL)
    config = model.get_config()
    clone = keras.Model.from_config(copy.deepcopy(config))  # from_config consumes its argument
    assert clone.get_config() == config
    compile_model(model, TASKS, make_optimizer("adamw", 1e-3, 1e-4, 0.1, [v.path for v in get_trunk(model).variables]))
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 16, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras")
    a, b = model.predict(x, verbose=0), again.predict(x, verbose=0)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_trunk_table_and_unknown_names():
    assert {"resnet_small", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_lite0"} <= set(TRUNKS)
    with pytest.raises(ConfigError, match="resnet_small"):
        build_trunk("resnet_999", (32, 16, 3))
    with pytest.raises(ConfigError, match="public"):
        build_model(TASKS, head="shared", **SMALL)
    with pytest.raises(ConfigError, match="not found"):
        build_trunk("resnet_small", (32, 16, 3), weights="/nonexistent.weights.h5")


def test_local_trunk_weights_file_is_loaded(tmp_path):
    a = build_trunk("resnet_small", (32, 16, 3), width=0.25)
    a.save_weights(tmp_path / "t.weights.h5")
    b = build_trunk("resnet_small", (32, 16, 3), weights=str(tmp_path / "t.weights.h5"), width=0.25)
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(np.asarray(va), np.asarray(vb))


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0", "resnet50"])
def test_keras_application_trunks_build_without_weights(name):
    trunk = build_trunk(name, (64, 32, 3))
    assert trunk.name == "trunk"
    assert trunk(np.zeros((1, 64, 32, 3), np.float32)).shape[0] == 1


def test_trunk_learning_rate_multiplier_scales_trunk_updates_only():
    model = build_model(TASKS, **SMALL)
    trunk_paths = [v.path for v in get_trunk(model).trainable_variables]
    opt = make_optimizer("sgd", 0.1, 0.0, trunk_lr_multiplier=0.0, trunk_paths=trunk_paths)
    compile_model(model, TASKS, opt)
    before = {v.path: np.asarray(v).copy() for v in model.trainable_variables}
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 16, 3)).astype(np.float32)
    model.fit(x, {"hat": np.array([0, 1, 0, 1]), "color": np.array([0, 1, 2, -1])}, epochs=1, verbose=0)
    trunk_after = {v.path: np.asarray(v) for v in get_trunk(model).trainable_variables}
    head_after = {v.path: np.asarray(v) for v in model.trainable_variables if v.path not in trunk_after}
    assert all(np.array_equal(before[p], trunk_after[p]) for p in trunk_after)  # multiplier 0: frozen
    assert any(not np.array_equal(before[p], head_after[p]) for p in head_after)
