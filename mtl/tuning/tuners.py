"""The keras-tuner tuners of a search (random, bayesian, hyperband): each frees its trial's graphs,
records memory and keeps the trials table current after every trial."""

from __future__ import annotations

from pathlib import Path

import keras_tuner

from mtl.choices import TUNERS
from mtl.errors import ConfigError
from mtl.tuning.hypermodel import MtlHyperModel
from mtl.tuning.memory import gradient_registry_mark, release_graph_memory, rss_mb
from mtl.tuning.objective import Objective

PROJECT = "tuner"  # keras-tuner's project folder inside the output folder


class _MtlTunerMixin:
    """Frees each trial's graphs when it ends (memory stays flat across trials), records the
    process's memory, and calls ``after_trial`` (the search keeps ``trials.csv`` current)."""

    memory_mb: list
    after_trial = None
    _registry_mark: set = set()

    def on_trial_begin(self, trial):
        self._registry_mark = gradient_registry_mark()
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        release_graph_memory(keep=self._registry_mark)
        self.memory_mb.append({"trial_id": trial.trial_id, "rss_mb": round(rss_mb(), 1)})
        if self.after_trial is not None:
            self.after_trial(self)


class RandomSearch(_MtlTunerMixin, keras_tuner.RandomSearch):
    pass


class BayesianOptimization(_MtlTunerMixin, keras_tuner.BayesianOptimization):
    pass


class Hyperband(_MtlTunerMixin, keras_tuner.Hyperband):
    pass


def make_tuner(kind: str, hypermodel: MtlHyperModel, objective: Objective, directory: str | Path,
               max_trials: int, epochs: int, seed: int = 0, overwrite: bool = False):
    """A keras-tuner tuner of ``kind`` (random | bayesian | hyperband) over ``hypermodel``.

    Args:
        directory: the search's output folder (keras-tuner's state goes in ``<directory>/tuner``).
        max_trials: total number of trials (also caps hyperband, whose own budget is
            ``epochs`` and a reduction factor of 3).
        epochs: maximum epochs of a trial (hyperband's ``max_epochs``).
        overwrite: start keras-tuner's state afresh (the folder rules are ``prepare_out_dir``'s).
    """
    common = {"hypermodel": hypermodel, "objective": objective.keras_tuner(), "directory": str(directory),
              "project_name": PROJECT, "overwrite": overwrite, "seed": seed, "max_consecutive_failed_trials": 3}
    with hypermodel.declaring():
        if kind == "random":
            tuner = RandomSearch(max_trials=max_trials, **common)
        elif kind == "bayesian":
            tuner = BayesianOptimization(max_trials=max_trials, **common)
        elif kind == "hyperband":
            tuner = Hyperband(max_epochs=max(2, int(epochs)), factor=3, **common)
            tuner.oracle.max_trials = max_trials  # the oracle stops creating trials past it
        else:
            raise ConfigError(f"unknown tuner {kind!r}; valid: {', '.join(TUNERS)}")
    tuner.memory_mb = []
    return tuner
