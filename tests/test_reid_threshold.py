"""Variable-length retrieval (mtl.reid.threshold): the F1 scan against brute force, a separable toy
case, a Market-sized run, the held-out record and mtl-predict --reid-threshold."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mtl.reid.threshold import (holdout_threshold, retrieval_scores, returned_counts, scan_thresholds, topk_scores)


def brute_scores(d, q_ids, g_ids, q_cams, g_cams, threshold=None, k=None, min_return=1, max_return=None):
    """Per-query (precision, recall, F1) by building each returned set, means over queries with a match."""
    out = []
    for i in range(len(d)):
        keep = ~((g_ids == q_ids[i]) & (g_cams == q_cams[i]))
        order = [j for j in np.argsort(d[i], kind="stable") if keep[j]]
        matches = {j for j in order if g_ids[j] == q_ids[i]}
        if not matches:
            continue
        if k is not None:
            n = min(k, len(order))
        else:
            n = sum(d[i, j] <= threshold for j in order)
            n = max(n, min(min_return, len(order)))
            n = n if max_return is None else min(n, max_return)
        returned = order[:n]
        hits = len(matches.intersection(returned))
        precision = hits / n if n else 0.0
        recall = hits / len(matches)
        out.append((precision, recall, 2 * hits / (n + len(matches))))
    return np.mean(out, axis=0)


def random_problem(seed, q=12, g=40, ids=6, cams=3, levels=None):
    rng = np.random.default_rng(seed)
    q_ids, g_ids = rng.integers(0, ids, q), rng.integers(0, ids, g)
    q_cams, g_cams = rng.integers(0, cams, q), rng.integers(0, cams, g)
    d = rng.random((q, g))
    if levels:  # coarse distances: many ties, with the threshold and between images
        d = np.round(d * levels) / levels
    # same identity a bit closer, so that thresholds matter
    d = np.where(q_ids[:, None] == g_ids[None, :], d * 0.6, d).astype(np.float32)
    return d, q_ids, g_ids, q_cams, g_cams


@pytest.mark.parametrize("seed,levels,min_return,max_return", [
    (0, None, 1, None), (1, None, 0, None), (2, 5, 1, None), (3, 4, 0, 3), (4, None, 2, 5), (5, 3, 1, 1)])
def test_scan_equals_brute_force(seed, levels, min_return, max_return):
    d, *ids = random_problem(seed, levels=levels)
    scan = scan_thresholds(d, *ids, min_return=min_return, max_return=max_return, max_k=8)
    # every distinct distance (and below all of them): the scan's best is the true maximum
    everything = np.concatenate(([-np.inf], np.unique(d.astype(np.float64))))
    brute = [brute_scores(d, *ids, threshold=t, min_return=min_return, max_return=max_return)[2] for t in everything]
    assert scan.best()[1] == pytest.approx(max(brute), abs=1e-12)
    # and each candidate's F1 is the brute-force one
    for t, f1 in zip(scan.candidates, scan.f1):
        assert f1 == pytest.approx(brute_scores(d, *ids, threshold=t, min_return=min_return,
                                                max_return=max_return)[2], abs=1e-12)
    value, best_f1 = scan.best()
    precision, recall, f1 = brute_scores(d, *ids, threshold=value, min_return=min_return, max_return=max_return)
    got = retrieval_scores(d, *ids, value, min_return, max_return)
    assert (got["f1"], got["precision"], got["recall"]) == pytest.approx((f1, precision, recall), abs=1e-12)
    assert got["f1"] == pytest.approx(best_f1, abs=1e-12)
    for k in range(1, 9):
        assert scan.topk_f1[k - 1] == pytest.approx(brute_scores(d, *ids, k=k)[2], abs=1e-12)
        got = topk_scores(d, *ids, k)
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx(tuple(brute_scores(d, *ids, k=k)),
                                                                              abs=1e-12)


def test_separable_clusters_give_a_threshold_between_them():
    # 4 people x 3 cameras, 3 gallery images each on cameras 1-2; matches at 0.1-0.2, others at 0.8-0.9
    rng = np.random.default_rng(0)
    q_ids, q_cams = np.arange(4), np.zeros(4, int)
    g_ids, g_cams = np.repeat(np.arange(4), 3), np.tile([1, 2, 1], 4)
    same = q_ids[:, None] == g_ids[None, :]
    d = np.where(same, rng.uniform(0.1, 0.2, (4, 12)), rng.uniform(0.8, 0.9, (4, 12))).astype(np.float32)
    scan = scan_thresholds(d, q_ids, g_ids, q_cams, g_cams, max_k=12)
    value, f1 = scan.best()
    assert d[same].max() <= value < 0.8 and f1 == 1.0
    assert scan.best_k() == (3, 1.0)  # every person has 3 matches: top-3 is perfect too
    scores = topk_scores(d, q_ids, g_ids, q_cams, g_cams, 10)
    assert scores["recall"] == 1.0 and scores["precision"] == pytest.approx(0.3)
    # unequal numbers of matches: no fixed length is perfect, the threshold is
    keep = np.ones(12, bool)
    keep[[0, 1]] = False  # person 0 keeps one match
    ids = (q_ids, g_ids[keep], q_cams, g_cams[keep])
    record = holdout_threshold(d[:, keep], *ids, seed=0, top_k=10)
    assert d[:, keep][same[:, keep]].max() <= record["value"] < 0.8
    assert record["f1"] == record["precision"] == record["recall"] == 1.0
    assert record["best_k"]["f1"] < 1.0 and record["validation"].startswith("2-fold")
    assert record["distance"] == "cosine" and record["num_valid_queries"] == 4


def test_same_camera_images_are_never_returned_nor_counted():
    d = np.array([[0.0, 0.1, 0.5]], np.float32)  # gallery 0: same person and camera (removed)
    ids = (np.array([7]), np.array([7, 7, 3]), np.array([1]), np.array([1, 2, 2]))
    assert retrieval_scores(d, *ids, 0.2) == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "mean_returned": 1.0,
                                              "num_valid_queries": 1, "num_queries": 1}
    np.testing.assert_array_equal(returned_counts(np.array([[np.inf, 0.1, 0.5]]), 1.0, max_return=5), [2])
    # nothing under the threshold: the nearest image still comes back (min_return=1), or nothing (0)
    assert retrieval_scores(d, *ids, -1.0)["f1"] == 1.0
    assert retrieval_scores(d, *ids, -1.0, min_return=0) == {
        "f1": 0.0, "precision": 0.0, "recall": 0.0, "mean_returned": 0.0, "num_valid_queries": 1, "num_queries": 1}
    with pytest.raises(ValueError, match="no query has a matching"):
        scan_thresholds(d[:, :1], ids[0], ids[1][:1], ids[2], ids[3][:1])


@pytest.mark.slow  # seconds alone; tens of seconds on a shared 2-core machine
def test_market_sized_scan_runs():
    # 2,000 queries x 20,000 gallery images (no timing asserted: it must simply run, in bounded memory)
    rng = np.random.default_rng(0)
    q, g = 2000, 20000
    q_ids, g_ids = rng.integers(0, 750, q), rng.integers(0, 750, g)
    q_cams, g_cams = rng.integers(0, 6, q), rng.integers(0, 6, g)
    d = rng.uniform(0.25, 1.0, (q, g)).astype(np.float32)  # other people; the same person overlaps them a little
    same = q_ids[:, None] == g_ids[None, :]
    d[same] = rng.uniform(0.0, 0.35, int(same.sum()))
    scan = scan_thresholds(d, q_ids, g_ids, q_cams, g_cams)
    value, f1 = scan.best()
    assert 0.2 < value < 0.35 and 0.5 < f1 <= 1 and scan.num_valid_queries > 1900
    assert f1 > scan.best_k()[1]  # a variable length beats every fixed one when people have 0-60 matches


# === The deliverable: variable-length reid_test.txt ===

def test_top_k_rows_breaks_ties_at_the_cut_by_gallery_index():
    from mtl.reid.threshold import top_k_rows

    # argpartition alone returned any of the 300 tied entries after the smallest one
    d = np.array([[0.1] * 300 + [0.05]], np.float32)
    np.testing.assert_array_equal(top_k_rows(d, 3), [[300, 0, 1]])
    coarse = np.round(np.random.default_rng(0).random((50, 200)) * 4) / 4
    for k in (1, 7, 50, 199):
        np.testing.assert_array_equal(top_k_rows(coarse, k), np.argsort(coarse, axis=1, kind="stable")[:, :k])


def test_threshold_rows_and_their_lines(tmp_path):
    from mtl.deliverables import rank_gallery, read_reid_txt, threshold_rows, write_reid_txt
    from mtl.errors import DataError

    d = np.array([[0.3, 0.1, 0.2, 0.9], [0.5, 0.6, 0.7, 0.8], [0.0, 0.0, 0.1, 0.1]], np.float32)
    rows = threshold_rows(d, 0.25, top=3)
    assert [r.tolist() for r in rows] == [[1, 2], [0], [0, 1, 2]]  # nearest only; capped at top
    write_reid_txt(tmp_path / "r.txt", ["q1.jpg", "q2.jpg", "q3.jpg"], ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], rows)
    assert read_reid_txt(tmp_path / "r.txt") == {"q1.jpg": ["b.jpg", "c.jpg"], "q2.jpg": ["a.jpg"],
                                                 "q3.jpg": ["a.jpg", "b.jpg", "c.jpg"]}
    with pytest.raises(DataError, match="no gallery image"):
        write_reid_txt(tmp_path / "e.txt", ["q.jpg"], ["a.jpg"], [np.array([], int)])
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(21, 8)).astype(np.float32), rng.normal(size=(60, 8)).astype(np.float32)
    full = rank_gallery(q, g, top=60, distance="euclidean")
    dist = np.sqrt(((q[:, None] - g[None]) ** 2).sum(-1))
    t = float(np.median(dist.min(axis=1)))
    chunked = rank_gallery(q, g, top=10, distance="euclidean", chunk=4, threshold=t)
    for i, row in enumerate(chunked):
        n = min(10, max(1, int((dist[i] <= t).sum())))
        np.testing.assert_array_equal(row, full[i, :n])


def run_copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))


@pytest.mark.slow  # trains the session's tiny identity run (tens of seconds on a shared CPU)
def test_run_records_a_cross_validated_threshold(tiny_reid_run):
    reid = json.loads((tiny_reid_run / "metrics.json").read_text())["reid"]
    record = reid["threshold"]
    assert {"value", "f1", "precision", "recall", "distance", "top_k", "best_k", "in_sample"} <= set(record)
    assert record["distance"] == reid["distance"] == "cosine"
    assert 0 <= record["f1"] <= 1 and record["top_k"]["k"] == 100
    assert record["num_valid_queries"] == reid["plain"]["num_valid_queries"]


@pytest.mark.slow  # trains the session's tiny identity run (tens of seconds on a shared CPU)
def test_the_report_shows_the_runs_threshold(tiny_reid_run):
    from mtl.report.tables import reid_extras

    reid = json.loads((tiny_reid_run / "metrics.json").read_text())["reid"]
    rows = {row[0].text: row[1].text for row in reid_extras(reid).rows}
    shown = rows["distance threshold"]
    assert f"{reid['threshold']['value']:.4f}" in shown and f"F1 {reid['threshold']['f1']:.3f}" in shown
    assert f"k={reid['threshold']['best_k']['k']}" in shown


@pytest.mark.slow  # trains the session's tiny identity run (tens of seconds on a shared CPU)
def test_predict_with_the_runs_threshold_writes_variable_length_lines(tiny_reid_run, synthetic_root, tmp_path,
                                                                      capsys):
    from mtl.cli import predict
    from mtl.data.sources.market_course import load
    from mtl.deliverables import read_reid_txt
    from mtl.inference import extract_features
    from mtl.reid.embedding import embedding_layer_name, feature_model
    from mtl.reid.protocol import feature_distance
    from mtl.runs import load_run

    threshold = json.loads((tiny_reid_run / "metrics.json").read_text())["reid"]["threshold"]["value"]
    out = tmp_path / "out"
    assert predict.main(["--run", str(tiny_reid_run), "--data", str(synthetic_root), "--out", str(out),
                         "--reid-threshold", "auto", "--top", "20"]) == 0
    printed = capsys.readouterr().out
    assert "reid threshold" in printed and "mean" in printed
    ranked = read_reid_txt(out / "reid_test.txt")
    # the reference: the run's own descriptors, every test/ image at distance <= t, 1 to 20 per query
    source = load(synthetic_root, train=False)
    queries, gallery = source.subset("query"), source.subset("test")
    loaded = load_run(tiny_reid_run)
    layer, cfg = embedding_layer_name(loaded.model), loaded.config

    def features(paths):
        return extract_features(feature_model(loaded.model, [layer]), paths, cfg.data.image_height,
                                cfg.data.image_width)[layer].reshape(len(paths), -1)

    d = feature_distance(features(queries["path"]), features(gallery["path"]), "cosine")
    names = np.array([p.rsplit("/", 1)[-1] for p in gallery["path"]])
    assert list(ranked) == sorted(p.rsplit("/", 1)[-1] for p in queries["path"])
    lengths = []
    for i, q in enumerate(queries["path"]):
        got = ranked[q.rsplit("/", 1)[-1]]
        order = np.argsort(d[i], kind="stable")
        n = min(20, max(1, int((d[i] <= threshold).sum())))
        assert got[:-1] == list(names[order[:len(got) - 1]])  # best first (the last one may tie within 1e-6)
        assert len(got) == n, (q, len(got), n)
        lengths.append(len(got))
    assert len(set(lengths)) > 1  # variable length
    # the same number given by hand writes the same file
    assert predict.main(["--run", str(tiny_reid_run), "--data", str(synthetic_root), "--out", str(tmp_path / "o2"),
                         "--reid-threshold", repr(threshold), "--top", "20"]) == 0
    assert (tmp_path / "o2" / "reid_test.txt").read_text() == (out / "reid_test.txt").read_text()


@pytest.mark.slow  # trains the session's tiny identity run (tens of seconds on a shared CPU)
def test_reid_threshold_errors_are_one_line(tiny_reid_run, tmp_path):
    from mtl.cli import predict
    from mtl.errors import DataError

    with pytest.raises(DataError, match="--reid-threshold 'near'.*auto, none or a distance"):
        predict.main(["--run", str(tiny_reid_run), "--reid-threshold", "near"])
    with pytest.raises(DataError, match="--reid-threshold: only for the course deliverables"):
        predict.main(["--run", str(tiny_reid_run), "--images", str(tmp_path), "--reid-threshold", "0.3"])
    with pytest.raises(DataError, match="with --rerank give a distance"):
        predict.main(["--run", str(tiny_reid_run), "--out", str(tmp_path / "o"), "--reid-threshold", "auto",
                      "--rerank"])
    with pytest.raises(DataError, match="is a cosine distance; --distance euclidean"):
        predict.main(["--run", str(tiny_reid_run), "--out", str(tmp_path / "o"), "--reid-threshold", "auto",
                      "--distance", "euclidean"])
    run = run_copy(tiny_reid_run, tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["reid"]["threshold"]  # a run trained before thresholds were recorded
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(DataError, match="records no threshold"):
        predict.main(["--run", str(run), "--out", str(tmp_path / "o"), "--reid-threshold", "auto"])
