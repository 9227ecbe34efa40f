"""The identity task in the training pipeline: task made from the training split, labels, P x K
datasets, a short run with the centre loss and the soft margin."""

import json
import math
import tracemalloc

import keras
import numpy as np
import pytest

from conftest import tiny_config
from tests.fixtures_images import write_jpeg
from mtl.errors import ConfigError
from mtl.data.prepare import datasets, uses_pk_sampler
from mtl.experiment import dataset_args, prepare, train
from mtl.inference import extract_features
from mtl.tasks import TaskSpec


def _cfg(root, **sections):
    return tiny_config(root, {"tasks": "identity", "model": {"embedding_dim": 16}, "train": {"batch_size": 16}},
                       **sections)


def test_identity_task_classes_are_the_training_people(synthetic_root):
    data = prepare(_cfg(synthetic_root, data={"val_identities": 5}))
    assert [t.name for t in data.tasks] == ["identity"]
    spec = data.tasks[0]
    assert data.val["identity"].nunique() == 5
    assert sorted(int(c) for c in spec.classes) == sorted(data.train["identity"].unique())
    # the same people are held out with and without attribute tasks (stratified on all attributes)
    joint = prepare(_cfg(synthetic_root, tasks="identity,all", data={"val_identities": 5}))
    assert set(joint.val["identity"]) == set(data.val["identity"])
    assert [t.name for t in joint.tasks][-1] == "identity" and len(joint.tasks) == 13
    with pytest.raises(ConfigError, match="val_identities"):
        prepare(_cfg(synthetic_root, data={"val_identities": 24}))


def test_datasets_give_p_by_k_batches_and_labels_for_every_output(synthetic_root):
    cfg = _cfg(synthetic_root, tasks="identity,hat", train={"k_images": 4, "center_loss": 1e-3})
    data = prepare(cfg)
    assert uses_pk_sampler(cfg.train.sampler, data.tasks)
    train_ds, val_ds = datasets(data, **dataset_args(cfg))
    images, labels = next(iter(train_ds))
    assert images.shape == (16, 32, 16, 3)
    assert set(labels) == {"hat", "identity", "embedding", "center"}
    ids = labels["identity"].numpy()
    assert (ids >= 0).all() and sorted(np.unique(ids, return_counts=True)[1]) == [4, 4, 4, 4]
    np.testing.assert_array_equal(labels["embedding"].numpy(), ids)
    # validation people are not classes: -1 for the classifier, codes of their own for the triplet loss
    val_labels = np.concatenate([y["identity"].numpy() for _, y in val_ds])
    val_codes = np.concatenate([y["embedding"].numpy() for _, y in val_ds])
    assert (val_labels == -1).all() and (val_codes >= data.tasks[-1].num_classes).all()
    assert len(np.unique(val_codes)) == data.val["identity"].nunique()
    random_cfg = _cfg(synthetic_root, train={"sampler": "random"})
    assert not uses_pk_sampler(random_cfg.train.sampler, data.tasks)
    with pytest.raises(ConfigError, match="identity task"):
        uses_pk_sampler("pk", data.tasks[:1])


@pytest.mark.slow
def test_short_run_with_centre_loss_and_soft_margin(synthetic_root, tmp_path):
    cfg = _cfg(synthetic_root, tasks="identity,gender",
               train={"epochs": 1, "steps_per_epoch": 3, "center_loss": 5e-4, "triplet_margin": None})
    metrics = train(cfg, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert {"embedding_loss", "center_loss", "identity_loss", "val_embedding_loss"} <= set(history[0])
    assert history[0]["val_embedding_loss"] > 0  # held-out people have positives in validation batches
    assert set(metrics["reid"]) >= {"plain", "chance", "feature_layer"}
    assert metrics["reid"]["plain"]["num_queries"] > 0


def test_extraction_memory_is_the_outputs_plus_one_batch(tmp_path):
    # 600 images, 512-d outputs: 1.2 MB of descriptors. Collecting per-batch arrays and concatenating
    # them would peak at twice that.
    paths = [str(write_jpeg(tmp_path / f"{i}.jpg", size=(16, 32), color=(i % 256, 50, 90))) for i in range(600)]
    inputs = keras.Input((32, 16, 3))
    model = keras.Model(inputs, keras.layers.Dense(512)(keras.layers.GlobalAveragePooling2D()(inputs)))
    extract_features(model, paths[:40], 32, 16, batch_size=20)  # warm up (traces the predict function)
    tracemalloc.start()
    out = extract_features(model, paths, 32, 16, batch_size=20)["output"]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert out.shape == (600, 512)
    descriptors = out.nbytes
    batch = 20 * 512 * 4 + 20 * 32 * 16 * 3 * 4
    # measured: about one batch above the descriptors (a list + concatenate peaks near 2x descriptors)
    assert peak < descriptors + 2 * batch + 128 * 1024, (peak, descriptors)
    assert math.isfinite(float(out.sum()))


def test_identity_only_runs_log_no_masked_loss():
    # with no attribute task there is no masked attribute loss; a 0 would make epoch 1 look best
    from mtl.callbacks import MaskedLossLogger

    logs = {"loss": 3.0, "val_loss": 2.0, "identity_xent": 1.0}
    MaskedLossLogger({}).on_epoch_end(0, logs)
    assert "masked_loss" not in logs and "val_masked_loss" not in logs
    logs = {"hat_xent": 0.5, "val_hat_xent": 0.25}
    MaskedLossLogger({"hat": 2.0}).on_epoch_end(0, logs)
    assert logs["masked_loss"] == 1.0 and logs["val_masked_loss"] == 0.5


def test_attribute_and_identity_runs_stop_on_the_joint_validation_loss():
    # the attributes alone plateau while the embedding still improves (measured on Market: the
    # masked loss's best epoch was 8 of 15, the triplet loss on held-out people fell to the end)
    from mtl.callbacks import MaskedLossLogger
    from mtl.engine import embedding_loss_weight, monitor_for

    hat, ident = TaskSpec("hat", ("no", "yes"), "binary"), TaskSpec("identity", tuple("abc"), "identity")
    assert monitor_for([hat]) == "val_masked_loss"
    assert monitor_for([ident]) == "loss"
    assert monitor_for([hat, ident]) == "val_joint_loss"
    assert embedding_loss_weight([hat], {}) is None
    assert embedding_loss_weight([hat, ident], {"embedding": 0.5}) == 0.5

    logs = {"hat_xent": 0.5, "val_hat_xent": 0.25, "embedding_loss": 1.0, "val_embedding_loss": 2.0,
            "identity_loss": 9.0, "val_identity_loss": 0.0}
    MaskedLossLogger({"hat": 2.0}, embedding_weight=0.5).on_epoch_end(0, logs)
    assert logs["val_masked_loss"] == 0.5
    assert logs["val_joint_loss"] == 0.5 + 0.5 * 2.0  # the identity classifier's loss is not in it
    assert logs["joint_loss"] == 1.0 + 0.5 * 1.0


def test_training_summary_names_the_epoch_the_model_holds(tmp_path):
    # a run that trains its whole schedule (train.keep: last, no stopper) keeps the last epoch even
    # when an earlier one had the lowest validation loss; with early stopping the best is restored
    from mtl.rundir import RunDir

    history = [{"epoch": e, "time_s": 10.0, "val_joint_loss": loss} for e, loss in [(1, 3.0), (2, 1.0), (3, 2.0)]]
    (tmp_path / "history.json").write_text(json.dumps(history))
    summary = RunDir(tmp_path).training_summary("val_joint_loss", None, 99.0)
    assert (summary.best_epoch, summary.kept_epoch) == (2, 3)
    assert summary.train_time_s == 30.0  # the epochs' own times: also right for a resumed run
    # with early stopping the engine reports the restored epoch
    assert RunDir(tmp_path).training_summary("val_joint_loss", 2, 99.0).kept_epoch == 2
