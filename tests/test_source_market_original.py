"""Market-1501 original layout + Lin et al. market_attribute.mat."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from mtl.data.sources import market_original
from mtl.data.sources.market_course import market_tasks
from mtl.errors import DataError
from tests.fixtures_images import write_jpeg

# field orders of the real file: train and test structs list their fields differently
TRAIN_ORDER = (
    "age", "backpack", "bag", "handbag", "downblack", "downblue", "downbrown", "downgray", "downgreen",
    "downpink", "downpurple", "downwhite", "downyellow", "upblack", "upblue", "upgreen", "upgray",
    "uppurple", "upred", "upwhite", "upyellow", "clothes", "down", "up", "hair", "hat", "gender",
    "image_index",
)  # fmt: skip
TEST_ORDER = ("age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender") + tuple(
    market_original.ATTRIBUTE_FIELDS[10:]
) + ("image_index",)

IMAGES = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s2_001234_02.jpg"],
    "query": ["0010_c1s1_001051_00.jpg", "0012_c4s3_000100_00.jpg"],
    "bounding_box_test": [
        "0010_c2s1_000200_01.jpg",
        "0012_c5s1_000300_02.jpg",
        "0000_c1s1_000151_01.jpg",  # distractor: kept
        "-1_c1s1_000401_03.jpg",  # junk: dropped
    ],
}


def codes(**set_values) -> dict:
    """All 27 attributes coded 1 (no / first value), with some overrides."""
    c = {f: 1 for f in market_original.ATTRIBUTE_FIELDS}
    c.update(set_values)
    return c


TRAIN_CODES = {
    "0002": codes(age=2, gender=2, backpack=2, upred=2),  # downcolor: none set -> multicolor
    "0007": codes(age=4, hair=2, upblack=2, upblue=2, downbrown=2),  # two up colours: first wins
    "0003": codes(age=3),  # identity without images: ignored
}
TEST_CODES = {"0010": codes(age=1, hat=2, upgreen=2, downblack=2)}  # 0012: not in the file


def struct(rows: dict, order: tuple[str, ...]) -> dict:
    s = {}
    for f in order:
        if f == "image_index":
            cell = np.empty((1, len(rows)), dtype=object)
            for i, k in enumerate(rows):
                cell[0, i] = k
            s[f] = cell
        else:
            s[f] = np.array([[rows[k][f] for k in rows]], dtype=np.uint8)
    return s


def write_mat(path, train=TRAIN_CODES, test=TEST_CODES):
    # test first, like the real file
    scipy.io.savemat(str(path), {"market_attribute": {"test": struct(test, TEST_ORDER), "train": struct(train, TRAIN_ORDER)}})


@pytest.fixture
def market_root(tmp_path):
    root = tmp_path / "Market-1501-v15.09.15"
    for folder, names in IMAGES.items():
        for i, n in enumerate(names):
            write_jpeg(root / folder / n, color=(10 * i, 20, 30))
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"x")
    write_mat(root / "market_attribute.mat")
    return root


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
