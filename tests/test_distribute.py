"""Training under tf.distribute: MirroredStrategy over two logical CPU devices (model.fit), the
engine's custom loop (MultiWorkerMirroredStrategy's path) and two worker processes on 127.0.0.1."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import REPO
from mtl.distribute import Cluster, cluster, resolve, worker_dir
from mtl.errors import ConfigError

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
JOB = str(REPO / "tests" / "distribute_job.py")
# weights compared relative to how far training moved them (see distribute_job.compare)
RELATIVE_TOLERANCE = 1e-4


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], capture_output=True, text=True,
                            cwd=REPO, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"replicas": 2, "tasks": ["hat", "upcolor"]}
    assert (tmp_path / "run" / "model.keras").is_file()


def test_tf_config_roles():
    assert cluster({}) == Cluster()
    spec = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    first = cluster({"TF_CONFIG": json.dumps({"cluster": spec, "task": {"type": "worker", "index": 0}})})
    second = cluster({"TF_CONFIG": json.dumps({"cluster": spec, "task": {"type": "worker", "index": 1}})})
    assert (first.is_chief, second.is_chief, second.num_workers) == (True, False, 2)
    with_chief = {"chief": ["127.0.0.1:3"], **spec}
    worker0 = cluster({"TF_CONFIG": json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}})})
    assert not worker0.is_chief and worker0.num_workers == 3
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        cluster({"TF_CONFIG": "{not json"})
    with pytest.raises(ConfigError, match="worker:5"):
        cluster({"TF_CONFIG": json.dumps({"cluster": spec, "task": {"type": "worker", "index": 5}})})


def test_only_the_chief_writes_the_run_directory(tmp_path):
    run = tmp_path / "run"
    assert worker_dir(run, Cluster("worker", 0, 2)) == run
    other = worker_dir(run, Cluster("worker", 1, 2))
    assert other != run and run not in other.parents
    assert other == worker_dir(run, Cluster("worker", 1, 2))  # a restarted worker finds its state


def test_distribute_choices():
    with pytest.raises(ConfigError, match="train.distribute='multi'"):
        resolve("multi")
    assert resolve("auto") in ("none", "mirrored")


def _job(args, env=None, timeout=90):
    return subprocess.Popen([sys.executable, JOB, *args], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_mirrored_fit_and_custom_loop_equal_one_device(tmp_path):
    """Same global batch, same start: the loss and the weights after 6 steps equal one device's."""
    out = tmp_path / "out.json"
    proc = _job(["mirrored", str(out)], {"MTL_PROGRESS": "0"})
    log, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, log[-3000:]
    report = json.loads(out.read_text())
    assert report["replicas"] == 2
    for mode in ("custom_loop", "fit"):
        assert report[mode]["loss"] < 1e-5, (mode, report[mode])
        assert report[mode]["relative"] < RELATIVE_TOLERANCE, (mode, report[mode])


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_on_localhost_equal_one_device(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(_job(["multiworker", str(tmp_path / f"out{index}.json"), str(tmp_path / "run")],
                          {"TF_CONFIG": json.dumps(tf_config), "MTL_PROGRESS": "0"}))
    try:
        logs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
        for index in range(2):  # the worker's own folder is outside tmp_path
            out = tmp_path / f"out{index}.json"
            if out.is_file() and not json.loads(out.read_text())["chief"]:
                shutil.rmtree(json.loads(out.read_text())["wrote"], ignore_errors=True)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    chief, worker = (json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2))
    assert chief["replicas"] == 2 and chief["chief"] and not worker["chief"]
    assert chief["wrote"] == str(tmp_path / "run") and worker["wrote"] != chief["wrote"]
    assert "history.json" in chief["files"] and any(f.startswith("backup/") for f in chief["files"])
    report = chief["multiworker"]
    assert report["loss"] < 1e-5, report
    assert report["relative"] < RELATIVE_TOLERANCE, report
