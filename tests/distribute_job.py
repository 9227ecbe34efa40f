"""Subprocess body of tests/test_distribute.py: train a tiny deterministic model a few steps
under a strategy and compare the loss and weights with a single-device run of the same global batch.

    python tests/distribute_job.py mirrored OUT.json         # two logical CPUs, fit and custom loop
    TF_CONFIG=... python tests/distribute_job.py multiworker OUT.json RUN_DIR

Deterministic by construction: BatchNorm frozen (per-replica batch statistics would differ from
the global batch's), no dropout, no augmentation, no shuffling; both runs start from the same weights.
"""

import json
import sys
import time

import numpy as np
import tensorflow as tf

MODE, OUT = sys.argv[1], sys.argv[2]
if MODE == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
else:
    from mtl.distribute import strategy_for

    STRATEGY = strategy_for("multiworker")  # first: before any other TensorFlow op

import keras  # noqa: E402
import os  # noqa: E402
keras.config.set_floatx(os.environ.get("FLOATX", "float32"))

from mtl import engine  # noqa: E402
from mtl.engine import TrainArgs  # noqa: E402
from mtl.rundir import RunPaths  # noqa: E402
from mtl.models.builder import build_model  # noqa: E402
from mtl.tasks import BINARY, CATEGORICAL, TaskSpec  # noqa: E402

BATCH, STEPS, EPOCHS = 8, 3, 2
TASKS = [TaskSpec("hat", ("no", "yes"), BINARY), TaskSpec("upcolor", ("a", "b", "c"), CATEGORICAL)]
ARGS = TrainArgs(epochs=EPOCHS, optimizer="sgd", learning_rate=0.0005, weight_decay=0.0, warmup_epochs=0,
                 schedule="constant", keep="last")


def data(symmetric: bool):
    """STEPS * BATCH images; labels missing (-1) unevenly across the two halves of each batch
    (or, ``symmetric``, equally often in both halves: what model.fit's mean of replica means needs)."""
    rng = np.random.default_rng(0)
    n = STEPS * BATCH
    x = rng.uniform(0, 255, (n, 32, 16, 3)).astype("float32")
    hat = rng.integers(0, 2, n)
    upcolor = rng.integers(0, 3, n)
    for start in range(0, n, BATCH):
        if symmetric:
            hat[start], hat[start + BATCH // 2] = -1, -1
        else:
            hat[start:start + 3] = -1  # 3 missing in the first half, none in the second
            upcolor[start + BATCH - 1] = -1
    ds = tf.data.Dataset.from_tensor_slices((x, {"hat": hat.astype("int32"), "upcolor": upcolor.astype("int32")}))
    return ds.batch(BATCH).repeat(), ds.batch(BATCH)


def make_model(strategy, weights=None):
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = build_model(TASKS, input_shape=(32, 16, 3), width=0.25, private_multipliers=[4, 2], dropout=0.0)
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False  # inference mode: the same statistics on every replica
        if weights is not None:
            model.set_weights(weights)
    return model


def train(strategy, symmetric, custom_loop, weights, paths=None):
    train_ds, val_ds = data(symmetric)
    model = make_model(strategy, weights)
    result = engine.train_model(model, TASKS, train_ds, val_ds, ARGS, STEPS, fixed_steps=True, strategy=strategy,
                        custom_loop=custom_loop, paths=paths, verbose=0)
    return [row["loss"] for row in result.epochs], result.epochs, model.get_weights()


def compare(a, b):
    (loss_a, rows_a, w_a), (loss_b, rows_b, w_b) = a, b
    worst = int(np.argmax([np.max(np.abs(x - y)) for x, y in zip(w_a, w_b)]))
    return {"worst": [worst, list(w_a[worst].shape)], "loss": float(np.max(np.abs(np.subtract(loss_a, loss_b)))),
            "weights": float(max(np.max(np.abs(x - y)) for x, y in zip(w_a, w_b))),
            "moved": float(max(np.max(np.abs(x - y)) for x, y in zip(w_a, INITIAL))),
            # the difference relative to how far training moved the weights (all weights as one vector)
            "relative": float(np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(w_a, w_b))
                                      / sum(np.sum((x - y) ** 2) for x, y in zip(w_a, INITIAL)))),
            "val_masked": float(abs(rows_a[-1]["val_hat_xent"] - rows_b[-1]["val_hat_xent"])),
            "losses": [loss_a, loss_b]}


start = time.time()
single = tf.distribute.get_strategy()
INITIAL = make_model(single).get_weights()
report = {"replicas": STRATEGY.num_replicas_in_sync}
if MODE == "mirrored":
    report["custom_loop"] = compare(train(single, False, False, INITIAL), train(STRATEGY, False, True, INITIAL))
    report["fit"] = compare(train(single, True, False, INITIAL), train(STRATEGY, True, False, INITIAL))
else:
    from pathlib import Path

    from mtl.distribute import cluster, worker_dir

    run = worker_dir(sys.argv[3])
    run.mkdir(parents=True, exist_ok=True)
    paths = RunPaths(history=run / "history.json", best_weights=run / "best.weights.h5", backup=run / "backup")
    distributed = train(STRATEGY, False, None, INITIAL, paths)
    report.update(chief=cluster().is_chief, wrote=str(run),
                  files=sorted(str(p.relative_to(run)) for p in Path(run).rglob("*") if p.is_file()))
    if cluster().is_chief:  # the reference, alone: no collective op left to wait for
        report["multiworker"] = compare(train(single, False, False, INITIAL), distributed)
report["wall_s"] = time.time() - start
from pathlib import Path  # noqa: E402
Path(OUT).write_text(json.dumps(report))
