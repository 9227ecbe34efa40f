"""GPU fast paths as options, checked on CPU: mixed precision (float16 / bfloat16 compute, float32
outputs and losses), XLA (``train.jit_compile``, never on by default) and ``train.steps_per_execution``.

Each option builds the tiny multi-task model (two attribute tasks and the identity task, whose
heads include the embedding) and trains one step (two with ``steps_per_execution=2``) on random
tensors through the engine's ``compile_model``. Keras's dtype policy is global: every test checks
that ``mtl.engine.precision_policy`` gives the previous one back, also after an error.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mtl import engine
from mtl.config import build_config
from mtl.errors import ConfigError
from mtl.models.builder import build_model
from mtl.reid.heads import EMBEDDING
from mtl.tasks import BINARY, CATEGORICAL, IDENTITY, TaskSpec

TASKS = [TaskSpec("gender", ("male", "female"), BINARY), TaskSpec("upcolor", ("red", "blue", "black"), CATEGORICAL),
         TaskSpec("identity", ("1", "2", "3", "4"), IDENTITY)]
SHAPE = (32, 16, 3)
BATCH = 8


def _batch(seed: int = 0):
    """Random images and labels of one batch of ``TASKS`` (P x K style: 4 people x 2 images)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (BATCH,) + SHAPE).astype("float32")
    ids = np.repeat(np.arange(4), 2).astype("int32")
    labels = {"gender": rng.integers(0, 2, BATCH).astype("int32"), "upcolor": rng.integers(0, 3, BATCH).astype("int32"),
              "identity": ids, EMBEDDING: ids}
    labels["upcolor"][0] = -1  # a missing label
    return images, labels


def _model(**kwargs):
    return build_model(TASKS, input_shape=SHAPE, width=0.25, private_multipliers=(4, 2), embedding_dim=16, **kwargs)


def _step(mixed_precision="none", jit_compile=False, steps_per_execution=1, steps=1):
    """Build under the policy, compile with the engine, train ``steps`` batches; returns
    ``(model, compute dtypes of the trunk's layers, output dtypes, losses of the step)``."""
    args = engine.TrainArgs(epochs=1, mixed_precision=mixed_precision, jit_compile=jit_compile,
                            steps_per_execution=steps_per_execution)
    with engine.precision_policy(mixed_precision):
        model = _model()
        engine.compile_model(model, TASKS, args, steps_per_epoch=steps)
        images, labels = _batch()
        outputs = model(images[:2], training=False)
        if steps == 1:
            logs = model.train_on_batch(images, labels, return_dict=True)
        else:
            import tensorflow as tf

            ds = tf.data.Dataset.from_tensors((images, labels)).repeat(steps)
            logs = model.fit(ds, epochs=1, verbose=0, shuffle=False).history
            logs = {k: v[-1] for k, v in logs.items()}
    from mtl.models.builder import get_trunk

    compute = {layer.compute_dtype for layer in get_trunk(model).layers if layer.weights}
    return model, compute, {name: out.dtype for name, out in outputs.items()}, logs


@pytest.fixture(autouse=True)
def _float32_after():
    """Every test leaves Keras's global policy as it found it (float32)."""
    assert keras.mixed_precision.global_policy().name == "float32"
    yield
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow  # 20-110 s on the shared 2-core machine (tracing; XLA compiling)
@pytest.mark.parametrize("policy, compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_builds_and_trains_one_step_with_float32_outputs_and_losses(policy, compute):
    model, computes, dtypes, logs = _step(policy)
    assert computes == {compute}  # the trunk really computes in half precision
    assert all(w.dtype == "float32" for w in model.trainable_weights)  # variables stay float32
    assert set(dtypes) == {"gender", "upcolor", "identity", EMBEDDING}
    assert all(keras.backend.standardize_dtype(d) == "float32" for d in dtypes.values()), dtypes  # the heads' output layers
    assert np.isfinite(logs["loss"]) and logs["loss"] > 0
    if policy == "mixed_float16":  # float16 gradients underflow without loss scaling
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    else:
        assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_losses_are_float32_on_half_precision_predictions(policy):
    from mtl.losses import MaskedBinaryCrossentropy, MaskedSparseCategoricalCrossentropy
    from mtl.reid.losses import BatchHardTripletLoss, CenterLoss

    half = policy.split("_")[1]
    y = np.array([0, 1, 1, 0], "int32")
    cases = [(MaskedBinaryCrossentropy(), np.full((4, 1), 0.3)), (MaskedSparseCategoricalCrossentropy(), np.full((4, 2), 0.5)),
             (BatchHardTripletLoss(), np.eye(4, 3)), (CenterLoss(), np.ones((4, 2)))]
    for loss, pred in cases:
        value = loss(y, keras.ops.convert_to_tensor(pred, dtype=half))
        assert keras.backend.standardize_dtype(value.dtype) == "float32", type(loss).__name__


@pytest.mark.slow  # 20-110 s on the shared 2-core machine (tracing; XLA compiling)
def test_xla_trains_one_step_and_is_never_the_default():
    assert build_config().train.jit_compile is False
    assert engine.TrainArgs(epochs=1).jit_compile is False
    default = _model()
    engine.compile_model(default, TASKS, engine.TrainArgs(epochs=1), steps_per_epoch=1)
    # compile_model passes a bool: Keras's "auto" is never left to decide
    assert default.jit_compile is False
    model, _, dtypes, logs = _step(jit_compile=True)
    assert model.jit_compile is True
    assert np.isfinite(logs["loss"])


@pytest.mark.slow  # 20-110 s on the shared 2-core machine (tracing; XLA compiling)
def test_steps_per_execution_runs_several_steps_per_call():
    model, _, _, logs = _step(steps_per_execution=2, steps=4)
    assert model.steps_per_execution == 2
    assert int(model.optimizer.iterations.numpy()) == 4  # every batch trained, two per call
    assert np.isfinite(logs["loss"])


def test_precision_policy_is_restored_after_an_error_and_rejects_unknown_values():
    with pytest.raises(RuntimeError):
        with engine.precision_policy("mixed_bfloat16"):
            assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
            raise RuntimeError("boom")
    with pytest.raises(ConfigError, match="mixed_bfloat16"):
        with engine.precision_policy("float8"):
            pass


def test_a_model_built_outside_the_policy_is_reported():
    model = _model()
    with pytest.warns(UserWarning, match="precision_policy"):
        engine.compile_model(model, TASKS, engine.TrainArgs(epochs=1, mixed_precision="mixed_float16"), 1)


def test_config_keys_and_old_boolean_files():
    from mtl.experiment import train_args

    cfg = build_config({"train": {"mixed_precision": "mixed_bfloat16", "steps_per_execution": 4,
                                  "jit_compile": True}})
    args = train_args(cfg)
    assert (args.mixed_precision, args.steps_per_execution, args.jit_compile) == ("mixed_bfloat16", 4, True)
    assert build_config().train.mixed_precision == "none"
    # config files written when the key was a bool still load, as what they meant
    assert build_config({"train": {"mixed_precision": True}}).train.mixed_precision == "mixed_float16"
    assert build_config({"train": {"mixed_precision": False}}).train.mixed_precision == "none"
    with pytest.raises(ConfigError, match="train.mixed_precision='float16': valid values: none, mixed_float16, "
                                          "mixed_bfloat16"):
        build_config({"train": {"mixed_precision": "float16"}})
    with pytest.raises(ConfigError, match="train.steps_per_execution=0: must be at least 1"):
        build_config({"train": {"steps_per_execution": 0}})


def test_the_shipped_gpu_config_still_loads(tmp_path):
    from mtl.config import load_yaml
    from conftest import REPO

    path = REPO / "configs" / "market1501_gpu.yaml"
    cfg = build_config(load_yaml(path))
    assert cfg.train.mixed_precision in ("mixed_float16", "mixed_bfloat16")
