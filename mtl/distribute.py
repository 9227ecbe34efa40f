"""Training on several devices and several machines through ``tf.distribute``.

``train.distribute`` chooses the strategy (:func:`strategy_for`):

* ``none``: the default strategy (one device);
* ``mirrored``: ``tf.distribute.MirroredStrategy`` over the local GPUs (or logical CPUs); the
  engine trains with ``model.fit``;
* ``multiworker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the machines listed in
  ``TF_CONFIG``; Keras 3's ``model.fit`` fails under it (keras-team/keras#20585), so the engine
  runs its own training step in a custom loop (``mtl.custom_loop``, :func:`uses_custom_loop`);
* ``auto`` (the default): ``mirrored`` when the machine has more than one GPU, else ``none``.

Roles follow tf.distribute's conventions (:func:`cluster`): the ``chief`` task, or worker 0 when
the cluster has no chief, writes the run directory; every other worker writes the same files to
its own temporary folder (:func:`worker_dir`), which keeps its resume state: a worker killed and
restarted (with the whole job, as tf.distribute requires) finds its own checkpoint there.

Input: each global batch is split across the replicas and the input sharded by DATA
(:func:`distribute_dataset`): every worker reads the same seeded file list and keeps its slices of
each global batch, so the union of the replicas' slices at a step is exactly the single-device batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from mtl.choices import DISTRIBUTE
from mtl.errors import ConfigError


@dataclass(frozen=True)
class Cluster:
    """This process's place in a ``TF_CONFIG`` cluster: its task type and index, and the number
    of workers (chief included). No ``TF_CONFIG``: a single chief."""

    task_type: str = "chief"
    task_index: int = 0
    num_workers: int = 1

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run directory."""
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0
                                             and not self._has_chief)

    _has_chief: bool = False


def cluster(environ=None) -> Cluster:
    """Parse ``TF_CONFIG`` (tf.distribute's cluster description).

    Raises:
        ConfigError: ``TF_CONFIG`` is not JSON with ``cluster`` and ``task`` as tf.distribute expects.
    """
    text = (environ if environ is not None else os.environ).get("TF_CONFIG", "").strip()
    if not text:
        return Cluster()
    try:
        config = json.loads(text)
        spec, task = config["cluster"], config["task"]
        task_type, task_index = str(task["type"]), int(task["index"])
        workers = sum(len(spec.get(kind, [])) for kind in ("chief", "worker"))
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"TF_CONFIG={text!r} is not a tf.distribute cluster description "
                          f"({err}): expected {{\"cluster\": {{\"worker\": [\"host:port\", ...]}}, "
                          f"\"task\": {{\"type\": \"worker\", \"index\": 0}}}}") from None
    if task_type not in spec or task_index >= len(spec[task_type]):
        raise ConfigError(f"TF_CONFIG task {task_type}:{task_index} is not in its cluster {sorted(spec)}")
    return Cluster(task_type, task_index, max(workers, 1), _has_chief=bool(spec.get("chief")))


def resolve(distribute: str) -> str:
    """``train.distribute`` with ``auto`` made concrete: ``mirrored`` with more than one GPU, else ``none``."""
    if distribute not in DISTRIBUTE:
        raise ConfigError(f"train.distribute={distribute!r}: valid values: {', '.join(DISTRIBUTE)}")
    if distribute == "auto":
        return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"
    return distribute


def strategy_for(distribute: str):
    """The ``tf.distribute`` strategy of ``train.distribute``. Call it before any other TensorFlow
    op: ``MultiWorkerMirroredStrategy`` configures the collective ops at program start."""
    distribute = resolve(distribute)
    if distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    if distribute == "multiworker":
        # RING collectives work on CPUs and GPUs alike; NCCL would be chosen on GPUs by AUTO
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def uses_custom_loop(strategy) -> bool:
    """Whether the engine trains with its own loop (``model.fit`` fails under this strategy)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def worker_dir(run_dir: str | Path, info: Cluster | None = None) -> Path:
    """Where this process writes the run: ``run_dir`` on the chief; on any other worker a folder
    of its own under the system temp folder (same path on a restart, so it resumes from it).

    tf.distribute's convention: every worker saves (saving may need collective ops), only the
    chief's files are the job's.
    """
    info = info or cluster()
    if info.is_chief:
        return Path(run_dir)
    key = hashlib.sha1(str(Path(run_dir).absolute()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "mtl-workers" / f"{Path(run_dir).name}-{key}-{info.task_type}{info.task_index}"


def distribute_dataset(strategy, dataset: tf.data.Dataset):
    """``dataset`` (global batches) split across ``strategy``'s replicas, sharded by DATA: every
    worker builds the same seeded pipeline and keeps its slices of each global batch (the file
    list is one in-memory tensor, so FILE sharding does not apply)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


class EpochCheckpoint:
    """The resume state of a custom-loop run: model and optimizer saved with
    ``tf.train.CheckpointManager`` after every epoch, numbered by the epochs finished.

    Every worker saves (into its own folder, :func:`worker_dir`): tf.distribute's convention, as
    saving distributed variables may run collective ops. A save is complete when the manager's
    ``checkpoint`` file names it, so a kill during a save leaves the previous one in use.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def saved_epoch(self) -> int:
        """Epochs finished by the latest checkpoint (0: none)."""
        latest = tf.train.latest_checkpoint(str(self.directory))
        return int(latest.rsplit("-", 1)[1]) if latest else 0

    def restore(self, model, optimizer=None) -> int:
        """Load the latest checkpoint into ``model`` (and ``optimizer`` unless None); returns its epoch."""
        latest = tf.train.latest_checkpoint(str(self.directory))
        if not latest:
            return 0
        objects = {"model": model} if optimizer is None else {"model": model, "optimizer": optimizer}
        tf.train.Checkpoint(**objects).read(latest).expect_partial()
        return int(latest.rsplit("-", 1)[1])

    def save(self, model, optimizer, epoch: int) -> None:
        """Save after ``epoch`` epochs (1-based count of finished epochs)."""
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        tf.train.CheckpointManager(checkpoint, str(self.directory), max_to_keep=1).save(checkpoint_number=epoch)
