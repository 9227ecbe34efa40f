"""The table of on-disk formats: format name -> module with ``load(root, **options)`` and ``detect(root)``.

Modules are imported when used, so reading one format never imports another's dependencies.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import TYPE_CHECKING

from mtl.errors import DataError

if TYPE_CHECKING:  # mtl.config reads FORMATS to check data.format: no pandas for that
    from mtl.data.sources.base import SourceData

FORMATS = {
    "market1501_course": "mtl.data.sources.market_course",
    "market1501": "mtl.data.sources.market_original",
    "fashion": "mtl.data.sources.fashion",
    "imaterialist": "mtl.data.sources.imaterialist",
}


def format_module(name: str):
    if name not in FORMATS:
        raise DataError(f"unknown data format {name!r}; valid: {', '.join(FORMATS)} (or auto)")
    return importlib.import_module(FORMATS[name])


def detect_format(root: str | Path) -> str:
    """Name of the first format whose ``detect`` accepts ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    for name in FORMATS:
        if format_module(name).detect(root):
            return name
    raise DataError(f"{root}: no known data format recognised; valid formats: {', '.join(FORMATS)}")


def load_source(root: str | Path, format: str = "auto", **options) -> SourceData:
    """Read ``root`` with the named (or detected) format.

    Options a format's ``load`` does not take are dropped, so callers can pass the general data
    options (e.g. ``rare_threshold``) whatever the format. A prepared dataset (``tfds:NAME``, or
    the folder ``tfds build`` wrote) is read by ``mtl.data.sources.prepared.load_prepared``: the same table.
    """
    from mtl.data.sources import prepared  # reading a plain folder needs none of its imports

    if prepared.is_prepared(root):
        return prepared.load_prepared(root, format, **options)
    name = detect_format(root) if format == "auto" else format
    load = format_module(name).load
    accepted = inspect.signature(load).parameters
    return load(root, **{k: v for k, v in options.items() if k in accepted})


def describe_tasks(source: SourceData) -> str:
    """The text of ``--tasks help``: a dataset's tasks with their kind and classes, its aliases and
    whether it can train the identity task.

    Args:
        source: the dataset as read by :func:`load_source`.

    Returns:
        Lines naming the format and folder, one line per task (``name  kind  N classes: a, b, ...``),
        the aliases, ``all``, and ``identity`` when the labelled images carry identities.
    """
    from mtl.tasks import CAMERA, IDENTITY, camera_task

    labelled = source.subset("train")

    rows = [(spec.name, spec.kind, spec.type.describe(spec)) for spec in source.tasks.values()]
    ids = labelled.loc[labelled["identity"] >= 0, "identity"]
    # the rules of mtl.data.prepare (resolve_tasks, identity_task_for): known identities, several
    # images each (product photos are one image per product: no identity task)
    if IDENTITY not in source.tasks and ids.nunique() >= 2 and ids.value_counts().median() >= 2:
        rows.append((IDENTITY, IDENTITY, f"re-identification: the training split's identities are its classes "
                                         f"({ids.nunique()} identities labelled); only by name, all leaves it out"))
    cameras = labelled["camera"]
    if CAMERA not in source.tasks and (cameras >= 0).any():  # the rule of mtl.data.prepare.resolve_tasks
        camera = camera_task(cameras)
        rows.append((CAMERA, "auxiliary", camera.type.describe(camera) + " (from the file names; only "
                                          "by name, all leaves it out)"))
    rows += [(alias, "alias", ", ".join(names)) for alias, names in source.aliases.items()]
    rows.append(("all", "alias", "every attribute task"))
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{source.name} data in {source.root}: {len(labelled)} labelled images", "",
             f"{'task'.ljust(width[0])}  {'kind'.ljust(width[1])}  classes"]
    lines += [f"{name.ljust(width[0])}  {kind.ljust(width[1])}  {text}" for name, kind, text in rows]
    lines += ["", "Choose with --tasks NAME,NAME,... (names and aliases mix: --tasks age,color)."]
    return "\n".join(lines)
