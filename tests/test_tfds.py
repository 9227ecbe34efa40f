"""Prepared datasets (mtl.data.tfds): every format through its tensorflow-datasets builder, offline,
read back into the same table, split and task specs as reading the folder."""

from __future__ import annotations

import pandas as pd
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from mtl.data import tfds as prepared  # noqa: E402
from mtl.data.prepare import prepare_data  # noqa: E402
from mtl.data.sources import load_source  # noqa: E402
from mtl.data.sources.prepared import is_prepared  # noqa: E402
from mtl.data.tfds.builder import MISSING  # noqa: E402
from mtl.errors import ConfigError, DataError  # noqa: E402
from tests.source_folders import write_fashion  # noqa: E402

tfds.disable_progress_bar()


def without_paths(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns="path").reset_index(drop=True)


def assert_same_source(folder_source, prepared_source):
    pd.testing.assert_frame_equal(without_paths(folder_source.table), without_paths(prepared_source.table))
    assert prepared_source.tasks == folder_source.tasks
    assert prepared_source.aliases == folder_source.aliases
    assert prepared_source.name == folder_source.name
    # the images are the same bytes under their original names
    for a, b in zip(folder_source.table["path"], prepared_source.table["path"]):
        assert a.rsplit("/", 1)[-1] == b.rsplit("/", 1)[-1]
        assert open(a, "rb").read() == open(b, "rb").read()


@pytest.fixture(scope="module")
def synthetic_prepared(synthetic_root, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    return prepared.build(synthetic_root, data_dir=data_dir)


def test_synthetic_prepare_data_gives_the_same_split(synthetic_root, synthetic_prepared):
    assert synthetic_prepared.name == "1.0.0" and synthetic_prepared.parent.name == "mtl_market1501_course"
    for tasks in ("all", "identity,age,upcolor"):
        folder = prepare_data(synthetic_root, tasks=tasks, val_fraction=0.25, split_seed=3)
        ready = prepare_data(f"tfds:{synthetic_prepared}", tasks=tasks, val_fraction=0.25, split_seed=3)
        assert ready.tasks == folder.tasks
        pd.testing.assert_frame_equal(without_paths(ready.train), without_paths(folder.train))
        pd.testing.assert_frame_equal(without_paths(ready.val), without_paths(folder.val))
        assert ready.source.root == f"tfds:{synthetic_prepared}"
    assert_same_source(load_source(synthetic_root), load_source(synthetic_prepared))  # the folder itself


def test_tfds_name_in_the_tfds_data_dir(synthetic_root, synthetic_prepared, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(synthetic_prepared.parent.parent))
    for root in ("tfds:mtl_market1501_course", "tfds:market1501_course", f"tfds:{synthetic_prepared.parent}"):
        assert_same_source(load_source(synthetic_root), load_source(root, "market1501_course"))


def test_tfds_load_builds_offline_from_the_manual_folder(synthetic_root, tmp_path):
    import mtl.data.tfds.market1501_course  # noqa: F401 (registers mtl_market1501_course)

    config = tfds.download.DownloadConfig(manual_dir=str(synthetic_root))
    ds, info = tfds.load("mtl_market1501_course", split="query", data_dir=tmp_path, with_info=True,
                         download_and_prepare_kwargs={"download_config": config})
    source = load_source(synthetic_root)
    assert info.features["labels"]["age"].names == [*source.tasks["age"].classes, MISSING]
    assert info.metadata["format"] == "market1501_course"
    query = source.subset("query")
    example = next(iter(tfds.as_numpy(ds)))
    row = query[query["path"].str.endswith(example["file_name"].decode())].iloc[0]
    assert example["image"].ndim == 3 and example["image"].shape[-1] == 3
    assert (example["identity"], example["camera"]) == (row["identity"], row["camera"])
    # unlabelled query images: every task label is the MISSING class
    assert all(example["labels"][t] == spec.num_classes for t, spec in source.tasks.items())
    assert info.splits["train"].num_examples == len(source.subset("train"))


def test_market1501_original(market_root, tmp_path):
    ready = prepared.build(market_root, "market1501", data_dir=tmp_path / "out")
    assert_same_source(load_source(market_root, "market1501"), load_source(ready))


def test_fashion_and_its_options(tmp_path):
    root = write_fashion(tmp_path / "fashion")
    ready = prepared.build(root, data_dir=tmp_path / "out")
    assert ready.parent.name == "mtl_fashion"
    folder = load_source(root, rare_threshold=0.01)
    assert_same_source(folder, load_source(ready, rare_threshold=0.01))
    assert (folder.table[list(folder.tasks)] == -1).any().any()  # missing labels went through
    assert folder.tasks["year"].kind == "regression" and folder.table["year"].isna().any()  # a value, and NaN
    with pytest.raises(ConfigError, match="rare_threshold"):
        load_source(ready, rare_threshold=0.2)
    with pytest.raises(DataError, match="fashion"):
        load_source(ready, "market1501")


def test_imaterialist(imat_root, tmp_path):  # noqa: F811 (fixture)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's known defects (missing image, double label)
        ready = prepared.build(imat_root, "imaterialist", data_dir=tmp_path / "out")
        folder = load_source(imat_root, "imaterialist")
    assert_same_source(folder, load_source(ready))


def test_nothing_prepared(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="no prepared dataset"):
        load_source("tfds:mtl_fashion")
    assert not is_prepared(tmp_path)
