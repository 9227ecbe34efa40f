"""Training under tf.distribute.MirroredStrategy over two logical CPU devices."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = r"""
import sys, json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from mtl.config import build_config
from mtl.experiment import train
cfg = build_config({"tasks": "hat,upcolor", "data": {"image_height": 32, "image_width": 16},
                    "model": {"width": 0.25, "private_multipliers": [4, 2]},
                    "train": {"epochs": 1, "batch_size": 16, "distribute": "mirrored"}})
metrics = train(cfg, sys.argv[1])
print(json.dumps({"replicas": tf.distribute.MirroredStrategy().num_replicas_in_sync,
                  "tasks": sorted(metrics["tasks"])}))
"""


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], capture_output=True, text=True,
                            cwd=REPO, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"replicas": 2, "tasks": ["hat", "upcolor"]}
    assert (tmp_path / "run" / "model.keras").is_file()
