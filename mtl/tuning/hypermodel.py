"""One trial: its config -> the one model builder, compiled and trained by the engine as training
does; then the objective and the post-trial metrics at the epoch whose weights are kept."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Mapping

import keras_tuner
import numpy as np
from keras_tuner.src.engine.tuner_utils import SaveBestEpoch

from mtl.config import Config, patience_for
from mtl.evaluation import held_out_metrics
from mtl.tuning.objective import Objective
from mtl.tuning.space import config_for, search_space

class MtlHyperModel(keras_tuner.HyperModel):
    """Builds and trains one trial's model with the training recipe of ``mtl.experiment``.

    Args:
        base: the config every trial starts from (data, augmentation, epochs, ...).
        data: ``mtl.data.prepare.PreparedData``, prepared once and shared by all trials.
        objective: the resolved objective.
        patience: early-stopping patience inside each trial.
        verbose: Keras fit verbosity.
    """

    def __init__(self, base: Config, data, objective: Objective, patience: int, verbose: int = 2):
        super().__init__(name="mtl")
        self.base = base
        self.data = data
        self.tasks = list(data.tasks)
        self.objective = objective
        self.patience = int(patience)
        self.verbose = verbose
        self.steps = base.train.steps_per_epoch or math.ceil(len(data.train) / base.train.batch_size)
        self._datasets = None
        self._declaring = False

    @contextlib.contextmanager
    def declaring(self):
        """While keras-tuner only collects the space (tuner construction), ``build`` makes no model."""
        self._declaring = True
        try:
            yield
        finally:
            self._declaring = False

    def trial_config(self, hp) -> Config:
        return config_for(self.base, search_space(hp, self.tasks, self.base.tune.space))

    def build(self, hp):
        """Config of the trial -> the one builder -> compiled by the engine as training compiles."""
        from mtl.engine import compile_model, precision_policy
        from mtl.experiment import model_kwargs, seed_run, train_args
        from mtl.models.builder import build_model

        cfg = self.trial_config(hp)
        if self._declaring:
            return None
        seed_run(cfg)  # every trial starts from the same initial state
        with precision_policy(cfg.train.mixed_precision):  # layers take the policy when they are made
            model = build_model(self.tasks, **model_kwargs(cfg))
            compile_model(model, self.tasks, train_args(cfg, self.data), self.steps,
                          trainable_trunk=not cfg.train.freeze_trunk_epochs)
        return model

    def datasets(self):
        """Training / validation datasets, built once (decoded images stay cached across trials)."""
        if self._datasets is None:
            from mtl.data.prepare import datasets
            from mtl.experiment import dataset_args

            self._datasets = datasets(self.data, **dataset_args(self.base, repeat=bool(self.base.train.steps_per_epoch)))
        return self._datasets

    def fit(self, hp, model, *args, callbacks=None, epochs=None, initial_epoch=0, verbose=None, **kwargs):
        """Train with the engine (early stopping on the monitored validation loss, the best epoch's
        weights kept, as in training), then report the objective and the other metrics of that epoch.

        Returns:
            ``{metric: value}`` with the objective, the logged validation metrics of the kept
            epoch, post-trial metrics (mean accuracy / macro F1, mA, re-identification mAP),
            ``epochs_run``, ``best_epoch`` and ``trial_seconds``.
        """
        from mtl import engine
        from mtl.experiment import evaluation_args, steps_per_epoch, train_args

        start = time.time()
        cfg = self.trial_config(hp)
        train_ds, val_ds = self.datasets()
        epochs = int(epochs or cfg.train.epochs)
        # a trial always keeps its best epoch, with the trial patience
        args = dataclasses.replace(train_args(cfg, self.data), epochs=epochs, patience=self.patience, keep="best")
        steps, fixed = steps_per_epoch(cfg, self.data)
        tuner_callbacks = list(callbacks or [])
        result = engine.train_model(model, self.tasks, train_ds, val_ds, args, steps, fixed, callbacks=tuner_callbacks,
                            verbose=self.verbose if verbose is None else verbose, initial_epoch=initial_epoch)
        if not result.epochs:
            raise keras_tuner.errors.FailedTrialError("the trial ran no epoch")
        best = result.kept_epoch - 1  # 0-based
        row = next((r for r in result.epochs if r["epoch"] == best), result.epochs[-1])
        # training's evaluation; a trial's objective needs the plain distance only
        metrics, _ = held_out_metrics(model, self.tasks, self.data.val, rerank="no",
                                      **evaluation_args(cfg, self.data))
        # recorded per trial: the objective's parts and the summary metrics (a readable table)
        available = {**{k: float(v) for k, v in row.items() if k.startswith("val_")}, **post_trial_metrics(metrics)}
        keep = set(self.objective.parts) | {"val_loss", "val_masked_loss", "mean_accuracy", "mean_macro_f1", "mA", "instance_f1"}
        results = {k: v for k, v in available.items() if k in keep}
        if "reid" in metrics:
            results.update(reid_metrics(metrics["reid"]))
        missing = [p for p in self.objective.parts if results.get(p) is None or not np.isfinite(results[p])]
        if missing:
            raise keras_tuner.errors.FailedTrialError(
                f"objective part(s) {', '.join(missing)} missing or not finite (diverged, or no labelled "
                "validation rows)")
        results[self.objective.name] = float(np.mean([results[p] for p in self.objective.parts]))
        results.update(epochs_run=float(len(result.epochs)), best_epoch=float(best + 1),
                       trial_seconds=round(time.time() - start, 1))
        # keras-tuner's per-trial checkpoint: make it hold the weights kept (those of `best`)
        for cb in tuner_callbacks:
            if isinstance(cb, SaveBestEpoch):
                cb.on_epoch_end(best, logs={})
        return {k: v for k, v in results.items() if v is not None}


def post_trial_metrics(metrics: Mapping) -> dict:
    """Metrics keras does not log per epoch, from ``mtl.inference.evaluate_model``'s result."""
    out = {f"val_{name}_macro_f1": r.get("macro_f1") for name, r in metrics["tasks"].items()}
    summary = metrics["summary"]
    out.update(mean_accuracy=summary.get("mean_accuracy"), mean_macro_f1=summary.get("mean_macro_f1"),
               mA=summary.get("mA"), instance_f1=summary.get("instance_f1"))
    return {k: float(v) for k, v in out.items() if v is not None}


def reid_metrics(reid: Mapping) -> dict:
    """Re-identification mAP / rank-1 on held-out identities, from the ``reid`` part of
    ``mtl.evaluation.held_out_metrics`` (``mtl.reid.protocol.evaluate_holdout``: one query per
    identity and camera, plain distance).

    Raises:
        FailedTrialError: no re-identification could be evaluated (names why).
    """
    if "skipped" in reid:
        raise keras_tuner.errors.FailedTrialError(f"no re-identification metrics: {reid['skipped']}")
    return {"reid_mAP": float(reid["plain"]["mAP"]), "reid_rank1": float(reid["plain"]["rank1"])}


def trial_patience(cfg: Config) -> int:
    """Early-stopping patience inside a trial: ``tune.patience``, else the training rule."""
    return int(cfg.tune.patience) if cfg.tune.patience is not None else patience_for(cfg.train.epochs,
                                                                                       cfg.train.patience)
