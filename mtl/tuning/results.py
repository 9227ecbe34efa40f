"""The results of a search in its output folder: ``trials.csv`` (one row per trial),
``best_config.yaml`` (a config ``scripts/train.py --config`` reads) and ``tuning.json`` (summary).
The file names are ``mtl.rundir``'s."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mtl.config import save_config
from mtl.rundir import BEST_CONFIG, TRIALS, TUNING_JSON, RunDir
from mtl.tuning.hypermodel import MtlHyperModel
from mtl.tuning.objective import Objective
from mtl.tuning.space import hp_values

_FIRST_COLUMNS = ("trial_id", "status", "objective", "trial_seconds", "epochs_run", "best_epoch")


def trials_table(oracle, objective: Objective) -> pd.DataFrame:
    """One row per trial: id, status, objective value, seconds, epochs, hyperparameters, metrics."""
    rows, hp_columns, metric_columns = [], [], []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        metrics = {name: trial.metrics.get_last_value(name) for name in trial.metrics.metrics}
        values = hp_values(trial.hyperparameters)
        hp_columns += [k for k in values if k not in hp_columns]
        metric_columns += [k for k in metrics if k not in metric_columns]
        rows.append({"trial_id": trial_id, "status": str(trial.status), "objective": metrics.get(objective.name),
                     **values, **metrics})
    order = [h.name for h in oracle.get_space().space]  # the search space's own order
    hp_columns.sort(key=lambda c: (order.index(c) if c in order else len(order), c))
    others = sorted(c for c in metric_columns if c not in _FIRST_COLUMNS and c != objective.name)
    frame = pd.DataFrame(rows, columns=[*_FIRST_COLUMNS, *hp_columns, *others])
    for col in ("epochs_run", "best_epoch"):
        frame[col] = frame[col].astype("Int64")
    return frame


def best_trial(oracle, objective: Objective):
    """The completed trial with the best objective value, or None."""
    done = [t for t in oracle.trials.values()
            if str(t.status) == "COMPLETED" and t.metrics.exists(objective.name)]
    if not done:
        return None
    sign = 1 if objective.direction == "min" else -1
    return min(done, key=lambda t: (sign * t.metrics.get_last_value(objective.name), t.trial_id))


def write_results(out: str | Path, tuner, hypermodel: MtlHyperModel, objective: Objective,
                  command: str | None = None) -> dict:
    """Write ``trials.csv``, ``best_config.yaml`` (a config ``scripts/train.py --config`` reads)
    and ``tuning.json``; returns the summary written to ``tuning.json``."""
    folder = RunDir(out)
    oracle = tuner.oracle
    table = trials_table(oracle, objective)
    folder.write_csv(TRIALS, table)
    best = best_trial(oracle, objective)
    summary: dict = {
        "objective": objective.to_dict(),
        "tuner": hypermodel.base.tune.tuner,
        "max_trials": oracle.max_trials,
        "trials": int(len(table)),
        "completed": int((table["status"] == "COMPLETED").sum()) if len(table) else 0,
        "memory_mb": list(getattr(tuner, "memory_mb", [])),
        "command": command,
        "best": None,
    }
    if best is not None:
        cfg = hypermodel.trial_config(best.hyperparameters)
        save_config(cfg, folder.file(BEST_CONFIG))
        summary["best"] = {"trial_id": best.trial_id, "value": best.metrics.get_last_value(objective.name),
                           "hyperparameters": hp_values(best.hyperparameters), "config": BEST_CONFIG}
    folder.write_json(TUNING_JSON, summary)
    return summary
