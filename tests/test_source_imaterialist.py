"""iMaterialist FGVC4 JSON source."""

from __future__ import annotations

import json
import warnings

import pytest

from mtl.data.sources import imaterialist
from mtl.errors import DataError
from tests.fixtures_images import write_jpeg

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


@pytest.fixture
def imat_root(tmp_path):
    root = tmp_path / "imat"
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


def load_quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return imaterialist.load(*args, **kwargs)


def labels_of(src, image_id):
    t = src.table
    return t[t["path"].str.endswith(f"/{image_id}.jpg")].iloc[0]


def test_identifier():
    assert imaterialist.identifier("apparel class") == "apparel_class"
    assert imaterialist.identifier("dress:color") == "dress_color"
    assert imaterialist.identifier("3 sleeve") == "t_3_sleeve"


def test_detect(imat_root, tmp_path):
    assert imaterialist.detect(imat_root)
    assert not imaterialist.detect(tmp_path)


def test_load_train(imat_root):
    with pytest.warns(UserWarning) as record:
        src = imaterialist.load(imat_root)
    messages = " | ".join(str(w.message) for w in record)
    assert "1 (image, task) pairs have several labels" in messages
    assert "1 of 5 images are not on disk" in messages
    assert src.name == "imaterialist"
    assert list(src.tasks) == ["apparel_class", "dress_color", "shoe_type"]
    assert src.tasks["apparel_class"].classes == ("dress", "shoe", "pants")
    assert src.tasks["dress_color"].classes == ("black", "red", "blue")
    assert src.tasks["shoe_type"].classes == ("boot", "sandal", "heel")  # label map labels included
    t = src.table
    assert len(t) == 4 and set(t["subset"]) == {"train"}
    assert (t["identity"] == -1).all() and (t["camera"] == -1).all()
    assert labels_of(src, 1)[["apparel_class", "dress_color", "shoe_type"]].tolist() == [0, 1, -1]
    assert labels_of(src, 2)[["apparel_class", "dress_color", "shoe_type"]].tolist() == [1, -1, 0]
    assert labels_of(src, 3)[["apparel_class", "dress_color", "shoe_type"]].tolist() == [2, -1, -1]
    assert labels_of(src, 4)["dress_color"] == 0  # first of two labels
    assert labels_of(src, 1)["path"] == str(imat_root.resolve() / "images" / "1.jpg")


def test_splits(imat_root):
    train = load_quiet(imat_root)
    val = load_quiet(imat_root, split="validation")
    assert val.tasks == train.tasks  # task table does not depend on the split
    assert labels_of(val, 1)[["apparel_class", "dress_color", "shoe_type"]].tolist() == [0, 2, -1]
    assert labels_of(val, 2)[["apparel_class", "dress_color", "shoe_type"]].tolist() == [1, -1, 1]
    both = load_quiet(imat_root, split="train,validation,test", images="{split}")
    t = both.table
    assert len(t) == 8
    assert t["subset"].value_counts().to_dict() == {"train": 6, "test": 2}
    assert t["path"].str.contains("/validation/").sum() == 2
    assert (t.loc[t["subset"] == "test", list(both.tasks)] == -1).all().all()
    with pytest.raises(DataError, match="separate image folders"):
        load_quiet(imat_root, split=["train", "validation"])
    with pytest.raises(DataError, match="unknown split"):
        load_quiet(imat_root, split="val")


def test_without_maps(imat_root):
    (imat_root / "fgvc4_iMat.label_map.json").unlink()
    # the list layout needs the label map to know each label's task; the validation file present
    # is read for the task table even when only train is asked for
    with pytest.raises(DataError, match=r"validation.json: annotations\[0\] \(image 1\): label 1 has no taskId"):
        load_quiet(imat_root)
    (imat_root / "validation.json").unlink()
    src = load_quiet(imat_root)  # train annotations carry taskId; names from the task map, classes = label ids
    assert src.tasks["apparel_class"].classes == ("1", "2", "3")
    assert src.tasks["dress_color"].classes == ("10", "11", "12")
    assert "shoe_type" not in src.tasks  # one label (20) seen: fewer than min_classes
    assert "shoe_type" in load_quiet(imat_root, min_classes=1).tasks
    (imat_root / "fgvc4_iMat.task_map.json").unlink()
    assert list(load_quiet(imat_root, min_classes=1).tasks) == ["task_1", "task_2", "task_3"]


def test_errors(imat_root, tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        imaterialist.load(tmp_path / "none")
    bad = dict(TRAIN, annotations=TRAIN["annotations"] + [ann(2, 2, 99)])
    dump(imat_root / "fgvc4_iMat.train.data.json", bad)
    with pytest.raises(DataError, match=r"annotations\[9\] \(image 2\): label 99 is not in the label map"):
        load_quiet(imat_root)
    (imat_root / "fgvc4_iMat.train.data.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read JSON"):
        load_quiet(imat_root)
    (imat_root / "fgvc4_iMat.train.data.json").unlink()
    with pytest.raises(DataError, match="no train file"):
        load_quiet(imat_root)
    with pytest.raises(DataError, match="folder not found"):
        load_quiet(imat_root, split="validation", images="nowhere")
