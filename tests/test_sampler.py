"""The P x K identity sampler: batch composition, determinism, images aligned with labels, and
distribution over two replicas."""

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from conftest import REPO
from fixtures_images import write_jpeg
from mtl.data.sampler import pk_dataset, pk_index_dataset, pk_shape
from mtl.errors import ConfigError, DataError

# identity of each row: counts 10, 2, 4, 1, 6, 5 (two identities have fewer than K=4 images),
# plus rows of unknown identity (-1) that must never be drawn
IDS = np.array([7] * 10 + [3] * 2 + [-1] * 3 + [9] * 4 + [11] + [4] * 6 + [-1] + [5] * 5)
P, K = 3, 4


def _batches(ids, p, k, seed, n):
    return [b.numpy() for b in pk_index_dataset(ids, p, k, seed).take(n)]


def test_every_batch_has_p_distinct_identities_with_k_images_each():
    batches = _batches(IDS, P, K, seed=0, n=40)
    for rows in batches:
        assert rows.shape == (P * K,)
        ids = IDS[rows]
        assert (ids >= 0).all()
        counts = Counter(ids.tolist())
        assert len(counts) == P and set(counts.values()) == {K}
        # laid out identity by identity: K consecutive rows per identity
        assert all(len(set(ids[i:i + K])) == 1 for i in range(0, P * K, K))
        for identity in counts:
            picked = rows[ids == identity]
            if (IDS == identity).sum() >= K:
                assert len(set(picked.tolist())) == K  # without replacement when there are enough
            else:
                assert set(picked.tolist()) <= set(np.flatnonzero(IDS == identity).tolist())


def test_each_pass_visits_every_identity_once_and_identities_with_few_images_still_appear():
    # 6 identities, P=3: each pass over the identities is exactly two batches
    batches = _batches(IDS, P, K, seed=1, n=20)
    for i in range(0, 20, 2):
        seen = set(IDS[batches[i]].tolist()) | set(IDS[batches[i + 1]].tolist())
        assert seen == {7, 3, 9, 11, 4, 5}
    # every row of an identity with >= K images is drawn at some point
    drawn = set(np.concatenate(batches).tolist())
    assert set(np.flatnonzero(IDS == 7).tolist()) <= drawn


def test_deterministic_for_a_seed_and_different_across_seeds_and_batches():
    a = _batches(IDS, P, K, seed=5, n=8)
    b = _batches(IDS, P, K, seed=5, n=8)
    c = _batches(IDS, P, K, seed=6, n=8)
    assert all((x == y).all() for x, y in zip(a, b))
    assert any((x != y).any() for x, y in zip(a, c))
    assert len({tuple(x) for x in a}) > 1


def test_bad_shapes_are_clear_errors():
    with pytest.raises(DataError, match="at least P=7 identities"):
        pk_index_dataset(IDS, 7, 4)
    with pytest.raises(ConfigError):
        pk_index_dataset(IDS, 0, 4)
    assert pk_shape(64, 0, 4) == (16, 4) and pk_shape(64, 8, 4) == (8, 4)
    with pytest.raises(ConfigError, match="smaller than"):
        pk_shape(2, 0, 4)


def test_images_and_labels_stay_aligned(tmp_path):
    # each identity's images have their own colour: red channel = 20 * identity
    ids = np.repeat(np.arange(6), [5, 3, 4, 6, 2, 4])
    paths = [str(write_jpeg(tmp_path / f"{i}_{j}.jpg", size=(8, 16), color=(20 * int(p), 10, 200)))
             for j, (i, p) in enumerate(zip(ids, ids))]
    labels = {"identity": ids.astype(np.int32), "hat": (ids % 2).astype(np.int32)}
    ds = pk_dataset(paths, labels, ids, 2, 3, 16, 8, augment={"flip": True}, seed=0)
    for images, y in ds.take(5):
        assert images.shape == (6, 16, 8, 3)
        identity = y["identity"].numpy()
        assert sorted(Counter(identity.tolist()).values()) == [3, 3]
        np.testing.assert_array_equal(y["hat"].numpy(), identity % 2)
        red = images.numpy()[..., 0].mean(axis=(1, 2))
        np.testing.assert_allclose(red, 20 * identity, atol=6)  # JPEG rounding


SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from collections import Counter
from mtl.data.sampler import pk_index_dataset
strategy = tf.distribute.MirroredStrategy()
ids = np.repeat(np.arange(10), 5)
ds = pk_index_dataset(ids, 4, 3, seed=0).map(lambda rows: (rows, tf.gather(tf.constant(ids), rows)))
per_replica = []
for step, (rows, labels) in enumerate(strategy.experimental_distribute_dataset(ds)):
    if step == 3:
        break
    per_replica.append([sorted(Counter(t.numpy().tolist()).values())
                        for t in strategy.experimental_local_results(labels)])
from mtl.config import build_config
from mtl.experiment import train
cfg = build_config({"tasks": "identity", "data": {"image_height": 32, "image_width": 16},
                    "model": {"width": 0.25},
                    "train": {"epochs": 1, "batch_size": 8, "k_images": 2, "steps_per_epoch": 3,
                              "distribute": "mirrored"}})
metrics = train(cfg, sys.argv[1])
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "per_replica": per_replica,
                  "reid": sorted(metrics["reid"])}))
"""


@pytest.mark.slow
def test_pk_batches_split_into_whole_identities_under_mirrored_strategy(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], capture_output=True, text=True,
                            cwd=REPO, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["replicas"] == 2
    # a global batch of P=4 identities x K=3 gives each replica 2 whole identities x 3 images
    assert summary["per_replica"] == [[[3, 3], [3, 3]]] * 3
    assert "plain" in summary["reid"] and (tmp_path / "run" / "model.keras").is_file()
