"""mtl-export: each format, run with its own runtime, gives the Keras model's probabilities and
embedding on the same raw uint8 images; model.json records the whole serving contract."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from conftest import TINY_FLAGS, tiny_config

# every test but the last uses the module's trained run (tens of seconds on two shared cores)
TASKS = "age,hat,identity"  # categorical, binary and the identity task (embedding)
TOLERANCE = 1e-4  # float32
# format -> the modules its converter and its runtime need (the ``export`` extra)
NEEDS = {"saved_model": (), "onnx": ("tf2onnx", "onnxruntime"), "litert": ("ai_edge_litert",)}


@pytest.fixture(scope="module")
def run(synthetic_root, tmp_path_factory):
    """One tiny trained run (1 epoch) with categorical, binary and identity tasks."""
    from mtl.config import parse_overrides
    from mtl.experiment import train

    out = tmp_path_factory.mktemp("export") / "run"
    cfg = tiny_config(synthetic_root, parse_overrides(["model.embedding_dim=16"]), tasks=TASKS,
                      train={"epochs": 1, "batch_size": 32})
    argv = ["mtl-train", "--data", str(synthetic_root), "--tasks", TASKS, "--epochs", "1", *TINY_FLAGS,
            "--set", "model.embedding_dim=16", "--out", str(out)]
    train(cfg, out, command=shlex.join(argv), log=None)
    return out


@pytest.fixture(scope="module")
def loaded(run):
    from mtl.runs import load_run

    return load_run(run)


@pytest.fixture(scope="module")
def images(loaded):
    """Real validation images of the run as the serving user has them: uint8 RGB of the run's size."""
    import tensorflow as tf

    from mtl.data.pipeline import decode_image

    cfg = loaded.config
    paths = loaded.split.loc[loaded.split["split"] == "val", "path"].head(6)
    decoded = [decode_image(tf.constant(p), cfg.data.image_height, cfg.data.image_width) for p in paths]
    return np.stack([np.clip(np.round(d.numpy()), 0, 255).astype(np.uint8) for d in decoded])


def keras_reference(loaded, images) -> dict[str, np.ndarray]:
    """What the package's own recipes give for the images: ``class_probabilities`` of each
    attribute output and the L2-normalised embedding (``extract_embeddings``)."""
    from mtl.scoring import class_probabilities
    from mtl.reid.embedding import EMBEDDING, l2_normalize
    from mtl.tasks import IDENTITY

    raw = loaded.model(images.astype(np.float32), training=False)
    out = {t.name: class_probabilities(np.asarray(raw[t.name]), t) for t in loaded.tasks if t.kind != IDENTITY}
    out["embedding"] = l2_normalize(np.array(raw[EMBEDDING]))
    return out


@pytest.mark.slow
def test_the_serving_model_outputs_the_packages_probabilities_and_embedding(loaded, images):
    from mtl.export import max_abs_diff, predict, serving_model

    cfg = loaded.config
    serving = serving_model(loaded.model, loaded.tasks, cfg.data.image_height, cfg.data.image_width)
    assert serving.input.dtype == "uint8"
    assert sorted(serving.output_names) == ["age", "embedding", "hat"]  # no identity classifier
    got = predict(serving, images)
    assert got["hat"].shape == (len(images), 2) and got["age"].shape == (len(images), 4)
    np.testing.assert_allclose(got["hat"].sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got["embedding"], axis=1), 1, atol=1e-5)
    assert max(max_abs_diff(keras_reference(loaded, images), got).values()) <= 1e-6


@pytest.mark.parametrize("fmt", ["saved_model", "onnx", "litert"])
@pytest.mark.slow
def test_each_format_matches_the_keras_model_with_its_own_runtime(fmt, run, loaded, images, tmp_path):
    for module in NEEDS[fmt]:
        pytest.importorskip(module, reason=f"{fmt} needs {module} (pip install 'mtl-keras[export]')")
    from mtl.export import export_run, load_exported, max_abs_diff
    from mtl.rundir import EXPORT_FILES, MODEL_JSON

    result = export_run(run, fmt, tmp_path / fmt, check_images=4, log=None)
    assert result.artifact == tmp_path / fmt / EXPORT_FILES[fmt] and result.artifact.exists()
    assert not [p for p in (tmp_path / fmt).iterdir() if p.name.startswith(".tmp")]  # nothing staged is left
    diffs = max_abs_diff(keras_reference(loaded, images), load_exported(result.artifact, fmt)(images))
    print(f"\n{fmt}: {result.size_bytes / 1e6:.3f} MB, max abs diff vs Keras: {diffs}")
    assert max(diffs.values()) <= TOLERANCE, diffs

    serving = json.loads((tmp_path / fmt / MODEL_JSON).read_text())["serving"]
    cfg = loaded.config
    assert serving["input"]["dtype"] == "uint8" and serving["input"]["channel_order"] == "RGB"
    assert serving["input"]["value_range"] == [0, 255]
    assert serving["input"]["size"] == [cfg.data.image_height, cfg.data.image_width]
    tasks = {t.name: t for t in loaded.tasks if t.name != "identity"}
    assert serving["output_names"] == [*tasks, "embedding"]  # the run's task order
    for name in ("age", "hat"):
        assert serving["outputs"][name]["classes"] == list(tasks[name].classes)
        assert serving["outputs"][name]["shape"] == [None, tasks[name].num_classes]
    assert serving["outputs"]["embedding"]["shape"] == [None, 16] and serving["outputs"]["embedding"]["l2_normalized"]
    assert serving["size_bytes"] == result.size_bytes
    assert max(serving["parity"]["max_abs_diff"].values()) <= TOLERANCE


@pytest.mark.slow
def test_the_saved_model_resizes_other_sizes_as_the_training_pipeline_does(run, loaded, tmp_path):
    import tensorflow as tf

    from mtl.export import export_run, load_exported, max_abs_diff

    result = export_run(run, "saved_model", tmp_path / "sm", check_images=0, log=None)
    assert result.info.serving["input"]["shape"] == [None, None, None, 3]
    big = np.random.default_rng(1).integers(0, 256, (3, 70, 30, 3), dtype=np.uint8)
    cfg = loaded.config
    resized = tf.image.resize(big.astype(np.float32), (cfg.data.image_height, cfg.data.image_width),
                              antialias=True).numpy()  # mtl.data.pipeline.decode_image's resize
    diffs = max_abs_diff(keras_reference_float(loaded, resized), load_exported(result.artifact, "saved_model")(big))
    assert max(diffs.values()) <= TOLERANCE, diffs


def keras_reference_float(loaded, images):
    from mtl.scoring import class_probabilities
    from mtl.reid.embedding import EMBEDDING, l2_normalize
    from mtl.tasks import IDENTITY

    raw = loaded.model(images, training=False)
    return {**{t.name: class_probabilities(np.asarray(raw[t.name]), t) for t in loaded.tasks if t.kind != IDENTITY},
            "embedding": l2_normalize(np.array(raw[EMBEDDING]))}


@pytest.mark.slow
def test_the_runs_model_json_records_class_names_and_preprocessing(run, loaded):
    from mtl.rundir import ModelInfo, RunDir, MODEL_JSON

    info = ModelInfo.from_dict(RunDir(run).read_json(MODEL_JSON))
    assert info.classes == {t.name: list(t.classes) for t in loaded.tasks}
    assert "antialias" in info.preprocessing["resize"] and info.serving is None


@pytest.mark.slow
def test_the_command_writes_into_the_run_and_refuses_to_replace_an_export(run, capsys):
    from mtl.cli.export import main
    from mtl.errors import MtlError
    from mtl.rundir import EXPORT, MODEL_JSON

    assert main(["--run", str(run), "--format", "saved_model", "--check", "2"]) == 0
    folder = run / EXPORT / "saved_model"
    assert (folder / "saved_model" / "saved_model.pb").is_file() and (folder / MODEL_JSON).is_file()
    assert "max abs diff" in capsys.readouterr().out
    with pytest.raises(MtlError, match="--overwrite"):
        main(["--run", str(run), "--format", "saved_model"])
    assert main(["--run", str(run), "--format", "saved_model", "--overwrite", "--check", "0"]) == 0


@pytest.mark.slow
def test_bad_formats_and_missing_packages_are_one_line_errors(run):
    from mtl.cli.export import main
    from mtl.errors import ConfigError, MtlError
    from mtl.export import require

    with pytest.raises(ConfigError, match="valid: saved_model, litert, onnx"):
        main(["--run", str(run), "--format", "tflite"])
    with pytest.raises(MtlError, match=r"pip install 'mtl-keras\[export\]'"):
        require("no_such_converter_module", "onnx", "export")


def test_the_checkout_wrapper_runs_the_command():
    import runpy

    from conftest import REPO

    module = runpy.run_path(str(REPO / "scripts" / "export.py"), run_name="not_main")
    from mtl.cli.export import entry

    assert module["entry"] is entry
