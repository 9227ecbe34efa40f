"""A prepared dataset (``mtl.data.tfds``: a format's folder as sharded TFRecords) read back as a source.

:func:`load_prepared` gives the same table as reading the folder: same rows in the same order,
identities, cameras, labels (``-1`` for missing, see ``mtl.data.tfds.builder``), task table and
aliases, so ``mtl.data.prepare.prepare_data`` makes the same split. ``load_source`` calls it for
``tfds:NAME``, ``tfds:PATH`` or a prepared folder. The images are written once from the TFRecords
into a cache folder (``$MTL_CACHE/tfds/...``) under their original relative names, because the
training pipeline decodes image files.

This module imports tensorflow-datasets (and so TensorFlow) only when a dataset is read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from mtl.data.sources import FORMATS
from mtl.data.sources.base import SourceData, make_table
from mtl.data.synthetic import default_cache_dir
from mtl.errors import ConfigError, DataError
from mtl.tasks import TaskSpec

PREFIX = "tfds:"
INFO_FILE = "dataset_info.json"  # TFDS's file in a prepared dataset's version folder
DEFAULT_DATA_DIR = Path("~/tensorflow_datasets")  # TFDS's default when TFDS_DATA_DIR is unset
VERSION = "1.0.0"  # of every builder (mtl.data.tfds.builder)


def dataset_name(format: str) -> str:
    """The TFDS name of a format's dataset: ``fashion`` -> ``mtl_fashion``."""
    return f"mtl_{format}"


def require_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:  # an optional extra
        raise ConfigError("prepared datasets need tensorflow-datasets: pip install 'mtl-keras[tfds]'") from None
    return tfds


def _version_dir(folder: Path) -> Path | None:
    if (folder / INFO_FILE).is_file():
        return folder
    if (folder / VERSION / INFO_FILE).is_file():
        return folder / VERSION
    versions = list(folder.glob(f"*/{INFO_FILE}")) if folder.is_dir() else []
    if not versions:
        return None

    def key(path):
        return tuple(int(p) if p.isdigit() else -1 for p in path.parent.name.split("."))

    return max(versions, key=key).parent


def is_prepared(root: str | Path) -> bool:
    """``tfds:...``, or a folder holding a prepared dataset (its version folder, or the dataset
    folder with a ``1.0.0`` version). Only looks for files: cheap on any data folder."""
    text = str(root)
    if text.startswith(PREFIX):
        return True
    folder = Path(text)
    return (folder / INFO_FILE).is_file() or (folder / VERSION / INFO_FILE).is_file()


def prepared_dir(root: str | Path) -> Path:
    """The version folder of a prepared dataset named by ``root``.

    ``tfds:NAME`` (``NAME`` = ``mtl_<format>`` or just the format) is looked up in TFDS's data
    folder (``$TFDS_DATA_DIR``, default ``~/tensorflow_datasets``); ``tfds:PATH`` and a plain path
    name the dataset folder or its version folder.

    Raises:
        DataError: nothing prepared there (names the folder and how to prepare it).
    """
    text = str(root)
    rest = os.path.expanduser(text[len(PREFIX):] if text.startswith(PREFIX) else text)
    if text.startswith(PREFIX) and "/" not in rest and not Path(rest).is_dir():
        name = dataset_name(rest) if rest in FORMATS else rest
        folder = Path(os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR).expanduser() / name
    else:
        folder = Path(rest)
    found = _version_dir(folder.resolve()) if rest else None
    if found is None:
        raise DataError(f"no prepared dataset in {folder} (from {text!r}); prepare one with "
                        "tfds build mtl/data/tfds/<format>.py --manual_dir DATA_FOLDER --data_dir DIR")
    return found


def load_prepared(root: str | Path, format: str = "auto", **options):
    """Read a prepared dataset into the ``SourceData`` reading its folder gives.

    Args:
        root: ``tfds:NAME``, ``tfds:PATH`` or the prepared folder (:func:`prepared_dir`).
        format: ``auto`` or the format it was prepared from.
        **options: reader options (``rare_threshold``, ...): those the dataset was prepared with
            must match (they shaped its classes); others are ignored, as ``load_source`` does.

    Returns:
        The ``SourceData``: ``root`` is ``tfds:<version folder>``; ``path`` points at the image
        files written from the TFRecords into the cache (their relative names kept).

    Raises:
        DataError: nothing prepared there, or not of ``format``.
        ConfigError: tensorflow-datasets missing, or a reader option other than the prepared one.
    """
    folder = prepared_dir(root)
    tfds = require_tfds()
    builder = tfds.builder_from_directory(str(folder))
    meta = dict(builder.info.metadata or {})
    if "format" not in meta:
        raise DataError(f"{folder}: not a dataset prepared by mtl.data.tfds (no format in its metadata.json)")
    fmt = meta["format"]
    if format not in ("auto", fmt):
        raise DataError(f"{folder}: prepared from the {fmt!r} format, not {format!r} (use --format auto or {fmt})")
    for key, used in meta.get("options", {}).items():
        if key in options and options[key] != used:
            raise ConfigError(f"{key}={options[key]!r}: the prepared dataset {folder} was made with {key}={used!r} "
                              f"(prepare the folder again with that option, or use {used!r})")
    tasks = {d["name"]: TaskSpec.from_dict(d) for d in meta["tasks"]}
    files = _files_dir(folder)
    complete = (files / ".complete").is_file()
    target = files if complete else Path(tempfile.mkdtemp(prefix=".tmp-", dir=files.parent))
    rows = []
    for subset in builder.info.splits:
        ds = builder.as_dataset(split=subset, decoders={"image": tfds.decode.SkipDecoding()})
        for ex in tfds.as_numpy(ds):
            name = ex["file_name"].decode()
            if not complete:
                dest = target / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(ex["image"])
            row = {"path": str(files / name), "identity": int(ex["identity"]), "camera": int(ex["camera"]),
                   "subset": subset, "_index": int(ex["index"])}
            for task, spec in tasks.items():
                if not spec.type.has_classes:  # a value, NaN where missing
                    row[task] = float(ex["labels"][task])
                    continue
                value = int(ex["labels"][task])
                row[task] = -1 if value == spec.num_classes else value
            rows.append(row)
    if not complete:
        (target / ".complete").write_text(str(folder))
        try:
            target.rename(files)
        except OSError:  # another process wrote it first: same bytes
            shutil.rmtree(target, ignore_errors=True)
    rows.sort(key=lambda r: r.pop("_index"))
    table = make_table(rows, tasks)
    aliases = {k: tuple(v) for k, v in meta.get("aliases", {}).items()}
    return SourceData(fmt, f"{PREFIX}{folder}", table, tasks, aliases)


def _files_dir(folder: Path) -> Path:
    """The cache folder of a prepared dataset's image files: one per folder and preparation."""
    digest = hashlib.sha1(f"{folder}\n{(folder / INFO_FILE).read_text()}".encode()).hexdigest()[:12]
    cache = default_cache_dir() / "tfds"
    cache.mkdir(parents=True, exist_ok=True)
    return cache / f"{folder.parent.name}-{folder.name}-{digest}"
