"""The course deliverable files: columns, codings and the ranking file's format."""

import numpy as np
import pandas as pd
import pytest

from mtl.data.sources.market_course import DOWN_COLUMNS, UP_COLUMNS, market_tasks
from mtl.deliverables import (classification_columns, classification_frame, rank_gallery, read_reid_txt,
                              write_classification_csv, write_reid_txt)
from mtl.errors import DataError
from mtl.reid.threshold import top_k_rows

EXPECTED_COLUMNS = (["age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender"]
                    + [f"up{c}" for c in ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")]
                    + ["upmulticolor"]
                    + [f"down{c}" for c in ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green",
                                            "brown")]
                    + ["downmulticolor"])


def test_columns_follow_the_annotation_file():
    assert classification_columns() == EXPECTED_COLUMNS
    assert set(classification_columns()) == set(t for t in market_tasks() if "color" not in t) | set(
        UP_COLUMNS) | set(DOWN_COLUMNS) | {"upmulticolor", "downmulticolor"}
    assert classification_columns(["hat", "upcolor"]) == ["hat"] + list(UP_COLUMNS) + ["upmulticolor"]


def test_codes_are_the_annotation_coding(tmp_path):
    predictions = {name: np.array([0, 1, 1]) for name in ("backpack", "bag", "handbag", "clothes", "down", "up",
                                                          "hair", "hat", "gender")}
    predictions["age"] = np.array([0, 2, 3])
    predictions["upcolor"] = np.array([0, 6, 8])    # black, blue, multicolour
    predictions["downcolor"] = np.array([8, 9, 2])  # brown, multicolour, pink
    frame = classification_frame(["/x/test/000002.jpg", "000010.jpg", "/y/000011.jpg"], predictions)
    write_classification_csv(tmp_path / "c.csv", frame)
    back = pd.read_csv(tmp_path / "c.csv", dtype={"file_name": str})
    assert list(back.columns) == ["file_name"] + EXPECTED_COLUMNS
    assert list(back["file_name"]) == ["000002.jpg", "000010.jpg", "000011.jpg"]
    assert list(back["age"]) == [1, 3, 4] and list(back["hat"]) == [1, 2, 2]
    ups = back[list(UP_COLUMNS) + ["upmulticolor"]].to_numpy()
    downs = back[list(DOWN_COLUMNS) + ["downmulticolor"]].to_numpy()
    assert set(np.unique(ups)) == {1, 2} and (ups == 2).sum(1).tolist() == [1, 1, 1]
    assert back.loc[0, "upblack"] == 2 and back.loc[1, "upblue"] == 2 and back.loc[2, "upmulticolor"] == 2
    assert back.loc[0, "downbrown"] == 2 and back.loc[1, "downmulticolor"] == 2 and back.loc[2, "downpink"] == 2
    assert (downs == 2).sum(1).tolist() == [1, 1, 1]


def test_bad_predictions_are_rejected():
    with pytest.raises(DataError, match="age"):
        classification_frame(["a.jpg"], {"age": np.array([4])})
    with pytest.raises(DataError, match="no column"):
        classification_frame(["a.jpg"], {"identity": np.array([0])})


def test_ranking_file_round_trip_and_format(tmp_path):
    ranking = np.array([[2, 0, 1], [1, 2, 0]])
    write_reid_txt(tmp_path / "r.txt", ["/q/000001.jpg", "000007.jpg"], ["g0.jpg", "/t/g1.jpg", "g2.jpg"], ranking)
    text = (tmp_path / "r.txt").read_text()
    assert text == "000001.jpg: g2.jpg, g0.jpg, g1.jpg\n000007.jpg: g1.jpg, g2.jpg, g0.jpg\n"
    assert read_reid_txt(tmp_path / "r.txt") == {"000001.jpg": ["g2.jpg", "g0.jpg", "g1.jpg"],
                                                 "000007.jpg": ["g1.jpg", "g2.jpg", "g0.jpg"]}
    (tmp_path / "bad.txt").write_text("000001.jpg g2.jpg g0.jpg\n")
    with pytest.raises(DataError, match="bad.txt:1"):
        read_reid_txt(tmp_path / "bad.txt")
    (tmp_path / "dup.txt").write_text("a.jpg: b.jpg, b.jpg\n")
    with pytest.raises(DataError, match="twice"):
        read_reid_txt(tmp_path / "dup.txt")


def test_top_k_and_chunked_gallery_ranking_match_a_full_sort():
    d = np.array([[0.5, 0.1, 0.1, 0.9], [0.3, 0.2, 0.8, 0.0]], np.float32)
    np.testing.assert_array_equal(top_k_rows(d, 3), [[1, 2, 0], [3, 1, 0]])  # ties: lower index first
    np.testing.assert_array_equal(top_k_rows(d, 10), np.argsort(d, axis=1, kind="stable"))
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(37, 8)).astype(np.float32), rng.normal(size=(150, 8)).astype(np.float32)
    ranked = rank_gallery(q, g, top=100, distance="euclidean", chunk=10)
    full = ((q[:, None] - g[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(ranked, np.argsort(full, axis=1, kind="stable")[:, :100])
    assert rank_gallery(q, g[:30], top=100).shape == (37, 30)


def test_rows_that_cannot_be_decoded_get_the_majority_prediction():
    from mtl.predictions import fill_with_majority

    decoded = np.array([True, False, True, True, False])
    filled = fill_with_majority({"age": np.array([2, 1, 2]), "hat": np.array([0, 1, 1])}, decoded)
    np.testing.assert_array_equal(filled["age"], [2, 2, 1, 2, 2])
    np.testing.assert_array_equal(filled["hat"], [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(fill_with_majority({"age": np.array([3, 0])}, [True] * 2)["age"], [3, 0])
    with pytest.raises(DataError, match="2 predictions for 3 decoded rows"):
        fill_with_majority({"age": np.array([0, 1])}, decoded)
