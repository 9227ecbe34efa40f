"""The pedestrian-attribute (PAR) metrics as the field reports them (Jia et al. 2021, Rethinking_of_PAR):
instance-based accuracy / precision / recall / F1 beside the label-based mA, computed by hand on toy
cases, against an independent per-image reimplementation and sklearn, and carried through a real
tiny run's metrics.json, the printed validation lines, mtl-evaluate, the report and tuning."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import jaccard_score, precision_score, recall_score

from mtl.scoring import (INSTANCE_KEYS, attribute_matrix, class_probabilities, evaluate_attributes, instance_line,
                         instance_metrics)
from mtl.tasks import TaskSpec

HAT = TaskSpec("hat", ("no", "yes"), "binary")
AGE = TaskSpec("age", ("young", "teenager", "adult", "old"), "categorical")


def by_hand(truth, prediction) -> dict:
    """The protocol written out per image with Python sets: only labelled attributes count, an
    empty denominator gives 0, images without a labelled attribute are left out, F1 of the means."""
    accs, precs, recs = [], [], []
    for t_row, p_row in zip(truth, prediction):
        labelled = [a for a, t in enumerate(t_row) if t >= 0]
        if not labelled:
            continue
        g = {a for a in labelled if t_row[a] == 1}
        p = {a for a in labelled if p_row[a] == 1}
        accs.append(len(g & p) / len(g | p) if g | p else 0.0)
        precs.append(len(g & p) / len(p) if p else 0.0)
        recs.append(len(g & p) / len(g) if g else 0.0)
    prec, rec = np.mean(precs), np.mean(recs)
    return {"instance_accuracy": np.mean(accs), "instance_precision": prec, "instance_recall": rec,
            "instance_f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0, "num_images": len(accs)}


def test_instance_metrics_by_hand_with_masks_and_empty_sets():
    truth = np.array([[1, 0, 1],      # |G ∩ P| 1, |G ∪ P| 3, |P| 2, |G| 2
                      [0, 0, 0],      # nothing true, nothing predicted: 0 on all three (their eps)
                      [1, -1, 0],     # the masked attribute's prediction does not count: P = {0, 2}
                      [-1, -1, -1],   # no labelled attribute: left out
                      [1, 0, 0],      # nothing predicted: precision 0, recall 0
                      [0, 0, 0]])     # a false positive only: all 0
    prediction = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 1, 0]])
    got = instance_metrics(truth, prediction)
    assert got["num_images"] == 5
    assert got["instance_accuracy"] == pytest.approx((1 / 3 + 1 / 2) / 5)
    assert got["instance_precision"] == pytest.approx((1 / 2 + 1 / 2) / 5)
    assert got["instance_recall"] == pytest.approx((1 / 2 + 1) / 5)
    # F1 of the averaged precision and recall (0.2, 0.3), not the mean of per-image F1s
    assert got["instance_f1"] == pytest.approx(2 * 0.2 * 0.3 / 0.5)
    assert got == pytest.approx(by_hand(truth, prediction))


def test_no_labelled_attribute_gives_none():
    got = instance_metrics(-np.ones((3, 2), int), np.ones((3, 2), int))
    assert got == {**dict.fromkeys(INSTANCE_KEYS), "num_images": 0}
    assert instance_line(got) is None
    assert instance_metrics(np.zeros((0, 2), int), np.zeros((0, 2), int))["num_images"] == 0


def test_random_data_agrees_with_reimplementation_and_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, a = rng.integers(1, 40), rng.integers(2, 12)  # one column: sklearn takes it for binary
        truth = rng.integers(0, 2, (n, a))
        prediction = rng.integers(0, 2, (n, a))
        truth[rng.random((n, a)) < 0.2] = 0  # sparse positives: empty sets happen
        masked = np.where(rng.random((n, a)) < 0.3, -1, truth)
        assert instance_metrics(masked, prediction) == pytest.approx(by_hand(masked, prediction))
        # without masks the per-image ratios are sklearn's "samples" averages (0 where undefined)
        got = instance_metrics(truth, prediction)
        assert got["instance_accuracy"] == pytest.approx(
            jaccard_score(truth, prediction, average="samples", zero_division=0))
        assert got["instance_precision"] == pytest.approx(
            precision_score(truth, prediction, average="samples", zero_division=0))
        assert got["instance_recall"] == pytest.approx(
            recall_score(truth, prediction, average="samples", zero_division=0))


def test_categorical_tasks_enter_as_one_hot_attributes():
    labels = {"hat": np.array([1, 0, -1]), "age": np.array([2, -1, 0])}
    predicted = {"hat": np.array([1, 1, 0]), "age": np.array([2, 1, 3])}
    truth, prediction, names = attribute_matrix(labels, predicted, [HAT, AGE])
    assert names == ["hat", "age=young", "age=teenager", "age=adult", "age=old"]
    np.testing.assert_array_equal(truth, [[1, 0, 0, 1, 0], [0, -1, -1, -1, -1], [-1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(prediction, [[1, 0, 0, 1, 0], [1, 0, 1, 0, 0], [0, 0, 0, 0, 1]])
    # image 0 all right; image 1: only hat labelled, a false positive; image 2: only age, wrong class
    got = instance_metrics(truth, prediction)
    assert [got[k] for k in INSTANCE_KEYS] == pytest.approx([1 / 3] * 4)


def test_evaluate_attributes_from_probabilities():
    labels = {"hat": np.array([1, 0, -1, 1]), "age": np.array([2, -1, 0, 1])}
    # a sigmoid of exactly 0.5 is not positive (Rethinking_of_PAR: probability > threshold)
    probs = {"hat": class_probabilities(np.array([[0.9], [0.6], [0.2], [0.5]]), HAT),
             "age": np.eye(4)[[2, 1, 3, 1]] * 0.7 + 0.075}
    out = evaluate_attributes(labels, probs, [HAT, AGE, TaskSpec("identity", ("a", "b"), "identity")])
    assert set(out["tasks"]) == {"hat", "age"}
    assert out["instance"] == {"attributes": ["hat", "age=young", "age=teenager", "age=adult", "age=old"],
                               "num_images": 4}
    # images: 1/1/1, 0/0/0, 0/0/0, and G = {hat, teenager}, P = {teenager}: 1/2, 1, 1/2
    s = out["summary"]
    assert s["instance_accuracy"] == pytest.approx(1.5 / 4)
    assert s["instance_precision"] == pytest.approx(2 / 4)
    assert s["instance_recall"] == pytest.approx(1.5 / 4)
    p, r = 0.5, 0.375
    assert s["instance_f1"] == pytest.approx(2 * p * r / (p + r))
    assert s["mA"] == out["tasks"]["hat"]["balanced_accuracy"]  # mA stays over the binary tasks
    assert instance_line(s) == (f"instance accuracy {1.5 / 4:.3f}  precision 0.500  recall {r:.3f}  "
                                f"F1 {2 * p * r / (p + r):.3f}")


# ------------------------------------------------------------------------------------------
# carried through a real tiny run (conftest.tiny_run: gender binary, upcolor categorical)


def test_training_writes_and_prints_instance_metrics(tiny_run):
    from mtl.experiment import result_lines

    metrics = json.loads((tiny_run / "metrics.json").read_text())
    summary = metrics["summary"]
    assert set(INSTANCE_KEYS) <= set(summary) and summary["mA"] is not None
    tasks = [TaskSpec.from_dict(t) for t in json.loads((tiny_run / "tasks.json").read_text())]
    # the figures are those of the run's own validation predictions
    preds = pd.read_csv(tiny_run / "val_predictions.csv")
    truth, prediction, names = attribute_matrix({t.name: preds[f"{t.name}_true"] for t in tasks},
                                                {t.name: preds[f"{t.name}_pred"] for t in tasks}, tasks)
    assert metrics["instance"] == {"attributes": names, "num_images": by_hand(truth, prediction)["num_images"]}
    assert names[0] == "gender" and names[1].startswith("upcolor=")
    expected = by_hand(truth, prediction)
    assert [summary[k] for k in INSTANCE_KEYS] == pytest.approx([expected[k] for k in INSTANCE_KEYS])
    lines = result_lines(metrics)
    assert f"  {instance_line(summary)}" in lines and lines.index(f"  {instance_line(summary)}") > 0
    # a run written before these metrics existed prints what it has
    old = {**metrics, "summary": {k: v for k, v in summary.items() if k not in INSTANCE_KEYS}}
    assert not any("instance" in line for line in result_lines(old))


def test_evaluate_prints_and_writes_instance_metrics(tmp_path, tiny_run, capsys):
    from mtl.cli.evaluate import main as evaluate

    run = shutil.copytree(tiny_run, tmp_path / "evaluated", ignore=shutil.ignore_patterns(".lock"))
    assert evaluate(["--run", str(run), "--images", "val", "--examples", "0"]) == 0
    attributes = json.loads((run / "metrics.json").read_text())["evaluation"]["attributes"]
    assert set(INSTANCE_KEYS) <= set(attributes["summary"])
    assert f"attributes: {instance_line(attributes['summary'])}" in capsys.readouterr().out


def test_report_shows_instance_metrics_and_tolerates_older_runs(tmp_path, tiny_run):
    from mtl.report import render_comparison, render_report

    summary = json.loads((tiny_run / "metrics.json").read_text())["summary"]
    f1 = f"{100 * summary['instance_f1']:.1f}%"
    text = (render_report(tiny_run, tmp_path / "r.html")).read_text(encoding="utf-8")
    assert f"<b>{f1}</b><span>instance F1</span>" in text  # at a glance
    assert "Instance-based (per image" in text and f"F1 <b>{f1}</b>" in text  # binary attributes section
    # an older run: no instance keys in its summary
    old = shutil.copytree(tiny_run, tmp_path / "old", ignore=shutil.ignore_patterns(".lock", "checkpoints", "model.keras"))
    metrics = json.loads((old / "metrics.json").read_text())
    metrics["summary"] = {k: v for k, v in metrics["summary"].items() if k not in INSTANCE_KEYS}
    metrics.pop("instance")
    (old / "metrics.json").write_text(json.dumps(metrics))
    text = render_report(old, tmp_path / "old.html").read_text(encoding="utf-8")
    assert "instance F1" not in text and "Instance-based" not in text
    cmp = render_comparison([tiny_run, old], tmp_path / "c.html").read_text(encoding="utf-8")
    assert "<th>instance F1</th>" in cmp and f"<td>{f1}</td>" in cmp


def test_instance_f1_is_a_tuning_objective_with_a_majority_baseline():
    from mtl.tuning.objective import objective_metrics, resolve_objective
    from mtl.tuning.results import majority_metrics

    tasks = [HAT, AGE]
    objective = resolve_objective("instance_f1", tasks)
    assert (objective.name, objective.direction, objective.post_trial) == ("instance_f1", "max", True)
    assert resolve_objective("mA", tasks).name == "mA"
    assert "instance_f1" in objective_metrics(tasks)
    # always "no hat", always "adult": images 0 and 1 exactly right, image 2 (hat, teenager) all wrong
    val = pd.DataFrame({"hat": [0, 0, 1], "age": [2, 2, 1]})
    assert majority_metrics(val, tasks)["instance_f1"] == pytest.approx(2 / 3)


def test_the_auxiliary_tasks_have_results_but_stay_out_of_the_summary():
    from mtl.tasks import camera_task, junk_task

    camera, junk = camera_task([1, 2]), junk_task()
    hat = np.array([0, 1, 1, 0])
    labels = {"hat": hat, "camera": np.array([1, 2, 1, 2]), "junk": np.zeros(4, int)}
    # hat predicted right; camera and junk always wrong
    probabilities = {"hat": class_probabilities(hat.astype(np.float32), HAT),
                     "camera": np.tile([1.0, 0.0, 0.0], (4, 1)),
                     "junk": class_probabilities(np.ones(4, np.float32), junk)}
    result = evaluate_attributes(labels, probabilities, [HAT, camera, junk])
    assert result["tasks"]["camera"]["accuracy"] == 0.0 and result["tasks"]["junk"]["accuracy"] == 0.0
    assert result["summary"]["mean_accuracy"] == 1.0 and result["summary"]["mA"] == 1.0
    assert result["instance"]["attributes"] == ["hat"]
