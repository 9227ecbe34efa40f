"""mtl.search and mtl-search: --where parsing, joint-probability ranking, the combined score."""

import numpy as np
import pandas as pd
import pytest

from mtl.errors import ConfigError
from mtl.reid.index import build_index
from mtl.search import Condition, Gallery, combined_score, log_joint_probability, parse_where, search
from mtl.tasks import BINARY, CATEGORICAL, IDENTITY, TaskSpec

TASKS = [TaskSpec("identity", ("0", "1"), IDENTITY), TaskSpec("backpack", ("no", "yes"), BINARY),
         TaskSpec("upcolor", ("black", "white", "red", "blue"), CATEGORICAL),
         TaskSpec("age", ("young", "adult", "old"), CATEGORICAL)]


def test_parse_where():
    conds = parse_where(" UpColor=Red , backpack=yes", TASKS)
    assert conds == [Condition("upcolor", "red", 2), Condition("backpack", "yes", 1)]
    assert parse_where("age=old,age=old", TASKS) == [Condition("age", "old", 2)]


@pytest.mark.parametrize("text, message", [
    ("hat=yes", "unknown task 'hat'; valid: backpack, upcolor, age"),
    ("upcolor=pink", "unknown value 'pink' of task 'upcolor'; valid: black, white, red, blue"),
    ("identity=1", "unknown task 'identity'"),
    ("upcolor", "expected task=value"),
    ("upcolor=red,upcolor=blue", "asked twice"),
    (" , ", "expected task=value pairs"),
])
def test_parse_where_errors_are_one_line(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_where(text, TASKS)
    assert "\n" not in str(info.value)


def _fake_gallery(n=200, seed=0, planted=None, dim=16):
    """Per-task class probabilities as a model would output them (rows sum to 1), and an index."""
    rng = np.random.default_rng(seed)
    probs = {"backpack": None, "upcolor": rng.dirichlet(np.ones(4), n).astype(np.float32),
             "age": rng.dirichlet(np.ones(3), n).astype(np.float32)}
    p = rng.random(n).astype(np.float32)
    probs["backpack"] = np.stack([1 - p, p], 1)
    for row, values in (planted or {}).items():
        for task, (k, value) in values.items():
            probs[task][row] = (1 - value) / (probs[task].shape[1] - 1)
            probs[task][row, k] = value
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    return Gallery([f"img{i:04d}.jpg" for i in range(n)], probs, build_index(emb, "exact")), emb


def test_attribute_search_ranks_the_planted_match_first():
    # row 137 is the only image the model is confident has a red top AND a backpack; others may be
    # confident about one of them only (row 5: red, no backpack; row 9: backpack, black top)
    planted = {137: {"upcolor": (2, 0.97), "backpack": (1, 0.95)},
               5: {"upcolor": (2, 0.999), "backpack": (1, 0.01)},
               9: {"upcolor": (0, 0.99), "backpack": (1, 0.999)}}
    gallery, _ = _fake_gallery(planted=planted)
    conds = parse_where("upcolor=red,backpack=yes", TASKS)
    table = search(gallery, conds, top=10)
    assert table["path"].iloc[0] == "img0137.jpg"
    assert table["rank"].tolist() == list(range(1, 11))
    assert table["joint_prob"].iloc[0] == pytest.approx(0.97 * 0.95, rel=1e-5)
    assert table["upcolor=red"].iloc[0] == pytest.approx(0.97) and table["backpack=yes"].iloc[0] == pytest.approx(0.95)
    # ranked by joint probability, best first; the score is -log(joint)
    assert np.all(np.diff(table["joint_prob"].to_numpy()) <= 1e-9)
    np.testing.assert_allclose(table["score"], -np.log(table["joint_prob"]), rtol=1e-5)
    # the whole gallery agrees with a brute-force product
    joint = gallery.probabilities["upcolor"][:, 2] * gallery.probabilities["backpack"][:, 1]
    assert table["path"].tolist() == [gallery.paths[i] for i in np.argsort(-joint, kind="stable")[:10]]


def test_log_joint_probability_clips_zero():
    probs = {"backpack": np.array([[1.0, 0.0], [0.5, 0.5]])}
    out = log_joint_probability(probs, [Condition("backpack", "yes", 1)])
    assert np.isfinite(out).all() and out[1] == pytest.approx(np.log(0.5))


def test_combined_search_trades_appearance_for_attributes():
    # the query looks most like row 3 (not red), a bit less like row 8 (red): weight 0 -> row 3 first;
    # with the attribute term, row 8 wins: d8 - w log p8 < d3 - w log p3
    planted = {3: {"upcolor": (0, 0.98)}, 8: {"upcolor": (2, 0.98)}}
    gallery, emb = _fake_gallery(planted=planted, seed=1)
    rng = np.random.default_rng(2)
    emb[8] = emb[3] + 0.3 * rng.normal(size=emb.shape[1])  # a look-alike of row 3
    gallery.index = build_index(emb, "exact")
    query = emb[3] + 0.05 * rng.normal(size=emb.shape[1])
    conds = [Condition("upcolor", "red", 2)]
    appearance = search(gallery, [], query, top=5)
    assert appearance["path"].iloc[0] == "img0003.jpg" and "joint_prob" not in appearance
    assert np.all(np.diff(appearance["distance"]) >= 0)
    plain = search(gallery, conds, query, top=5, weight=0.0)
    assert plain["path"].iloc[0] == "img0003.jpg"
    both = search(gallery, conds, query, top=5, weight=0.05)
    assert both["path"].iloc[0] == "img0008.jpg"
    np.testing.assert_allclose(both["score"], both["distance"] - 0.05 * np.log(both["joint_prob"]), rtol=1e-5)
    assert combined_score(np.array([0.3]), np.array([np.log(0.5)]), 0.1)[0] == pytest.approx(0.3 + 0.1 * np.log(2))


def test_search_needs_something_to_search_by():
    gallery, _ = _fake_gallery(n=10)
    with pytest.raises(ConfigError, match="nothing to search by"):
        search(gallery)
    with pytest.raises(ConfigError, match="--weight must be >= 0"):
        combined_score(np.zeros(1), np.zeros(1), -1)


# === the command, on a real tiny run ===

@pytest.mark.slow
def test_mtl_search_on_a_tiny_run(tiny_reid_run, synthetic_root, tmp_path, capsys):
    from mtl.cli.search import main
    from mtl.rundir import INDEX

    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_reid_run, run)
    gallery = synthetic_root / "test"
    out = tmp_path / "hits.csv"
    assert main(["--run", str(run), "--gallery", str(gallery), "--where", "gender=female,upcolor=red", "--top", "5",
                 "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 5 and list(table.columns[:3]) == ["rank", "path", "score"]
    assert {"joint_prob", "gender=female", "upcolor=red"} <= set(table.columns)
    assert np.all(np.diff(table["joint_prob"]) <= 1e-6)
    assert (run / INDEX / "index.json").is_file()
    first = capsys.readouterr().out
    assert "extracting" in first

    # the saved gallery is reused; an image query combines with the attributes
    query = sorted(gallery.iterdir())[0]
    assert main(["--run", str(run), "--gallery", str(gallery), "--query", str(query), "--where", "hat=yes",
                 "--out", str(out)]) == 0
    assert "extracting" not in capsys.readouterr().out
    table = pd.read_csv(out)
    assert table["path"].iloc[0] == str(query)  # the query image is in the gallery: distance ~0
    assert table["distance"].iloc[0] == pytest.approx(0, abs=1e-4)

    with pytest.raises(ConfigError, match="unknown value 'purple' of task 'gender'; valid: male, female"):
        main(["--run", str(run), "--gallery", str(gallery), "--where", "gender=purple"])
