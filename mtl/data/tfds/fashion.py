"""The tensorflow-datasets builder of the ``fashion`` folder format (``tfds build`` this file).

``tfds build mtl/data/tfds/fashion.py --manual_dir DATA_FOLDER --data_dir OUT`` writes
``OUT/mtl_fashion/1.0.0``; see ``mtl.data.tfds.builder`` for the features.
"""

from mtl.data.tfds.builder import SourceBuilder, instructions


class MtlFashion(SourceBuilder):
    """``mtl_fashion``: a ``fashion`` folder (``manual_dir``) as sharded TFRecords."""

    name = "mtl_fashion"
    FORMAT = "fashion"
    MANUAL_DOWNLOAD_INSTRUCTIONS = instructions(FORMAT)
