"""Hyperparameter search with keras-tuner over the one model builder.

A trial maps its hyperparameter values onto a ``Config`` (:func:`config_for`) and builds, compiles
and trains the model exactly as training does (``mtl.models.builder.build_model`` and
``mtl.engine``), so the best values are written as a config file that ``scripts/train.py
--config`` accepts unchanged.

Modules, in the order a search uses them:

* ``space``: :func:`search_space`, *the* search space, one function. YAML (``tune.space``) narrows
  or fixes any of its parameters (:class:`SpaceReader` documents the forms); :func:`config_for`.
* ``objective``: :func:`resolve_objective`: a short name (``age.accuracy``), a mean of several, or
  a metric computed after each trial (``mA``, ``reid_mAP``, ``age.f1``) -> what keras-tuner optimises.
* ``hypermodel``: :class:`MtlHyperModel`: ``build`` (config -> model) and ``fit`` (early stopping
  inside the trial, post-trial metrics, the objective value at the epoch whose weights are kept).
* ``tuners``: :func:`make_tuner`: random / bayesian / hyperband tuners that release each trial's
  memory (``memory``: :func:`release_graph_memory`), record it, and keep the trials table current.
* ``runner``: :func:`run_search`; :func:`prepare_out_dir`: an existing search is never reused
  silently (``resume`` / ``overwrite`` and a fingerprint of the search settings); distributed
  search (:func:`distributed_role`).
* ``results``: :func:`write_results`: ``trials.csv``, ``best_config.yaml``, ``tuning.json``.

The file names of a search folder are ``mtl.rundir``'s (``TRIALS``, ``BEST_CONFIG``,
``TUNING_JSON``, ``SEARCH_JSON``); its lock is ``mtl.io.folder_lock``.
"""

from mtl.choices import TUNERS
from mtl.io import folder_lock as exclusive_folder  # the old name of the folder lock (tests/test_io.py)
from mtl.tuning.hypermodel import MtlHyperModel, post_trial_metrics, reid_metrics, trial_patience
from mtl.tuning.memory import gradient_registry_mark, release_graph_memory, rss_mb
from mtl.tuning.objective import Objective, direction_of, is_post_trial, objective_metrics, resolve_objective
from mtl.tuning.results import best_trial, trials_table, write_results
from mtl.tuning.runner import (CHIEF_WAIT_S, RESULT_FILES, check_worker_settings, distributed_role, fingerprint,
                               prepare_out_dir, run_search, search_settings, wait_for_chief)
from mtl.tuning.space import SpaceReader, config_for, declared_space, flatten_space, hp_values, search_space
from mtl.tuning.tuners import PROJECT, BayesianOptimization, Hyperband, RandomSearch, make_tuner

__all__ = [
    "TUNERS", "exclusive_folder",
    "MtlHyperModel", "post_trial_metrics", "reid_metrics", "trial_patience",
    "gradient_registry_mark", "release_graph_memory", "rss_mb",
    "Objective", "direction_of", "is_post_trial", "objective_metrics", "resolve_objective",
    "best_trial", "trials_table", "write_results",
    "CHIEF_WAIT_S", "RESULT_FILES", "check_worker_settings", "distributed_role", "fingerprint", "prepare_out_dir",
    "run_search", "search_settings", "wait_for_chief",
    "SpaceReader", "config_for", "declared_space", "flatten_space", "hp_values", "search_space",
    "PROJECT", "BayesianOptimization", "Hyperband", "RandomSearch", "make_tuner",
]
