"""Reading the files of a run, tuning or study directory, tolerating missing or broken ones.

A report must never crash because one file is absent or half-written: each reader returns
``None`` for a missing file, and for an unreadable one also records a one-line note that the
page shows (so a user knows why a section is missing).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from mtl.errors import DataError

RUN = "run"
TUNING = "tuning"
STUDY = "study"

RUN_FILES = ("metrics.json", "history.json", "config.yaml", "val_predictions.csv", "tasks.json")
TUNING_FILES = ("trials.csv", "tuning.json")
STUDY_FILES = ("study.csv", "study.json")


def detect_kind(path: str | Path) -> str:
    """What kind of directory ``path`` is, judged by its files.

    Args:
        path: a directory.

    Returns:
        ``"study"``, ``"tuning"`` or ``"run"`` (checked in that order: a study folder may hold a
        tuning's files, and both may hold a run's).

    Raises:
        DataError: not a directory, or none of the known files is there.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: not a directory (expected a run, tuning or study directory)")
    for kind, names in ((STUDY, STUDY_FILES), (TUNING, TUNING_FILES), (RUN, RUN_FILES)):
        if any((path / n).is_file() for n in names):
            return kind
    raise DataError(f"{path}: no run, tuning or study files found (looked for "
                    f"{', '.join(RUN_FILES + TUNING_FILES + STUDY_FILES)})")


@dataclass
class RunFiles:
    """The parsed files of one directory; ``None`` where a file is missing or unreadable."""

    path: Path
    kind: str
    config: dict | None = None
    config_text: str | None = None
    command: str | None = None
    tasks: list | None = None
    data: dict | None = None
    model: dict | None = None
    history: list | None = None
    metrics: dict | None = None
    predictions: pd.DataFrame | None = None
    split: pd.DataFrame | None = None
    reid_examples: list | None = None
    trials: pd.DataFrame | None = None
    best_config_text: str | None = None
    tuning: dict | None = None
    study: pd.DataFrame | None = None
    study_info: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.resolve().name


def load(path: str | Path) -> RunFiles:
    """Read everything a report can show from ``path`` (see the package docstring).

    Raises:
        DataError: ``path`` is not a run, tuning or study directory.
    """
    path = Path(path)
    rf = RunFiles(path=path, kind=detect_kind(path))
    rf.config_text = _read(rf, "config.yaml", lambda p: p.read_text())
    rf.config = _read(rf, "config.yaml", lambda p: _mapping(yaml.safe_load(p.read_text())))
    rf.command = _read(rf, "command.txt", lambda p: p.read_text().strip() or None)
    rf.tasks = _read(rf, "tasks.json", lambda p: _list(_json(p)))
    rf.data = _read(rf, "data.json", lambda p: _mapping(_json(p)))
    rf.model = _read(rf, "model.json", lambda p: _mapping(_json(p)))
    rf.history = _read(rf, "history.json", lambda p: [e for e in _list(_json(p)) if isinstance(e, dict)])
    rf.metrics = _read(rf, "metrics.json", lambda p: _mapping(_json(p)))
    rf.predictions = _read(rf, "val_predictions.csv", pd.read_csv)
    rf.split = _read(rf, "split.csv", pd.read_csv)
    rf.reid_examples = _read(rf, "reid_examples.json", lambda p: [q for q in _list(_json(p)) if isinstance(q, dict)])
    # trial ids are names ("03"), not numbers: keep their leading zeros
    rf.trials = _read(rf, "trials.csv", lambda p: pd.read_csv(p, dtype={"trial_id": str}))
    rf.best_config_text = _read(rf, "best_config.yaml", lambda p: p.read_text())
    rf.tuning = _read(rf, "tuning.json", lambda p: _mapping(_json(p)))
    rf.study = _read(rf, "study.csv", pd.read_csv)
    rf.study_info = _read(rf, "study.json", lambda p: _mapping(_json(p)))
    return rf


def sub_runs(path: str | Path) -> list[Path]:
    """Sub-directories of ``path`` that are runs (hold a ``metrics.json``), sorted by name."""
    return sorted(p for p in Path(path).iterdir() if p.is_dir() and (p / "metrics.json").is_file())


def _read(rf: RunFiles, name: str, parse):
    p = rf.path / name
    if not p.is_file():
        return None
    try:
        return parse(p)
    except Exception as exc:  # noqa: BLE001 - any parse failure becomes a note, never a crash
        rf.notes.append(f"{name}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})")
        return None


def _json(p: Path):
    # history.json may hold NaN / Infinity (a diverged epoch): Python's json accepts them
    return json.loads(p.read_text(), parse_constant=lambda c: math.nan)


def _mapping(value) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, got {type(value).__name__}")
    return value


def _list(value) -> list:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return value
