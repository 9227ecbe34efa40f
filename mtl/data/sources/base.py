"""The common shape every on-disk source is read into.

A source reads one on-disk format into a :class:`SourceData`: one ``pandas.DataFrame`` with a
row per image and these columns, plus the dataset's task table:

==============  =====================================================================
``path``        absolute path of the image file (str)
``identity``    person / product identity (int64), ``-1`` where unknown
``camera``      camera index (int64), ``-1`` where unknown
``subset``      ``train`` (labelled), ``query``, ``gallery`` or ``test`` (unlabelled)
``<task>``      one int64 column per task of ``tasks``: class index, ``-1`` where missing (a
                regression task: float64 values, NaN where missing; ``TaskKind.table_column``)
==============  =====================================================================

No TensorFlow here: sources are plain pandas so they are fast to test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import pandas as pd

from mtl.errors import DataError
from mtl.tasks import TaskSpec

BASE_COLUMNS = ("path", "identity", "camera", "subset")
SUBSETS = ("train", "query", "gallery", "test")


@dataclass
class SourceData:
    """A dataset read from disk.

    Attributes:
        name: format name (a key of ``mtl.data.sources.FORMATS``).
        root: the folder it was read from.
        table: one row per image (see module docstring).
        tasks: task table of this dataset, in a stable order.
        aliases: short names for several tasks (``color`` -> ``upcolor, downcolor``).
    """

    name: str
    root: str
    table: pd.DataFrame
    tasks: dict[str, TaskSpec]
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self):
        validate_table(self.table, self.tasks)

    def subset(self, *names: str) -> pd.DataFrame:
        return self.table[self.table["subset"].isin(names)].reset_index(drop=True)


def validate_table(table: pd.DataFrame, tasks: Mapping[str, TaskSpec]) -> None:
    """Check the table's columns, dtypes and label ranges; raise ``DataError`` naming the problem."""
    missing = [c for c in BASE_COLUMNS if c not in table.columns]
    missing += [t for t in tasks if t not in table.columns]
    if missing:
        raise DataError(f"source table lacks columns: {', '.join(missing)}")
    bad_subset = set(table["subset"].unique()) - set(SUBSETS)
    if bad_subset:
        raise DataError(f"unknown subset values {sorted(bad_subset)}; valid: {', '.join(SUBSETS)}")
    for name, spec in tasks.items():
        spec.type.check_column(spec, table[name], table["path"])


def require_dir(path: str | Path, what: str) -> Path:
    """Return ``path`` as a Path, or raise a DataError saying what was expected there."""
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{what}: folder not found: {p}")
    return p


def require_file(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what}: file not found: {p}")
    return p


def make_table(rows: list[dict], tasks: Mapping[str, TaskSpec]) -> pd.DataFrame:
    """Build a table with the right column order and dtypes from row dicts."""
    columns = list(BASE_COLUMNS) + list(tasks)
    df = pd.DataFrame(rows, columns=columns)
    for c in ["identity", "camera"]:
        df[c] = df[c].fillna(-1).astype("int64")
    for name, spec in tasks.items():
        df[name] = spec.type.table_column(df[name].tolist())
    df["path"] = df["path"].astype(str)
    return df
