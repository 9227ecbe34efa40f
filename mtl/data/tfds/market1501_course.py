"""The tensorflow-datasets builder of the ``market1501_course`` folder format (``tfds build`` this file).

``tfds build mtl/data/tfds/market1501_course.py --manual_dir DATA_FOLDER --data_dir OUT`` writes
``OUT/mtl_market1501_course/1.0.0``; see ``mtl.data.tfds.builder`` for the features.
"""

from mtl.data.tfds.builder import SourceBuilder, instructions


class MtlMarket1501Course(SourceBuilder):
    """``mtl_market1501_course``: a ``market1501_course`` folder (``manual_dir``) as sharded TFRecords."""

    name = "mtl_market1501_course"
    FORMAT = "market1501_course"
    MANUAL_DOWNLOAD_INSTRUCTIONS = instructions(FORMAT)
