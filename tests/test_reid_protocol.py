"""Query/gallery construction for both layouts and the metrics of ranking embeddings."""

import numpy as np
import pandas as pd
import pytest

from mtl.data.sources import load_source
from mtl.data.sources.base import SourceData, make_table
from mtl.data.sources.market_course import market_tasks
from mtl.errors import ConfigError, DataError
from mtl.reid.protocol import attribute_vectors, evaluate_embeddings, evaluation_images
from mtl.tasks import TaskSpec


def _run_split(table, val_ids):
    split = table[["path", "identity", "camera"]].copy()
    split["split"] = np.where(table["identity"].isin(val_ids), "val", "train")
    return split


def test_labelled_folder_images_by_mode(synthetic_root):
    source = load_source(synthetic_root)
    table = source.subset("train")
    ids = sorted(table["identity"].unique())
    val_ids = ids[:5]
    # the run trained on 15 of the 24 people; 4 were not used at all (e.g. data.max_images)
    split = _run_split(table[~table["identity"].isin(ids[20:])], val_ids)
    query, gallery, what = evaluation_images(source, split, source.root, "auto")
    assert "validation" in what and set(query["identity"]) | set(gallery["identity"]) == set(val_ids)
    # one query per identity and camera, the rest in the gallery, no image in both
    assert not query.groupby(["identity", "camera"]).size().gt(1).any()
    assert not set(query["path"]) & set(gallery["path"])
    assert len(query) + len(gallery) == table["identity"].isin(val_ids).sum()
    query, gallery, _ = evaluation_images(source, split, source.root, "unseen")
    assert set(query["identity"]) | set(gallery["identity"]) == set(val_ids) | set(ids[20:])
    query, gallery, _ = evaluation_images(source, split, source.root, "all")
    assert len(query) + len(gallery) == len(table)
    # another folder: "auto" never evaluates people the run trained on
    query, gallery, what = evaluation_images(source, split, "/somewhere/else", "auto")
    assert "did not train on" in what
    assert not (set(query["identity"]) | set(gallery["identity"])) & set(split.loc[split["split"] == "train", "identity"])
    with pytest.raises(DataError, match="none of the run's validation images"):
        evaluation_images(source, split.assign(path="/elsewhere/" + split["path"]), source.root, "val")
    with pytest.raises(ConfigError, match="valid"):
        evaluation_images(source, split, source.root, "everything")


def test_original_layout_uses_query_and_gallery_folders():
    tasks = market_tasks()
    rows = ([{"path": f"/q/{i}.jpg", "identity": i, "camera": 1, "subset": "query"} for i in (1, 2)]
            + [{"path": f"/g/{i}_{c}.jpg", "identity": i, "camera": c, "subset": "gallery"}
               for i in (1, 2, 0) for c in (2, 3)]
            + [{"path": "/g/junk.jpg", "identity": -1, "camera": 2, "subset": "gallery"},
               {"path": "/t/5.jpg", "identity": 5, "camera": 1, "subset": "train"}])
    source = SourceData("market1501", "/data", make_table(rows, tasks), tasks)
    query, gallery, what = evaluation_images(source, None, None, "auto")
    assert list(query["path"]) == ["/q/1.jpg", "/q/2.jpg"]
    assert len(gallery) == 6 and (gallery["identity"] == 0).sum() == 2  # distractors kept, junk dropped
    assert "bounding_box_test" in what
    with pytest.raises(ConfigError, match="query/"):
        evaluation_images(source, None, None, "all")


def test_products_are_evaluated_for_their_attributes_without_a_ranking(tmp_path):
    # a product folder: one image per product, one "camera": no query can be formed, and a
    # product run's evaluation must still give its attribute metrics
    from mtl.models.builder import build_model
    from mtl.reid.protocol import evaluate_labelled
    from tests.source_folders import write_fashion

    source = load_source(write_fashion(tmp_path / "fashion"), "fashion")
    table = source.subset("train")
    split = _run_split(table, set(table["identity"][:8]))
    query, gallery, what = evaluation_images(source, split, source.root, "auto")
    assert query.empty and len(gallery) == 8 and "re-identification not applicable (products" in what
    tasks = [source.tasks["articleType"]]
    model = build_model(tasks, input_shape=(32, 16, 3), width=0.25)
    result = evaluate_labelled(model, tasks, query, gallery, 32, 16, batch_size=4)
    assert "reid" not in result
    assert result["attributes"]["num_images"] == 8 and result["attributes"]["tasks"]["articleType"]["accuracy"] is not None
    with pytest.raises(DataError, match="nothing to evaluate"):
        evaluate_labelled(model, tasks, query, gallery, 32, 16, batch_size=4, attributes=False)


def _ids_and_features(num_ids=12, per_camera=2, dim=16, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    rows = [(i, c) for i in range(num_ids) for c in (1, 2) for _ in range(per_camera)]
    ids = np.array([r[0] for r in rows])
    cams = np.array([r[1] for r in rows])
    feats = (centres[ids] + noise * rng.normal(size=(len(rows), dim))).astype(np.float32)
    table = pd.DataFrame({"identity": ids, "camera": cams})
    q = table.groupby(["identity", "camera"]).head(1).index.to_numpy()
    g = np.setdiff1d(np.arange(len(rows)), q)
    return feats, ids, cams, q, g


def test_perfect_embeddings_rank_first_and_beat_chance():
    feats, ids, cams, q, g = _ids_and_features()
    r = evaluate_embeddings(feats[q], feats[g], ids[q], ids[g], cams[q], cams[g], "cosine", "auto")
    assert r["plain"]["mAP"] == pytest.approx(1.0) and r["plain"]["rank1"] == 1.0
    assert r["reranked"]["mAP"] == pytest.approx(1.0)
    assert r["chance"]["mAP"] < 0.5
    assert len(r["plain"]["cmc"]) == 20 and r["num_query"] == len(q) and r["num_gallery"] == len(g)
    feats, ids, cams, q, g = _ids_and_features(noise=3.0, seed=1)
    r2 = evaluate_embeddings(feats[q], feats[g], ids[q], ids[g], cams[q], cams[g], "euclidean", "no", chance=False)
    assert 0 < r2["plain"]["mAP"] < 1 and "reranked" not in r2 and "chance" not in r2


def test_attribute_combined_distances_are_reported_and_can_help():
    feats, ids, cams, q, g = _ids_and_features(noise=4.0, seed=2)
    # attributes that identify each person exactly (probabilities of 4 binary attributes)
    attr = ((np.arange(12)[:, None] >> np.arange(4)) & 1).astype(np.float32)[ids]
    r = evaluate_embeddings(feats[q], feats[g], ids[q], ids[g], cams[q], cams[g], "cosine", "auto",
                            attr[q], attr[g], attr_weight=1.0, attr_alpha=0.1)
    for key in ("attr_weighted", "attr_weighted_reranked", "attr_multiplicative", "attr_multiplicative_reranked"):
        assert key in r
    assert r["attr_weighted"]["mAP"] > r["plain"]["mAP"]
    assert r["attr_weight"] == 1.0 and r["attr_alpha"] == 0.1
    with pytest.raises(ConfigError, match="attribute tasks"):
        evaluate_embeddings(feats[q], feats[g], ids[q], ids[g], cams[q], cams[g], attr_weight=1.0)


def test_attribute_vectors_lay_probabilities_side_by_side():
    tasks = [TaskSpec("hat", ("no", "yes"), "binary"), TaskSpec("age", ("a", "b", "c")),
             TaskSpec("identity", ("1", "2"), "identity")]
    outputs = {"hat": np.array([[0.2], [0.9]]), "age": np.array([[0.1, 0.3, 0.6], [1, 0, 0]]),
               "identity": np.zeros((2, 2))}
    np.testing.assert_allclose(attribute_vectors(outputs, tasks), [[0.2, 0.1, 0.3, 0.6], [0.9, 1, 0, 0]])
    assert attribute_vectors(outputs, tasks[2:]) is None
