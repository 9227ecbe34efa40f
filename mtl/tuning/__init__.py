"""Hyperparameter search (moved from mtl/tuning.py; split into modules in the next commit)."""

from mtl.tuning.search import *  # noqa: F401,F403
