"""Person-mask input channel: the offline mask writer, the pipeline's 4th
channel and the model's MaskFusion layer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mtl.data import masks
from mtl.errors import DataError


def _write_images(root, n=6, size=(32, 16)):
    """``n`` random RGB images under root/a/, and as mask the red channel (so a test can tell that
    the mask moved with its pixels)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        path = root / "data" / "a" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path.with_suffix(".png"))  # lossless: the test compares pixels
        paths.append(str(path.with_suffix(".png")))
        mask = masks.mask_path(path, root / "data", root / "masks")
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[..., 0]).save(mask)
    return paths


def test_mask_path_layout_and_missing(tmp_path):
    assert masks.mask_path(tmp_path / "d" / "x" / "1.jpg", tmp_path / "d", tmp_path / "m") == tmp_path / "m/x/1.png"
    with pytest.raises(DataError, match="not under the data folder"):
        masks.mask_path(tmp_path / "elsewhere.jpg", tmp_path / "d", tmp_path / "m")
    with pytest.raises(DataError, match=r"data.person_mask: 1 of 1 mask\(s\) missing.*mtl-masks"):
        masks.mask_paths([tmp_path / "d" / "1.jpg"], tmp_path / "d", tmp_path / "m")


def test_find_model_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setattr(masks, "MODEL_PACKAGE", "no_such_package_mtl")
    with pytest.raises(DataError, match="not installed.*pip install --no-deps 'mediapipe==0.10.21'"):
        masks.find_model()
    with pytest.raises(DataError, match="model file not found"):
        masks.find_model(tmp_path / "none.tflite")


def _fake_pose_model(path):
    """A .tflite with the pose model's interface (256x256x3 in; landmarks and a 256x256x1 logit map
    out) whose map is "person" where the red channel is bright: the writer's letterbox, output
    choice, sigmoid and crop are then checkable without the real model."""
    import keras
    import tensorflow as tf

    image = keras.Input((256, 256, 3), batch_size=1)
    logits = keras.layers.Lambda(lambda x: (x[..., :1] - 0.5) * 100.0)(image)
    landmarks = keras.layers.Dense(5)(keras.layers.Flatten()(keras.layers.AveragePooling2D(64)(image)))
    model = keras.Model(image, [landmarks, logits])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    path.write_bytes(converter.convert())
    return path


@pytest.mark.slow  # TFLite conversion / a trunk build, train and reload
def test_write_masks_with_a_pose_like_model(tmp_path):
    model = _fake_pose_model(tmp_path / "pose.tflite")
    pixels = np.zeros((32, 16, 3), np.uint8)
    pixels[8:24, 4:12, 0] = 255  # the "person": a bright red box
    (tmp_path / "data" / "x").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "data" / "x" / "p.png")
    (tmp_path / "data" / "x" / "broken.jpg").write_bytes(b"not an image")
    counts = masks.write_masks(tmp_path / "data", tmp_path / "masks", model)
    assert counts == {"written": 1, "skipped": 0, "unreadable": 1}
    mask = np.asarray(Image.open(tmp_path / "masks" / "x" / "p.png"))
    assert mask.shape == (32, 16) and mask.dtype == np.uint8
    assert mask[12:20, 6:10].min() > 200 and mask[:4].max() < 50 and mask[:, :2].max() < 50
    # a second run keeps what exists (resume)
    assert masks.write_masks(tmp_path / "data", tmp_path / "masks", model)["skipped"] == 1


def test_pipeline_mask_channel_follows_flip_and_crop_not_colour(tmp_path):
    from mtl.data.pipeline import augment_batch, make_dataset

    paths = _write_images(tmp_path)
    mask_files = masks.mask_paths(paths, tmp_path / "data", tmp_path / "masks")
    plain = next(iter(make_dataset(paths, None, 32, 16, batch_size=6, mask_paths=mask_files))).numpy()
    assert plain.shape == (6, 32, 16, 4)
    np.testing.assert_array_equal(plain[..., 3], plain[..., 0])  # the mask is the red channel, unchanged
    augmented = next(iter(make_dataset(paths, {"t": np.zeros(6, np.int32)}, 32, 16, batch_size=6, training=True,
                                       augment={"flip": True, "pad_crop": 4, "color_jitter": 0.0,
                                                "random_erasing": 0.0}, mask_paths=mask_files)))[0].numpy()
    np.testing.assert_array_equal(augmented[..., 3], augmented[..., 0])  # moved with its pixels
    # colour jitter and erasing change RGB only
    jittered = augment_batch(plain, 32, 16, flip=False, pad_crop=0, color_jitter=0.5, random_erasing=1.0,
                             seed=np.array([1, 2], np.int32)).numpy()
    np.testing.assert_array_equal(jittered[..., 3], plain[..., 3])
    assert not np.array_equal(jittered[..., :3], plain[..., :3])


@pytest.mark.slow  # TFLite conversion / a trunk build, train and reload
def test_model_with_mask_starts_as_rgb_trains_and_reloads(tmp_path):
    import keras

    from mtl.data.pipeline import make_dataset
    from mtl.models.builder import build_model
    from mtl.tasks import TaskSpec

    tasks = [TaskSpec("color", ("red", "blue", "green"))]
    kwargs = dict(trunk="resnet_small", width=0.25, head="private", private_multipliers=(2,))
    keras.utils.set_random_seed(0)
    rgb_model = build_model(tasks, input_shape=(32, 16, 3), **kwargs)
    keras.utils.set_random_seed(0)
    model = build_model(tasks, input_shape=(32, 16, 4), **kwargs)
    assert model.input_shape == (None, 32, 16, 4)
    fusion = model.get_layer("mask_fusion")
    np.testing.assert_array_equal(fusion.kernel.numpy(), np.vstack([np.eye(3), np.zeros((1, 3))]))
    # the RGB path is unchanged at first: same trunk weights give the same outputs whatever the mask
    rgb_model.set_weights(model.get_weights()[2:])  # the fusion kernel and bias come first
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 16, 4)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0)["color"], rgb_model.predict(x[..., :3], verbose=0)["color"],
                               atol=1e-5)

    paths = _write_images(tmp_path)
    mask_files = masks.mask_paths(paths, tmp_path / "data", tmp_path / "masks")
    ds = make_dataset(paths, {"color": np.arange(6, dtype=np.int32) % 3}, 32, 16, batch_size=6, training=True,
                      augment={"flip": True, "pad_crop": 2}, mask_paths=mask_files)
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss={"color": "sparse_categorical_crossentropy"})
    model.fit(ds, epochs=1, verbose=0)
    assert not np.allclose(fusion.kernel.numpy()[3], 0.0)  # the mask's weights learned
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert type(loaded.get_layer("mask_fusion")).__name__ == "MaskFusion"
    np.testing.assert_allclose(loaded.predict(x, verbose=0)["color"], model.predict(x, verbose=0)["color"], atol=1e-5)


# --- the option end to end: config -> training -> model.keras -> evaluate / predict / export -------------------

class _BrightIsPerson:
    """A stand-in segmenter (the real model is an optional install): 255 where the image is bright."""

    def __init__(self, model, threads=1):
        pass

    def __call__(self, image):
        return np.where(image.mean(axis=-1) > 96, 255, 0).astype(np.uint8)


def test_person_mask_config_key():
    from mtl.config import build_config
    from mtl.errors import ConfigError
    from mtl.experiment import input_channels, model_kwargs

    assert build_config().data.person_mask is None and model_kwargs(build_config())["input_shape"][-1] == 3
    cfg = build_config({"data": {"person_mask": "masks/"}})
    assert input_channels(cfg) == 4 and model_kwargs(cfg)["input_shape"] == (128, 64, 4)
    with pytest.raises(ConfigError, match="data.person_mask"):
        build_config({"data": {"person_mask": " "}})


@pytest.fixture(scope="module")
def person_masks(synthetic_root, tmp_path_factory):
    """``(folder, counts)``: the masks of the synthetic data, written by the stand-in segmenter."""
    folder = tmp_path_factory.mktemp("masks") / "m"
    mp = pytest.MonkeyPatch()
    mp.setattr(masks, "PersonSegmenter", _BrightIsPerson)
    mp.setattr(masks, "find_model", lambda path=None: path)
    try:
        counts = masks.write_masks(synthetic_root, folder)
    finally:
        mp.undo()
    return folder, counts


def _mask_config(synthetic_root, folder):
    """A tiny identity + gender config whose model takes the person mask as a 4th channel."""
    from conftest import tiny_config

    return tiny_config(synthetic_root, {"data": {"person_mask": str(folder)}}, tasks="identity,gender",
                       model={"embedding_dim": 16}, train={"epochs": 1, "batch_size": 16, "steps_per_epoch": 2})


@pytest.fixture(scope="module")
def mask_run(person_masks, synthetic_root, tmp_path_factory):
    from mtl.experiment import train

    folder, counts = person_masks
    out = tmp_path_factory.mktemp("runs") / "mask"
    return out, folder, counts, train(_mask_config(synthetic_root, folder), out, log=None)


@pytest.mark.slow  # a whole run: train (P x K batches with masks), evaluate, predict
def test_run_with_person_mask_trains_reloads_and_evaluates(mask_run, synthetic_root, tmp_path):
    import json

    import keras

    from mtl.cli import evaluate, export, predict
    from mtl.errors import ConfigError
    from mtl.inference import extract_features
    from mtl.rundir import MODEL, MODEL_JSON

    run, folder, counts, metrics = mask_run
    assert counts["written"] > 0 and counts["unreadable"] == 0
    # the held-out evaluation of train ran on 4-channel inputs
    assert "gender" in metrics["tasks"] and "mAP" in json.dumps(metrics["reid"])
    info = json.loads((run / MODEL_JSON).read_text())
    assert info["input_shape"] == [32, 16, 4] and "person_mask" in info["preprocessing"]
    model = keras.saving.load_model(run / MODEL)
    assert model.input_shape == (None, 32, 16, 4)
    assert type(model.get_layer("mask_fusion")).__name__ == "MaskFusion"
    image = next(iter(sorted((synthetic_root / "test").glob("*.jpg"))))
    with pytest.raises(DataError, match="person mask as a 4th input channel"):
        extract_features(model, [image], 32, 16)
    with_mask = extract_features(model, [image], 32, 16, masks=masks.MaskFolder(str(synthetic_root), str(folder)))
    assert with_mask["gender"].shape[0] == 1

    assert evaluate.main(["--run", str(run)]) == 0
    assert "reid" in json.loads((run / "metrics.json").read_text())["evaluation"]
    with pytest.raises(DataError, match=r"mask\(s\) missing.*mtl-masks"):
        evaluate.main(["--run", str(run), "--masks", str(tmp_path / "none")])

    out = tmp_path / "deliverables"
    assert predict.main(["--run", str(run), "--data", str(synthetic_root), "--out", str(out)]) == 0
    assert (out / "reid_test.txt").is_file() and (out / "classification_test.csv").is_file()
    with pytest.raises(DataError, match="--images: .*person mask"):
        predict.main(["--run", str(run), "--images", str(synthetic_root / "test"), "--out", str(tmp_path / "p")])
    with pytest.raises(ConfigError, match="RGB models only"):
        export.main(["--run", str(run), "--format", "saved_model", "--out", str(tmp_path / "e")])


def test_real_pose_model_when_installed(synthetic_root, tmp_path):
    """The shipped model (mediapipe 0.10.21's .tflite, an optional install) writes a mask per image."""
    try:
        model = masks.find_model()
        masks._interpreter_class()
    except DataError as exc:
        pytest.skip(f"person-mask model not installed: {exc}")
    images = sorted((synthetic_root / "test").glob("*.jpg"))[:2]
    assert masks.write_masks(synthetic_root, tmp_path / "m", model, images=images)["written"] == 2
    for image in images:
        mask = np.asarray(Image.open(masks.mask_path(image, synthetic_root, tmp_path / "m")))
        assert mask.shape == np.asarray(Image.open(image)).shape[:2] and mask.dtype == np.uint8


@pytest.mark.slow  # one tuning trial: build, train, evaluate
def test_a_tuning_trial_evaluates_a_mask_model_with_its_masks(person_masks, synthetic_root):
    import keras_tuner

    from mtl.experiment import prepare
    from mtl.tuning import MtlHyperModel, resolve_objective

    cfg = _mask_config(synthetic_root, person_masks[0])
    data = prepare(cfg)
    hypermodel = MtlHyperModel(cfg, data, resolve_objective("reid_mAP", data.tasks), patience=1, verbose=0)
    hp = keras_tuner.HyperParameters()
    # the held-out re-identification of the trial feeds the 4-channel model its masks, as training's does
    results = hypermodel.fit(hp, hypermodel.build(hp))
    assert 0 <= results["reid_mAP"] <= 1 and 0 <= results["reid_rank1"] <= 1
    assert 0 <= results["mean_accuracy"] <= 1  # the attribute evaluation, with the masks too
