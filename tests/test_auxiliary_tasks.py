"""The auxiliary classes: the camera task (from the file names) and the junk class
(random zoomed-in crops in training, junk gallery images dropped at retrieval time)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from conftest import tiny_config
from mtl.data.prepare import prepare_data, resolve_tasks
from mtl.data.sources import describe_tasks, load_source
from mtl.data.sources.base import SourceData, make_table
from mtl.errors import ConfigError, DataError
from mtl.tasks import CAMERA, CATEGORICAL, JUNK, TaskSpec, resolve


# --- camera -------------------------------------------------------------------------------------

def test_camera_task_is_labelled_from_the_file_names(synthetic_root):
    source = load_source(synthetic_root)
    specs, _ = resolve_tasks(["gender", "camera"], source)
    camera = specs[-1]
    assert (camera.name, camera.kind) == (CAMERA, CATEGORICAL)
    train = source.subset("train")
    # the class index is the camera number of the file name (0002_c3_... -> c3)
    assert camera.classes == tuple(f"c{i}" for i in range(train["camera"].max() + 1))
    first = train.iloc[0]
    assert f"_c{first['camera']}_" in first["path"] and camera.classes[first["camera"]] == f"c{first['camera']}"
    # auxiliary: not in all, listed by --tasks help
    assert CAMERA not in [t.name for t in resolve_tasks(["all"], source)[0]]
    assert CAMERA not in [t.name for t in resolve("all", {**source.tasks, CAMERA: camera})]
    assert any(line.startswith("camera") and "auxiliary" in line for line in describe_tasks(source).splitlines())


def test_camera_task_unavailable_without_cameras(tmp_path):
    tasks = {"color": TaskSpec("color", ("red", "blue"), CATEGORICAL)}
    rows = [{"path": str(tmp_path / f"{i}.jpg"), "identity": i, "camera": -1, "subset": "train", "color": i % 2}
            for i in range(4)]
    source = SourceData("fashion", str(tmp_path), make_table(rows, tasks), tasks)
    with pytest.raises(DataError, match=r"task 'camera' is not available for the fashion data in .*file names") as e:
        resolve_tasks(["color", "camera"], source)
    assert "\n" not in str(e.value)
    assert not any(line.startswith("camera") for line in describe_tasks(source).splitlines())
    with pytest.raises(ConfigError, match="data.junk_fraction"):
        resolve_tasks(["junk"], source)


# --- junk in the training batches -----------------------------------------------------------------

def _batch(ds):
    images, labels = next(iter(ds))
    return images.numpy(), {k: v.numpy() for k, v in labels.items()}


def test_junk_rows_are_labelled_and_cropped(synthetic_root):
    from mtl.data.pipeline import add_junk, make_dataset
    from mtl.data.prepare import task_labels

    data = prepare_data(synthetic_root, tasks="identity,gender,camera", junk=True)
    assert [t.name for t in data.tasks][-1] == JUNK and (data.train[JUNK] == 0).all()
    labels = task_labels(data.train, data.tasks)
    paths = data.train["path"][:16]
    labels = {k: v[:16] for k, v in labels.items()}
    no_aug = {"flip": False, "pad_crop": 0, "color_jitter": 0.0, "random_erasing": 0.0}
    make = lambda fraction: make_dataset(paths, labels, 32, 16, 16, training=True, augment=no_aug, seed=3,  # noqa: E731
                                         junk_fraction=fraction)
    clean_images, clean = _batch(make(0.0))
    images, junk = _batch(make(0.25))
    rows = junk[JUNK] == 1
    assert rows.sum() == 4 and (clean[JUNK] == 0).all()  # exactly a quarter of the batch
    for name in labels:  # every other output masked for junk rows (identity and embedding too)
        if name != JUNK:
            assert (junk[name][rows] == -1).all(), name
            np.testing.assert_array_equal(junk[name][~rows], clean[name][~rows])
    # same order of images: the real rows are untouched, the junk rows are new pixels
    np.testing.assert_array_equal(images[~rows], clean_images[~rows])
    assert all(np.abs(images[i] - clean_images[i]).mean() > 1 for i in np.flatnonzero(rows))
    # a zoomed crop: a 10-30% patch resized to the full size is smoother than the whole image
    image = tf.constant(clean_images[:1])
    crop, _ = add_junk(image, {JUNK: tf.zeros([1], tf.int32)}, 1.0, tf.constant([1, 2]))
    assert np.abs(np.diff(crop.numpy()[0], axis=0)).mean() < np.abs(np.diff(clean_images[0], axis=0)).mean()
    # deterministic: the same seed gives the same batch
    again, again_labels = _batch(make(0.25))
    np.testing.assert_array_equal(again, images)
    np.testing.assert_array_equal(again_labels[JUNK], junk[JUNK])


def test_junk_in_pk_batches(synthetic_root):
    from mtl.data.prepare import datasets

    data = prepare_data(synthetic_root, tasks="identity,gender", junk=True)
    train_ds, val_ds = datasets(data, 32, 16, 16, {"flip": True}, junk_fraction=0.25)
    _, labels = _batch(train_ds)
    rows = labels[JUNK] == 1
    assert rows.sum() == 4 and (labels["identity"][rows] == -1).all() and (labels["embedding"][rows] == -1).all()
    assert (labels["identity"][~rows] >= 0).all()
    _, val = _batch(val_ds)
    assert (val[JUNK] == 0).all()  # validation images are real people
    with pytest.raises(ConfigError, match="junk_fraction"):
        datasets(prepare_data(synthetic_root, tasks="gender"), 32, 16, 16, {}, junk_fraction=0.25)


# --- retrieval drops the gallery images predicted junk -----------------------------------------

def _two_tone(path, top, bottom):
    pixels = np.zeros((32, 16, 3), np.uint8)
    pixels[:16], pixels[16:] = top, bottom
    Image.fromarray(pixels).save(path)
    return str(path)


def _stub_model():
    """Descriptor = mean colour; P(junk) high for a flat image (a zoom into one half: no person)."""
    image = keras.Input((32, 16, 3))
    embedding = keras.layers.GlobalAveragePooling2D(name="embedding")(image)
    # the spatial spread of each colour channel, averaged over the channels
    spread = keras.layers.Lambda(lambda x: keras.ops.mean(keras.ops.std(x, axis=(1, 2)), axis=-1)[:, None])(image)
    junk = keras.layers.Dense(1, activation="sigmoid", name="junk")(spread)
    model = keras.Model(image, {"embedding": embedding, "junk": junk})
    model.get_layer("junk").set_weights([np.array([[-1.0]]), np.array([20.0])])  # std < 20: junk
    return model


def test_a_zoomed_crop_in_the_gallery_is_not_ranked(tmp_path):
    from mtl.data.pipeline import add_junk
    from mtl.reid.protocol import evaluate_labelled

    query = pd.DataFrame([{"path": _two_tone(tmp_path / "q.png", (255, 0, 0), (0, 0, 255)), "identity": 1, "camera": 1}])
    person = _two_tone(tmp_path / "g1.png", (255, 0, 0), (0, 40, 255))  # the same person, another camera
    other = _two_tone(tmp_path / "g2.png", (0, 255, 0), (255, 255, 0))
    # a zoomed-in crop (add_junk, as in training) of another person dressed all in purple
    purple = np.zeros((1, 32, 16, 3), np.float32)
    purple[..., 0] = purple[..., 2] = 128
    crop, _ = add_junk(tf.constant(purple), {JUNK: tf.zeros([1], tf.int32)}, 1.0, tf.constant([5, 6]))
    Image.fromarray(crop.numpy()[0].round().astype(np.uint8)).save(tmp_path / "g3.png")
    gallery = pd.DataFrame([{"path": person, "identity": 1, "camera": 2}, {"path": other, "identity": 2, "camera": 2},
                            {"path": str(tmp_path / "g3.png"), "identity": 0, "camera": 3}])
    model = _stub_model()
    kept = evaluate_labelled(model, [], query, gallery, 32, 16, rerank="no", attributes=False)["reid"]
    assert kept["junk_dropped"] == 1 and kept["num_gallery"] == 2 and kept["plain"]["rank1"] == 1.0
    # with a threshold no image reaches, the crop (the nearest colour) is ranked first: a miss
    everything = evaluate_labelled(model, [], query, gallery, 32, 16, rerank="no", attributes=False,
                                   junk_threshold=1.0)["reid"]
    assert everything["junk_dropped"] == 0 and everything["num_gallery"] == 3 and everything["plain"]["rank1"] == 0.0


# --- a whole run --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def junk_run(synthetic_root, tmp_path_factory):
    from mtl.experiment import train

    out = tmp_path_factory.mktemp("runs") / "junk"
    cfg = tiny_config(synthetic_root, tasks="identity,gender,camera", data={"junk_fraction": 0.25},
                      model={"embedding_dim": 16}, train={"epochs": 1, "batch_size": 16, "steps_per_epoch": 2})
    return out, train(cfg, out, log=None)


@pytest.mark.slow
def test_run_with_camera_and_junk(junk_run, synthetic_root, tmp_path, capsys):
    from mtl.cli import predict
    from mtl.rundir import MODEL, TASKS

    run, metrics = junk_run
    tasks = {t["name"]: t for t in json.loads((run / TASKS).read_text())}
    assert tasks[CAMERA]["kind"] == "categorical" and tasks[JUNK]["kind"] == "binary"
    model = keras.saving.load_model(run / MODEL)
    assert {"camera", "junk", "gender"} <= set(model.output_names)
    assert model.get_layer("camera").output.shape[-1] == len(tasks[CAMERA]["classes"])
    reid = metrics["reid"]
    assert isinstance(reid["junk_dropped"], int) and reid["junk_threshold"] == 0.5
    assert 0 <= reid["junk_dropped"] <= reid["num_gallery"] + reid["junk_dropped"]
    assert "camera" in metrics["tasks"]  # its validation accuracy is reported (the labels are the table's)

    # the deliverables: the count dropped is printed; no column for the auxiliary tasks
    out = tmp_path / "deliverables"
    assert predict.main(["--run", str(run), "--data", str(synthetic_root), "--out", str(out),
                         "--junk-threshold", "1"]) == 0
    printed = capsys.readouterr().out
    assert "junk: 0 of " in printed and "left out of reid_test.txt" in printed
    header = (out / "classification_test.csv").read_text().splitlines()[0].split(",")
    assert "camera" not in header and "junk" not in header
    assert predict.main(["--run", str(run), "--data", str(synthetic_root), "--out", str(out)]) == 0
    assert "predicted junk (P > 0.5)" in capsys.readouterr().out
    with pytest.raises(DataError, match="--junk-threshold"):
        predict.main(["--run", str(run), "--images", str(synthetic_root / "test"), "--junk-threshold", "0.5"])


@pytest.mark.slow
def test_evaluate_a_run_with_auxiliary_tasks(junk_run, capsys):
    from mtl.cli import evaluate

    run, _ = junk_run
    assert evaluate.main(["--run", str(run)]) == 0
    evaluation = json.loads((run / "metrics.json").read_text())["evaluation"]
    assert "junk_dropped" in evaluation["reid"] and evaluation["reid"]["junk_threshold"] == 0.5
    assert "predicted junk (P > 0.5) left out of the ranking" in capsys.readouterr().out
    # a threshold of 1 drops none
    assert evaluate.main(["--run", str(run), "--junk-threshold", "1", "--examples", "0"]) == 0
    evaluation = json.loads((run / "metrics.json").read_text())["evaluation"]
    assert evaluation["reid"]["junk_dropped"] == 0 and evaluation["settings"]["junk_threshold"] == 1.0
    assert "junk: 0 gallery image(s) predicted junk (P > 1)" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"^--junk-threshold must be in \[0, 1\], got 1.5$"):
        evaluate.main(["--run", str(run), "--junk-threshold", "1.5"])


def test_junk_threshold_needs_a_run_with_the_junk_output():
    from mtl.reid.protocol import require_junk_output

    image = keras.Input((8, 4, 3))
    model = keras.Model(image, {"gender": keras.layers.Dense(1, name="gender")(keras.layers.Flatten()(image))})
    with pytest.raises(DataError, match=r"^--junk-threshold: the run runs/x has no junk output"):
        require_junk_output(model, "runs/x")
    require_junk_output(_stub_model(), "runs/x")


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_junk_fraction_out_of_range_is_a_one_line_error(value):
    from mtl.config import build_config

    with pytest.raises(ConfigError, match=rf"^data.junk_fraction={value!r}: must be in \[0, 1\)$"):
        build_config({"data": {"junk_fraction": value}})
    assert build_config({}).data.junk_fraction == 0  # off by default: today's behaviour
