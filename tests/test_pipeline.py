import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from mtl.data.pipeline import augment_image, drop_unreadable, make_dataset
from tests.fixtures_images import write_jpeg


def _images(tmp_path, n=5):
    paths = []
    for i in range(n):
        p = tmp_path / f"{i}.jpg"
        write_jpeg(p, size=(20, 10), color=(10 * i, 100, 200))
        paths.append(str(p))
    return paths


def test_corrupt_images_are_dropped_with_a_counting_warning(tmp_path):
    paths = _images(tmp_path, 4)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(open(paths[0], "rb").read()[:60])
    table = pd.DataFrame({"path": paths + [str(tmp_path / "bad.jpg"), str(truncated)]})
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        kept, bad = drop_unreadable(table)
    assert list(kept["path"]) == paths and set(bad) == {str(tmp_path / "bad.jpg"), str(truncated)}


def test_dataset_yields_resized_images_and_task_labels(tmp_path):
    paths = _images(tmp_path)
    labels = {"age": np.array([0, 1, 2, -1, 3], np.int32), "hat": np.array([0, 1, 0, 1, -1], np.int32)}
    ds = make_dataset(paths, labels, 32, 16, batch_size=2)
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    image, y = batches[0]
    assert image.shape == (2, 32, 16, 3) and image.dtype == tf.float32
    assert float(tf.reduce_max(image)) <= 255.0 and float(tf.reduce_min(image)) >= 0.0
    assert np.array_equal(np.concatenate([b[1]["age"] for b in batches]), labels["age"])  # order kept without training


def test_a_file_that_breaks_after_the_check_does_not_crash_an_epoch(tmp_path):
    paths = _images(tmp_path, 3)
    open(paths[1], "wb").write(b"garbage")
    ds = make_dataset(paths, {"t": np.array([0, 1, 2], np.int32)}, 16, 8, batch_size=4, cache=False)
    (image, y), = list(ds)
    assert image.shape[0] == 2 and list(y["t"].numpy()) == [0, 2]


def test_augmentation_keeps_shape_and_range_and_each_part_switches_off():
    image = tf.random.uniform((32, 16, 3), 0, 255)
    out = augment_image(image, 32, 16, flip=True, pad_crop=4, color_jitter=0.3, random_erasing=1.0)
    assert out.shape == (32, 16, 3)
    assert 0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255
    same = augment_image(image, 32, 16, flip=False, pad_crop=0, color_jitter=0.0, random_erasing=0.0)
    np.testing.assert_array_equal(same.numpy(), image.numpy())
    erased = augment_image(tf.zeros((32, 16, 3)), 32, 16, flip=False, random_erasing=1.0)
    assert float(tf.reduce_max(erased)) > 0  # a noise rectangle was written


def test_training_dataset_shuffles_and_repeats(tmp_path):
    paths = _images(tmp_path, 5)
    ds = make_dataset(paths, {"t": np.arange(5, dtype=np.int32)}, 16, 8, batch_size=5, training=True,
                      augment={"flip": True}, repeat=True, seed=1)
    epochs = [sorted(b[1]["t"].numpy().tolist()) for b in ds.take(3)]
    assert all(e == [0, 1, 2, 3, 4] for e in epochs)
