"""The tensorflow-datasets builder of the ``market1501`` folder format (``tfds build`` this file).

``tfds build mtl/data/tfds/market1501.py --manual_dir DATA_FOLDER --data_dir OUT`` writes
``OUT/mtl_market1501/1.0.0``; see ``mtl.data.tfds.builder`` for the features.
"""

from mtl.data.tfds.builder import SourceBuilder, instructions


class MtlMarket1501(SourceBuilder):
    """``mtl_market1501``: a ``market1501`` folder (``manual_dir``) as sharded TFRecords."""

    name = "mtl_market1501"
    FORMAT = "market1501"
    MANUAL_DOWNLOAD_INSTRUCTIONS = instructions(FORMAT)
