"""The tensorflow-datasets builder of the ``imaterialist`` folder format (``tfds build`` this file).

``tfds build mtl/data/tfds/imaterialist.py --manual_dir DATA_FOLDER --data_dir OUT`` writes
``OUT/mtl_imaterialist/1.0.0``; see ``mtl.data.tfds.builder`` for the features.
"""

from mtl.data.tfds.builder import SourceBuilder, instructions


class MtlImaterialist(SourceBuilder):
    """``mtl_imaterialist``: a ``imaterialist`` folder (``manual_dir``) as sharded TFRecords."""

    name = "mtl_imaterialist"
    FORMAT = "imaterialist"
    MANUAL_DOWNLOAD_INSTRUCTIONS = instructions(FORMAT)
