"""Tiny dataset folders in each on-disk format, written by plain functions (the fixtures that call
them are in conftest.py), with the rows they hold: the source tests, the prepared-dataset tests and
the command tests of product runs read the same folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.io

from mtl.data.sources import fashion, market_original
from tests.fixtures_images import write_jpeg

# === Fashion Product Images (styles.csv) ===

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
# 20 products: articleType Tshirts x10, Shirts x6, Watches x3, Belts x1 (rare)
ROWS = (
    [f"{100 + i},Men,Apparel,Topwear,Tshirts,Black,Summer,2012.0,Casual,Tee {i}" for i in range(10)]
    + [f"{200 + i},Women,Apparel,Topwear,Shirts,White,Fall,,Casual,Shirt {i}" for i in range(6)]
    + [f"{300 + i},Unisex,Accessories,Watches,Watches,Black,Winter,2011.0,Formal,Watch {i}" for i in range(2)]
    # empty baseColour and usage; display name with unquoted commas (12 fields)
    + ["302,Unisex,Accessories,Watches,Watches,,Winter,2011.0,,Watch, steel, 40mm"]
    + ['400,Men,Accessories,Belts,Belts,Brown,Summer,2012.0,Casual,"Belt, leather"']
)


def write_fashion(root: Path, rows=ROWS, missing_images=()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "styles.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    (root / "images").mkdir(exist_ok=True)
    for line in rows:
        pid = line.split(",", 1)[0]
        if pid not in missing_images:
            write_jpeg(root / "images" / f"{pid}.jpg")
    return root


# === Product folders of a run and of other data, for relabelling ===

def products(first_id: int, items: list[tuple[str, str, int]]) -> list[str]:
    """styles.csv lines: ``(articleType, gender, count)`` -> ``count`` products of that kind."""
    rows, pid = [], first_id
    for article, gender, count in items:
        for _ in range(count):
            rows.append(f"{pid},{gender},Apparel,Topwear,{article},Black,Summer,2012.0,Casual,Item {pid}")
            pid += 1
    return rows

# the run's folder: Tshirts > Shirts > Watches, Belts rare (grouped as "other" at 10 %)
RUN_ROWS = products(100, [("Tshirts", "Men", 10), ("Shirts", "Women", 6), ("Watches", "Unisex", 3),
                          ("Belts", "Men", 1)])
# another folder: other frequencies (so another class order), a new article and a new gender
OTHER_ROWS = products(500, [("Watches", "Women", 7), ("Shirts", "Unisex", 4), ("Tshirts", "Men", 2),
                            ("Belts", "Girls", 1), ("Socks", "Girls", 1)])


def raw_values(root, column):
    """``{image path: value}`` of one column of a styles.csv, read without any class table."""
    header, records = fashion.read_styles(root / "styles.csv")
    i, c = header.index("id"), header.index(column)
    return {str((root / "images" / f"{f[i]}.jpg").resolve()): f[c] for _, f in records}


# === iMaterialist FGVC4 (JSON) ===

TASKS = [
    {"taskId": "1", "taskName": "apparel class"},
    {"taskId": "2", "taskName": "dress:color"},
    {"taskId": "3", "taskName": "shoe:type"},
    {"taskId": "4", "taskName": "pants:age"},  # no labels: left out
]
LABELS = [
    {"labelId": "1", "labelName": "dress", "taskId": "1", "taskName": "apparel class"},
    {"labelId": "2", "labelName": "shoe", "taskId": "1", "taskName": "apparel class"},
    {"labelId": "3", "labelName": "pants", "taskId": "1", "taskName": "apparel class"},
    {"labelId": "10", "labelName": "black", "taskId": "2", "taskName": "dress:color"},
    {"labelId": "11", "labelName": "red", "taskId": "2", "taskName": "dress:color"},
    {"labelId": "12", "labelName": "blue", "taskId": "2", "taskName": "dress:color"},
    {"labelId": "20", "labelName": "boot", "taskId": "3", "taskName": "shoe:type"},
    {"labelId": "21", "labelName": "sandal", "taskId": "3", "taskName": "shoe:type"},
    {"labelId": "22", "labelName": "heel", "taskId": "3", "taskName": "shoe:type"},  # never used
]


def ann(image, task, label):
    return {"imageId": str(image), "taskId": str(task), "labelId": str(label)}


TRAIN = {
    "images": [{"imageId": str(i), "url": [f"http://example.com/{i}.jpg"]} for i in range(1, 6)],
    "annotations": [
        ann(1, 1, 1), ann(1, 2, 11),
        ann(2, 1, 2), ann(2, 3, 20),
        ann(3, 1, 3),
        ann(4, 1, 1), ann(4, 2, 10), ann(4, 2, 12),  # two colours for one task: first kept, warned
        ann(5, 1, 2),  # image 5 is not on disk
    ],
}  # fmt: skip
# later layout: a list of label ids per image, tasks from the label map
VALIDATION = {
    "images": [{"imageId": "1", "url": []}, {"imageId": "2", "url": []}],
    "annotations": [{"imageId": "1", "labelId": ["1", "12"]}, {"imageId": "2", "labelId": ["2", "21"]}],
}
TEST = {"images": [{"imageId": "1", "url": []}, {"imageId": "2", "url": []}]}


def dump(path, data):
    path.write_text(json.dumps(data))


def write_imaterialist(root: Path) -> Path:
    """An iMaterialist FGVC4 folder at ``root``: both annotation layouts, images 1-4 (5 is missing)."""
    root.mkdir()
    dump(root / "fgvc4_iMat.train.data.json", TRAIN)
    dump(root / "validation.json", VALIDATION)
    dump(root / "test.json", TEST)
    dump(root / "fgvc4_iMat.task_map.json", {"taskInfo": TASKS})
    dump(root / "fgvc4_iMat.label_map.json", {"labelInfo": LABELS})
    for i in range(1, 5):
        write_jpeg(root / "images" / f"{i}.jpg")
        write_jpeg(root / "train" / f"{i}.jpg")
    for i in (1, 2):
        write_jpeg(root / "validation" / f"{i}.jpg")
        write_jpeg(root / "test" / f"{i}.jpg")
    return root


# === Market-1501 original layout + market_attribute.mat ===

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


def write_market_original(root: Path) -> Path:
    """A Market-1501 original-layout folder at ``root`` with Lin et al.'s ``market_attribute.mat``."""
    for folder, names in IMAGES.items():
        for i, n in enumerate(names):
            write_jpeg(root / folder / n, color=(10 * i, 20, 30))
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"x")
    write_mat(root / "market_attribute.mat")
    return root
