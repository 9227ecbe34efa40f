"""Reproducibility: the same seed gives the same batches, and (with determinism on) the same run.

The reported bug: the same training command twice gave different figures (gender accuracy 0.500
vs 0.545). The cause was the augmentation: stateful random ops inside a parallel ``map`` hand
their random numbers to whichever element a thread runs first.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from mtl.data.pipeline import augment_image, make_dataset
from mtl.data.sampler import pk_dataset
from mtl.reproducibility import seed_everything

AUGMENT = {"flip": True, "pad_crop": 4, "color_jitter": 0.2, "random_erasing": 0.5}


def _images(tmp_path, n, height=24, width=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _epochs(ds, n):
    """``n`` passes over a finite dataset (a new iterator each, like Keras's epochs), images stacked."""
    return [np.concatenate([batch[0].numpy() for batch in ds]) for _ in range(n)]


def test_augmentation_with_a_seed_is_a_function_of_image_and_seed():
    image = tf.random.stateless_uniform((24, 12, 3), seed=[1, 2], maxval=255.0)
    one = augment_image(image, 24, 12, seed=tf.constant([3, 4], tf.int64), **AUGMENT)
    again = augment_image(image, 24, 12, seed=tf.constant([3, 4], tf.int64), **AUGMENT)
    other = augment_image(image, 24, 12, seed=tf.constant([3, 5], tf.int64), **AUGMENT)
    np.testing.assert_array_equal(one.numpy(), again.numpy())
    assert not np.array_equal(one.numpy(), other.numpy())


def test_training_dataset_is_the_same_for_a_seed_under_a_parallel_map(tmp_path):
    """Two pipelines built alike give the same augmented images, epoch after epoch.

    With stateful random ops in the parallel map (before the fix) the images differed between two
    builds, and between two runs of one process.
    """
    paths = _images(tmp_path, 96)
    labels = {"t": np.arange(96, dtype=np.int32)}

    def build(seed):
        seed_everything(seed)
        return make_dataset(paths, labels, 24, 12, batch_size=16, training=True, augment=AUGMENT, seed=seed)

    first, second = _epochs(build(3), 2), _epochs(build(3), 2)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # each epoch has its own shuffle and augmentation
    assert not np.array_equal(first[0], _epochs(build(4), 1)[0])


def test_repeated_training_dataset_is_the_same_for_a_seed(tmp_path):
    paths = _images(tmp_path, 40)

    def build():
        seed_everything(0)
        ds = make_dataset(paths, {"t": np.arange(40, dtype=np.int32)}, 24, 12, batch_size=8, training=True,
                          augment=AUGMENT, seed=0, repeat=True)
        return np.concatenate([batch[0].numpy() for batch in ds.take(12)])

    np.testing.assert_array_equal(build(), build())


def test_pk_batches_are_the_same_for_a_seed(tmp_path):
    paths = _images(tmp_path, 48)
    identities = np.repeat(np.arange(12), 4)

    def build(seed):
        seed_everything(seed)
        ds = pk_dataset(paths, {"identity": identities.astype(np.int32)}, identities, 4, 4, 24, 12, AUGMENT,
                        seed=seed)
        return [(x.numpy(), y["identity"].numpy()) for x, y in ds.take(6)]

    first, second = build(1), build(1)
    for (xa, ya), (xb, yb) in zip(first, second):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    assert not all(np.array_equal(xa, xb) for (xa, _), (xb, _) in zip(first, build(2)))


def _start_training(root, out, seed):
    """The training command of the report, on tiny data, with determinism on."""
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "--data", str(root), "--tasks", "age,gender",
               "--epochs", "2", "--batch-size", "16", "--set", "data.image_height=32", "--set", "data.image_width=16",
               "--set", "model.width=0.25", "--set", "model.private_multipliers=4,2", "--set", f"train.seed={seed}",
               "--set", "train.deterministic=true", "--out", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MTL_PROGRESS": "0"}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(run):
    """Per-epoch losses and metrics from history.json, without the wall-clock times."""
    history = json.loads((run / "history.json").read_text())
    return [{k: v for k, v in epoch.items() if "time" not in k} for epoch in history]


def test_seed_fixes_initial_weights_and_dropout_and_another_seed_changes_them():
    from mtl.models.builder import build_model
    from mtl.tasks import TaskSpec

    image = np.random.default_rng(0).uniform(0, 255, (2, 16, 8, 3)).astype("float32")

    def build(seed):
        seed_everything(seed)
        model = build_model([TaskSpec("t", ("a", "b", "c"))], (16, 8, 3), width=0.25, private_multipliers=(4,))
        weights = np.concatenate([w.ravel() for w in model.get_weights()])
        return weights, model(image, training=True)["t"].numpy()  # training=True: dropout is on

    (weights, out), (same_weights, same_out), (other_weights, other_out) = build(5), build(5), build(6)
    np.testing.assert_array_equal(weights, same_weights)
    np.testing.assert_array_equal(out, same_out)
    assert not np.array_equal(weights, other_weights) and not np.array_equal(out, other_out)


@pytest.mark.slow
def test_same_seed_with_determinism_gives_the_same_run_in_separate_processes(synthetic_root, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    # both at once: thread timing differs between them, as it does between two real runs
    procs = [_start_training(synthetic_root, out, 7) for out in runs]
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-3000:]

    first, second = (json.loads((out / "metrics.json").read_text()) for out in runs)
    assert first["tasks"] == second["tasks"]
    assert first["summary"] == second["summary"]
    assert _losses(runs[0]) == _losses(runs[1])
    assert len(_losses(runs[0])) == 2
