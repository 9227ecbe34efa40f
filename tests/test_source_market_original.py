"""Market-1501 original layout + Lin et al. market_attribute.mat."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from mtl.data.sources import market_original
from mtl.data.sources.market_course import market_tasks
from mtl.errors import DataError
from tests.source_folders import TRAIN_CODES, TRAIN_ORDER, codes, struct, write_mat


def test_mat_round_trip_has_real_shape(market_root):
    mat = scipy.io.loadmat(str(market_root / "market_attribute.mat"))
    top = mat["market_attribute"][0, 0]
    assert top.dtype.names == ("test", "train")
    train = top["train"][0, 0]
    assert train["age"].shape == (1, 3)
    assert train["image_index"].shape == (1, 3)
    assert str(np.asarray(train["image_index"][0, 0]).reshape(-1)[0]) == "0002"
    assert train.dtype.names != top["test"][0, 0].dtype.names  # different field orders


def test_detect(market_root, tmp_path):
    assert market_original.detect(market_root)
    assert not market_original.detect(tmp_path)


def test_load_subsets_cameras_junk_distractors(market_root):
    src = market_original.load(market_root)
    t = src.table
    assert src.name == "market1501"
    assert list(src.tasks) == list(market_tasks())
    assert src.aliases == {"color": ("upcolor", "downcolor")}
    assert len(t) == 8  # 9 jpgs, junk dropped, Thumbs.db ignored
    assert -1 not in set(t["identity"])
    names = {p.rsplit("/", 1)[-1]: row for p, row in zip(t["path"], t.to_dict("records"))}
    assert names["0000_c1s1_000151_01.jpg"]["subset"] == "gallery"
    assert names["0000_c1s1_000151_01.jpg"]["identity"] == 0
    assert names["0012_c4s3_000100_00.jpg"]["subset"] == "query"
    assert names["0012_c4s3_000100_00.jpg"]["camera"] == 4
    assert names["0007_c3s2_001234_02.jpg"]["subset"] == "train"
    assert names["0007_c3s2_001234_02.jpg"]["camera"] == 3
    assert t["subset"].value_counts().to_dict() == {"train": 3, "query": 2, "gallery": 3}
    assert all(p.startswith("/") for p in t["path"])
    for c in ("identity", "camera", *src.tasks):
        assert t[c].dtype == np.int64


def test_labels(market_root):
    t = market_original.load(market_root).table
    t.index = t["path"].str.rsplit("/", n=1).str[-1]
    up, down = market_tasks()["upcolor"], market_tasks()["downcolor"]
    r = t.loc["0002_c2s1_000551_01.jpg"]
    assert (r["age"], r["gender"], r["backpack"], r["hat"]) == (1, 1, 1, 0)
    assert up.classes[r["upcolor"]] == "red"
    assert down.classes[r["downcolor"]] == "multicolor"
    r = t.loc["0007_c3s2_001234_02.jpg"]
    assert (r["age"], r["hair"], r["gender"]) == (3, 1, 0)
    assert up.classes[r["upcolor"]] == "black"  # first of the set colours
    assert down.classes[r["downcolor"]] == "brown"
    for name in ("0010_c1s1_001051_00.jpg", "0010_c2s1_000200_01.jpg"):  # test struct, other field order
        r = t.loc[name]
        assert (r["age"], r["hat"]) == (0, 1)
        assert up.classes[r["upcolor"]] == "green"
        assert down.classes[r["downcolor"]] == "black"
    tasks = list(market_tasks())
    for name in ("0000_c1s1_000151_01.jpg", "0012_c5s1_000300_02.jpg", "0012_c4s3_000100_00.jpg"):
        assert (t.loc[name, tasks] == -1).all()


def test_without_attribute_file(market_root):
    (market_root / "market_attribute.mat").unlink()
    src = market_original.load(market_root)
    assert len(src.table) == 8
    assert (src.table[list(src.tasks)] == -1).all().all()
    assert set(src.table["identity"]) == {0, 2, 7, 10, 12}


def test_keep_junk(market_root):
    t = market_original.load(market_root, keep_junk=True).table
    assert len(t) == 9 and (t["identity"] == -1).sum() == 1


def test_explicit_attribute_path(market_root, tmp_path):
    other = tmp_path / "attrs.mat"
    write_mat(other, test={"0012": codes(gender=2)})
    t = market_original.load(market_root, attributes=other).table
    assert (t.loc[t["identity"] == 12, "gender"] == 1).all()
    assert (t.loc[t["identity"] == 10, "gender"] == -1).all()
    with pytest.raises(DataError, match="not found"):
        market_original.load(market_root, attributes=tmp_path / "missing.mat")


def test_errors(market_root, tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        market_original.load(tmp_path / "nothing")
    bad = dict(TRAIN_CODES)
    bad["0007"] = codes(age=7)
    write_mat(market_root / "market_attribute.mat", train=bad)
    with pytest.raises(DataError, match=r"identity 7 .*'age'.*7"):
        market_original.load(market_root)
    missing = {"market_attribute": {"train": {k: v for k, v in struct(TRAIN_CODES, TRAIN_ORDER).items() if k != "hat"}}}
    scipy.io.savemat(str(market_root / "market_attribute.mat"), missing)
    with pytest.raises(DataError, match="lacks fields: hat"):
        market_original.load(market_root)
    (market_root / "market_attribute.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="cannot read"):
        market_original.load(market_root)


def test_missing_query_folder(market_root):
    import shutil

    shutil.rmtree(market_root / "query")
    with pytest.raises(DataError, match="query"):
        market_original.load(market_root)
