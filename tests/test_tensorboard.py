"""TensorBoard logs of a run: runs/NAME/tensorboard/{train,validation} with the epoch scalars, and
the re-identification figures computed after training."""

import pytest

from conftest import tiny_config


def scalars(folder) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of the event files in ``folder`` (Keras writes scalars as tensors)."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    out = {tag: {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}
           for tag in acc.Tags()["tensors"]}
    out.update({tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]})
    return out


@pytest.mark.slow
def test_a_run_writes_tensorboard_scalars_for_every_epoch(synthetic_root, tmp_path):
    import json

    from mtl.experiment import train
    from mtl.rundir import HISTORY, TENSORBOARD

    out = tmp_path / "run"
    cfg = tiny_config(synthetic_root, tasks="age,hat", train={"epochs": 2, "batch_size": 32, "keep": "last"})
    train(cfg, out, command="test", log=None)
    train_scalars = scalars(out / TENSORBOARD / "train")
    val_scalars = scalars(out / TENSORBOARD / "validation")
    for tag in ("epoch_loss", "epoch_masked_loss", "epoch_age_loss", "epoch_age_accuracy", "epoch_hat_accuracy",
                "epoch_learning_rate", "epoch_images_per_second", "epoch_epoch_time_s"):
        assert sorted(train_scalars.get(tag, {})) == [0, 1], (tag, sorted(train_scalars))
    for tag in ("epoch_masked_loss", "epoch_age_accuracy", "epoch_hat_accuracy", "epoch_age_loss"):
        assert sorted(val_scalars.get(tag, {})) == [0, 1], (tag, sorted(val_scalars))
    # the monitored loss is the one early stopping and the history see
    history = json.loads((out / HISTORY).read_text())
    assert [val_scalars["epoch_masked_loss"][k] for k in (0, 1)] == \
        pytest.approx([e["val_masked_loss"] for e in history], rel=1e-5)
    assert all(v > 0 for v in train_scalars["epoch_images_per_second"].values())
    assert train_scalars["epoch_learning_rate"][1] < train_scalars["epoch_learning_rate"][0]  # cosine schedule
    # no per-iteration copies of the validation values
    assert not [t for t in val_scalars if t.startswith("evaluation_")]


def test_hidden_figures_are_not_written(tmp_path):
    """The identity classifier's validation figures (0 by construction) stay out of TensorBoard;
    Keras's un-prefixed names of a one-output model are written once, under the task's name."""
    import keras
    import numpy as np

    from mtl.callbacks import RunTensorBoard

    inputs = keras.Input((3,))
    model = keras.Model(inputs, {"age": keras.layers.Dense(2, name="age")(inputs)})
    model.compile(optimizer="adam", loss={"age": "sparse_categorical_crossentropy"})
    callback = RunTensorBoard(tmp_path / "tb", identity_tasks=["identity"], images_per_epoch=4)
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    callback.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5, "age_accuracy": 0.5, "val_loss": 1.0,
                              "val_identity_accuracy": 0.0, "val_identity_xent": 0.0, "val_embedding_loss": 0.3})
    callback.on_train_end()
    assert np.isfinite(model.optimizer.learning_rate.numpy())
    train_tags, val_tags = set(scalars(tmp_path / "tb" / "train")), set(scalars(tmp_path / "tb" / "validation"))
    assert {"epoch_loss", "epoch_age_accuracy", "epoch_learning_rate", "epoch_images_per_second"} <= train_tags
    assert "epoch_accuracy" not in train_tags
    assert val_tags == {"epoch_loss", "epoch_embedding_loss"}


def test_reid_figures_are_written_at_the_last_step(tmp_path):
    from mtl.experiment import write_reid_scalars
    from mtl.rundir import TENSORBOARD, RunDir

    run = RunDir(tmp_path / "run")
    write_reid_scalars(run, {"plain": {"mAP": 0.25, "rank1": 0.5}, "chance": {"mAP": 0.1}}, step=4)
    values = scalars(run.file(TENSORBOARD) / "validation")
    assert values["reid/mAP"] == {4: pytest.approx(0.25)} and values["reid/rank1"] == {4: pytest.approx(0.5)}
    write_reid_scalars(run, {"skipped": "no held-out identity is seen by two cameras"}, step=4)  # nothing, no error
