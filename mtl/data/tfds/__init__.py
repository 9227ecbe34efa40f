"""Prepared datasets: each on-disk format as sharded TFRecords through tensorflow-datasets.

One builder per format (``mtl.data.tfds.<format>``, dataset ``mtl_<format>``), in TFDS's
manual-download style: the user points ``manual_dir`` at the folder, nothing is downloaded.
Prepare once with ``tfds build mtl/data/tfds/<format>.py --manual_dir FOLDER --data_dir OUT`` (or
:func:`build`), then train on ``--data tfds:mtl_<format>`` (TFDS's data folder: ``$TFDS_DATA_DIR``,
default ``~/tensorflow_datasets``), ``--data tfds:OUT/mtl_<format>`` or the prepared folder itself
(``OUT/mtl_<format>/1.0.0``).

A prepared dataset is read back by ``mtl.data.sources.prepared`` (what
``mtl.data.sources.load_source`` calls): the same table as reading the folder.

This module imports neither TensorFlow nor tensorflow-datasets until a dataset is built
(``pip install mtl-keras[tfds]``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from mtl.data.sources import detect_format, format_module
from mtl.data.sources.prepared import VERSION, dataset_name, require_tfds

__all__ = ["VERSION", "build", "builder_class", "dataset_name"]


def builder_class(format: str):
    """The TFDS builder class of a format (a key of ``mtl.data.sources.FORMATS``)."""
    format_module(format)  # DataError naming the valid formats
    require_tfds()
    module = importlib.import_module(f"{__name__}.{format}")
    return next(c for c in vars(module).values() if isinstance(c, type) and c.__module__ == module.__name__
                and getattr(c, "FORMAT", None) == format)


def build(data: str | Path, format: str = "auto", data_dir: str | Path | None = None,
          overwrite: bool = False) -> Path:
    """Prepare a data folder once into sharded TFRecords (what ``tfds build`` does).

    Args:
        data: the data folder (TFDS's ``manual_dir``).
        format: a key of ``mtl.data.sources.FORMATS`` or ``auto``.
        data_dir: TFDS data folder to write into (default: TFDS's, ``$TFDS_DATA_DIR``).
        overwrite: prepare again when the dataset is already there (else it is reused).

    Returns:
        The prepared dataset's version folder (``data_dir/mtl_<format>/1.0.0``).
    """
    fmt = detect_format(data) if format == "auto" else format
    tfds = require_tfds()
    builder = builder_class(fmt)(data_dir=str(data_dir) if data_dir else None)
    mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(Path(data).resolve()), download_mode=mode))
    return Path(builder.data_dir)
