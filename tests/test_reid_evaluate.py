"""mtl.reid.evaluate_rank: hand-worked cases, agreement with the torchreid per-query loop."""

import numpy as np
import pytest

import mtl.reid.evaluate as evaluate_module
from mtl.reid import evaluate_rank
from mtl.reid.reference import reference_eval_market1501


@pytest.fixture(params=["compare", "sort"])
def path(request, monkeypatch):
    """Run a test with every query ranked by row comparisons, then by row sorting."""
    monkeypatch.setattr(evaluate_module, "_SORT_MIN_MATCHES", 10**9 if request.param == "compare" else 0)
    return request.param


def _toy():
    # Gallery (index: identity, camera):
    #   g0: 1, cam 1    g1: 2, cam 1    g2: 1, cam 0    g3: 1, cam 2    g4: 3, cam 0
    g_pids = np.array([1, 2, 1, 1, 3])
    g_camids = np.array([1, 1, 0, 2, 0])
    # Queries: A = identity 1 in cam 0, B = identity 2 in cam 0, C = identity 3 in cam 0.
    q_pids = np.array([1, 2, 3])
    q_camids = np.array([0, 0, 0])
    distmat = np.array([
        # g0    g1    g2    g3    g4
        [0.30, 0.10, 0.05, 0.60, 0.40],  # A
        [0.10, 0.20, 0.50, 0.30, 0.05],  # B
        [0.10, 0.20, 0.30, 0.40, 0.50],  # C
    ])
    return distmat, q_pids, g_pids, q_camids, g_camids


def test_hand_worked_metrics(path):
    distmat, q_pids, g_pids, q_camids, g_camids = _toy()
    out = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=5)
    # Query A (id 1, cam 0): sorted g2 .05, g1 .10, g0 .30, g4 .40, g3 .60. g2 is id 1 in
    #   cam 0 -> removed. Remaining ranking: g1 (1), g0 (2, match), g4 (3), g3 (4, match).
    #   AP = (1/2 + 2/4) / 2 = 0.5; INP = 2 / 4 = 0.5; first match at rank 2.
    # Query B (id 2, cam 0): sorted g4 .05, g0 .10, g1 .20 (match), g3 .30, g2 .50.
    #   AP = 1/3; INP = 1/3; first match at rank 3.
    # Query C (id 3, cam 0): its only gallery image g4 is in cam 0 -> removed -> skipped.
    assert out["num_valid_queries"] == 2
    assert out["num_queries"] == 3
    assert out["mAP"] == pytest.approx((0.5 + 1 / 3) / 2)  # 5/12
    assert out["mINP"] == pytest.approx((0.5 + 1 / 3) / 2)
    # CMC over the 2 valid queries: rank 1: none; rank 2: A; rank >= 3: A and B.
    np.testing.assert_allclose(out["cmc"], [0.0, 0.5, 1.0, 1.0, 1.0])
    assert out["rank1"] == 0.0 and out["rank5"] == 1.0 and out["rank10"] == 1.0
    assert out["cmc"].shape == (5,)


def test_same_camera_removal_changes_ranks(path):
    # One query, id 7 cam 0. Gallery: g0 id 7 cam 0 (d .1), g1 id 8 (d .2), g2 id 7 cam 3 (d .3).
    # Without removal g2 would be at rank 3 with g0 a match at rank 1; with removal g0 is
    # dropped, ranking is g1 (1), g2 (2): AP = 1/2, INP = 1/2, CMC = [0, 1, 1].
    out = evaluate_rank(np.array([[0.1, 0.2, 0.3]]), np.array([7]), np.array([7, 8, 7]),
                        np.array([0]), np.array([0, 1, 3]), max_rank=3)
    assert out["mAP"] == pytest.approx(0.5)
    assert out["mINP"] == pytest.approx(0.5)
    np.testing.assert_allclose(out["cmc"], [0.0, 1.0, 1.0])


def test_ties_are_ordered_by_gallery_index(path):
    # Query id 1 cam 0. Gallery (identity, camera, distance):
    #   g0 (1, 0, .5) removed (same camera)   g1 (2, 1, .5)   g2 (1, 1, .5) match
    #   g3 (1, 2, .2) match                   g4 (3, 1, .5)
    # Order: g3 (.2), then the .5 ties by index: g0 (removed), g1, g2, g4.
    # Valid ranking: g3 (1, match), g1 (2), g2 (3, match), g4 (4).
    # AP = (1/1 + 2/3) / 2 = 5/6; INP = 2/3; first match rank 1.
    distmat = np.array([[0.5, 0.5, 0.5, 0.2, 0.5]], dtype=np.float32)
    out = evaluate_rank(distmat, np.array([1]), np.array([1, 2, 1, 1, 3]),
                        np.array([0]), np.array([0, 1, 1, 2, 1]), max_rank=4)
    assert out["mAP"] == pytest.approx(5 / 6)
    assert out["mINP"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(out["cmc"], [1, 1, 1, 1])
    # Moving the match before the non-match in index order moves it up: gallery with g1 and
    # g2 swapped -> valid ranking g3 (1), g1 (2, match), g2 (3): AP = (1 + 2/2) / 2 = 1,
    # INP = 2/2 = 1.
    out = evaluate_rank(distmat, np.array([1]), np.array([1, 1, 2, 1, 3]),
                        np.array([0]), np.array([0, 1, 1, 2, 1]), max_rank=4)
    assert out["mAP"] == pytest.approx(1.0)
    assert out["mINP"] == pytest.approx(1.0)


def test_all_distances_equal(path):
    # Everything tied: the ranking is the gallery order. Query id 1 cam 0; matches at
    # gallery indices 1 and 3 of 4 -> ranks 2 and 4: AP = (1/2 + 2/4) / 2 = 0.5, INP = 2/4.
    out = evaluate_rank(np.zeros((1, 4)), np.array([1]), np.array([5, 1, 6, 1]),
                        np.array([0]), np.array([1, 1, 1, 1]), max_rank=2)
    assert out["mAP"] == pytest.approx(0.5)
    assert out["mINP"] == pytest.approx(0.5)
    np.testing.assert_allclose(out["cmc"], [0.0, 1.0])


def test_max_rank_beyond_gallery_size():
    # First match at rank 1 of a 2-image gallery; the CMC keeps length max_rank, all 1.
    out = evaluate_rank(np.array([[0.1, 0.2]]), np.array([1]), np.array([1, 2]),
                        np.array([0]), np.array([1, 1]), max_rank=5)
    np.testing.assert_allclose(out["cmc"], np.ones(5))
    assert out["rank10"] == 1.0


def _random_problem(rng, num_q, num_g, num_ids, num_cams, dtype=np.float64, ties=False):
    q_pids = rng.integers(0, num_ids, num_q)
    g_pids = rng.integers(0, num_ids + 5, num_g)  # some gallery identities match no query
    q_camids = rng.integers(0, num_cams, num_q)
    g_camids = rng.integers(0, num_cams, num_g)
    distmat = rng.random((num_q, num_g))
    # Make matches closer on average so that the metrics are not trivial.
    distmat -= 0.3 * (q_pids[:, None] == g_pids[None, :])
    if ties:
        distmat = np.round(distmat, 1)
    return distmat.astype(dtype), q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize("dtype,ties", [(np.float64, False), (np.float32, False),
                                        (np.float64, True), (np.int32, True)])
def test_agrees_with_reference_loop(path, monkeypatch, dtype, ties):
    # Small chunk budgets: several query chunks and several comparison batches per chunk.
    monkeypatch.setattr(evaluate_module, "_CHUNK_ELEMENTS", 7 * 300)
    monkeypatch.setattr(evaluate_module, "_COMPARE_ELEMENTS", 3 * 5 * 320)
    rng = np.random.default_rng(0)
    distmat, q_pids, g_pids, q_camids, g_camids = _random_problem(rng, 40, 300, 12, 4, np.float64, ties)
    if dtype == np.int32:
        distmat = (distmat * 10).round().astype(np.int32)
    else:
        distmat = distmat.astype(dtype)
    cmc, mAP, mINP, num_valid = reference_eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids)
    out = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    assert out["num_valid_queries"] == num_valid
    assert abs(out["mAP"] - mAP) < 1e-6
    assert abs(out["mINP"] - mINP) < 1e-6
    np.testing.assert_allclose(out["cmc"], cmc, atol=1e-6)
    assert out["rank1"] == pytest.approx(cmc[0], abs=1e-6)
    assert out["rank5"] == pytest.approx(cmc[4], abs=1e-6)
    assert out["rank10"] == pytest.approx(cmc[9], abs=1e-6)


def test_default_auto_path_agrees_with_reference():
    # Identities with many gallery images (sort path) and few (compare path) in one call.
    rng = np.random.default_rng(1)
    num_g = 500
    g_pids = np.concatenate([np.repeat([1, 2], 60), rng.integers(3, 40, num_g - 120)])
    g_camids = rng.integers(0, 6, num_g)
    q_pids = np.array([1, 2, 3, 4, 5, 6, 1, 2])
    q_camids = rng.integers(0, 6, q_pids.size)
    distmat = rng.random((q_pids.size, num_g)).astype(np.float32)
    distmat -= 0.2 * (q_pids[:, None] == g_pids[None, :])
    cmc, mAP, mINP, num_valid = reference_eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids)
    out = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    assert out["num_valid_queries"] == num_valid
    assert abs(out["mAP"] - mAP) < 1e-6 and abs(out["mINP"] - mINP) < 1e-6
    np.testing.assert_allclose(out["cmc"], cmc, atol=1e-6)


def test_string_identities():
    out = evaluate_rank(np.array([[0.2, 0.1]]), np.array(["a"]), np.array(["a", "b"]),
                        np.array([0]), np.array([1, 1]), max_rank=2)
    # Ranking b (1), a (2, match): AP = 1/2.
    assert out["mAP"] == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(distmat=np.zeros(3)), "2-D"),
    (dict(distmat=np.zeros((0, 3)), q_pids=np.zeros(0), q_camids=np.zeros(0)), "empty"),
    (dict(q_pids=np.array([1, 2, 3])), "q_pids has 3 entries"),
    (dict(g_camids=np.array([1, 2])), "g_camids has 2 entries"),
    (dict(g_pids=np.zeros((3, 1))), "one-dimensional"),
    (dict(distmat=np.array([[np.nan, 0.1, 0.2], [0.1, 0.2, 0.3]])), "NaN"),
    (dict(max_rank=0), "max_rank"),
    (dict(g_pids=np.array([7, 8, 9])), "no query has a matching gallery image"),
])
def test_errors(kwargs, message):
    args = dict(distmat=np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]), q_pids=np.array([1, 2]),
                g_pids=np.array([1, 2, 3]), q_camids=np.array([0, 0]), g_camids=np.array([1, 1, 1]))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate_rank(**args)


def test_reid_package_does_not_import_tensorflow():
    """The rule of ``mtl/__init__.py``: importing mtl never imports TensorFlow or Keras (they
    register mtl's Keras objects when Keras itself is imported), so the numpy evaluation works
    where TensorFlow is not installed and stays quick to import where it is."""
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    evaluate = ("import numpy as np, mtl, mtl.reid; "
                "r = mtl.reid.evaluate_rank(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 2]), np.array([1, 2]), "
                "np.array([0, 0]), np.array([1, 1])); print(r['mAP'], r['cmc'][0]); ")
    installed = evaluate + "print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    # an environment without TensorFlow / Keras: importing either raises ImportError
    absent = "sys.modules['tensorflow'] = sys.modules['keras'] = None; " + evaluate + "print('ok')"
    for code, last in ((installed, "False"), (absent, "ok")):
        out = subprocess.run([sys.executable, "-c", "import sys; " + code], capture_output=True, text=True,
                             cwd=root)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == ["1.0", "1.0", last]
