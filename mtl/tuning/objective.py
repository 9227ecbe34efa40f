"""What a search optimises: the user's objective (``age.accuracy``, a mean of several, a metric
computed after each trial such as ``mA``, ``instance_f1`` or ``reid_mAP``) -> the metric keras-tuner
records."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import keras_tuner

from mtl.errors import ConfigError
from mtl.tasks import TaskSpec, attribute_tasks, classification_tasks, find_identity

_TASK_METRICS = {"accuracy": "accuracy", "acc": "accuracy", "xent": "xent", "loss": "xent",
                 "f1": "macro_f1", "macro_f1": "macro_f1", "mae": "mae", "huber": "huber"}
_POST_SUFFIXES = ("_macro_f1",)
_GLOBAL_SHORT = {"loss": "val_loss", "masked_loss": "val_masked_loss", "ma": "mA", "map": "reid_mAP",
                 "reid_map": "reid_mAP", "rank1": "reid_rank1", "reid_rank1": "reid_rank1",
                 "mean_accuracy": "mean_accuracy", "mean_macro_f1": "mean_macro_f1", "mean_f1": "mean_macro_f1",
                 "instance_f1": "instance_f1"}
# computed after each trial from the validation predictions (mtl.scoring.evaluate_attributes' summary)
POST_TRIAL = ("mA", "instance_f1", "reid_mAP", "reid_rank1", "mean_accuracy", "mean_macro_f1")


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a search optimises.

    Args:
        name: the metric name keras-tuner records (``val_age_accuracy``, ``mean_val_accuracy``, ``mA``).
        direction: ``min`` or ``max``.
        parts: the metrics averaged (one for a single metric).
        text: what the user wrote.
    """

    name: str
    direction: str
    parts: tuple[str, ...]
    text: str

    @property
    def post_trial(self) -> bool:
        """True when some part is computed after the trial (keras does not log it per epoch)."""
        return any(is_post_trial(p) for p in self.parts)

    def keras_tuner(self) -> keras_tuner.Objective:
        return keras_tuner.Objective(self.name, self.direction)

    def to_dict(self) -> dict:
        return {"name": self.name, "direction": self.direction, "parts": list(self.parts), "text": self.text,
                "post_trial": self.post_trial}


def is_post_trial(metric: str) -> bool:
    return metric in POST_TRIAL or \
        metric.endswith(_POST_SUFFIXES)


def objective_metrics(tasks: Sequence[TaskSpec]) -> list[str]:
    """Every metric name a search over ``tasks`` can optimise (logged per epoch or post-trial)."""
    attributes = [t.name for t in classification_tasks(tasks)]
    names = ["val_loss"]
    if attribute_tasks(tasks):
        names.append("val_masked_loss")
    if attributes:
        names += ["mean_accuracy", "mean_macro_f1", "instance_f1"]
    for t in attributes:
        names += [f"val_{t}_accuracy", f"val_{t}_xent", f"val_{t}_macro_f1"]
    for t in values_of(tasks):
        names += [f"val_{t}_mae", f"val_{t}_huber"]
    if any(t.type.yes_no for t in tasks):
        names.append("mA")
    if find_identity(tasks) is not None:
        names += ["reid_mAP", "reid_rank1"]
    return names


def values_of(tasks: Sequence[TaskSpec]) -> list[str]:
    """The tasks that predict a value (regression): their validation error is an objective."""
    return [t.name for t in attribute_tasks(tasks) if not t.type.has_classes]


def direction_of(metric: str) -> str:
    return "min" if metric.endswith(("loss", "xent", "_mae", "_huber")) else "max"


def resolve_objective(text: str, tasks: Sequence[TaskSpec],
                      aliases: Mapping[str, Sequence[str]] | None = None) -> Objective:
    """Turn the user's objective into the metric keras-tuner optimises.

    Accepted: a logged name (``val_age_accuracy``), a short one (``age.accuracy``, ``age.xent``,
    ``masked_loss``), a post-trial one (``mA``, ``instance_f1``, ``reid_mAP``, ``age.f1``, ``mean_accuracy``),
    an alias standing for several tasks (``color.accuracy`` -> mean over upcolor and downcolor),
    and a mean of several (``age.accuracy,gender.accuracy`` or ``mean(age.accuracy,gender.accuracy)``).

    Raises:
        ConfigError: unknown name (the message lists the valid ones), or a mean of metrics
            with opposite directions.
    """
    raw = (text or "").strip()
    inner = raw[5:-1] if raw.lower().startswith("mean(") and raw.endswith(")") else raw
    items = [s.strip() for s in inner.split(",") if s.strip()]
    if not items:
        raise ConfigError("empty objective; " + _valid_objectives_text(tasks))
    valid = objective_metrics(tasks)
    parts: list[str] = []
    for item in items:
        for metric in _resolve_metric(item, tasks, aliases or {}, valid):
            if metric not in parts:
                parts.append(metric)
    directions = {direction_of(p) for p in parts}
    if len(directions) > 1:
        raise ConfigError(f"objective {raw!r} averages metrics to minimise and to maximise ({', '.join(parts)}); "
                          "use metrics of one direction")
    direction = directions.pop()
    if len(parts) == 1:
        name = parts[0]
    else:
        suffixes = {_suffix(p) for p in parts}
        name = f"mean_val_{suffixes.pop()}" if len(suffixes) == 1 and None not in suffixes else \
            "mean(" + ",".join(parts) + ")"
    return Objective(name, direction, tuple(parts), raw)


def _suffix(metric: str) -> str | None:
    for s in ("accuracy", "xent", "macro_f1", "mae", "huber"):
        if metric.startswith("val_") and metric.endswith("_" + s):
            return s
    return None


def _resolve_metric(item: str, tasks, aliases, valid) -> list[str]:
    if item in valid:
        return [item]
    if item.lower() in _GLOBAL_SHORT and _GLOBAL_SHORT[item.lower()] in valid:
        return [_GLOBAL_SHORT[item.lower()]]
    if "." in item:
        task, metric = item.rsplit(".", 1)
        names = {t.name for t in tasks}
        members = [task] if task in names else [n for n in aliases.get(task, ()) if n in names]
        suffix = _TASK_METRICS.get(metric.lower())
        if members and suffix and all(f"val_{m}_{suffix}" in valid for m in members):
            return [f"val_{m}_{suffix}" for m in members]
    raise ConfigError(f"unknown objective {item!r}; " + _valid_objectives_text(tasks))


def _valid_objectives_text(tasks) -> str:
    attributes = [t.name for t in classification_tasks(tasks)]
    globals_ = [n for n in objective_metrics(tasks) if not n.startswith("val_") or n in ("val_loss", "val_masked_loss")]
    text = "valid objectives: " + ", ".join(globals_)
    if attributes:
        text += (f"; per task: <task>.accuracy, <task>.xent (logged as val_<task>_accuracy, val_<task>_xent), "
                 f"<task>.f1 (macro F1, computed after each trial) for task in {', '.join(attributes)}")
    if values_of(tasks):
        text += (f"; per regression task: <task>.mae, <task>.huber (val_<task>_mae, val_<task>_huber) for task in "
                 f"{', '.join(values_of(tasks))}")
    return text + "; a mean of several: a.accuracy,b.accuracy"
