"""The tensorflow-datasets builder every on-disk format shares (manual-download style).

A builder reads the folder the user points at (``manual_dir``) with the format's own reader
(``mtl.data.sources``: no second parser) and writes one example per image of its table into
sharded TFRecords, one TFDS split per non-empty subset (``train``, ``query``, ``gallery``,
``test``). Features of an example:

==============  =======================================================================
``image``       the image file's bytes, unchanged (``tfds.features.Image``: decodes to uint8 RGB)
``file_name``   the path relative to the data folder (``train/0002_c3_0001.jpg``)
``index``       the row of the source table (TFDS shuffles examples: this restores the order)
``identity``    int64, ``-1`` where unknown
``camera``      int64, ``-1`` where unknown
``labels``      one ``ClassLabel`` per task, named by the task table; its LAST class is
                ``MISSING`` (``"__missing__"``): a missing label (``-1`` in the package) is
                stored as ``num_classes`` of the task, because a ``ClassLabel`` cannot hold -1;
                a regression task's value is a float32 ``Scalar``, NaN where missing
==============  =======================================================================

The dataset's metadata (``metadata.json``) keeps what the table alone does not: the format,
the task table (kinds and classes), the aliases and the reader options used.

The task table depends on the data (product classes come from the CSV), so the features are
known only once the folder is read: ``download_and_prepare`` reads it first. A prepared
dataset needs no folder: TFDS restores its features from ``features.json``.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from mtl.data.sources import format_module, load_source
from mtl.data.sources.base import SUBSETS, SourceData

from mtl.data.tfds import VERSION

MISSING = "__missing__"


def source_options(format: str) -> dict:
    """The reader options a prepared dataset is made with: the defaults of the format's ``load``
    (the options ``mtl.data.prepare.prepare_data`` can pass, e.g. ``rare_threshold``)."""
    params = inspect.signature(format_module(format).load).parameters
    return {name: p.default for name, p in params.items()
            if name == "rare_threshold" and p.default is not inspect.Parameter.empty}


def features_for(source: SourceData) -> tfds.features.FeaturesDict:
    """The TFDS features of a source (see the module docstring)."""
    labels = {name: tfds.features.ClassLabel(names=[*spec.classes, MISSING]) if spec.type.has_classes
              else tfds.features.Scalar(dtype=np.float32) for name, spec in source.tasks.items()}
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "file_name": tfds.features.Text(),
        "index": tfds.features.Scalar(dtype=np.int64),
        "identity": tfds.features.Scalar(dtype=np.int64),
        "camera": tfds.features.Scalar(dtype=np.int64),
        "labels": tfds.features.FeaturesDict(labels),
    })


def instructions(format: str) -> str:
    """``MANUAL_DOWNLOAD_INSTRUCTIONS`` of a format's builder."""
    return (f"Point manual_dir (tfds build --manual_dir DIR) at a folder in the {format!r} layout "
            f"(see {format_module(format).__name__}); nothing is downloaded.")


def relative_name(path: str, root: str, index: int) -> str:
    """``path`` relative to the data folder; images outside it (an absolute ``images`` option)
    are named ``external/<index>_<name>`` so names stay unique."""
    rel = os.path.relpath(path, root)
    if rel.startswith(".."):
        return f"external/{index}_{os.path.basename(path)}"
    return rel.replace(os.sep, "/")


class SourceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the per-format builders: set ``FORMAT`` (a key of ``mtl.data.sources.FORMATS``),
    ``name`` (``mtl_<format>``) and ``MANUAL_DOWNLOAD_INSTRUCTIONS`` (``instructions(FORMAT)``)."""

    FORMAT = ""
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "First release: one example per image of the folder's table."}

    def __init__(self, **kwargs):
        self._source: SourceData | None = None
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # features: None until the folder is read (restored from features.json once prepared)
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"The {self.FORMAT} data folder as read by mtl.data.sources ({self.MANUAL_DOWNLOAD_INSTRUCTIONS})",
            features=features_for(self._source) if self._source is not None else None,
            metadata=tfds.core.MetadataDict(),
        )

    def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs):
        """Read the manual folder first (the features depend on it), then let TFDS write the shards."""
        download_config = download_config or tfds.download.DownloadConfig()
        if not self.data_path.exists() or download_config.download_mode.overwrite_dataset:
            # the manual folder as TFDS's download manager will place it
            manual = download_config.manual_dir or Path(download_dir or Path(self.data_dir_root) / "downloads") / "manual"
            self._read_source(Path(manual))
        return super().download_and_prepare(download_dir=download_dir, download_config=download_config, **kwargs)

    def _read_source(self, manual_dir: Path) -> None:
        options = source_options(self.FORMAT)
        source = load_source(manual_dir, self.FORMAT, **options)
        self._source = source
        # the info object was made (without features) when the builder was created; TFDS offers no
        # public setter, and its writer reads info.features, so the features are set in place
        self.info._features = features_for(source)  # noqa: SLF001
        self.info.metadata.update({
            "format": self.FORMAT,
            "source_root": str(source.root),
            "tasks": [spec.to_dict() for spec in source.tasks.values()],
            "aliases": {k: list(v) for k, v in source.aliases.items()},
            "options": options,
        })

    def _split_generators(self, dl_manager):
        if self._source is None:  # download_and_prepare reads it; a direct call reads it here
            self._read_source(Path(dl_manager.manual_dir))
        present = [s for s in SUBSETS if (self._source.table["subset"] == s).any()]
        return {subset: self._generate_examples(subset) for subset in present}

    def _generate_examples(self, subset: str):
        source = self._source
        table = source.table
        for index in (table["subset"] == subset).to_numpy().nonzero()[0]:
            row = table.iloc[index]
            labels = {}
            for name, spec in source.tasks.items():
                if not spec.type.has_classes:  # a value, NaN where missing
                    labels[name] = float(row[name])
                    continue
                value = int(row[name])
                labels[name] = spec.num_classes if value < 0 else value
            yield int(index), {
                "image": row["path"],
                "file_name": relative_name(row["path"], source.root, int(index)),
                "index": int(index),
                "identity": int(row["identity"]),
                "camera": int(row["camera"]),
                "labels": labels,
            }
