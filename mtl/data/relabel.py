"""Label data for an existing run with the run's own class table, by class name.

A source builds its class table from the data it reads: the product formats order classes by
frequency and group the rare ones as ``other`` (``mtl.data.sources.fashion.class_table``). Another
folder, or another subset of the same collection, thus gets other class indices for the same names,
and a model evaluated on it would be scored against the wrong classes. Everything that reads data
for a run that already exists (evaluate, predict, resume, the retrain of a tuning search) goes
through ``load_for_run``, which

1. reads the source with no rare-class grouping (``rare_threshold=0``), so that every value keeps
   its own name (grouped, the names of the new data's rare values would be lost in its ``other``);
2. re-encodes each task column into the run's class indices by name (``relabel``): a value the run
   has no class for goes to the run's ``other`` class when it has one (what the run did with the
   rare values of its own training data), else to ``-1`` (unknown, ignored by the metrics), and
   the rows concerned are counted per task so that commands can report them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mtl.data.sources import load_source
from mtl.data.sources.base import SourceData
from mtl.errors import DataError
from mtl.tasks import AUXILIARY, TaskSpec, attribute_tasks

OTHER = "other"  # the class rare values are grouped into (mtl.data.sources.fashion.OTHER)


def _as_dict(tasks: Mapping[str, TaskSpec] | Sequence[TaskSpec]) -> dict[str, TaskSpec]:
    return dict(tasks) if isinstance(tasks, Mapping) else {t.name: t for t in tasks}


def class_index_map(data_task: TaskSpec, run_task: TaskSpec) -> tuple[np.ndarray, np.ndarray]:
    """Where each class of ``data_task`` goes among ``run_task``'s classes, by name.

    Returns:
        ``(target, unseen)``: for each data class index, the run's class index (its ``other``
        class or ``-1`` when the run has no class of that name), and whether the run lacks the name.
    """
    run_index = {name: i for i, name in enumerate(run_task.classes)}
    fallback = run_index.get(OTHER, -1)
    unseen = np.array([name not in run_index for name in data_task.classes], dtype=bool)
    target = np.array([run_index.get(name, fallback) for name in data_task.classes], dtype=np.int64)
    return target, unseen


def relabel(table: pd.DataFrame, table_tasks: Mapping[str, TaskSpec] | Sequence[TaskSpec],
            run_tasks: Sequence[TaskSpec]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Re-encode the task columns of ``table`` into the run's class indices, by class name.

    Args:
        table: a source table whose task columns hold indices into ``table_tasks``' classes (``-1``
            where missing).
        table_tasks: the task specs ``table`` was encoded with (``SourceData.tasks``).
        run_tasks: the run's task specs (``tasks.json``). Attribute tasks (binary, categorical)
            present in ``table_tasks`` are re-encoded; identity tasks (whose classes are the
            run's training identities, not a column) and tasks the table lacks are left out.

    Returns:
        ``(relabelled, unseen)``: a copy of ``table`` whose re-encoded columns follow the run's
        classes (columns of tasks the run does not have are dropped), and per re-encoded task
        the number of labelled rows whose value the run has no class for (sent to the run's
        ``other`` class when it has one, else to ``-1``). Missing labels stay ``-1``.

    Raises:
        DataError: a task of both has another kind in the data than in the run (e.g. binary
            against categorical), or a label is outside its table's classes.
    """
    table_tasks = _as_dict(table_tasks)
    out = table.copy()
    unseen_counts: dict[str, int] = {}
    run_names = {t.name for t in run_tasks}
    for name in table_tasks:
        if name not in run_names and name in out.columns:
            out = out.drop(columns=name)
    for run_task in run_tasks:
        if run_task.type.head != "attribute" or run_task.name not in table_tasks:
            continue
        data_task = table_tasks[run_task.name]
        if data_task.kind != run_task.kind:
            raise DataError(f"task {run_task.name!r} is {data_task.kind} in the data but {run_task.kind} in the "
                            "run: it cannot be evaluated with the run's classes")
        if not run_task.type.has_classes:  # a value (regression): nothing to re-encode
            continue
        values = table[run_task.name].to_numpy(np.int64)
        bad = (values < -1) | (values >= data_task.num_classes)
        if bad.any():
            raise DataError(f"task {run_task.name!r}: label {int(values[bad][0])} outside the data's "
                            f"{data_task.num_classes} classes")
        target, unseen = class_index_map(data_task, run_task)
        labelled = values >= 0
        new = np.full(len(values), -1, np.int64)
        new[labelled] = target[values[labelled]]
        out[run_task.name] = new
        unseen_counts[run_task.name] = int(unseen[values[labelled]].sum())
    return out, unseen_counts


def load_for_run(root: str | Path, format: str, run_tasks: Sequence[TaskSpec], require_labels: bool = True,
                 **options) -> tuple[SourceData, dict[str, int]]:
    """Read a data folder for an existing run, labelled with the run's class table (see the module docstring).

    The one function evaluate, predict, resume and the retrain of a tuning search call to read data
    for a run that exists.

    Args:
        root: the data folder.
        format: a key of ``mtl.data.sources.FORMATS`` or ``auto``.
        run_tasks: the run's task specs (``tasks.json``), in output order.
        require_labels: raise when the data has no labels for one of the run's attribute tasks
            (evaluation); ``False`` leaves such tasks out of the result's tasks (prediction).
        **options: further options of the format's ``load`` (``rare_threshold`` is forced to 0:
            every value keeps its name, the run's table decides what becomes ``other``).

    Returns:
        ``(source, unseen)``: the source, whose ``tasks`` are the run's attribute tasks the data
        has but the auxiliary ones (``mtl.tasks.AUXILIARY``; the run's specs, in the run's order)
        and whose table is encoded with them; and per task the number of labelled rows whose value
        the run has no class for (``relabel``).

    Raises:
        DataError: the folder cannot be read, or (``require_labels``) lacks a task of the run.
    """
    options["rare_threshold"] = 0
    source = load_source(root, format, **options)
    # the auxiliary tasks (camera, junk) are the run's own training aids, not labels of the data: left out
    labelled_tasks = [t for t in attribute_tasks(run_tasks) if t.name not in AUXILIARY]
    missing = [t.name for t in labelled_tasks if t.name not in source.tasks]
    if missing and require_labels:
        raise DataError(f"{root} has no labels for the run's tasks {', '.join(missing)} "
                        f"(its tasks: {', '.join(source.tasks) or 'none'})")
    table, unseen = relabel(source.table, source.tasks, labelled_tasks)
    tasks = {t.name: t for t in labelled_tasks if t.name in source.tasks}
    aliases = {a: names for a, names in source.aliases.items() if all(n in tasks for n in names)}
    return SourceData(name=source.name, root=source.root, table=table, tasks=tasks, aliases=aliases), unseen


def unseen_summary(unseen: Mapping[str, int], run_tasks: Sequence[TaskSpec] = ()) -> str | None:
    """One line naming the tasks with rows whose value the run has no class for, or None when there are none.

    ``run_tasks`` tells where those rows went (the run's ``other`` class, or unknown).
    """
    specs = {t.name: t for t in run_tasks}
    parts = []
    for name, n in unseen.items():
        if n:
            where = "other" if name in specs and OTHER in specs[name].classes else "unknown"
            parts.append(f"{name} {n} ({where})")
    if not parts:
        return None
    return "rows with a value the run has no class for: " + ", ".join(parts)
