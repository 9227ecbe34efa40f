"""Loss balancing and class imbalance (issue 15, ``mtl.balancing``): ``train.loss_balancing``
(fixed, uncertainty, dwa) and ``train.class_weighting`` (none, inverse, positive, confusion).

The arithmetic is checked against values worked out by hand; each mode trains on tiny data,
logs its weights per epoch into history.json and reloads from model.keras."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, tiny_config
from mtl.balancing import (CLASS_WEIGHT_KEY, CLASS_WEIGHTING, LOSS_BALANCING, TASK_LOSS_KEY, UNCERTAINTY_LAYER,
                           WEIGHT_KEY, attach, balanced_terms, confusion_weights, dwa_schedule, dwa_weights,
                           uncertainty_term)
from mtl.errors import ConfigError
from mtl.losses import (BalancedLoss, MaskedBinaryCrossentropy, MaskedSparseCategoricalCrossentropy,
                        UncertaintyWeights, positive_ratio_weights)
from mtl.tasks import BINARY, CATEGORICAL, IDENTITY, TaskSpec

GENDER = TaskSpec("gender", ("male", "female"), BINARY)
AGE = TaskSpec("age", ("young", "teen", "adult", "old"), CATEGORICAL)
PERSON = TaskSpec("identity", tuple(str(i) for i in range(6)), IDENTITY)


def _tiny_model(tasks, **kwargs):
    from mtl.models.builder import build_model

    return build_model(tasks, input_shape=(32, 16, 3), width=0.25, private_multipliers=(4, 2), embedding_dim=8,
                       **kwargs)


# ---------------------------------------------------------------------------------------------
# the arithmetic
# ---------------------------------------------------------------------------------------------

def test_choices_mirror_the_config():
    from mtl import config

    assert config.LOSS_BALANCING == LOSS_BALANCING
    assert config.CLASS_WEIGHTING == CLASS_WEIGHTING


def test_balanced_terms_are_the_attributes_then_the_identity_outputs():
    assert balanced_terms([GENDER, PERSON, AGE]) == ["gender", "age", "identity", "embedding"]
    assert balanced_terms([AGE]) == ["age"]


def test_dwa_weights_by_hand():
    # r = [1/2, 2/2] -> softmax([0.25, 0.5]) * 2
    e = np.exp([0.25, 0.5])
    np.testing.assert_allclose(dwa_weights([1.0, 2.0], [2.0, 2.0], temperature=2.0), 2 * e / e.sum())
    # equal ratios: equal weights (sum T); a term without a loss two epochs ago counts as ratio 1
    np.testing.assert_allclose(dwa_weights([3.0, 1.0, 0.5], [3.0, 1.0, 0.0]), [1.0, 1.0, 1.0])
    assert dwa_schedule({0: [1.0], 1: [1.0]}, 0) is None and dwa_schedule({0: [1.0], 1: [1.0]}, 1) is None
    np.testing.assert_allclose(dwa_schedule({0: [2.0, 2.0], 1: [1.0, 2.0]}, 2, 2.0), 2 * e / e.sum())


def test_uncertainty_and_positive_and_confusion_by_hand():
    assert uncertainty_term(2.0, 0.0) == 2.0
    assert uncertainty_term(2.0, np.log(2.0), weight=3.0) == pytest.approx(3.0 * (1.0 + np.log(2.0)))
    # p = 1/4 positives among the labelled rows (the -1 is ignored)
    assert positive_ratio_weights(np.array([1, 0, 0, 0, -1])) == pytest.approx([np.exp(0.25), np.exp(0.75)])
    # recall [0.9, 0.1] -> target [0.2, 1.0] -> mean 1: [1/3, 5/3] -> half way from [1, 1]: [2/3, 4/3]
    np.testing.assert_allclose(confusion_weights([1, 1], correct=[9, 1], total=[10, 10]), [2 / 3, 4 / 3])
    # a class absent this epoch keeps its weight before the renormalisation; the cap holds
    w = confusion_weights([1.0, 2.0, 1.0], correct=[5, 0, 0], total=[10, 0, 10], momentum=1.0, cap=1.2)
    assert w.max() <= 1.2 + 1e-9 and w[2] > w[0]
    # mean 1 over the epoch's labelled rows
    w = confusion_weights([1, 1, 1], correct=[1, 5, 30], total=[10, 10, 40])
    assert np.sum(w * [10, 10, 40]) / 60 == pytest.approx(1.0)


def test_config_keys_legacy_bools_and_errors():
    cfg = tiny_config(None, train={"class_weighting": True})
    assert cfg.train.class_weighting == "inverse"
    assert tiny_config(None, train={"class_weighting": False}).train.class_weighting == "none"
    assert tiny_config(None).train.loss_balancing == "fixed"
    with pytest.raises(ConfigError, match="train.class_weighting"):
        tiny_config(None, train={"class_weighting": "often"})
    with pytest.raises(ConfigError, match="train.loss_balancing"):
        tiny_config(None, train={"loss_balancing": "gradnorm"})
    with pytest.raises(ConfigError, match="train.dwa_temperature"):
        tiny_config(None, train={"dwa_temperature": 0})


# ---------------------------------------------------------------------------------------------
# the losses read the variables
# ---------------------------------------------------------------------------------------------

Y_AGE = tf.constant([0, 2, -1, 3], tf.int32)
P_AGE = tf.constant([[0.7, 0.1, 0.1, 0.1], [0.2, 0.2, 0.5, 0.1], [0.25] * 4, [0.1, 0.1, 0.1, 0.7]])
Y_GENDER = tf.constant([[1], [0], [-1], [1]], tf.int32)
P_GENDER = tf.constant([[0.8], [0.3], [0.5], [0.4]])


def test_uncertainty_losses_read_the_models_log_variances_and_skip_weight_decay():
    from mtl.engine import TrainArgs, compile_model

    model = _tiny_model([GENDER, AGE], uncertainty_weights=True)
    layer = model.get_layer(UNCERTAINTY_LAYER)
    assert isinstance(layer, UncertaintyWeights) and layer.terms == ["gender", "age"]
    assert any(v is layer.log_variance for v in model.trainable_variables)
    compile_model(model, [GENDER, AGE], TrainArgs(epochs=1, loss_balancing="uncertainty"), steps_per_epoch=1)
    layer.log_variance.assign([0.5, -0.3])
    raw_age = float(MaskedSparseCategoricalCrossentropy()(Y_AGE, P_AGE))
    raw_gender = float(MaskedBinaryCrossentropy()(Y_GENDER, P_GENDER))
    assert float(model.loss["age"](Y_AGE, P_AGE)) == pytest.approx(uncertainty_term(raw_age, -0.3), rel=1e-5)
    assert float(model.loss["gender"](Y_GENDER, P_GENDER)) == pytest.approx(uncertainty_term(raw_gender, 0.5),
                                                                            rel=1e-5)
    # weight decay would pull every s_t back to 0 (fixed weights): excluded; the kernels keep it
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    assert not optimizer._use_weight_decay(layer.log_variance)
    assert optimizer._use_weight_decay(model.get_layer("age").kernel)
    # the gradient reaches s_t through the loss: d/ds (exp(-s) L + s) = 1 - exp(-s) L
    with tf.GradientTape() as tape:
        value = model.loss["age"](Y_AGE, P_AGE)
    grad = tape.gradient(value, layer.log_variance.value)
    assert float(grad[1]) == pytest.approx(1 - np.exp(0.3) * raw_age, rel=1e-5)


def test_uncertainty_needs_the_layer():
    model = _tiny_model([GENDER])
    with pytest.raises(ConfigError, match="uncertainty_weights=True"):
        attach(model, [GENDER], "uncertainty")


def test_dwa_scales_every_term_and_wraps_the_embedding_loss():
    from mtl.engine import task_losses

    model = _tiny_model([GENDER, PERSON])
    balancer = attach(model, [GENDER, PERSON], "dwa")
    losses = task_losses([GENDER, PERSON], balancer=balancer)
    assert isinstance(losses["embedding"], BalancedLoss)
    plain = task_losses([GENDER, PERSON])
    balancer.dwa.assign([0.5, 2.0, 1.5])  # gender, identity, embedding
    emb_y = tf.constant([0, 0, 1, 1], tf.int32)
    emb_x = tf.constant(np.random.default_rng(0).normal(size=(4, 8)), tf.float32)
    assert float(losses["gender"](Y_GENDER, P_GENDER)) == pytest.approx(0.5 * float(plain["gender"](Y_GENDER, P_GENDER)))
    assert float(losses["embedding"](emb_y, emb_x)) == pytest.approx(1.5 * float(plain["embedding"](emb_y, emb_x)))
    # the raw (unscaled) losses are what DWA's next weights come from
    balancer.reset()
    losses["gender"](Y_GENDER, P_GENDER)
    assert balancer.raw_losses()["gender"] == pytest.approx(float(plain["gender"](Y_GENDER, P_GENDER)))
    # the wrapper reloads from its config
    again = BalancedLoss.from_config(losses["embedding"].get_config())
    assert float(again(emb_y, emb_x)) == pytest.approx(float(plain["embedding"](emb_y, emb_x)))


def test_confusion_class_weights_are_a_variable_the_loss_reads():
    from mtl.custom_loop import _label_weight
    from mtl.engine import task_losses

    model = _tiny_model([AGE])
    balancer = attach(model, [AGE], "fixed", "confusion")
    loss = task_losses([AGE], balancer=balancer)["age"]
    balancer.class_weights["age"].assign([1.0, 1.0, 4.0, 1.0])
    expected = float(MaskedSparseCategoricalCrossentropy(class_weights=[1.0, 1.0, 4.0, 1.0])(Y_AGE, P_AGE))
    assert float(loss(Y_AGE, P_AGE)) == pytest.approx(expected)
    # the custom loop's share of the global label weight reads the same weights
    assert float(_label_weight(loss, Y_AGE)) == pytest.approx(6.0)
    # the training confusion: rows 0 and 3 right, row 1 right (argmax 2), row 2 unlabelled
    correct, total = balancer.confusion_counts()["age"]
    np.testing.assert_array_equal(total, [1, 0, 1, 1])
    np.testing.assert_array_equal(correct, [1, 0, 1, 1])
    # the saved config keeps the static weights (none): a reloaded compiled model trains unweighted
    assert loss.get_config()["class_weights"] is None


def test_a_resumed_run_redoes_the_last_confusion_update(tmp_path):
    """The class weights a resumed run starts its epoch with are those the uninterrupted run
    would have: the last finished epoch's weights, updated from that epoch's logged confusion."""
    from mtl.balancing import CLASS_RECALL_KEY, CLASS_ROWS_KEY, LossBalanceCallback
    from mtl.engine import task_losses

    model = _tiny_model([AGE])
    balancer = attach(model, [AGE], "fixed", "confusion")
    loss = task_losses([AGE], balancer=balancer)["age"]
    callback = LossBalanceCallback()
    callback.set_model(model)
    callback.on_epoch_begin(0)
    balancer.class_weights["age"].assign([1.0, 2.0, 0.5, 1.0])
    loss(Y_AGE, tf.constant([[0.1, 0.7, 0.1, 0.1], [0.2, 0.2, 0.5, 0.1], [0.25] * 4, [0.7, 0.1, 0.1, 0.1]]))
    logs = {"epoch": 1}
    callback.on_epoch_end(0, logs)
    uninterrupted = keras.ops.convert_to_numpy(balancer.class_weights["age"])
    assert logs[CLASS_RECALL_KEY.format("age", 2)] == 1.0 and logs[CLASS_RECALL_KEY.format("age", 0)] == 0.0
    assert logs[CLASS_ROWS_KEY.format("age", 0)] == 1 and CLASS_ROWS_KEY.format("age", 1) not in logs
    assert not np.allclose(uninterrupted, [1.0, 2.0, 0.5, 1.0])

    (tmp_path / "history.json").write_text(json.dumps([logs]))
    resumed = _tiny_model([AGE])
    resumed_balancer = attach(resumed, [AGE], "fixed", "confusion")
    callback = LossBalanceCallback(tmp_path / "history.json")
    callback.set_model(resumed)
    callback.on_epoch_begin(1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(resumed_balancer.class_weights["age"]), uninterrupted,
                               rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# each mode trains, logs its weights and reloads
# ---------------------------------------------------------------------------------------------

def _train(root, out, tasks, epochs, **train):
    from mtl.experiment import train as run

    cfg = tiny_config(root, tasks=tasks, model={"embedding_dim": 16},
                      train={"epochs": epochs, "batch_size": 16, "steps_per_epoch": 2, "keep": "last", **train})
    run(cfg, out, log=None)
    return cfg, json.loads((out / "history.json").read_text())


def _reload(path):
    plain = keras.saving.load_model(path, compile=False)
    compiled = keras.saving.load_model(path)  # compile=True must not crash
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 16, 3)).astype(np.float32)
    a, b = plain.predict(x, verbose=0), compiled.predict(x, verbose=0)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)
    return plain, compiled


@pytest.mark.slow
def test_uncertainty_and_confusion_train_log_and_reload(synthetic_root, tmp_path):
    _, history = _train(synthetic_root, tmp_path / "run", "gender,age", 2, loss_balancing="uncertainty",
                        class_weighting="confusion")
    assert [r["epoch"] for r in history] == [1, 2]
    for term in ("gender", "age"):
        first, second = (r[WEIGHT_KEY.format(term)] for r in history)
        assert first != second and first != 1.0  # exp(-s_t) is learnt every step
        assert TASK_LOSS_KEY.format(term) in history[0]
    # confusion: 1 during the first epoch, then from its training recall
    first = [history[0][CLASS_WEIGHT_KEY.format("age", k)] for k in range(4)]
    second = [history[1][CLASS_WEIGHT_KEY.format("age", k)] for k in range(4)]
    assert first == [1.0] * 4 and second != first
    plain, compiled = _reload(tmp_path / "run" / "model.keras")
    layer = plain.get_layer(UNCERTAINTY_LAYER)
    # keep=last: the saved s_t are the last epoch's, whose exp(-s_t) was logged
    np.testing.assert_allclose(np.exp(-keras.ops.convert_to_numpy(layer.log_variance)),
                               [history[-1][WEIGHT_KEY.format(t)] for t in layer.terms], rtol=1e-5)


@pytest.mark.slow
def test_dwa_and_positive_train_log_and_reload(synthetic_root, tmp_path):
    from mtl.experiment import class_weights_for, prepare, train_args

    cfg, history = _train(synthetic_root, tmp_path / "run", "gender,age,identity", 3, loss_balancing="dwa",
                          dwa_temperature=2.0, class_weighting="positive")
    terms = ["gender", "age", "identity", "embedding"]
    weights = [[r[WEIGHT_KEY.format(t)] for t in terms] for r in history]
    losses = [[r[TASK_LOSS_KEY.format(t)] for t in terms] for r in history]
    assert weights[0] == weights[1] == [1.0] * 4
    np.testing.assert_allclose(weights[2], dwa_weights(losses[1], losses[0], 2.0), rtol=1e-6)
    assert weights[2] != weights[1]
    # positive: binary attributes from the split's positive ratio, categorical by inverse frequency
    data = prepare(cfg)
    labels = data.train["gender"].to_numpy()
    p = np.mean(labels[labels >= 0] == 1)
    args = train_args(cfg, data)
    assert args.class_weights["gender"] == pytest.approx([np.exp(p), np.exp(1 - p)])
    assert args.class_weights["age"] == pytest.approx(class_weights_for(data, "inverse")["age"])
    assert "identity" not in args.class_weights
    _, compiled = _reload(tmp_path / "run" / "model.keras")
    assert compiled.loss["gender"].class_weights == pytest.approx([np.exp(p), np.exp(1 - p)])


MIRRORED = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, "tests")
import numpy as np
from conftest import tiny_config
from mtl import engine
from mtl.data.prepare import datasets
from mtl.experiment import dataset_args, model_kwargs, prepare, steps_per_epoch, train_args
from mtl.models.builder import build_model
cfg = tiny_config(sys.argv[1], tasks="gender,age,identity", model={"embedding_dim": 16},
                  train={"epochs": 2, "batch_size": 16, "steps_per_epoch": 2, "loss_balancing": "uncertainty",
                         "class_weighting": "confusion", "keep": "last"})  # the model ends with the last epoch's s
data = prepare(cfg)
steps, fixed = steps_per_epoch(cfg, data)
train_ds, val_ds = datasets(data, **dataset_args(cfg, repeat=True))
strategy = tf.distribute.MirroredStrategy()
with strategy.scope():
    model = build_model(data.tasks, **model_kwargs(cfg))
result = engine.train_model(model, data.tasks, train_ds, val_ds, train_args(cfg, data), steps, fixed,
                            strategy=strategy, custom_loop=True, verbose=0)
s = model.get_layer("loss_uncertainty").log_variance
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "epochs": result.epochs,
                  "s": np.asarray(s.numpy()).tolist()}))
"""


@pytest.mark.slow
def test_the_custom_loop_under_a_mirrored_strategy_trains_the_log_variances(synthetic_root):
    """The engine's custom loop (MultiWorkerMirroredStrategy's path) over 2 logical CPUs: the
    log-variances move, the class weights update, the logged factor is exp(-s)."""
    result = subprocess.run([sys.executable, "-c", MIRRORED, str(synthetic_root)], capture_output=True, text=True,
                            cwd=REPO, timeout=400, env={"MTL_PROGRESS": "0", **__import__("os").environ})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert all(abs(s) > 0 for s in report["s"])
    last = report["epochs"][-1]
    np.testing.assert_allclose([last[WEIGHT_KEY.format(t)] for t in ("gender", "age", "identity", "embedding")],
                               np.exp(-np.asarray(report["s"])), rtol=1e-5)
    assert [last[CLASS_WEIGHT_KEY.format("gender", k)] for k in range(2)] != [1.0, 1.0]
