"""The embedded default must be learnable: a short CPU budget clearly beats the majority class."""

import json

import pytest

from test_cli_train import run_train


@pytest.mark.slow
def test_short_training_on_the_embedded_default_beats_the_majority_class(tmp_path):
    out = tmp_path / "run"
    result = run_train("--tasks", "upcolor,downcolor,clothes", "--epochs", "12", "--batch-size", "32", "--out", str(out),
                       "--set", "data.image_height=64", "--set", "data.image_width=32", "--set", "model.width=0.5",
                       "--set", "train.learning_rate=3e-3", "--set", "augment.random_erasing=0",
                       "--set", "train.patience=12", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for task in ("upcolor", "downcolor"):
        r = metrics["tasks"][task]
        assert r["accuracy"] > r["majority_accuracy"] + 0.2, (task, r["accuracy"], r["majority_accuracy"])
    summary = metrics["summary"]
    assert summary["mean_accuracy"] > summary["mean_majority_accuracy"] + 0.15
