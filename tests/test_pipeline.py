import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from mtl.data.pipeline import _color_jitter, augment_batch, augment_image, drop_unreadable, make_dataset
from tests.fixtures_images import write_jpeg, write_tf_unreadable, write_truncated_jpeg


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
        kept, skipped = drop_unreadable(table)
    assert list(kept["path"]) == paths and set(skipped["path"]) == {str(tmp_path / "bad.jpg"), str(truncated)}


def _mixed_table(tmp_path):
    """Four valid JPEGs and three files the pipeline cannot decode, two of which Pillow reads."""
    good = _images(tmp_path, 4)
    bad = [str(write_tf_unreadable(tmp_path / "tiff.jpg", "tiff")),
           str(write_tf_unreadable(tmp_path / "bmp1.jpg", "bmp1")),
           str(write_truncated_jpeg(tmp_path / "cut.jpg"))]
    order = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3]]
    return pd.DataFrame({"path": order, "t": np.arange(len(order), dtype=np.int64)}), good, bad


def test_files_pillow_reads_but_the_pipeline_cannot_are_skipped_counted_and_named(tmp_path):
    from PIL import Image

    table, good, bad = _mixed_table(tmp_path)
    with Image.open(bad[0]) as im:  # the case of the bug: Pillow reads it, TensorFlow does not
        im.convert("RGB").load()
    with pytest.warns(UserWarning, match=r"skipped 3 unreadable image\(s\) of 7: .*tiff\.jpg"):
        kept, skipped = drop_unreadable(table)
    assert list(kept["path"]) == good and list(kept["t"]) == [0, 2, 4, 6]
    assert list(skipped.columns) == ["path", "reason"] and list(skipped["path"]) == bad
    reasons = dict(zip(skipped["path"], skipped["reason"]))
    assert "Unknown image file format" in reasons[bad[0]]
    assert all(r.startswith("InvalidArgumentError: ") and "\n" not in r and "{{" not in r and "[Op:" not in r
               for r in reasons.values())


def test_every_file_the_check_keeps_decodes_in_the_pipeline(tmp_path):
    table, good, bad = _mixed_table(tmp_path)
    with pytest.warns(UserWarning):
        kept, _ = drop_unreadable(table)
    ds = make_dataset(kept["path"], {"t": kept["t"].to_numpy(np.int32)}, 16, 8, batch_size=16, cache=False)
    (images, y), = list(ds)  # nothing dropped by the pipeline's ignore_errors: the check agreed
    assert images.shape[0] == len(kept) and list(y["t"].numpy()) == list(kept["t"])
    # and the files it skipped are exactly those the pipeline cannot decode
    for path in bad:
        assert len(list(make_dataset([path], None, 16, 8, batch_size=1, cache=False))) == 0


def test_all_readable_gives_an_empty_skipped_frame_and_no_warning(tmp_path):
    import warnings

    table = pd.DataFrame({"path": _images(tmp_path, 3)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept, skipped = drop_unreadable(table)
    assert len(kept) == 3 and skipped.empty and list(skipped.columns) == ["path", "reason"]
    with pytest.warns(UserWarning, match="skipped 1"):
        missing, skipped = drop_unreadable(pd.DataFrame({"path": [str(tmp_path / "gone.jpg")]}))
    assert missing.empty and "NotFoundError" in skipped["reason"][0]


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


def _asymmetric(n, height=24, width=12):
    one = tf.random.stateless_uniform((height, width, 3), seed=[5, 6], maxval=255.0)
    return one, tf.tile(one[None], [n, 1, 1, 1])


def test_batch_augmentation_draws_flips_and_crops_per_image():
    one, batch = _asymmetric(32)
    seed = tf.constant([1, 2], tf.int64)
    flipped = augment_batch(batch, 24, 12, flip=True, seed=seed).numpy()
    is_flipped = [np.array_equal(x, one.numpy()[:, ::-1]) for x in flipped]
    assert all(f or np.array_equal(x, one.numpy()) for f, x in zip(is_flipped, flipped))
    assert 0 < sum(is_flipped) < 32  # each image its own coin
    # every output is a crop of the reflect-padded image (tf.pad REFLECT), at offsets that differ per image
    padded = tf.pad(one, [[4, 4], [4, 4], [0, 0]], mode="REFLECT").numpy()
    crops = {(y, x): padded[y:y + 24, x:x + 12] for y in range(9) for x in range(9)}
    offsets = [next(o for o, c in crops.items() if np.array_equal(c, x))
               for x in augment_batch(batch, 24, 12, flip=False, pad_crop=4, seed=seed).numpy()]
    assert len(set(offsets)) > 10


def test_batch_erasing_writes_one_rectangle_per_erased_image():
    out = augment_batch(tf.zeros((64, 32, 16, 3)), 32, 16, flip=False, random_erasing=0.5,
                        seed=tf.constant([3, 4], tf.int64)).numpy()
    erased = out.max(axis=-1) > 0
    counts = erased.sum(axis=(1, 2))
    assert 10 < (counts > 0).sum() < 54  # about half the images, each its own draw
    for mask in erased[counts > 0]:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert box.mean() > 0.99 and 0.01 <= box.size / mask.size <= 0.42  # a filled rectangle, 2-40% of the area


def test_batch_color_jitter_equals_the_tf_image_ops_with_the_drawn_factors():
    images = tf.random.stateless_uniform((8, 16, 8, 3), seed=[7, 8], maxval=255.0)
    seed = tf.constant([9, 10], tf.int64)
    out = _color_jitter(images, 16, 8, 8, 0.3, seed).numpy()
    factors = tf.random.stateless_uniform([8, 3], seed, -0.3, 0.3).numpy()
    for image, got, (delta, contrast, saturation) in zip(images, out, factors):
        x = tf.image.adjust_brightness(image / 255.0, delta)
        x = tf.image.adjust_contrast(x, 1 + contrast)
        x = tf.image.adjust_saturation(x, 1 + saturation)
        np.testing.assert_allclose(got, tf.clip_by_value(x, 0.0, 1.0).numpy() * 255.0, atol=0.01)


def test_augment_image_is_augment_batch_of_one():
    one, _ = _asymmetric(1)
    options = {"flip": True, "pad_crop": 4, "color_jitter": 0.2, "random_erasing": 0.5}
    seed = tf.constant([11, 12], tf.int64)
    np.testing.assert_array_equal(augment_image(one, 24, 12, seed=seed, **options).numpy(),
                                  augment_batch(one[None], 24, 12, seed=seed, **options)[0].numpy())
