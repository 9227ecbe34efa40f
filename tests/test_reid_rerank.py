"""mtl.reid.re_ranking against the common numpy implementation (Zhong et al. / torchreid)."""

import functools

import numpy as np
import pytest

import mtl.reid.rerank as rerank_module
from mtl.reid import evaluate_rank, re_ranking, re_ranking_features
from mtl.reid.reference import reference_re_ranking


def _problem(seed=0, num_q=30, num_g=150, num_ids=20, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, dim))
    q_pids = rng.integers(0, num_ids, num_q)
    g_pids = rng.integers(0, num_ids, num_g)
    q_feat = centres[q_pids] + 0.8 * rng.standard_normal((num_q, dim))
    g_feat = centres[g_pids] + 0.8 * rng.standard_normal((num_g, dim))
    q_cams = rng.integers(0, 3, num_q)
    g_cams = rng.integers(0, 3, num_g)
    return q_feat, g_feat, q_pids, g_pids, q_cams, g_cams


def _euclidean(a, b):
    return np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0))


@pytest.fixture
def small_chunks(monkeypatch):
    """Force several chunks / panels / Jaccard blocks."""
    monkeypatch.setattr(rerank_module, "_ROW_ELEMENTS", 3000)
    monkeypatch.setattr(rerank_module, "_PANEL_ELEMENTS", 25 * 180)
    monkeypatch.setattr(rerank_module, "_EXPAND_ELEMENTS", 2000)
    monkeypatch.setattr(rerank_module, "_PAIR_CHUNK", 100)


@functools.lru_cache(maxsize=None)
def _reference_case(k1, k2, lam):
    """Distances of the default problem and the reference result (computed once per test run)."""
    q_feat, g_feat, *_ = _problem()
    q_g, q_q, g_g = _euclidean(q_feat, g_feat), _euclidean(q_feat, q_feat), _euclidean(g_feat, g_feat)
    return q_g, q_q, g_g, reference_re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.5), (7, 3, 0.0)])
@pytest.mark.parametrize("chunks", ["default", "small"])
def test_matches_reference(request, k1, k2, lam, chunks):
    if chunks == "small":
        request.getfixturevalue("small_chunks")
    _, _, q_pids, g_pids, q_cams, g_cams = _problem()
    q_g, q_q, g_g, expected = _reference_case(k1, k2, lam)
    inputs = [x.copy() for x in (q_g, q_q, g_g)]
    got = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
    for before, after in zip(inputs, (q_g, q_q, g_g)):
        np.testing.assert_array_equal(before, after)  # inputs are not modified
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-6)
    m_ref = evaluate_rank(expected, q_pids, g_pids, q_cams, g_cams)["mAP"]
    m_got = evaluate_rank(got, q_pids, g_pids, q_cams, g_cams)["mAP"]
    assert abs(m_ref - m_got) < 1e-3
    # Re-ranking helps on this clustered data (sanity check of the whole pipeline).
    assert m_got > evaluate_rank(q_g, q_pids, g_pids, q_cams, g_cams)["mAP"]


def test_non_symmetric_inputs_follow_the_reference_transpose():
    # The reference normalises columns and transposes; with non-symmetric q_q / g_g the
    # rows used for the neighbours are the columns of the block matrix.
    rng = np.random.default_rng(3)
    q_g, q_q, g_g = rng.random((6, 25)), rng.random((6, 6)), rng.random((25, 25))
    np.fill_diagonal(q_q, 0)
    np.fill_diagonal(g_g, 0)
    expected = reference_re_ranking(q_g, q_q, g_g, k1=4, k2=2)
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, k1=4, k2=2), expected, atol=2e-6)


@pytest.mark.parametrize("merge_elements", [None, 10])
def test_ties_are_ordered_by_index(monkeypatch, merge_elements):
    # Small integer distances: many ties, ordered by index as a stable argsort would.
    if merge_elements is not None:  # also through the fallback merge used for many ties
        monkeypatch.setattr(rerank_module, "_MERGE_ELEMENTS", merge_elements)
    rng = np.random.default_rng(4)
    q_g, q_q, g_g = rng.integers(1, 6, (8, 40)), rng.integers(1, 6, (8, 8)), rng.integers(1, 6, (40, 40))
    np.fill_diagonal(q_q, 0)
    np.fill_diagonal(g_g, 0)
    expected = reference_re_ranking(q_g, q_q, g_g, k1=6, k2=3, argsort_kind="stable")
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, k1=6, k2=3), expected, atol=2e-6)


@functools.lru_cache(maxsize=None)
def _reference_features(metric):
    q_feat, g_feat, *_ = _problem(seed=1)
    if metric == "euclidean":
        dist = _euclidean
    else:
        def dist(a, b):
            a = a / np.linalg.norm(a, axis=1, keepdims=True)
            b = b / np.linalg.norm(b, axis=1, keepdims=True)
            d = 1 - a @ b.T
            if a.shape == b.shape and np.array_equal(a, b):
                np.fill_diagonal(d, 0)
            return d
    return reference_re_ranking(dist(q_feat, g_feat), dist(q_feat, q_feat), dist(g_feat, g_feat))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunks", ["default", "small"])
def test_features_equal_matrices(request, metric, chunks):
    if chunks == "small":
        request.getfixturevalue("small_chunks")
    q_feat, g_feat, *_ = _problem(seed=1)
    got = re_ranking_features(q_feat, g_feat, metric=metric)
    expected = _reference_features(metric)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_errors():
    q_g, q_q, g_g = np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((3, 3))
    with pytest.raises(ValueError, match="q_q_dist must have shape"):
        re_ranking(q_g, np.zeros((3, 3)), g_g, k1=2)
    with pytest.raises(ValueError, match="g_g_dist must have shape"):
        re_ranking(q_g, q_q, np.zeros((2, 2)), k1=2)
    with pytest.raises(ValueError, match="k1"):
        re_ranking(q_g, q_q, g_g, k1=5)  # 6 neighbours of 5 items
    with pytest.raises(ValueError, match="k2"):
        re_ranking(q_g, q_q, g_g, k1=2, k2=4)
    with pytest.raises(ValueError, match="lambda_value"):
        re_ranking(q_g, q_q, g_g, k1=2, k2=1, lambda_value=1.5)
    with pytest.raises(ValueError, match="NaN"):
        re_ranking(np.full((2, 3), np.nan), q_q, g_g, k1=2, k2=1)
    with pytest.raises(ValueError, match="metric"):
        re_ranking_features(np.zeros((2, 4)), np.zeros((3, 4)), k1=2, metric="manhattan")
    with pytest.raises(ValueError, match="dimensions"):
        re_ranking_features(np.zeros((2, 4)), np.zeros((3, 5)), k1=2)
