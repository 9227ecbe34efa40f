"""A finished run loaded for the commands that use it (evaluate, predict, export, search): its
resolved config, task specs, trained model, data description and split (``mtl.rundir`` reads
the files; this module adds the model, through Keras, and the data folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mtl.data.synthetic import ensure_synthetic
from mtl.errors import DataError
from mtl.rundir import CONFIG, DATA, MODEL, TASKS, RunDir


@dataclass
class LoadedRun:
    """What later commands (evaluate, predict, search) need from a finished run."""

    run_dir: Path
    config: Any  # mtl.config.Config
    tasks: list
    model: Any  # keras.Model
    data: dict  # data.json
    split: pd.DataFrame | None  # split.csv (path, identity, camera, split)

    def data_root(self) -> Path:
        """The folder the run was trained on (the embedded default is regenerated if it is gone)."""
        root = self.data.get("root") or self.config.data.path
        if root and Path(root).is_dir():
            return Path(root)
        if self.data.get("embedded_default") or not self.config.data.path:
            return ensure_synthetic()
        raise DataError(f"{self.run_dir}: the run's data folder {root} is gone; give --data")


def load_run(run_dir: str | Path, model: bool = True) -> LoadedRun:
    """Read a finished run: resolved config, task specs, trained model, data description and split.

    Args:
        run_dir: the run folder.
        model: load ``model.keras`` (False: ``LoadedRun.model`` is None).

    Raises:
        DataError: the folder is not a finished run (names the missing file), or a file is unreadable.
    """
    run = RunDir(run_dir)
    for name in (CONFIG, TASKS, MODEL):
        if not run.file(name).is_file():
            raise DataError(f"{run.path}: not a finished run ({name} missing)")
    config, tasks = run.read_config(), run.read_tasks()
    trained = None
    if model:
        from mtl.models.builder import load_model  # Keras: only when the model is asked for

        trained = load_model(run.file(MODEL))
    return LoadedRun(run.path, config, tasks, trained, run.read_json(DATA, default={}) or {}, run.read_split())
