"""Task-set study: does learning auxiliary tasks beside a main task help the main task?

The main task is trained alone, then with each auxiliary task, and optionally with all of them,
with the same recipe (config), seed(s) and train/validation split. Each training is an ordinary
run of ``mtl.experiment.train`` in ``<out>/<set>/seed<k>/``; the study reads the main task's
validation loss, accuracy and macro F1 back from the run folders and writes ``study.csv`` and
``study.json`` (the comparison the product-attribute report made by hand: apparel alone vs
apparel + material, colour, gender, age).

What "same" means here:

* the split is stratified on the main task and every auxiliary task for every set
  (``data.stratify``), so all sets are trained and validated on the same images;
* loss weights of the config apply to the tasks present (a weight for an absent task is dropped);
* early stopping watches the set's masked validation loss (the training rule), and the main
  task's numbers are those of the epoch whose weights are kept; ``main_best_val_loss`` is the
  main task's lowest validation loss over all epochs, whatever the stopping rule chose.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mtl import tasks as task_lib
from mtl.config import Config, to_dict
from mtl.errors import ConfigError, MtlError
from mtl.rundir import FINISHED, STUDY_CSV, STUDY_JSON, STUDY_RUNS_CSV, RunDir, config_diff, plan

ALL = "all"  # the set of the main task with every auxiliary task


@dataclasses.dataclass(frozen=True)
class TaskSet:
    """One training of the study.

    Args:
        name: folder and table label (``articleType``, ``articleType+baseColour``, ``all``).
        tasks: task names, main task first.
        aux: the auxiliary tasks added (empty for the main task alone).
    """

    name: str
    tasks: tuple[str, ...]
    aux: tuple[str, ...]


def resolve_study_tasks(main: str, aux: Sequence[str], table, aliases=None) -> tuple[str, list[tuple[str, ...]]]:
    """Main task name and, per auxiliary entry, its task names (an alias may stand for several).

    Raises:
        ConfigError: unknown names (listing the valid ones), a main task that is not exactly one
            attribute task, an auxiliary entry that repeats the main task, or no auxiliary task.
    """
    main_specs = task_lib.resolve(main, table, aliases)
    if len(main_specs) != 1 or not main_specs[0].type.has_classes:
        raise ConfigError(f"--main must name one attribute task, {main!r} stands for "
                          f"{', '.join(t.name for t in main_specs)}")
    main_name = main_specs[0].name
    groups: list[tuple[str, ...]] = []
    for entry in aux:
        names = tuple(t.name for t in task_lib.resolve(entry, table, aliases) if t.name != main_name)
        if not names:
            raise ConfigError(f"auxiliary task {entry!r} is the main task")
        if names not in groups:
            groups.append(names)
    if not groups:
        raise ConfigError("give at least one auxiliary task (--aux a,b,c)")
    return main_name, groups


def task_sets(main: str, aux_groups: Sequence[Sequence[str]], include_all: bool = False) -> list[TaskSet]:
    """Main alone, main + each auxiliary group, and (``include_all``) main + every auxiliary task."""
    sets = [TaskSet(main, (main,), ())]
    for group in aux_groups:
        sets.append(TaskSet("+".join((main, *group)), (main, *group), tuple(group)))
    every = tuple(dict.fromkeys(n for g in aux_groups for n in g))
    if include_all and len(aux_groups) > 1:
        sets.append(TaskSet(ALL, (main, *every), every))
    return sets


def set_config(base: Config, task_set: TaskSet, stratify: Sequence[str], seed: int) -> Config:
    """The study's recipe for one task set and seed (``base`` with tasks, split and seed fixed)."""
    weights = {k: v for k, v in base.train.loss_weights.items() if k in task_set.tasks}
    return dataclasses.replace(
        base, tasks=",".join(task_set.tasks),
        data=dataclasses.replace(base.data, stratify=",".join(stratify)),
        train=dataclasses.replace(base.train, seed=int(seed), loss_weights=weights))


def check_run_dir(run_dir: Path, cfg: Config, overwrite: bool) -> str:
    """``"done"`` (same recipe, finished: reused), else what ``mtl.rundir.plan`` decides (``"new"``
    or ``"resume"``); a folder trained with another recipe is an error unless ``overwrite`` (then
    it is trained afresh)."""
    run = RunDir(run_dir)
    config = to_dict(cfg)
    if run.status() == FINISHED and not config_diff(run.read_config_dict() or {}, config):
        return "done"
    return plan(run_dir, config, overwrite)


def main_task_result(run_dir: Path, main: str) -> dict:
    """The main task's validation numbers of a finished run folder."""
    run = RunDir(run_dir)
    metrics, history = run.read_metrics(), run.read_history()
    task = metrics["tasks"][main]
    training = metrics.get("training", {})
    key = f"val_{main}_xent"
    best_epoch = training.get("best_epoch")
    at_best = next((e.get(key) for e in history if e["epoch"] == best_epoch), None)
    losses = [e[key] for e in history if key in e]
    return {
        "main_val_loss": at_best,
        "main_best_val_loss": min(losses) if losses else None,
        "main_accuracy": task["accuracy"],
        "main_macro_f1": task["macro_f1"],
        "majority_accuracy": task["majority_accuracy"],
        "val_images": task["support"],
        "epochs_run": training.get("epochs_run"),
        "best_epoch": best_epoch,
        "train_time_s": training.get("train_time_s"),
    }


_NUMBERS = ("main_val_loss", "main_best_val_loss", "main_accuracy", "main_macro_f1")


def study_table(rows: list[dict]) -> pd.DataFrame:
    """Per run rows with differences to the main task alone (same seed)."""
    frame = pd.DataFrame(rows)
    alone = frame[frame["aux"] == ""].set_index("seed")
    for col in _NUMBERS:
        frame[f"delta_{col[5:]}"] = frame[col] - frame["seed"].map(alone[col])
    return frame


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per task set: mean (and standard deviation over seeds when there are several)."""
    cols = [*_NUMBERS, *[f"delta_{c[5:]}" for c in _NUMBERS]]
    grouped = frame.groupby("set", sort=False)
    out = grouped[cols].mean()
    if frame["seed"].nunique() > 1:
        std = grouped[cols].std(ddof=1).add_suffix("_std")
        out = out.join(std)
    out.insert(0, "seeds", grouped.size())
    out.insert(0, "tasks", grouped["tasks"].first())
    return out.reset_index()


def run_study(base: Config, main: str, aux: Sequence[str], out: str | Path, include_all: bool = False,
              seeds: Sequence[int] | None = None, overwrite: bool = False, command: str | None = None,
              progress=print) -> dict:
    """Train every task set (and seed) into ``out`` and write ``study.csv`` / ``study.json``.

    Rerunning the same command reuses finished runs and resumes unfinished ones.

    Args:
        base: the recipe (its ``tasks`` is ignored).
        main: the main task (name or alias of one task).
        aux: auxiliary tasks, each a name or an alias (``colour``); each is added alone.
        include_all: also train the main task with every auxiliary task.
        seeds: training seeds (default: ``base.train.seed``); several give mean and spread.
        overwrite: retrain run folders trained with another recipe instead of stopping.
        progress: called with one line of text per step.

    Returns:
        The ``study.json`` content.
    """
    from mtl.io import folder_lock

    with folder_lock(out, "study"):
        return _run_study(base, main, aux, Path(out), include_all, seeds, overwrite, command, progress)


def _run_study(base, main, aux, out: Path, include_all, seeds, overwrite, command, progress) -> dict:
    """``run_study`` once the folder is locked."""
    from mtl.data.sources import load_source
    from mtl.data.prepare import data_root
    from mtl.experiment import train
    from mtl.tuning.memory import gradient_registry_mark, release_graph_memory

    source = load_source(data_root(base.data.path), base.data.format, rare_threshold=base.data.rare_threshold)
    main_name, groups = resolve_study_tasks(main, aux, source.tasks, source.aliases)
    sets = task_sets(main_name, groups, include_all)
    stratify = [main_name, *dict.fromkeys(n for g in groups for n in g)]
    seeds = [int(s) for s in (seeds if seeds else [base.train.seed])]
    plan = [(s, seed, set_config(base, s, stratify, seed)) for s in sets for seed in seeds]
    states = {(s.name, seed): check_run_dir(out / s.name / f"seed{seed}", cfg, overwrite) for s, seed, cfg in plan}
    rows = []
    for i, (task_set, seed, cfg) in enumerate(plan, 1):
        run_dir = out / task_set.name / f"seed{seed}"
        state = states[(task_set.name, seed)]
        label = f"[{i}/{len(plan)}] {task_set.name} (seed {seed})"
        if state == "done":
            progress(f"{label}: finished before, reusing {run_dir}")
        else:
            progress(f"{label}: {'resuming' if state == 'resume' else 'training'} into {run_dir}")
            mark = gradient_registry_mark()
            train(cfg, run_dir, command=command, overwrite=overwrite, log=None)
            release_graph_memory(keep=mark)  # several trainings in one process: free each one's graphs
        result = main_task_result(run_dir, main_name)
        progress(f"{label}: {main_name} accuracy {result['main_accuracy']:.3f}, macro F1 "
                 f"{result['main_macro_f1']:.3f}, val loss {result['main_val_loss']:.3f}")
        rows.append({"set": task_set.name, "tasks": ",".join(task_set.tasks), "aux": ",".join(task_set.aux),
                     "seed": seed, **result, "run_dir": str(run_dir)})
    frame = study_table(rows)
    summary = summary_table(frame)
    folder = RunDir(out)
    folder.write_csv(STUDY_CSV, summary)
    folder.write_csv(STUDY_RUNS_CSV, frame)
    report = {"main": main_name, "aux": [list(g) for g in groups], "seeds": seeds, "stratify": stratify,
              "data": {"root": str(source.root), "format": source.name}, "command": command,
              "recipe": to_dict(dataclasses.replace(base, tasks=main_name)),
              "sets": _records(summary), "runs": _records(frame)}
    folder.write_json(STUDY_JSON, report)
    return report


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def format_table(summary: list[dict], main: str) -> str:
    """A plain-text table of ``study.json``'s ``sets`` for the terminal."""
    lines = [f"{'task set':40s} {'val loss':>9s} {'accuracy':>9s} {'macro F1':>9s} {'d acc':>7s} {'d F1':>7s}"]
    for row in summary:
        lines.append(f"{row['set'][:40]:40s} {row['main_val_loss']:9.3f} {row['main_accuracy']:9.3f} "
                     f"{row['main_macro_f1']:9.3f} {row['delta_accuracy']:+7.3f} {row['delta_macro_f1']:+7.3f}")
    return f"main task {main} on the validation split\n" + "\n".join(lines)
