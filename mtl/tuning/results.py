"""The results of a search in its output folder: ``trials.csv`` (one row per trial),
``best_config.yaml`` (a config ``scripts/train.py --config`` reads) and ``tuning.json`` (summary).
The file names are ``mtl.rundir``'s."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mtl.config import save_config
from mtl.scoring import evaluate_attributes
from mtl.rundir import BEST_CONFIG, TRIALS, TUNING_JSON, RunDir
from mtl.tuning.hypermodel import MtlHyperModel
from mtl.tuning.objective import Objective
from mtl.tasks import TaskSpec
from mtl.tuning.space import hp_values

# the summary metrics an objective can name that have a majority baseline
_BASELINE_SUMMARY = ("mean_accuracy", "mean_macro_f1", "mA", "instance_f1")
_FIRST_COLUMNS = ("trial", "status", "objective", "majority_baseline", "trial_seconds", "epochs_run", "best_epoch")


def trial_number(trial_id: str, position: int) -> int:
    """The number a trial is known by everywhere (console, ``trials.csv``, ``tuning.json``, report):
    1 for the first trial, as keras-tuner's "Running Trial #1" counts. keras-tuner's own ids
    ("00", "01", ...: its ``tuner/trial_00`` folders) count from 0; other ids by ``position`` (0-based)."""
    return int(trial_id) + 1 if str(trial_id).isdigit() else position + 1


def majority_metrics(val: pd.DataFrame, tasks: Sequence[TaskSpec]) -> dict[str, float]:
    """What always answering each task's most frequent validation class scores, under the names the
    objective uses (``val_<task>_accuracy``, ``val_<task>_macro_f1``, ``mean_accuracy``,
    ``mean_macro_f1``, ``mA``, ``instance_f1``): the baseline a trial's objective must beat. Losses
    and re-identification metrics have none.

    Args:
        val: the validation table (a column of class indices per attribute task, -1 = missing).
        tasks: the search's tasks.
    """
    labels, constants, specs = {}, {}, []
    for spec in tasks:
        if not spec.type.has_classes or spec.name not in val:
            continue
        y = val[spec.name].to_numpy(dtype=int)
        labelled = y[y >= 0]
        if not len(labelled):
            continue
        constant = np.zeros((len(y), spec.num_classes), np.float32)
        constant[:, np.bincount(labelled, minlength=spec.num_classes).argmax()] = 1.0
        labels[spec.name], constants[spec.name] = y, constant
        specs.append(spec)
    evaluated = evaluate_attributes(labels, constants, specs)
    out = {}
    for name, r in evaluated["tasks"].items():
        out[f"val_{name}_accuracy"], out[f"val_{name}_macro_f1"] = r["accuracy"], r["macro_f1"]
    out.update({k: v for k, v in evaluated["summary"].items() if k in _BASELINE_SUMMARY and v is not None})
    return out


def objective_baseline(objective: Objective, baselines: Mapping[str, float]) -> float | None:
    """The majority baseline of ``objective`` (the mean over its parts), or None when a part has none."""
    values = [baselines.get(p) for p in objective.parts]
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def trials_table(oracle, objective: Objective, baseline: float | None = None) -> pd.DataFrame:
    """One row per trial: its number (:func:`trial_number`), status, objective value beside its
    majority baseline, seconds, epochs, hyperparameters, metrics, and keras-tuner's ``trial_id``.

    Args:
        oracle: the keras-tuner oracle.
        objective: what the search optimises.
        baseline: the objective's majority baseline (:func:`objective_baseline`; the same
            validation images for every trial), or None.
    """
    rows, hp_columns, metric_columns = [], [], []
    for position, trial_id in enumerate(sorted(oracle.trials)):
        trial = oracle.trials[trial_id]
        metrics = {name: trial.metrics.get_last_value(name) for name in trial.metrics.metrics}
        values = hp_values(trial.hyperparameters)
        hp_columns += [k for k in values if k not in hp_columns]
        metric_columns += [k for k in metrics if k not in metric_columns]
        rows.append({"trial": trial_number(trial_id, position), "status": str(trial.status),
                     "objective": metrics.get(objective.name), "majority_baseline": baseline, **values, **metrics,
                     "trial_id": trial_id})
    order = [h.name for h in oracle.get_space().space]  # the search space's own order
    hp_columns.sort(key=lambda c: (order.index(c) if c in order else len(order), c))
    others = sorted(c for c in metric_columns if c not in _FIRST_COLUMNS and c != objective.name)
    # trial_id last: keras-tuner's own id (its tuner/trial_<id> folder), not the number shown
    frame = pd.DataFrame(rows, columns=[*_FIRST_COLUMNS, *hp_columns, *others, "trial_id"])
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
    baseline = objective_baseline(objective, majority_metrics(hypermodel.data.val, hypermodel.data.tasks))
    table = trials_table(oracle, objective, baseline)
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
        position = sorted(oracle.trials).index(best.trial_id)
        # "trial" is the number shown everywhere; "trial_id" is keras-tuner's (its tuner/trial_<id> folder)
        summary["best"] = {"trial": trial_number(best.trial_id, position), "trial_id": best.trial_id,
                           "value": best.metrics.get_last_value(objective.name), "majority_baseline": baseline,
                           "hyperparameters": hp_values(best.hyperparameters), "config": BEST_CONFIG}
    folder.write_json(TUNING_JSON, summary)
    return summary


def trial_line(oracle, trial_id: str, objective: Objective, summary: Mapping) -> str:
    """One console line for a finished trial, numbered as ``trials.csv`` and the report number it:
    ``trial 2 of 4: val_age_accuracy 0.7200 (majority baseline 0.6000); best so far: trial 2``.

    Args:
        oracle: the keras-tuner oracle.
        trial_id: keras-tuner's id of the trial that ended.
        objective: what the search optimises.
        summary: :func:`write_results`' summary (best trial, baseline, ``max_trials``).
    """
    ids = sorted(oracle.trials)
    trial = oracle.trials[trial_id]
    number = trial_number(trial_id, ids.index(trial_id))
    head = f"trial {number} of {summary.get('max_trials') or '?'}"
    if not trial.metrics.exists(objective.name):
        return f"{head}: {str(trial.status).lower()}" + (f" ({trial.message.strip().splitlines()[-1]})"
                                                          if getattr(trial, "message", None) else "")
    text = f"{head}: {objective.name} {trial.metrics.get_last_value(objective.name):.4f}"
    best = summary.get("best") or {}
    if best.get("majority_baseline") is not None:
        text += f" (majority baseline {best['majority_baseline']:.4f})"
    if best.get("trial") is not None:
        text += f"; best so far: trial {best['trial']}"
    return text
