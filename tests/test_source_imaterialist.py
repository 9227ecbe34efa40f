"""iMaterialist FGVC4 JSON source."""

from __future__ import annotations

import warnings

import pytest

from mtl.data.sources import imaterialist
from mtl.errors import DataError
from tests.source_folders import TRAIN, ann, dump


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
