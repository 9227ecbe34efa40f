import pandas as pd
import pytest

from conftest import shared_dataset
from mtl.data.sources import detect_format, load_source
from mtl.data.sources.market_course import labels_from_annotations, load
from mtl.data.synthetic import ensure_synthetic, generate
from mtl.errors import DataError


def _row(**overrides):
    row = {c: 1 for c in ["age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender",
                          "upblack", "upwhite", "upred", "uppurple", "upyellow", "upgray", "upblue", "upgreen",
                          "downblack", "downwhite", "downpink", "downpurple", "downyellow", "downgray", "downblue",
                          "downgreen", "downbrown"]}
    row.update(overrides)
    return row


def test_labels_decode_the_course_coding():
    coded = pd.DataFrame([_row(age=3, gender=2, upred=2, downbrown=2), _row(hat=2)])
    labels = labels_from_annotations(coded)
    assert labels.loc[0, "age"] == 2 and labels.loc[0, "gender"] == 1 and labels.loc[0, "hat"] == 0
    assert labels.loc[0, "upcolor"] == 2  # red is the third up colour
    assert labels.loc[0, "downcolor"] == 8  # brown is the ninth down colour
    assert labels.loc[1, "upcolor"] == 8 and labels.loc[1, "downcolor"] == 9  # none set: multicolour
    assert labels.loc[1, "hat"] == 1


def test_bad_csv_value_names_row_and_column():
    coded = pd.DataFrame([_row(), _row(bag=7)])
    with pytest.raises(DataError, match=r"row 3.*'bag'"):
        labels_from_annotations(coded)


def test_synthetic_dataset_reads_with_the_real_loader(synthetic_root):
    data = load_source(synthetic_root)
    assert data.name == "market1501_course"
    train = data.subset("train")
    assert len(train) == 24 * 6 and train["identity"].nunique() == 24
    assert set(data.table["subset"]) == {"train", "query", "test"}
    assert (train[list(data.tasks)] >= 0).all().all()
    # labels are per identity
    assert (train.groupby("identity")["gender"].nunique() == 1).all()


def test_synthetic_is_deterministic_and_cached(tmp_path):
    a = generate(tmp_path / "a", identities=3, images_per_identity=2, unlabelled_identities=1, seed=5)
    b = generate(tmp_path / "b", identities=3, images_per_identity=2, unlabelled_identities=1, seed=5)
    assert sorted(p.name for p in (a / "train").iterdir()) == sorted(p.name for p in (b / "train").iterdir())
    assert (a / "annotations_train.csv").read_text() == (b / "annotations_train.csv").read_text()
    first = ensure_synthetic(tmp_path / "cache", seed=2, identities=3, images_per_identity=2)
    stamp = (first / "annotations_train.csv").stat().st_mtime_ns
    again = ensure_synthetic(tmp_path / "cache", seed=2, identities=3, images_per_identity=2)
    assert again == first and (again / "annotations_train.csv").stat().st_mtime_ns == stamp


def test_missing_folder_and_missing_annotation_row(tmp_path, synthetic_root):
    with pytest.raises(DataError, match="not found"):
        load(tmp_path / "nope")
    with pytest.raises(DataError, match="not found"):
        detect_format(tmp_path / "nope")
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(synthetic_root, copy)
    csv = pd.read_csv(copy / "annotations_train.csv")
    csv.iloc[1:].to_csv(copy / "annotations_train.csv", index=False)
    with pytest.raises(DataError, match="no annotation row"):
        load(copy)


def test_real_market_course_layout():
    root = shared_dataset("market1501-course")
    data = load(root)
    train = data.subset("train")
    assert len(train) == 10378 and train["identity"].nunique() == 600
    assert (data.table["subset"] == "test").sum() == 19679 and (data.table["subset"] == "query").sum() == 2248
    assert train["camera"].between(1, 6).all()
