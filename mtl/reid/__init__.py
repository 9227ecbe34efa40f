"""Person re-identification evaluation: ranking metrics, k-reciprocal re-ranking, distances.

Pure numpy / scipy (no TensorFlow import), so it can be used on embeddings saved to disk.
"""

from mtl.reid.distance import (
    attribute_distance,
    combine_multiplicative,
    combine_weighted,
    cosine_distance,
    euclidean_distance,
)
from mtl.reid.evaluate import evaluate_rank
from mtl.reid.rerank import re_ranking, re_ranking_features

__all__ = [
    "evaluate_rank",
    "re_ranking",
    "re_ranking_features",
    "euclidean_distance",
    "cosine_distance",
    "attribute_distance",
    "combine_weighted",
    "combine_multiplicative",
]
