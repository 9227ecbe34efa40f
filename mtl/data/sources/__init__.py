"""The table of on-disk formats: format name -> module with ``load(root, **options)`` and ``detect(root)``.

Modules are imported when used, so reading one format never imports another's dependencies.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from mtl.data.sources.base import SourceData
from mtl.errors import DataError

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
    options (e.g. ``rare_threshold``) whatever the format.
    """
    name = detect_format(root) if format == "auto" else format
    load = format_module(name).load
    accepted = inspect.signature(load).parameters
    return load(root, **{k: v for k, v in options.items() if k in accepted})
