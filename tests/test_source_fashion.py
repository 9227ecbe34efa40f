"""Fashion Product Images styles.csv source."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from mtl.data.sources import fashion
from mtl.errors import DataError
from tests.source_folders import ROWS, write_fashion


@pytest.fixture
def fashion_root(tmp_path):
    return write_fashion(tmp_path / "fashion")


def by_id(table, pid):
    return table[table["identity"] == pid].iloc[0]


def test_detect(fashion_root, tmp_path):
    assert fashion.detect(fashion_root)
    assert not fashion.detect(tmp_path)


def test_load_default(fashion_root):
    src = fashion.load(fashion_root, rare_threshold=0)
    t = src.table
    assert src.name == "fashion"
    # the class columns, then the year: a value (regression), which `all` leaves out
    assert list(src.tasks) == [*fashion.DEFAULT_COLUMNS, *fashion.NUMERIC_COLUMNS]
    assert src.tasks["year"].kind == "regression"
    assert len(t) == 20
    assert set(t["subset"]) == {"train"} and (t["camera"] == -1).all()
    assert by_id(t, 302)["path"] == str(fashion_root.resolve() / "images" / "302.jpg")
    for c in ("identity", "camera", *fashion.DEFAULT_COLUMNS):
        assert t[c].dtype == np.int64
    assert t["year"].dtype == np.float64
    # frequency order, then name
    assert src.tasks["articleType"].classes == ("Tshirts", "Shirts", "Watches", "Belts")
    assert src.tasks["gender"].classes == ("Men", "Women", "Unisex")
    # empty cells -> -1; the line with extra commas kept its other columns
    r = by_id(t, 302)
    assert r["baseColour"] == -1 and r["usage"] == -1
    assert src.tasks["season"].classes[r["season"]] == "Winter"
    assert src.aliases == {"colour": ("baseColour",), "color": ("baseColour",), "category": ("masterCategory",), "apparel": ("articleType",)}


def test_rare_grouping(fashion_root):
    src = fashion.load(fashion_root, rare_threshold=0.1)  # < 2 of 20 rows -> other
    art = src.tasks["articleType"]
    assert art.classes == ("Tshirts", "Shirts", "Watches", "other")
    assert art.classes[by_id(src.table, 400)["articleType"]] == "other"
    # baseColour: 19 labelled, Brown (1) < 1.9 -> other; usage: 18 labelled, nothing below 1.8
    assert src.tasks["baseColour"].classes == ("Black", "White", "other")
    assert "other" not in src.tasks["usage"].classes
    # absolute count: classes with fewer than 4 rows
    src = fashion.load(fashion_root, rare_threshold=4)
    assert src.tasks["articleType"].classes == ("Tshirts", "Shirts", "other")
    # default 1%: nothing is below 0.2 rows
    assert "other" not in fashion.load(fashion_root).tasks["articleType"].classes


def test_columns_option(fashion_root):
    src = fashion.load(fashion_root, columns="articleType, year", rare_threshold=0)
    assert list(src.tasks) == ["articleType", "year"]
    assert src.tasks["year"].kind == "regression"  # "2012.0" read as 2012.0; 6 empty cells
    assert src.table["year"].isna().sum() == 6 and set(src.table["year"].dropna()) == {2012.0, 2011.0}
    assert src.aliases == {"apparel": ("articleType",)}
    with pytest.raises(DataError, match="unknown task columns colour"):
        fashion.load(fashion_root, columns=["colour"])


def test_missing_image_dropped_with_warning(tmp_path):
    root = write_fashion(tmp_path / "f", missing_images=("101", "400"))
    with pytest.warns(UserWarning, match="2 of 20 rows have no image"):
        src = fashion.load(root, rare_threshold=0.1)
    assert len(src.table) == 18
    assert 400 not in set(src.table["identity"])
    assert "Belts" not in src.tasks["articleType"].classes and "other" not in src.tasks["articleType"].classes


def test_errors(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        fashion.load(tmp_path / "none")
    root = write_fashion(tmp_path / "bad", rows=ROWS[:3] + ["12x,Men,Apparel,Topwear,Tshirts,Black,Summer,,Casual,T"])
    with pytest.raises(DataError, match=r"line 5, column 'id': '12x'"):
        fashion.load(root)
    root = write_fashion(tmp_path / "dup", rows=ROWS[:3] + [ROWS[1]])
    with pytest.raises(DataError, match=r"line 5, column 'id': id 101 already used on line 3"):
        fashion.load(root)
    root = write_fashion(tmp_path / "short", rows=ROWS[:2] + ["7,Men,Apparel"])
    with pytest.raises(DataError, match="line 4 has 3 fields"):
        fashion.load(root)
    with pytest.raises(DataError, match="rare_threshold"):
        fashion.load(write_fashion(tmp_path / "ok"), rare_threshold=-1)


REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-product-small"


def test_real_styles_csv():
    if not (REAL / "styles.csv").is_file():
        pytest.skip(f"real data not available at {REAL}")
    assert fashion.detect(REAL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every row of the small set has its image
        src = fashion.load(REAL)
    t = src.table
    assert 5900 <= len(t) <= 6000
    art = src.tasks["articleType"]
    assert art.classes[-1] == "other"
    assert 10 <= art.num_classes < 109
    assert (t["articleType"] >= 0).all()
    assert src.tasks["masterCategory"].classes[:3] == ("Apparel", "Accessories", "Footwear")
    assert (t["season"] == -1).sum() == 5
