"""Assemble the content of a report from a directory's files and render it with Jinja2.

``render_report`` handles a run, tuning or study directory (``detect_kind``);
``render_comparison`` puts several runs side by side. Both write one self-contained HTML
file (figures as PNG and thumbnails as JPEG ``data:`` URIs, CSS and JavaScript inline) and
return its path. Sections whose files are missing are left out.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
import numpy as np
import pandas as pd

from mtl import __version__
from mtl.errors import DataError, MtlError
from mtl.io import atomic_write_text
from mtl.report import figures, tables
from mtl.report.examples import MAX_GALLERY, MAX_QUERIES, PER_GROUP, prediction_examples, retrieval_examples
from mtl.rundir import CONFIG, RUN, STUDY, TUNING, RunFiles, detect_kind, load, sub_runs
from mtl.report.thumbnails import Thumbnailer
from mtl.tasks import CATEGORICAL, KINDS

__all__ = ["render_report", "render_comparison", "report_command", "detect_kind", "output_path",
           "run_context", "MAX_QUERIES", "MAX_GALLERY"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_TABLE_ROWS = 500  # trials / study tables longer than this are cut (the CSV has them all)


def report_command(run_dir: str | Path, *others: str | Path) -> str:
    """The shell command that renders the report of ``run_dir`` (compared with ``others``)."""
    return shlex.join(["python", "scripts/report.py", str(run_dir), *map(str, others)])


def output_path(out: str | Path | None, dirs: Sequence[str | Path]) -> Path:
    """Where the HTML goes: ``out`` if it ends in ``.html``, else ``<out>/index.html``; by default
    ``reports/<name>/index.html`` (``reports/<A>-vs-<B>/`` for a comparison)."""
    if out is None:
        names = [Path(d).resolve().name for d in dirs]
        out = Path("reports") / "-vs-".join(names)
    out = Path(out)
    return out if out.suffix.lower() in (".html", ".htm") else out / "index.html"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v, d=1: "–" if v is None or not figures.finite(v) else f"{100 * float(v):.{d}f}%"
    env.filters["num"] = lambda v: "–" if v is None else (f"{v:,}" if isinstance(v, int) else
                                                         (f"{v:.4g}" if isinstance(v, float) else str(v)))
    env.filters["duration"] = _duration
    return env


def _duration(seconds) -> str:
    if not figures.finite(seconds):
        return "–"
    s = float(seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _progress(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# one run


def _task_specs(rf: RunFiles) -> list[dict]:
    """Task specs from tasks.json, else from the names in metrics.json (classes unknown)."""
    specs = [t for t in (rf.tasks or []) if isinstance(t, Mapping) and "name" in t]
    known = {t["name"] for t in specs}
    for name, r in ((rf.metrics or {}).get("tasks") or {}).items():
        if name not in known and isinstance(r, Mapping):
            classes = [c.get("class", str(i)) for i, c in enumerate(r.get("per_class") or []) if isinstance(c, Mapping)]
            specs.append({"name": name, "kind": r.get("kind", "categorical"), "classes": classes})
    return [{"name": str(t["name"]), "kind": str(t.get("kind", "categorical")),
             "classes": [str(c) for c in (t.get("classes") or [])]} for t in specs]


def _reproduce(rf: RunFiles) -> list[tuple[str, str]]:
    """Commands that reproduce the run: the original command line, and the same training from
    the saved config (which pins every setting, including defaults that may change later)."""
    out = []
    if rf.command:
        out.append(("as it was run", python_command(rf.command)))
    if rf.config_text is not None:
        cfg = rf.path / CONFIG
        out.append(("from the saved config", shlex.join(["python", "scripts/train.py", "--config", str(cfg),
                                                          "--out", f"{rf.path}-again"])))
    return out


def python_command(command: str) -> str:
    """``command.txt`` stores ``sys.argv``, whose first word is the script: make it runnable."""
    return "python " + command if command.split(" ", 1)[0].endswith(".py") else command


def _image_roots(rf: RunFiles) -> list[Path]:
    roots = [rf.path]
    root = (rf.data or {}).get("root")
    if isinstance(root, str) and root:
        roots.append(Path(root))
    roots.append(Path.cwd())
    return roots


def _model_items(model: Mapping[str, Any]) -> list[tuple[str, Any]]:
    labels = [("trunk", "trunk"), ("weights", "trunk weights"), ("head", "head"), ("input_shape", "input (H, W, C)"),
              ("params_total", "parameters"), ("params_trainable", "trainable parameters"),
              ("params_trunk", "trunk parameters"), ("outputs", "outputs")]
    items = []
    for key, label in labels:
        if key in model:
            v = model[key]
            if key == "input_shape" and isinstance(v, list):
                v = " × ".join(map(str, v))
            elif key == "outputs" and isinstance(v, list):
                v = ", ".join(map(str, v))
            elif isinstance(v, int) and not isinstance(v, bool):
                v = f"{v:,}"
            items.append((label, tables.plain_text(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else v))
    items += [(k, v) for k, v in model.items() if k not in dict(labels) and isinstance(v, (str, int, float))
              and not isinstance(v, bool)]
    return items


def kept_epoch(training: Mapping[str, Any]):
    """The epoch whose weights the run's model holds (runs written before ``kept_epoch`` existed
    always kept their best epoch)."""
    return training.get("kept_epoch", training.get("best_epoch"))


def _training_items(training: Mapping[str, Any]) -> list[tuple[str, Any]]:
    items = []
    if "train_time_s" in training:
        items.append(("training time", _duration(training["train_time_s"])))
    if "epochs_run" in training:
        items.append(("epochs run", training["epochs_run"]))
    if kept_epoch(training) is not None:
        items.append(("epoch kept", kept_epoch(training)))
    if training.get("best_epoch") not in (None, kept_epoch(training)):
        items.append(("lowest validation loss at epoch", training["best_epoch"]))
    if "mean_epoch_time_s" in training:
        items.append(("mean epoch time", _duration(training["mean_epoch_time_s"])))
    return items


# metrics.json "summary" keys shown at a glance, in order; a run written before a key existed
# (e.g. the instance-based metrics, added later) simply lacks it and its figure is left out
SUMMARY_HEADLINE = (("mean_accuracy", "mean accuracy"), ("mean_majority_accuracy", "mean majority baseline"),
                    ("mean_macro_f1", "mean macro F1"), ("mA", "mA (binary attributes)"),
                    ("instance_f1", "instance F1"))
INSTANCE_ITEMS = (("instance_accuracy", "accuracy"), ("instance_precision", "precision"),
                  ("instance_recall", "recall"), ("instance_f1", "F1"))


def summary_headline(summary: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The headline figures of a ``metrics.json`` summary (``SUMMARY_HEADLINE``) that it has."""
    return [(label, summary.get(key)) for key, label in SUMMARY_HEADLINE if figures.finite(summary.get(key))]


def instance_items(summary: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The instance-based accuracy / precision / recall / F1 of a summary; empty when it lacks any."""
    items = [(label, summary.get(key)) for key, label in INSTANCE_ITEMS]
    return items if all(figures.finite(v) for _, v in items) else []


def _evaluation_context(evaluation: Mapping[str, Any], training_tasks: Mapping[str, Any] | None = None) -> dict:
    """What ``mtl-evaluate`` stored under ``metrics.json["evaluation"]``: where, which images, the
    settings, and attribute metrics on those images (left out, with a note, when they are those of
    the validation split shown above: ``mtl-evaluate --images val``)."""
    settings = evaluation.get("settings") if isinstance(evaluation.get("settings"), Mapping) else {}
    items = [(label, tables.plain_text(evaluation.get(key))) for key, label in
             (("data", "data"), ("format", "format"), ("images", "images"), ("time_s", "seconds"))
             if evaluation.get(key) is not None]
    items += [(f"--{k.replace('_', '-')}", tables.plain_text(v))  # evaluate.py's flags
              for k, v in settings.items() if v is not None]
    attributes = evaluation.get("attributes") if isinstance(evaluation.get("attributes"), Mapping) else {}
    attr_tasks = {k: v for k, v in (attributes.get("tasks") or {}).items() if isinstance(v, Mapping)}
    summary = attributes.get("summary") if isinstance(attributes.get("summary"), Mapping) else {}
    if attr_tasks and same_task_metrics(attr_tasks, training_tasks or {}):
        return {"items": items, "num_images": attributes.get("num_images"), "headline": [], "overview": None,
                "binary": tables.Table(headers=[]), "instance": [], "same_as_validation": True}
    return {"items": items, "num_images": attributes.get("num_images"), "same_as_validation": False,
            "headline": summary_headline(summary),
            "instance": instance_items(summary),
            "overview": tables.overview_table(attr_tasks) if attr_tasks else None,
            "binary": tables.binary_table(attr_tasks)}


def same_task_metrics(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two ``{task: evaluate_task result}`` dicts hold the same numbers for the same tasks
    (an evaluation of the validation images repeats training's validation metrics)."""
    keys = ("support", "accuracy", "macro_f1", "majority_accuracy")
    if not a or set(a) - set(b):
        return False
    for name, r in a.items():
        other = b.get(name)
        if not isinstance(other, Mapping):
            return False
        for k in keys:
            x, y = r.get(k), other.get(k)
            if (x is None) != (y is None) or (x is not None and not math.isclose(float(x), float(y), abs_tol=1e-9)):
                return False
    return True


def same_ranking(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two re-id results rank the same queries against the same gallery with the same
    outcome (``mtl-evaluate --images val`` repeats the end-of-training evaluation)."""
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        return False
    for k in ("num_query", "num_gallery", "distance"):
        if a.get(k) != b.get(k):
            return False
    pa, pb = tables.reid_ranking(a, "plain"), tables.reid_ranking(b, "plain")
    values = [(pa.get(k), pb.get(k)) for k in tables.REID_KEYS]
    return bool(pa) and all(figures.finite(x) and figures.finite(y) and math.isclose(x, y, abs_tol=1e-9)
                            for x, y in values)


def _curve_groups(history: Sequence[Mapping], specs: Sequence[Mapping], monitor: str | None) -> list[tuple]:
    """The panels of the training curves: ``[(group, [(metric, key, with_validation)])]``.

    * "all tasks": the monitored loss (``monitor`` without ``val_``; with an identity task
      ``joint_loss``), then ``masked_loss`` where it is another series; Keras' ``loss`` only when
      neither was logged;
    * per task: its cross-entropy and accuracy (``loss`` only without ``xent``); the identity task
      also gets ``embedding_loss`` (the triplet loss), and no validation series where it is 0 at every
      epoch (validation people are not training classes: 0 by construction, not a result).
    """
    names = [t["name"] for t in specs]
    groups = figures.split_history(history, names)
    overall: list[str] = []
    watched = monitor[4:] if isinstance(monitor, str) and monitor.startswith("val_") else monitor
    for key in (watched, "masked_loss", "loss"):
        if key == "loss" and overall:
            continue  # Keras' weighted batch average: only where no exact loss was logged
        if key and key in groups[""] and key not in overall \
                and not any(figures.same_series(history, key, k) for k in overall):
            overall.append(key)
    out = [("all tasks", [(k + (" (monitored)" if k == watched else ""), k, True) for k in overall])]
    for t in specs:
        of_task = groups.get(t["name"], {})
        panels = [(m, of_task[m]) for m in figures.metrics_to_plot(of_task)]
        identity = KINDS.get(t["kind"], KINDS[CATEGORICAL]).head == "identity"
        if identity and "embedding_loss" in groups[""]:
            panels.append(("metric loss (embedding_loss)", "embedding_loss"))
        out.append((t["name"], [(m, k, not (identity and figures.meaningless_validation(history, k)))
                                for m, k in panels]))
    return out


def run_context(rf: RunFiles, quiet: bool = True, per_group: int = PER_GROUP,
                max_queries: int = MAX_QUERIES) -> dict:
    """Everything the run template shows, from the files of one run directory.

    Args:
        rf: the loaded files (``mtl.report.rundir.load``).
        quiet: no progress messages on stderr.
        per_group: thumbnails per example group and task.
        max_queries: retrieval examples shown.

    Returns:
        A dict of sections; a section is ``None`` / empty when its files are missing.
    """
    metrics = rf.metrics or {}
    task_metrics = {k: v for k, v in (metrics.get("tasks") or {}).items() if isinstance(v, Mapping)}
    training = metrics.get("training") if isinstance(metrics.get("training"), Mapping) else {}
    kept = kept_epoch(training)
    kept = kept if figures.finite(kept) else None
    specs = _task_specs(rf)
    thumbs = Thumbnailer(_image_roots(rf))
    ctx: dict[str, Any] = {"name": rf.name, "path": str(rf.path), "notes": list(rf.notes)}

    # the run
    data = rf.data or {}
    ctx["data_items"] = [(k, tables.plain_text(v)) for k, v in (("format", data.get("format")), ("folder", data.get("root")),
                                              ("embedded synthetic default", data.get("embedded_default")))
                         if v is not None]
    ctx["splits"] = tables.split_table(data, rf.split)
    ctx["tasks_table"] = tables.Table(headers=["task", "kind", "classes", "class names"], numeric=[False, False, True, False])
    for t in specs:
        names = ", ".join(t["classes"])
        ctx["tasks_table"].rows.append([tables.Cell(t["name"], t["name"]), tables.Cell(t["kind"], t["kind"]),
                                        tables.format_value(len(t["classes"]), tables.INTEGER),
                                        tables.Cell(names if len(names) < 300 else names[:297] + "...", names)])
    ctx["model_items"] = _model_items(rf.model or {})
    ctx["training_items"] = _training_items(training)
    ctx["reproduce"] = _reproduce(rf)
    ctx["config_text"] = rf.config_text
    ctx["report_command"] = report_command(rf.path)

    # at a glance
    summary = metrics.get("summary") if isinstance(metrics.get("summary"), Mapping) else {}
    reid = metrics.get("reid") if isinstance(metrics.get("reid"), Mapping) else None
    ctx["headline"] = summary_headline(summary)
    # evaluate.py adds "evaluation": attribute and re-id metrics on other images (see its docstring)
    evaluation = metrics.get("evaluation") if isinstance(metrics.get("evaluation"), Mapping) else None
    eval_reid = evaluation.get("reid") if evaluation and isinstance(evaluation.get("reid"), Mapping) else None
    evaluation_label = f"evaluation: {evaluation.get('images', 'scripts/evaluate.py')}" if evaluation else ""
    ctx["evaluation"] = _evaluation_context(evaluation, task_metrics) if evaluation else None
    # the headline re-id numbers: the latest evaluation when there is one
    plain = tables.reid_ranking(eval_reid or reid, "plain")
    where = " (evaluation)" if eval_reid else ""
    ctx["headline"] += [(label + where, plain.get(key)) for key, label in (("mAP", "re-id mAP"), ("rank1", "re-id rank-1"))
                        if figures.finite(plain.get(key))]
    _progress("report: tables and figures", quiet)
    if task_metrics:
        overview = tables.task_overview(task_metrics)
        ctx["overview_table"] = tables.overview_table(task_metrics)
        ctx["overview_figure"] = figures.baseline_figure(overview)
        ctx["verdicts"] = [(str(t), v, tables.VERDICT_CSS[v]) for t, v in zip(overview["task"], overview["verdict"])]
    else:
        ctx["overview_table"] = ctx["overview_figure"] = None
        ctx["verdicts"] = []

    # training curves: one panel per metric, in task order (one grid: no empty cells between groups)
    ctx["curves"] = []
    ctx["monitor"] = training.get("monitor") if isinstance(training.get("monitor"), str) else None
    ctx["train_only"] = []
    if rf.history:
        for group, panels in _curve_groups(rf.history, specs, ctx["monitor"]):
            for metric, key, with_val in panels:
                uri = figures.curve_panel(rf.history, key, f"{group} · {metric}", kept, validation=with_val)
                if uri:
                    ctx["curves"].append({"title": f"{group} · {metric}", "uri": uri, "key": key})
                if uri and not with_val:
                    ctx["train_only"].append(f"{group} · {metric}")
    ctx["kept_epoch"] = kept
    ctx["epochs"] = len(rf.history or [])

    # binary attributes together
    ctx["binary_table"] = tables.binary_table(task_metrics)
    ctx["mA"] = summary.get("mA") if figures.finite(summary.get("mA")) else None
    ctx["instance"] = instance_items(summary)

    # per task
    _progress("report: examples", quiet)
    preds = rf.predictions
    verdict_css = {t: css for t, _, css in ctx["verdicts"]}
    ctx["task_sections"] = []
    for t in specs:
        r = task_metrics.get(t["name"])
        section: dict[str, Any] = {"name": t["name"], "kind": t["kind"], "metrics": None, "values": None,
                                   "per_class": None, "confusion": None, "scatter": None, "examples": [],
                                   "css": verdict_css.get(t["name"], "")}
        kind = KINDS.get(t["kind"], KINDS[CATEGORICAL])
        if r is not None:
            figures_of_task = [(label, r.get(key)) for key, label in kind.report_metrics if figures.finite(r.get(key))]
            # percentages, or numbers in the labels' units (a regression task's errors)
            section["metrics" if kind.report_percent else "values"] = figures_of_task
            section["support"] = r.get("support")
            section["per_class"] = tables.per_class_table(r) if r.get("per_class") else None
        cols = {f"{t['name']}_true", f"{t['name']}_pred"}
        if preds is not None and cols <= set(preds.columns) and kind.report_figure == "confusion" and t["classes"]:
            counts = figures.confusion_counts(preds[f"{t['name']}_true"].fillna(-1).to_numpy(),
                                              preds[f"{t['name']}_pred"].fillna(-1).to_numpy(), len(t["classes"]))
            if counts.sum():
                section["confusion"] = figures.confusion_figure(counts, t["classes"], f"{t['name']}: confusion matrix")
        if preds is not None and cols <= set(preds.columns) and kind.report_figure == "scatter":
            section["scatter"] = figures.scatter_figure(
                pd.to_numeric(preds[f"{t['name']}_true"], errors="coerce").to_numpy(float),
                pd.to_numeric(preds[f"{t['name']}_pred"], errors="coerce").to_numpy(float),
                f"{t['name']}: predicted against true")
        if preds is not None:
            section["examples"] = prediction_examples(preds, t["name"], t["classes"], thumbs.uri, per_group,
                                                      full=thumbs.full_uri)
        if section["metrics"] or section["values"] or section["confusion"] or section["scatter"] or section["examples"]:
            ctx["task_sections"].append(section)

    # re-identification: at the end of training (validation people) and / or from mtl-evaluate;
    # the same images ranked the same way (mtl-evaluate --images val) are shown once
    if same_ranking(reid, eval_reid):
        sources = [("validation people: at the end of training and by mtl-evaluate (the same images)",
                    "validation", eval_reid)]
    else:
        sources = [(label, short, r) for label, short, r in
                   (("validation people, at the end of training", "validation", reid),
                    (evaluation_label, "evaluation", eval_reid)) if r]
    ctx["reid"] = None
    if sources or rf.reid_examples:
        curves = {}
        for _, short, r in sources:
            for name, v in tables.reid_variants(r):
                if isinstance(v.get("cmc"), list):
                    curves[f"{short}: {name}" if len(sources) > 1 else name] = v["cmc"]
        ctx["reid"] = {
            "sources": [{"label": label, "table": tables.reid_table(r) if tables.reid_variants(r) else None,
                         "extras": tables.reid_extras(r)} for label, _, r in sources],
            "cmc": figures.cmc_figure(curves),
            "examples": retrieval_examples(rf.reid_examples or [], thumbs.uri, max_queries, full=thumbs.full_uri),
            "total_examples": len(rf.reid_examples or []),
        }
    ctx["missing_images"] = thumbs.missing
    return ctx


# --------------------------------------------------------------------------------------------
# tuning and study


def _objective(info: Mapping[str, Any], trials) -> tuple[str | None, str | None, str | None]:
    """(trials column holding the objective, its display name, direction) from ``tuning.json``.

    ``objective`` is either a column name or ``{"name", "direction", ...}`` (``mtl.tuning``,
    whose ``trials.csv`` stores the value in a column called ``objective``).
    """
    obj = info.get("objective")
    name, direction = (obj.get("name"), obj.get("direction")) if isinstance(obj, Mapping) else (obj, None)
    direction = direction or info.get("direction")
    columns = set(trials.columns) if trials is not None else set()
    column = next((c for c in (name, "objective") if isinstance(c, str) and c in columns), None)
    return column, (name if isinstance(name, str) else column), direction


def _tuning_context(rf: RunFiles) -> dict:
    info = rf.tuning or {}
    column, name, direction = _objective(info, rf.trials)
    best = info.get("best") if isinstance(info.get("best"), Mapping) else {}
    summary = [(k, v) for k, v in info.items() if k not in ("objective", "best", "command", "direction")
               and not isinstance(v, (Mapping, list))]
    if name:
        summary.insert(0, ("objective", f"{name} ({direction})" if direction else name))
    if best:
        # one trial numbering: "trial" (1, 2, ...) as the console and trials.csv number them; keras-tuner's
        # own trial_id (0-based) only where a search has no "trial" (older tuning.json)
        hidden = {"trial_id"} if "trial" in best else set()
        summary += [(f"best {k.replace('_', ' ')}", v) for k, v in best.items()
                    if not isinstance(v, (Mapping, list)) and k not in hidden]
    hps = best.get("hyperparameters") if isinstance(best.get("hyperparameters"), Mapping) else {}
    ctx: dict[str, Any] = {"info": tables.key_value_table(summary) if summary else None,
                           "best_hps": tables.key_value_table(hps) if hps else None,
                           "command": python_command(info["command"]) if isinstance(info.get("command"), str) else None,
                           "trials": None, "trials_figure": None, "best_config": rf.best_config_text}
    if rf.trials is not None:
        if column:
            ctx["trials_figure"] = figures.trials_figure(rf.trials, column, direction, label=name)
        trials = rf.trials.drop(columns=["trial_id"]) if {"trial", "trial_id"} <= set(rf.trials.columns) \
            else rf.trials
        ordered = tables.sort_trials(trials, column, direction)
        caption = f"sorted by {name}, best first" if column and ordered is not trials else ""
        ctx["trials"] = tables.frame_table(ordered, caption=caption, max_rows=MAX_TABLE_ROWS)
        if column and ctx["trials"].rows:
            for cell in ctx["trials"].rows[0]:  # the best trial
                cell.css = cell.css or "good"
    if rf.best_config_text:
        ctx["train_best"] = shlex.join(["python", "scripts/train.py", "--config", str(rf.path / "best_config.yaml")])
    else:
        ctx["train_best"] = None
    return ctx


STUDY_FORMATS = {"main_accuracy": tables.PERCENT, "main_macro_f1": tables.PERCENT, "majority_accuracy": tables.PERCENT,
                 "delta_accuracy": tables.DELTA, "delta_macro_f1": tables.DELTA, "seeds": tables.INTEGER}
STUDY_HEADERS = {"set": "task set", "tasks": "tasks", "seeds": "seeds", "main_val_loss": "main task val. loss",
                 "main_best_val_loss": "lowest main val. loss", "main_accuracy": "main task accuracy",
                 "main_macro_f1": "main task macro F1", "delta_val_loss": "Δ val. loss",
                 "delta_best_val_loss": "Δ lowest val. loss", "delta_accuracy": "Δ accuracy (points)",
                 "delta_macro_f1": "Δ macro F1 (points)"}


def _study_context(rf: RunFiles, links: Mapping[str, str]) -> dict:
    """A task-set study: its settings, a chart of the main task's accuracy per set with the
    differences to the main task alone, and one table row per set linking each run's report.

    Args:
        rf: the study folder's files (``study.csv``, ``study.json``).
        links: run folder (``<set>/seed<k>``, relative to the study) -> relative URL of its report.
    """
    info = rf.study_info or {}
    main = info.get("main")
    aux = info.get("aux")
    items = [(label, value) for label, value in (
        ("main task", main),
        ("auxiliary tasks", ", ".join("+".join(map(str, g)) if isinstance(g, (list, tuple)) else str(g) for g in aux)
         if isinstance(aux, list) else aux),
        ("seeds", info.get("seeds")), ("split stratified on", info.get("stratify")),
        ("data", " at ".join(str(v) for v in ((info.get("data") or {}).get("format"), (info.get("data") or {}).get("root"))
                             if v) if isinstance(info.get("data"), Mapping) else info.get("data")))
        if value not in (None, "", [])]
    known = {"main", "aux", "seeds", "stratify", "data", "command", "recipe", "sets", "runs"}
    items += [(k, v) for k, v in info.items() if k not in known and not isinstance(v, (Mapping, list))]
    runs = [r for r in info.get("runs") or [] if isinstance(r, Mapping)]
    ctx: dict[str, Any] = {"info": tables.key_value_table(items) if items else None,
                           "command": python_command(info["command"]) if isinstance(info.get("command"), str) else None,
                           "table": None, "figure": None}
    study = rf.study
    if study is None or "set" not in study:
        return ctx
    seeds_of: dict[str, list[tuple[str, str]]] = {}
    for r in runs:
        rel = _relative_run(rf.path, r.get("run_dir"))
        if rel in links:
            seeds_of.setdefault(str(r.get("set")), []).append((f"seed {r.get('seed')}", links[rel]))
    for rel, href in links.items():  # a study.json without its runs: folders <set>/seed<k>
        name = rel.split("/")[0]
        if not any(h == href for _, h in seeds_of.get(name, [])) and not runs:
            seeds_of.setdefault(name, []).append((rel.split("/", 1)[-1], href))
    shown = study[[c for c in study.columns if c in STUDY_HEADERS]]
    formats = {c: STUDY_FORMATS.get(c, tables.NUMBER if c not in ("set", "tasks") else tables.TEXT) for c in shown}
    table = tables.frame_table(shown, formats, max_rows=MAX_TABLE_ROWS)
    table.headers = [STUDY_HEADERS[c] for c in shown.columns] + ["run reports"]
    table.numeric.append(False)
    for row, name in zip(table.rows, study["set"].astype(str)):
        for c, cell in zip(shown.columns, row):
            if c.startswith("delta_") and c.endswith("loss") and figures.finite(cell.sort) and abs(cell.sort) >= 1e-4:
                cell.text = f"{cell.sort:+.4f}"
                cell.css = "good" if cell.sort < 0 else "bad"  # a lower loss is better
        row.append(tables.Cell("", None, links=seeds_of.get(name, [])))
    ctx["table"] = table
    if "main_accuracy" in study:
        values = pd.to_numeric(study["main_accuracy"], errors="coerce").tolist()
        deltas = pd.to_numeric(study["delta_accuracy"], errors="coerce").tolist() if "delta_accuracy" in study \
            else [v - values[0] for v in values]
        baselines = [r.get("majority_accuracy") for r in runs if figures.finite(r.get("majority_accuracy"))]
        seeds = {}
        for r in runs:
            if figures.finite(r.get("main_accuracy")):
                seeds.setdefault(str(r.get("set")), []).append(float(r["main_accuracy"]))
        ctx["figure"] = figures.study_figure(list(study["set"].astype(str)), values, deltas,
                                             f"{main or 'main task'}: validation accuracy",
                                             baseline=float(np.mean(baselines)) if baselines else None, seeds=seeds)
    return ctx


def _relative_run(folder: Path, run_dir) -> str | None:
    """``run_dir`` relative to ``folder`` as a POSIX path (``gender/seed0``), or None."""
    if not isinstance(run_dir, str):
        return None
    try:
        return Path(run_dir).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return None


def _sub_reports(path: Path, target: Path, quiet: bool, per_group: int, max_queries: int) -> dict[str, str]:
    """Render the report of every run under a study or tuning folder next to its report
    (``<report folder>/<run path>/index.html``), so that the folder's page links to them.

    Returns:
        run path relative to ``path`` (POSIX) -> relative URL of its report.
    """
    links = {}
    for run in sub_runs(path):
        rel = run.relative_to(path).as_posix()
        out = target.parent / rel / "index.html"
        try:
            render_report(run, out, quiet=quiet, per_group=per_group, max_queries=max_queries, sub_reports=False)
        except MtlError as exc:  # one unreadable run costs its link, not the folder's report
            _progress(f"report: no report for {run}: {exc}", quiet)
            continue
        links[rel] = f"{rel}/index.html"
    return links


def _sub_runs_table(path: Path, links: Mapping[str, str] | None = None) -> tables.Table | None:
    runs = sub_runs(path)
    if not runs:
        return None
    table = tables.Table(headers=["run", "tasks", "mean accuracy", "mean majority baseline", "mA", "instance F1",
                                  "epoch kept", "report"], numeric=[False, False, True, True, True, True, True, False])
    for run in runs:
        sub = load(run)
        m = sub.metrics or {}
        s = m.get("summary") if isinstance(m.get("summary"), Mapping) else {}
        tr = m.get("training") if isinstance(m.get("training"), Mapping) else {}
        tasks = ", ".join((m.get("tasks") or {}).keys())
        label = str(run.relative_to(path))
        href = (links or {}).get(run.relative_to(path).as_posix())
        table.rows.append([tables.Cell(label, label, links=[("open", href)] if href else []),
                           tables.Cell(tasks, tasks),
                           tables.format_value(s.get("mean_accuracy"), tables.PERCENT),
                           tables.format_value(s.get("mean_majority_accuracy"), tables.PERCENT),
                           tables.format_value(s.get("mA"), tables.PERCENT),
                           tables.format_value(s.get("instance_f1"), tables.PERCENT),
                           tables.format_value(kept_epoch(tr), tables.INTEGER),
                           tables.Cell(report_command(run), "")])
    return table


# --------------------------------------------------------------------------------------------
# entry points


def _write(template: str, context: dict, out: Path) -> Path:
    context = {"version": __version__, "generated": f"{datetime.now():%Y-%m-%d %H:%M}", **context}
    text = _environment().get_template(template).render(**context)
    atomic_write_text(out, text)
    try:  # atomic writes create 0600 files; a report is meant to be opened and shared
        os.chmod(out, 0o644)
    except OSError:
        pass
    return out


def render_report(path: str | Path, out: str | Path | None = None, quiet: bool = True,
                  per_group: int = PER_GROUP, max_queries: int = MAX_QUERIES, sub_reports: bool = True) -> Path:
    """Render the report of a run, tuning or study directory.

    Args:
        path: the directory (its kind is detected from its files, see ``detect_kind``).
        out: output ``.html`` file or folder (``index.html`` inside); default
            ``reports/<name>/index.html``.
        quiet: no progress messages on stderr.
        per_group: example thumbnails per group (4 groups per task).
        max_queries: retrieval examples shown.
        sub_reports: for a study or tuning folder, also render the report of each run in it
            (``<report folder>/<run path>/index.html``) and link it from the folder's page.

    Returns:
        The path of the written HTML file.

    Raises:
        DataError: ``path`` is not a run, tuning or study directory.
    """
    start = time.time()
    rf = load(path)
    target = output_path(out, [path])
    _progress(f"report: reading {rf.path} ({rf.kind})", quiet)
    context: dict[str, Any] = {"kind": rf.kind, "name": rf.name, "path": str(rf.path), "notes": list(rf.notes),
                               "report_command": report_command(rf.path)}
    has_run_files = rf.metrics is not None or rf.history is not None
    context["run"] = run_context(rf, quiet, per_group, max_queries) if rf.kind == RUN or has_run_files else None
    context["tuning"] = _tuning_context(rf) if rf.kind == TUNING or rf.trials is not None else None
    links = _sub_reports(rf.path, target, quiet, per_group, max_queries) \
        if sub_reports and rf.kind in (TUNING, STUDY) else {}
    context["study"] = _study_context(rf, links) if rf.kind == STUDY else None
    # a study's table links its runs' reports: the generic list of runs would repeat it
    context["sub_runs"] = _sub_runs_table(rf.path, links) \
        if rf.kind == TUNING or (rf.kind == STUDY and context["study"]["table"] is None) else None
    title = {RUN: "Run", TUNING: "Tuning", STUDY: "Study"}[rf.kind]
    context["title"] = f"{title} report: {rf.name}"
    _write("report.html.j2", context, target)
    _progress(f"report: wrote {target} ({target.stat().st_size / 1e6:.2f} MB, {time.time() - start:.1f} s)", quiet)
    return target


def render_comparison(paths: Sequence[str | Path], out: str | Path | None = None, quiet: bool = True) -> Path:
    """Render several runs side by side: settings that differ, metrics per task, curves.

    Args:
        paths: two or more run directories.
        out: output ``.html`` file or folder; default ``reports/<A>-vs-<B>/index.html``.
        quiet: no progress messages on stderr.

    Returns:
        The path of the written HTML file.

    Raises:
        DataError: fewer than two directories, or one of them is not a run directory.
    """
    if len(paths) < 2:
        raise DataError("a comparison needs at least two run directories")
    runs = [load(p) for p in paths]
    for rf in runs:
        if rf.metrics is None and rf.history is None:
            raise DataError(f"{rf.path}: not a training run (no metrics.json or history.json) - "
                            f"render it alone with {report_command(rf.path)}")
    names = _unique_names(runs)
    target = output_path(out, paths)
    _progress(f"report: comparing {', '.join(names)}", quiet)
    overview = []
    for name, rf in zip(names, runs):
        m = rf.metrics or {}
        s = m.get("summary") if isinstance(m.get("summary"), Mapping) else {}
        tr = m.get("training") if isinstance(m.get("training"), Mapping) else {}
        reid = tables.reid_ranking(_latest_reid(m), "plain")
        overview.append({"name": name, "path": str(rf.path), "tasks": ", ".join(t["name"] for t in _task_specs(rf)),
                         "trunk": (rf.model or {}).get("trunk") or (rf.config or {}).get("model", {}).get("trunk"),
                         "params": (rf.model or {}).get("params_total"),
                         "train_time": _duration(tr.get("train_time_s")), "epochs": tr.get("epochs_run"),
                         "kept_epoch": kept_epoch(tr), "mean_accuracy": s.get("mean_accuracy"),
                         "majority": s.get("mean_majority_accuracy"), "macro_f1": s.get("mean_macro_f1"),
                         "mA": s.get("mA"), "instance_f1": s.get("instance_f1"),
                         "mAP": reid.get("mAP"), "rank1": reid.get("rank1"),
                         "command": next(iter(_reproduce(rf)), ("", None))[1],
                         "notes": rf.notes})
    histories = [rf.history or [] for rf in runs]
    bests = [kept_epoch((rf.metrics or {}).get("training") or {}) for rf in runs]
    curves = []
    # the masked loss is what early stopping watched; Keras' weighted loss only when it is absent
    keys = ["masked_loss"] if all(any("val_masked_loss" in e for e in h) for h in histories) else ["loss"]
    for t in (t["name"] for t in _task_specs(runs[0])):
        if all(any(f"val_{t}_accuracy" in e for e in h) for h in histories):
            keys.append(f"{t}_accuracy")
    for key in keys:
        uri = figures.comparison_curves(histories, names, key, bests)
        if uri:
            curves.append({"title": key, "uri": uri})
    reid_rows = None
    if any(_latest_reid(rf.metrics or {}) for rf in runs):
        reid_rows = tables.Table(headers=["run", "mAP", "mINP", "rank-1", "rank-5", "rank-10", "re-ranked mAP",
                                          "re-ranked rank-1"], numeric=[False] + [True] * 7)
        for name, rf in zip(names, runs):
            reid = _latest_reid(rf.metrics or {})
            plain, rr = tables.reid_ranking(reid, "plain"), tables.reid_ranking(reid, "reranked")
            reid_rows.rows.append([tables.Cell(name, name)] +
                                  [tables.format_value(tables._nan(plain.get(k)), tables.PERCENT) for k in tables.REID_KEYS] +
                                  [tables.format_value(tables._nan(rr.get(k)), tables.PERCENT) for k in ("mAP", "rank1")])
    context = {
        "title": f"Comparison: {' vs '.join(names)}", "names": names, "runs": overview,
        "config_diff": tables.config_diff([rf.config for rf in runs], names),
        "tasks_table": tables.comparison_table([(rf.metrics or {}).get("tasks") for rf in runs], names),
        "curves": curves, "reid_table": reid_rows,
        "report_command": report_command(*[rf.path for rf in runs]),
    }
    _write("compare.html.j2", context, target)
    _progress(f"report: wrote {target} ({target.stat().st_size / 1e6:.2f} MB)", quiet)
    return target


def _latest_reid(metrics: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Re-id metrics of a run: those of its evaluation (``scripts/evaluate.py``) if any, else training's."""
    evaluation = metrics.get("evaluation") if isinstance(metrics.get("evaluation"), Mapping) else {}
    for candidate in (evaluation.get("reid"), metrics.get("reid")):
        if isinstance(candidate, Mapping):
            return candidate
    return None


def _unique_names(runs: Sequence[RunFiles]) -> list[str]:
    names = [rf.name for rf in runs]
    if len(set(names)) < len(names):  # runs/x and other/x: tell them apart by their parent
        names = [f"{rf.path.resolve().parent.name}/{rf.name}" for rf in runs]
    if len(set(names)) < len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    return names

