"""The identity head and its embedding sub-model: outputs, shared layers, batched extraction, reload."""

import keras
import numpy as np
import pytest

from tests.fixtures_images import write_jpeg
from mtl.models.builder import build_model, load_model
from mtl.reid.embedding import (embedding_layer_name, embedding_model, extract_embeddings, extract_features,
                                feature_model)
from mtl.reid.heads import embedding_labels, identity_labels, identity_task, identity_targets
from mtl.tasks import TaskSpec
from mtl.engine import compile_losses as compile_model
from mtl.optim import make_optimizer

SMALL = {"input_shape": (32, 16, 3), "width": 0.25}
IDENTITY = TaskSpec("identity", ("3", "8", "12", "40"), "identity")
HAT = TaskSpec("hat", ("no", "yes"), "binary")


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 32, 16, 3)).astype(np.float32)


def test_identity_head_outputs_and_neck():
    model = build_model([HAT, IDENTITY], embedding_dim=24, **SMALL)
    out = model(_images(3), training=False)
    assert set(out) == {"hat", "identity", "embedding"}
    assert out["embedding"].shape == (3, 24) and out["identity"].shape == (3, 4)
    assert np.allclose(np.asarray(out["identity"]).sum(1), 1, atol=1e-5)
    neck = model.get_layer("embedding")
    assert isinstance(neck, keras.layers.BatchNormalization) and not neck.center and neck.dtype == "float32"
    assert not model.get_layer("identity").use_bias and not model.get_layer("embedding_dense").use_bias
    with_center = build_model([IDENTITY], embedding_dim=24, center_loss=True, **SMALL)
    assert with_center(_images(2))["center"].shape == (2, 4)
    # embedding_dim <= 0: the neck sits on the pooled features directly
    direct = build_model([IDENTITY], embedding_dim=0, **SMALL)
    assert "embedding_dense" not in [layer.name for layer in direct.layers]
    assert direct.get_layer("embedding").output.shape[-1] == direct.get_layer("pool").output.shape[-1]


def test_embedding_model_shares_the_trained_layers():
    model = build_model([HAT, IDENTITY], embedding_dim=16, **SMALL)
    sub = embedding_model(model)
    x = _images(4, seed=1)
    np.testing.assert_allclose(sub.predict(x, verbose=0), model.predict(x, verbose=0)["embedding"], rtol=1e-5,
                               atol=1e-5)
    # same variables, not copies: changing the model changes the sub-model
    kernel = model.get_layer("embedding_dense").kernel
    kernel.assign(kernel * 2.0)
    np.testing.assert_allclose(sub.predict(x, verbose=0), model.predict(x, verbose=0)["embedding"], rtol=1e-5,
                               atol=1e-5)
    # without the identity head the descriptor is the pooled trunk output
    attributes_only = build_model([HAT], **SMALL)
    assert embedding_layer_name(attributes_only) == "pool"
    assert embedding_model(attributes_only).output.shape[-1] == attributes_only.get_layer("pool").output.shape[-1]


def test_extraction_is_batched_ordered_and_normalised(tmp_path):
    model = build_model([HAT, IDENTITY], embedding_dim=16, **SMALL)
    colours = [(10 * i, 200 - 15 * i, 50 + 7 * i) for i in range(11)]
    paths = [str(write_jpeg(tmp_path / f"{i}.jpg", size=(16, 32), color=c)) for i, c in enumerate(colours)]
    whole = extract_embeddings(model, paths, 32, 16, batch_size=64, normalize=False)
    batched = extract_embeddings(model, paths, 32, 16, batch_size=4, normalize=False)
    assert whole.shape == (11, 16) and whole.dtype == np.float32
    np.testing.assert_allclose(batched, whole, rtol=1e-4, atol=1e-5)
    unit = extract_embeddings(model, paths, 32, 16, batch_size=4)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(unit, whole / np.linalg.norm(whole, axis=1, keepdims=True), rtol=1e-4, atol=1e-5)
    outputs = extract_features(feature_model(model, ["embedding", "hat"]), paths, 32, 16, batch_size=3)
    assert outputs["embedding"].shape == (11, 16) and outputs["hat"].shape == (11, 1)
    np.testing.assert_allclose(outputs["embedding"], whole, rtol=1e-4, atol=1e-5)


def test_identity_labels_and_targets():
    spec = identity_task([40, 3, 3, 12, -1, 8])
    assert spec.classes == ("3", "8", "12", "40") and spec.kind == "identity"
    ids = np.array([12, 3, 99, -1, 40, 77, 99])
    np.testing.assert_array_equal(identity_labels(ids, spec), [2, 0, -1, -1, 3, -1, -1])
    # other known people get their own codes above the classes (for the validation triplet loss)
    np.testing.assert_array_equal(embedding_labels(ids, spec), [2, 0, 5, -1, 3, 4, 5])
    targets = identity_targets(ids, spec, center_loss=True)
    assert set(targets) == {"identity", "embedding", "center"}
    np.testing.assert_array_equal(targets["center"], targets["identity"])


def test_model_with_identity_head_saves_and_reloads(tmp_path):
    model = build_model([HAT, IDENTITY], embedding_dim=8, center_loss=True, **SMALL)
    compile_model(model, [HAT, IDENTITY], make_optimizer("adam", 1e-3),
                  identity_options={"triplet_margin": None, "center_loss": 1e-3})
    x = _images(8, seed=2)
    y = {"hat": np.array([0, 1] * 4), "identity": np.array([0, 0, 1, 1, 2, 2, 3, 3]),
         "embedding": np.array([0, 0, 1, 1, 2, 2, 3, 3]), "center": np.array([0, 0, 1, 1, 2, 2, 3, 3])}
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["embedding_loss"] > 0
    model.save(tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras")
    a, b = model.predict(x, verbose=0), again.predict(x, verbose=0)
    assert set(a) == set(b) == {"hat", "identity", "embedding", "center"}
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(embedding_model(again).predict(x, verbose=0), a["embedding"], rtol=1e-4, atol=1e-5)


def test_extraction_of_an_unreadable_image_is_a_clear_error(tmp_path):
    from mtl.errors import DataError

    model = build_model([IDENTITY], embedding_dim=8, **SMALL)
    good = str(write_jpeg(tmp_path / "a.jpg", size=(16, 32)))
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot decode"):
        extract_embeddings(model, [good, str(bad)], 32, 16, batch_size=2)


def test_l2_normalize_accepts_read_only_arrays():
    from mtl.reid.embedding import l2_normalize

    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    x.flags.writeable = False  # what np.asarray gives for a TensorFlow tensor
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    np.testing.assert_allclose(x, [[3.0, 4.0], [0.0, 0.0]])
