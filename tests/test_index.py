"""mtl.reid.index: exact and FAISS indexes against the dense ranking, save / load, top-k metrics."""

import subprocess
import sys

import numpy as np
import pytest

from mtl.errors import ConfigError, DataError
from mtl.reid import evaluate_rank
from mtl.reid.distance import cosine_distance, euclidean_distance
from mtl.reid.index import build_index, load_index, rank_metrics_from_topk, recall_at_k
import mtl.reid.index as index_module


def _identity_data(num_ids=60, per_id=8, num_q=40, dim=32, noise=0.5, seed=0):
    """Gallery and queries drawn around identity centres, with cameras."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim)).astype(np.float32)
    g_pids = np.repeat(np.arange(num_ids), per_id)
    g_cams = rng.integers(0, 6, size=g_pids.size)
    gallery = centres[g_pids] + noise * rng.normal(size=(g_pids.size, dim)).astype(np.float32)
    q_pids = rng.choice(num_ids, size=num_q, replace=False)
    q_cams = rng.integers(0, 6, size=num_q)
    queries = centres[q_pids] + noise * rng.normal(size=(num_q, dim)).astype(np.float32)
    return queries, gallery, q_pids, g_pids, q_cams, g_cams


def _dense(queries, gallery, metric):
    d = cosine_distance(queries, gallery) if metric == "cosine" else euclidean_distance(queries, gallery)
    return d, np.argsort(d, axis=1, kind="stable")


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_index_equals_dense_ranking(metric, monkeypatch):
    # small blocks: the running top-k is merged over many gallery blocks and query blocks
    monkeypatch.setattr(index_module, "_BLOCK_ELEMENTS", 64)
    monkeypatch.setattr(index_module, "_QUERY_ROWS", 7)
    queries, gallery, *_ = _identity_data()
    dense_d, order = _dense(queries, gallery, metric)
    index = build_index(gallery, "exact", metric)
    d, i = index.search(queries, 10)
    assert d.shape == i.shape == (len(queries), 10) and i.dtype == np.int64 and d.dtype == np.float32
    np.testing.assert_array_equal(i, order[:, :10])
    np.testing.assert_allclose(d, np.take_along_axis(dense_d, order[:, :10], 1), atol=2e-5 if metric == "cosine" else 1e-3)


def test_exact_index_whole_gallery_and_ties():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0]], dtype=np.float32)
    index = build_index(gallery, "exact", "cosine")
    d, i = index.search(np.array([[1.0, 0.0]]), 99)  # k beyond the gallery: all of it
    # rows 0, 2 and 3 point the same way (distance 0): ties ordered by gallery index
    assert i.tolist() == [[0, 2, 3, 1]]
    np.testing.assert_allclose(d, [[0, 0, 0, 1]], atol=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_faiss_flat_equals_dense_ranking(metric):
    pytest.importorskip("faiss")
    queries, gallery, *_ = _identity_data(seed=1)
    dense_d, order = _dense(queries, gallery, metric)
    d, i = build_index(gallery, "flat", metric).search(queries, 10)
    np.testing.assert_array_equal(i, order[:, :10])
    np.testing.assert_allclose(d, np.take_along_axis(dense_d, order[:, :10], 1), atol=1e-4 if metric == "cosine" else 1e-3)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall_on_structured_data(kind):
    pytest.importorskip("faiss")
    queries, gallery, *_ = _identity_data(num_ids=400, per_id=10, num_q=200, dim=64, noise=0.4, seed=2)
    _, exact = build_index(gallery, "exact").search(queries, 10)
    _, approx = build_index(gallery, kind).search(queries, 10)
    assert recall_at_k(approx, exact, 10) >= 0.9


@pytest.mark.parametrize("kind", ["exact", "flat", "ivf", "hnsw"])
def test_save_load_round_trip(kind, tmp_path):
    if kind != "exact":
        pytest.importorskip("faiss")
    queries, gallery, *_ = _identity_data(num_ids=100, per_id=8, seed=3)
    index = build_index(gallery, kind, "cosine")
    before = index.search(queries, 5)
    loaded = load_index(index.save(tmp_path / "index"))
    assert (loaded.kind, loaded.metric, len(loaded), loaded.dim) == (kind, "cosine", len(gallery), gallery.shape[1])
    assert loaded.params == index.params
    after = loaded.search(queries, 5)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="no embedding index"):
        load_index(tmp_path)
    index = build_index(np.eye(4, dtype=np.float32), "exact")
    index.save(tmp_path / "i")
    np.save(tmp_path / "i" / index_module.EMBEDDINGS_NPY, np.eye(3, 4, dtype=np.float32))
    with pytest.raises(DataError, match="interrupted save"):
        load_index(tmp_path / "i")


def test_bad_arguments():
    with pytest.raises(ConfigError, match="valid: exact, flat, ivf, hnsw"):
        build_index(np.eye(3), "annoy")
    with pytest.raises(ConfigError, match="valid: cosine, euclidean"):
        build_index(np.eye(3), "exact", "manhattan")
    with pytest.raises(DataError, match="dimension 2, the index 3"):
        build_index(np.eye(3), "exact").search(np.ones((1, 2)), 1)


def test_missing_faiss_is_one_line_naming_the_extra():
    code = ("import sys; sys.modules['faiss'] = None\n"
            "import numpy as np\n"
            "from mtl.reid.index import build_index\n"
            "print(build_index(np.eye(3), 'exact').search(np.eye(3), 1)[1].ravel().tolist())\n"
            "try:\n    build_index(np.eye(3), 'ivf')\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[0] == "[0, 1, 2]"  # the exact kind works without FAISS
    assert lines[1].startswith("ConfigError") and "mtl-keras[index]" in lines[1] and "faiss-cpu" in lines[1]


# === metrics from top-k lists ===

def test_topk_metrics_equal_evaluate_rank_when_k_covers_every_match():
    queries, gallery, q_pids, g_pids, q_cams, g_cams = _identity_data(noise=1.2, seed=4)
    dense_d, order = _dense(queries, gallery, "cosine")
    full = evaluate_rank(dense_d, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    # k = position of the last same-identity item of the query that ranks it last
    same = g_pids[order] == q_pids[:, None]
    k = int(max(np.flatnonzero(row).max() for row in same)) + 1
    assert k < len(gallery)  # the lists are shorter than the gallery
    top = rank_metrics_from_topk(order[:, :k], q_pids, g_pids, q_cams, g_cams, max_rank=20)
    for key in ("mAP", "mINP", "rank1", "rank5", "rank10"):
        assert top[key] == pytest.approx(full[key], abs=1e-12), key
    np.testing.assert_allclose(top["cmc"], full["cmc"], atol=1e-12)
    assert (top["num_valid_queries"], top["num_queries"]) == (full["num_valid_queries"], full["num_queries"])
    assert top["matches_found"] == 1.0

    # shorter lists: lower bounds, the CMC still exact up to the list length
    short = rank_metrics_from_topk(order[:, :5], q_pids, g_pids, q_cams, g_cams, max_rank=20)
    assert short["mAP"] < full["mAP"] and short["mINP"] <= full["mINP"] and short["matches_found"] < 1
    assert short["rank1"] == full["rank1"]
    kept = (~((g_pids[order[:, :5]] == q_pids[:, None]) & (g_cams[order[:, :5]] == q_cams[:, None]))).sum(1)
    r = int(kept.min())
    np.testing.assert_allclose(short["cmc"][:r], full["cmc"][:r], atol=1e-12)


def test_topk_metrics_hand_worked():
    # the toy of tests/test_reid_evaluate.py: g0 id1 c1, g1 id2 c1, g2 id1 c0, g3 id1 c2, g4 id3 c0
    g_pids, g_cams = np.array([1, 2, 1, 1, 3]), np.array([1, 1, 0, 2, 0])
    q_pids, q_cams = np.array([1, 2, 3]), np.array([0, 0, 0])
    # A: g2 (removed), g1, g0 (match at rank 2), g4, g3 (match at rank 4); cut at 3 items
    # B: g4, g0, g1 (removed: same camera? no, cam 1 != 0: match at rank 3)
    # C: only g4, same camera: no valid match, skipped
    lists = np.array([[2, 1, 0], [4, 0, 1], [0, 1, 2]])
    out = rank_metrics_from_topk(lists, q_pids, g_pids, q_cams, g_cams, max_rank=4)
    # A: found match at rank 2 -> 1/2, missing second match -> AP (1/2 + 0) / 2 = 0.25, INP 0
    # B: AP 1/3, INP 1/3
    assert out["num_valid_queries"] == 2 and out["num_queries"] == 3
    assert out["mAP"] == pytest.approx((0.25 + 1 / 3) / 2)
    assert out["mINP"] == pytest.approx((0 + 1 / 3) / 2)
    np.testing.assert_allclose(out["cmc"], [0, 0.5, 1, 1])
    assert out["matches_found"] == pytest.approx(2 / 3)


def test_topk_metrics_errors():
    with pytest.raises(ValueError, match="no query has a matching"):
        rank_metrics_from_topk(np.array([[0]]), [1], [2], [0], [0])
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 1\)"):
        rank_metrics_from_topk(np.array([[3]]), [1], [1], [0], [1])


def test_recall_at_k():
    exact = np.array([[0, 1, 2], [3, 4, 5]])
    assert recall_at_k(np.array([[2, 1, 9], [3, 4, 5]]), exact, 3) == pytest.approx((2 / 3 + 1) / 2)
