"""mtl-predict on any images (--images) and the course deliverables from a folder with only test/ and queries/."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import tiny_config
from mtl.cli import predict
from mtl.errors import DataError, WriteError
from tests.fixtures_images import write_jpeg, write_tf_unreadable
from tests.source_folders import RUN_ROWS, write_fashion


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def pedestrian_run(synthetic_root, tmp_path_factory) -> Path:
    """A tiny 1-epoch pedestrian run with an attribute (age) and the identity task."""
    from mtl.experiment import train

    out = tmp_path_factory.mktemp("predict") / "pedestrian"
    cfg = tiny_config(synthetic_root, tasks="age,identity", model={"embedding_dim": 16},
                      train={"epochs": 1, "batch_size": 32})
    train(cfg, out, command="test", log=None)
    return out


@pytest.fixture(scope="module")
def product_run(tmp_path_factory) -> Path:
    """A tiny 1-epoch product run (articleType, gender) on a fashion folder; no identity task."""
    from mtl.experiment import train

    base = tmp_path_factory.mktemp("products")
    data = write_fashion(base / "data", RUN_ROWS)
    cfg = tiny_config(data, data={"format": "fashion", "rare_threshold": 0.1}, tasks="articleType,gender",
                      train={"epochs": 1, "batch_size": 8})
    train(cfg, base / "run", command="test", log=None)
    return base / "run"


@pytest.fixture
def photos(synthetic_root, tmp_path) -> tuple[Path, list[str]]:
    """A plain folder of JPEGs, nested, with a TIFF named .jpg, a hidden file and a non-image.

    Returns:
        The folder, and the images that decode in the order the folder is listed.
    """
    test = sorted((synthetic_root / "test").iterdir())
    root = tmp_path / "photos"
    layout = {"a.jpg": test[0], "b.JPEG": test[1], "sub/c.jpg": test[2], "sub/deeper/d.png": None,
              "z/e.jpg": test[3]}
    for name, src in layout.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if src is None:
            Image.new("RGB", (16, 32), (10, 200, 30)).save(root / name)  # a PNG
        else:
            shutil.copy(src, root / name)
    write_tf_unreadable(root / "sub" / "broken.jpg")  # a TIFF under a .jpg name: skipped and named
    write_jpeg(root / "sub" / ".hidden.jpg")  # hidden: not listed
    (root / "notes.txt").write_text("not an image\n")  # inside a folder, a .txt is not a list
    good = [root / "a.jpg", root / "b.JPEG", root / "sub" / "c.jpg", root / "sub" / "deeper" / "d.png",
            root / "z" / "e.jpg"]
    return root, [str(p) for p in good]


def model_outputs(run: Path, paths, layers):
    """The run's own model on the images, through extract_features (the reference)."""
    from mtl.inference import extract_features
    from mtl.reid.embedding import feature_model
    from mtl.runs import load_run

    loaded = load_run(run)
    cfg = loaded.config
    return extract_features(feature_model(loaded.model, layers), paths, cfg.data.image_height, cfg.data.image_width)


@pytest.mark.slow  # a tiny training per module (tens of seconds on a shared CPU)
def test_plain_folder_of_jpegs(pedestrian_run, photos, tmp_path, capsys):
    from mtl.data.sources.market_course import AGE_CLASSES
    from mtl.reid.embedding import l2_normalize

    root, good = photos
    out = tmp_path / "out"
    assert predict.main(["--run", str(pedestrian_run), "--images", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "predictions.csv")
    assert list(table.columns) == ["path", "age", "age_prob"]
    assert list(table["path"]) == good  # recursive, sorted, the broken one, the hidden one and the .txt left out
    assert set(table["age"]) <= set(AGE_CLASSES)
    skipped = pd.read_csv(out / "skipped_images.csv")
    assert list(skipped["path"]) == [str(root / "sub" / "broken.jpg")] and skipped["reason"].str.len().min() > 0
    assert "skipped 1 of 6 image(s)" in printed and "broken.jpg" in printed

    # the same as the model's own outputs on the same images
    reference = model_outputs(pedestrian_run, good, ["age", "embedding"])
    np.testing.assert_array_equal(table["age"], np.asarray(AGE_CLASSES)[reference["age"].argmax(1)])
    np.testing.assert_allclose(table["age_prob"], reference["age"].max(1), rtol=1e-5)
    embeddings = np.load(out / "embeddings.npy")
    assert embeddings.dtype == np.float32 and embeddings.shape == (len(good), 16)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(embeddings, l2_normalize(reference["embedding"]), atol=1e-6)


@pytest.mark.slow  # a tiny training per module (tens of seconds on a shared CPU)
def test_text_file_of_paths_keeps_its_order(pedestrian_run, photos, tmp_path):
    root, good = photos
    listing = root / "lists" / "some.txt"
    listing.parent.mkdir()
    # relative to the list's folder, absolute, a comment, a blank line, a missing file and a repeat
    listing.write_text(f"# chosen images\n../z/e.jpg\n\n{good[0]}\n../missing.jpg\n../sub/c.jpg\n../z/e.jpg\n")
    out = tmp_path / "out"
    assert predict.main(["--run", str(pedestrian_run), "--images", str(listing), str(good[1]), "--out", str(out)]) == 0
    table = pd.read_csv(out / "predictions.csv")
    assert [Path(p).resolve() for p in table["path"]] == [Path(good[i]).resolve() for i in (4, 0, 2, 1)]
    skipped = pd.read_csv(out / "skipped_images.csv")
    assert [Path(p).name for p in skipped["path"]] == ["missing.jpg"]
    assert "NotFound" in skipped.loc[0, "reason"]
    assert np.load(out / "embeddings.npy").shape == (4, 16)


@pytest.mark.slow  # a tiny training per module (tens of seconds on a shared CPU)
def test_product_run_with_probabilities(product_run, tmp_path):
    from mtl.runs import load_run

    tasks = {t.name: t for t in load_run(product_run, model=False).tasks}  # in the run's output order
    images = sorted(str(p) for p in (Path(load_run(product_run, model=False).data["root"]) / "images").iterdir())
    out = tmp_path / "out"
    assert predict.main(["--run", str(product_run), "--images", *images[:7], "--out", str(out),
                         "--probabilities", "--batch-size", "3"]) == 0
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    expected = ["path"]
    for name in tasks:
        expected += [name, f"{name}_prob"] + [f"{name}={c}" for c in tasks[name].classes]
    assert list(table.columns) == expected and len(table) == 7
    assert not (out / "embeddings.npy").exists() and not (out / "skipped_images.csv").exists()
    reference = model_outputs(product_run, images[:7], ["articleType", "gender"])
    for name, spec in tasks.items():
        probs = table[[f"{name}={c}" for c in spec.classes]].to_numpy()
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)  # 6 significant digits per column
        assert list(table[name]) == [spec.classes[i] for i in probs.argmax(1)]
        np.testing.assert_allclose(table[f"{name}_prob"], probs.max(1))
        ref = reference[name] if spec.kind == "categorical" else np.c_[1 - reference[name], reference[name]]
        np.testing.assert_allclose(probs, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # a tiny training per module (tens of seconds on a shared CPU)
def test_chunks_give_the_rows_of_one_chunk(pedestrian_run, photos, tmp_path):
    from mtl.predictions import predict_images
    from mtl.runs import load_run

    root, good = photos
    loaded = load_run(pedestrian_run)
    h, w = loaded.config.data.image_height, loaded.config.data.image_width
    paths = good[:2] + [str(root / "sub" / "broken.jpg")] + good[2:] + good[:3]  # repeats are allowed here
    whole = predict_images(loaded.model, loaded.tasks, paths, h, w, tmp_path / "whole", batch_size=4,
                           probabilities=True, log=None)
    chunked = predict_images(loaded.model, loaded.tasks, paths, h, w, tmp_path / "chunked", batch_size=2,
                             probabilities=True, chunk_size=3, log=None)
    assert whole.rows == chunked.rows == len(paths) - 1
    one, many = pd.read_csv(whole.csv), pd.read_csv(chunked.csv)
    assert list(one.columns) == list(many.columns)
    assert one[["path", "age"]].equals(many[["path", "age"]])
    # other batch compositions: float rounding of the convolutions may differ in the last digit
    np.testing.assert_allclose(one.drop(columns=["path", "age"]), many.drop(columns=["path", "age"]), atol=1e-5)
    np.testing.assert_allclose(np.load(whole.embeddings), np.load(chunked.embeddings), atol=1e-6)
    assert list(chunked.skipped["path"]) == [paths[2]]
    # a later prediction into the same folder with nothing skipped removes the stale list
    again = predict_images(loaded.model, loaded.tasks, good, h, w, tmp_path / "chunked", log=None)
    assert again.skipped_csv is None and not (tmp_path / "chunked" / "skipped_images.csv").exists()
    assert np.load(again.embeddings).shape == (len(good), 16)


@pytest.mark.slow  # a tiny training per module (tens of seconds on a shared CPU)
def test_deliverables_need_only_test_and_queries(pedestrian_run, synthetic_root, tmp_path, capsys):
    from mtl.deliverables import read_reid_txt

    data = tmp_path / "course"
    for folder in ("test", "queries"):
        shutil.copytree(synthetic_root / folder, data / folder)
    write_tf_unreadable(data / "test" / "999999.jpg")  # graders expect a row for it too
    out = tmp_path / "out"
    assert predict.main(["--run", str(pedestrian_run), "--data", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    test_names = sorted(p.name for p in (data / "test").iterdir())
    table = pd.read_csv(out / "classification_test.csv", dtype={"file_name": str})
    assert list(table.columns) == ["file_name", "age"] and list(table["file_name"]) == test_names
    assert table["age"].isin([1, 2, 3, 4]).all()
    # the undecodable image gets the class predicted most often over the other test/ images
    others = table[table["file_name"] != "999999.jpg"]["age"]
    assert table.loc[table["file_name"] == "999999.jpg", "age"].item() == others.value_counts().sort_index().idxmax()
    assert "most often" in printed and "999999.jpg" in printed
    ranked = read_reid_txt(out / "reid_test.txt")
    assert list(ranked) == sorted(p.name for p in (data / "queries").iterdir())
    assert all(sorted(names) == [n for n in test_names if n != "999999.jpg"] for names in ranked.values())


@pytest.mark.slow  # a tiny training per module (tens of seconds on a shared CPU)
def test_write_deliverables_returns_the_files_and_tells_log(pedestrian_run, synthetic_root, tmp_path, capsys):
    from mtl.deliverables import CLASSIFICATION_FILE, REID_FILE, read_reid_txt, write_deliverables

    lines = []
    out = tmp_path / "out"
    assert write_deliverables(pedestrian_run, synthetic_root, out, top=3, log=lines.append) == [
        out / CLASSIFICATION_FILE, out / REID_FILE]
    assert capsys.readouterr().out == ""  # the library prints nothing itself: every line goes to log
    assert lines[-1].startswith(f"written: {out / REID_FILE} (") and "x top 3" in lines[-1]
    assert {len(names) for names in read_reid_txt(out / REID_FILE).values()} == {3}


@pytest.mark.slow  # a tiny training per module (tens of seconds on a shared CPU)
def test_a_folder_without_test_is_one_clear_error(pedestrian_run, photos, tmp_path):
    root, _ = photos
    with pytest.raises(DataError, match=r"no test/ folder.*--images"):
        predict.main(["--run", str(pedestrian_run), "--data", str(root), "--out", str(tmp_path / "out")])


def test_the_source_reads_test_and_queries_without_train(synthetic_root, tmp_path):
    from mtl.data.sources import market_course

    data = tmp_path / "course"
    shutil.copytree(synthetic_root / "test", data / "test")
    source = market_course.load(data, train=False)
    assert set(source.table["subset"]) == {"test"} and len(source.table) == 16
    assert (source.table[list(source.tasks)] == -1).all().all()
    with pytest.raises(DataError, match="folder not found: .*train"):
        market_course.load(data)
    with pytest.raises(DataError, match=r"folder not found: .*test"):
        market_course.load(tmp_path / "empty", train=False)


@pytest.mark.slow  # a tiny training per module (tens of seconds on a shared CPU)
def test_bad_input_fails_before_the_model_is_loaded(pedestrian_run, photos, tmp_path, monkeypatch):
    from mtl.models import builder

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(builder, "load_model", no_model)
    root, good = photos
    run = str(pedestrian_run)
    (tmp_path / "file").write_text("")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(WriteError, match="file"):
        predict.main(["--run", run, "--images", good[0], "--out", str(tmp_path / "file" / "out")])
    with pytest.raises(DataError, match="image path not found: .*nope.jpg"):
        predict.main(["--run", run, "--images", good[0], str(tmp_path / "nope.jpg")])
    with pytest.raises(DataError, match="no images found"):
        predict.main(["--run", run, "--images", str(tmp_path / "empty.txt")])
    with pytest.raises(DataError, match="--top.*only for the course deliverables"):
        predict.main(["--run", run, "--images", good[0], "--top", "5"])
    with pytest.raises(DataError, match="--probabilities goes with --images"):
        predict.main(["--run", run, "--probabilities"])


def test_help_shows_both_uses(capsys):
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--images", "--probabilities", "--data", "--out", "--batch-size", "predictions.csv",
                 "embeddings.npy", "skipped_images.csv", "mtl-predict --run runs/joint --images"):
        assert flag in text
