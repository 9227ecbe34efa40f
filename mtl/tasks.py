"""Task specifications, the kinds of task, and the resolution of user task names.

A task is one model output, named after it. What a task *is* lives in its kind, one object per
kind in ``KINDS``: the output layer, the loss and training metrics, how its raw output becomes
what users see (probabilities or a value, in numpy and in ``keras.ops`` for export), its
evaluation after training, its label column and the section the report gives it. The builder,
engine, inference, export, metrics, balancing and report ask the kind instead of testing its
name, so a new kind is one ``TaskKind`` subclass plus its entry in ``KINDS``.

* ``binary``: two classes, one sigmoid unit, masked binary cross-entropy;
* ``categorical``: ``K`` classes, softmax, masked sparse categorical cross-entropy;
* ``identity``: person identity for re-identification (classifier over training identities
  plus an embedding; see ``mtl.reid``);
* ``regression``: one real value (a product's year), masked Huber loss on the value in units
  of the training labels' spread; mean absolute error and R^2 after training.

Labels of the classification kinds are integer class indices, ``-1`` where the label is
missing; regression labels are floats, NaN where missing.

This module imports no TensorFlow: data sources and the config read it. The methods that make
Keras objects import the modules that define them when they are called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar, Iterable, Mapping, Sequence

import numpy as np

from mtl.errors import ConfigError, DataError

BINARY = "binary"
CATEGORICAL = "categorical"
IDENTITY = "identity"
REGRESSION = "regression"

# Auxiliary tasks: trained beside the attributes to shape the trunk or to filter retrieval, never
# part of ``all`` nor of the course deliverables. ``camera`` (a camera classifier that discourages
# camera-specific features) is asked for by name (``--tasks ...,camera``) and labelled from the
# file names; ``junk`` is added by ``data.junk_fraction`` (random zoomed-in crops of training
# images, ``mtl.data.pipeline.add_junk``), so that retrieval can drop gallery images that show
# no whole person.
CAMERA = "camera"
JUNK = "junk"
AUXILIARY = (CAMERA, JUNK)


class TaskKind:
    """What every task of one kind shares. Subclasses set the class attributes and override the
    methods their kind needs; every method takes the task's ``TaskSpec``.

    Attributes:
        name: the kind's name, as ``tasks.json`` and ``TaskSpec.kind`` spell it.
        head: which head builds the output: ``attribute`` (``mtl.models.heads``, on the pooled
            features) or ``identity`` (``mtl.reid.heads``: classifier and embedding).
        has_classes: the output gives class probabilities (per-class metrics, class weights,
            the instance-based attribute metrics, the course deliverables).
        in_all: ``--tasks all`` selects the dataset's tasks of this kind.
        yes_no: a two-class attribute present or absent: one column of the instance-based
            attribute matrix and a term of mA (``mtl.scoring``).
        epoch_loss: the training metric that is the task's loss over the whole epoch (what
            ``masked_loss`` sums, ``mtl.callbacks.MaskedLossLogger``); None: not in it.
        report_metrics: ``(key, label)`` of the figures of ``evaluate``'s result the report's
            section of the task shows; ``report_percent``: as percentages.
        report_figure: the figure of that section, drawn from ``val_predictions.csv``:
            ``confusion`` (matrix), ``scatter`` (predicted against true) or None.
    """

    name: ClassVar[str]
    head: ClassVar[str] = "attribute"
    has_classes: ClassVar[bool] = True
    in_all: ClassVar[bool] = True
    yes_no: ClassVar[bool] = False
    epoch_loss: ClassVar[str | None] = "xent"
    report_metrics: ClassVar[tuple] = (("accuracy", "accuracy"), ("majority_accuracy", "majority baseline"),
                                       ("macro_f1", "macro F1"), ("balanced_accuracy", "balanced accuracy"))
    report_percent: ClassVar[bool] = True
    report_figure: ClassVar[str | None] = None

    def check(self, spec: "TaskSpec") -> None:
        """Raise ``ConfigError`` when ``spec`` is not a valid task of this kind."""

    def head_size(self, spec: "TaskSpec") -> int:
        """The count that sizes the task's private head layers (``16 x`` it, then ``8 x``)."""
        return spec.num_classes

    # --- labels ------------------------------------------------------------------------------
    def labels(self, column) -> np.ndarray:
        """A source table's label column as the array the pipeline feeds (int32, ``-1`` missing)."""
        return np.asarray(column).astype(np.int32)

    def table_column(self, values) -> np.ndarray:
        """Label values of a source table (None / NaN missing) as the table's column."""
        import pandas as pd

        return pd.Series(values, dtype="float64").fillna(-1).astype("int64").to_numpy()

    def check_column(self, spec: "TaskSpec", column, paths) -> None:
        """Raise ``DataError`` naming the first bad label of a source table's column."""
        if not np.issubdtype(column.dtype, np.integer):
            raise DataError(f"task column {spec.name!r} must hold integers, has dtype {column.dtype}")
        bad = np.flatnonzero((column < -1) | (column >= spec.num_classes))
        if len(bad):
            raise DataError(
                f"label out of range in task {spec.name!r}: {int(column.iloc[bad[0]])} for {paths.iloc[bad[0]]} "
                f"(valid: -1 for missing, 0..{spec.num_classes - 1})")

    def fit_labels(self, spec: "TaskSpec", labels) -> "TaskSpec":
        """The spec with what it learns from the training split's labels (nothing by default)."""
        return spec

    def describe(self, spec: "TaskSpec", shown: int = 12) -> str:
        """What ``--tasks help`` says of the task (product tasks have a hundred classes: the
        first ``shown`` tell enough)."""
        names = spec.classes
        more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
        return f"{len(names)} classes: {', '.join(names[:shown])}{more}"

    def size(self, spec: "TaskSpec") -> str:
        """The task's size in the lines training prints (``3 classes``)."""
        return f"{spec.num_classes} classes"

    def result_line(self, result: Mapping) -> str:
        """The task's evaluation (``evaluate``'s result) as the figures of one line of text."""
        if result.get("accuracy") is None:
            return "no labelled image"
        return (f"accuracy {result['accuracy']:.3f}  macro-F1 {result['macro_f1']:.3f}  "
                f"(majority {result['majority_accuracy']:.3f})")

    # --- the model ---------------------------------------------------------------------------
    def output_layer(self, x, spec: "TaskSpec"):
        """The task's output on the head's last hidden layer: a float32 layer named after the task."""
        raise NotImplementedError

    def losses(self, spec: "TaskSpec", class_weights=None, label_smoothing: float = 0.0,
               identity_options: Mapping | None = None) -> dict:
        """``{output name: loss}`` of the task (``identity_options``: keyword arguments of
        ``mtl.reid.losses.identity_losses``)."""
        raise NotImplementedError

    def training_metrics(self, spec: "TaskSpec") -> list:
        """The Keras metrics logged for the task's output every epoch."""
        from mtl.metrics import MaskedAccuracy, MaskedCrossentropy

        return [MaskedAccuracy(name="accuracy"), MaskedCrossentropy(name="xent")]

    # --- what users see ----------------------------------------------------------------------
    def probabilities(self, output, spec: "TaskSpec") -> np.ndarray:
        """The model's output -> what a prediction reports: ``(N, K)`` class probabilities, or
        ``(N, 1)`` values."""
        return np.asarray(output, dtype=np.float32)

    def serving_output(self, output, spec: "TaskSpec"):
        """``probabilities`` in ``keras.ops``: the exported model's output of the task."""
        return output

    def serving_contract(self, spec: "TaskSpec") -> dict:
        """The exported output's entry in ``model.json``."""
        return {"shape": [None, spec.num_classes], "dtype": "float32", "kind": spec.kind,
                "what": "class probabilities (softmax), in the order of classes", "classes": list(spec.classes)}

    def evaluate(self, labels, values, spec: "TaskSpec") -> dict:
        """The task's metrics over its labelled rows (``mtl.scoring.evaluate_task``).

        Args:
            labels: class indices, ``-1`` = missing (ignored).
            values: ``(N, K)`` class probabilities (``probabilities``).
            spec: the task.

        Returns:
            ``accuracy``, ``macro_f1`` (over classes present in truth or prediction),
            ``majority_accuracy`` (always predicting the most frequent true class), ``support``,
            ``per_class`` (a list of ``{class, precision, recall, f1, support}``), and for a
            ``yes_no`` task ``balanced_accuracy`` ((TPR + TNR) / 2, the per-attribute term of mA).
        """
        from sklearn.metrics import precision_recall_fscore_support

        y_true = np.asarray(labels)
        keep = y_true >= 0
        y, p = y_true[keep], np.asarray(values)[keep]
        out: dict = {"task": spec.name, "kind": spec.kind, "support": int(keep.sum())}
        if not len(y):
            return out | {"accuracy": None, "macro_f1": None, "majority_accuracy": None, "per_class": []}
        pred = p.argmax(axis=1)
        classes = np.arange(spec.num_classes)
        prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=classes, zero_division=0)
        present = np.isin(classes, np.union1d(y, pred))
        counts = np.bincount(y, minlength=spec.num_classes)
        out |= {
            "accuracy": float((pred == y).mean()),
            "macro_f1": float(f1[present].mean()),
            "majority_accuracy": float(counts.max() / len(y)),
            "per_class": [{"class": spec.classes[i], "precision": float(prec[i]), "recall": float(rec[i]),
                           "f1": float(f1[i]), "support": int(sup[i])} for i in classes],
        }
        if self.yes_no:
            out["balanced_accuracy"] = float(np.mean([float((pred[y == c] == c).mean()) for c in (0, 1)
                                                      if (y == c).any()]))
        return out


class Categorical(TaskKind):
    name = CATEGORICAL
    report_figure = "confusion"

    def output_layer(self, x, spec):
        import keras

        return keras.layers.Dense(spec.num_classes, activation="softmax", dtype="float32", name=spec.name)(x)

    def losses(self, spec, class_weights=None, label_smoothing=0.0, identity_options=None):
        from mtl.losses import MaskedSparseCategoricalCrossentropy

        return {spec.name: MaskedSparseCategoricalCrossentropy(class_weights, label_smoothing)}


class Binary(TaskKind):
    name = BINARY
    yes_no = True

    def check(self, spec):
        if len(spec.classes) != 2:
            raise ConfigError(f"binary task {spec.name!r} needs exactly 2 classes, got {len(spec.classes)}")

    def output_layer(self, x, spec):
        import keras

        return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=spec.name)(x)

    def losses(self, spec, class_weights=None, label_smoothing=0.0, identity_options=None):
        from mtl.losses import MaskedBinaryCrossentropy

        return {spec.name: MaskedBinaryCrossentropy(class_weights, label_smoothing)}

    def probabilities(self, output, spec):
        # one sigmoid unit p is the two classes [1 - p, p]
        p = np.asarray(output, dtype=np.float32).reshape(-1)
        return np.stack([1 - p, p], axis=1)

    def serving_output(self, output, spec):
        import keras

        return keras.ops.concatenate([1.0 - output, output], axis=-1)

    def serving_contract(self, spec):
        return {**super().serving_contract(spec),
                "what": "class probabilities ([1 - p, p] of the sigmoid unit), in the order of classes"}


class Identity(TaskKind):
    """Re-identification: a classifier over the training identities and an embedding (``mtl.reid``);
    evaluated by ranking (``mtl.reid.protocol``), not per task."""

    name = IDENTITY
    head = "identity"
    has_classes = False
    in_all = False
    epoch_loss = None

    def check_column(self, spec, column, paths):
        if not np.issubdtype(column.dtype, np.integer):
            raise DataError(f"task column {spec.name!r} must hold integers, has dtype {column.dtype}")

    def size(self, spec):
        return f"{spec.num_classes} identities"

    def losses(self, spec, class_weights=None, label_smoothing=0.0, identity_options=None):
        from mtl.reid.losses import identity_losses

        return identity_losses(spec, **(identity_options or {}))


REGRESSION_KEYS = ("mae", "rmse", "r2", "baseline_mae", "median_absolute_error")  # Regression.evaluate's figures


class Regression(TaskKind):
    """One real value per image. The output layer predicts it in the labels' units: a linear unit
    scaled by the training labels' spread and shifted by their centre (``fit_labels``), so that the unit
    starts near 0 whatever the units; the loss is the masked Huber loss of the error in units of
    that spread (``mtl.losses.MaskedHuber``), comparable in size with a cross-entropy."""

    name = REGRESSION
    has_classes = False
    # a year or a price is asked for by name: it is rarely what a photo shows
    in_all = False
    epoch_loss = "huber"
    report_metrics = (("mae", "mean absolute error"), ("baseline_mae", "MAE predicting the mean"),
                      ("rmse", "root mean squared error"), ("r2", "R²"))
    report_percent = False
    report_figure = "scatter"
    # its private head is sized as a task of this many classes would be
    HEAD_SIZE = 4

    def check(self, spec):
        if spec.classes:
            raise ConfigError(f"regression task {spec.name!r} has no classes, got {len(spec.classes)}")
        if not (math.isfinite(spec.spread) and spec.spread > 0 and math.isfinite(spec.center)):
            raise ConfigError(f"regression task {spec.name!r}: centre {spec.center} and spread {spec.spread} "
                              "must be finite, the spread > 0")

    def head_size(self, spec):
        return self.HEAD_SIZE

    def describe(self, spec, shown=12):
        return "a value per image (only by name, all leaves it out)"

    def size(self, spec):
        return "a value"

    def result_line(self, result):
        if result.get("mae") is None:
            return "no labelled image"
        r2 = f"  R^2 {result['r2']:.3f}" if result.get("r2") is not None else ""
        return f"MAE {result['mae']:.3f}{r2}  (predicting the mean: MAE {result['baseline_mae']:.3f})"

    def labels(self, column):
        return np.asarray(column, dtype=np.float32)

    def table_column(self, values):
        import pandas as pd

        return pd.Series(values, dtype="float64").to_numpy()

    def check_column(self, spec, column, paths):
        if not np.issubdtype(column.dtype, np.floating):
            raise DataError(f"task column {spec.name!r} must hold numbers (NaN for missing), has dtype {column.dtype}")
        bad = np.flatnonzero(np.isinf(np.asarray(column)))
        if len(bad):
            raise DataError(f"task {spec.name!r}: {column.iloc[bad[0]]} for {paths.iloc[bad[0]]} is not a finite number")

    def fit_labels(self, spec, labels):
        values = np.asarray(labels, dtype=np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            raise DataError(f"regression task {spec.name!r}: no labelled training image")
        spread = float(values.std())
        return replace(spec, center=float(values.mean()), spread=spread if spread > 0 else 1.0)

    def output_layer(self, x, spec):
        import keras

        unit = keras.layers.Dense(1, dtype="float32", name=f"{spec.name}_unit")(x)
        return keras.layers.Rescaling(spec.spread, offset=spec.center, dtype="float32", name=spec.name)(unit)

    def losses(self, spec, class_weights=None, label_smoothing=0.0, identity_options=None):
        from mtl.losses import MaskedHuber

        return {spec.name: MaskedHuber(scale=spec.spread)}

    def training_metrics(self, spec):
        from mtl.metrics import MaskedHuberMetric, MaskedMeanAbsoluteError

        return [MaskedMeanAbsoluteError(name="mae"), MaskedHuberMetric(scale=spec.spread, name="huber")]

    def probabilities(self, output, spec):
        return np.asarray(output, dtype=np.float32).reshape(-1, 1)

    def serving_contract(self, spec):
        return {"shape": [None, 1], "dtype": "float32", "kind": spec.kind,
                "what": f"the predicted value (training labels: mean {spec.center:.4g}, std {spec.spread:.4g})"}

    def evaluate(self, labels, values, spec):
        """Mean absolute error and more over the labelled rows (a label of NaN is missing).

        Returns:
            ``task``, ``kind``, ``support``; ``mae`` (in the labels' units), ``rmse``, ``r2``
            (``sklearn.metrics.r2_score``: 1 - residual / total sum of squares; None with fewer
            than 2 labelled rows), ``baseline_mae`` (always predicting the training mean,
            ``spec.center``: what ``mae`` should beat) and ``median_absolute_error``; all None
            without a labelled row.
        """
        from sklearn.metrics import mean_absolute_error, r2_score

        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        p = np.asarray(values, dtype=np.float64).reshape(-1)
        keep = np.isfinite(y)
        y, p = y[keep], p[keep]
        out: dict = {"task": spec.name, "kind": spec.kind, "support": int(keep.sum())}
        if not len(y):
            return out | dict.fromkeys(REGRESSION_KEYS)
        return out | {"mae": float(mean_absolute_error(y, p)), "rmse": float(np.sqrt(np.mean((p - y) ** 2))),
                      "r2": float(r2_score(y, p)) if len(y) >= 2 else None,
                      "baseline_mae": float(np.mean(np.abs(y - spec.center))),
                      "median_absolute_error": float(np.median(np.abs(p - y)))}


KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (Binary(), Categorical(), Identity(), Regression())}


@dataclass(frozen=True)
class TaskSpec:
    """One task of a dataset.

    Args:
        name: output name of the model (a valid Python identifier).
        classes: class names, index ``i`` is label ``i`` (none for a regression task).
        kind: a key of ``KINDS``.
        center, spread: a regression task's training labels' mean and standard deviation
            (``TaskKind.fit_labels``); 0 and 1 for the other kinds.
    """

    name: str
    classes: tuple[str, ...] = ()
    kind: str = CATEGORICAL
    center: float = 0.0
    spread: float = 1.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"task {self.name!r}: unknown kind {self.kind!r}; valid: {', '.join(KINDS)}")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "center", float(self.center))
        object.__setattr__(self, "spread", float(self.spread))
        self.type.check(self)

    @property
    def type(self) -> TaskKind:
        """The task's kind, the object that knows how to build, train and evaluate it."""
        return KINDS[self.kind]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "classes": list(self.classes)}
        if self.kind == REGRESSION:
            d |= {"center": self.center, "spread": self.spread}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "TaskSpec":
        return cls(name=d["name"], classes=tuple(d["classes"]), kind=d.get("kind", CATEGORICAL),
                   center=d.get("center", 0.0), spread=d.get("spread", 1.0))


def camera_task(cameras: Iterable[int]) -> TaskSpec:
    """The auxiliary camera-classification task of images whose file names give the camera.

    The class index is the camera number as written in the file name (``0002_c3_...`` -> class
    ``c3``, index 3), so a source table's ``camera`` column is the task's label column as it is
    (``-1`` = unknown); Market-1501 numbers cameras from 1, so its class ``c0`` is never used.

    Args:
        cameras: camera numbers of the labelled images (``< 0``: unknown, ignored).

    Returns:
        A categorical ``camera`` task with classes ``c0 .. c<largest camera>``.

    Raises:
        ValueError: no known camera.
    """
    known = [int(c) for c in cameras if int(c) >= 0]
    if not known:
        raise ValueError("no known camera number")
    return TaskSpec(CAMERA, tuple(f"c{i}" for i in range(max(known) + 1)), CATEGORICAL)


def junk_task() -> TaskSpec:
    """The auxiliary binary ``junk`` task: class 1 for a random zoomed-in crop made in training
    (``data.junk_fraction``), class 0 for every real image."""
    return TaskSpec(JUNK, ("person", "junk"), BINARY)


def classification_tasks(tasks: Sequence[TaskSpec]) -> list[TaskSpec]:
    """The tasks with class probabilities (binary and categorical) among ``tasks``, in their order."""
    return [t for t in tasks if t.type.has_classes]


def attribute_tasks(tasks: Sequence[TaskSpec]) -> list[TaskSpec]:
    """The tasks the attribute heads build (all but the identity task), in their order: each has
    one output that is evaluated on its own (class probabilities or a value)."""
    return [t for t in tasks if t.type.head == "attribute"]


def find_identity(tasks: Sequence[TaskSpec]) -> TaskSpec | None:
    """The identity task among ``tasks`` (the one the identity head builds), or None."""
    return next((t for t in tasks if t.type.head == "identity"), None)


def resolve(
    names: str | Sequence[str] | None,
    table: Mapping[str, TaskSpec],
    aliases: Mapping[str, Sequence[str]] | None = None,
    also_valid: Sequence[str] = (),
) -> list[TaskSpec]:
    """Turn user task names (``"age,color"``) into the dataset's task specs, in table order.

    ``all`` (or ``None``) selects every task of the table whose kind is ``in_all`` (``identity``,
    regression tasks and the auxiliary tasks of ``AUXILIARY`` must be named); ``aliases`` maps a short name to several
    tasks (``color`` -> ``upcolor, downcolor``).

    Args:
        names: a comma-separated string or a list of names; ``None`` means ``all``.
        table: the dataset's tasks, ``{name: spec}``.
        aliases: short names for several tasks of the table.
        also_valid: names the caller resolves itself and has taken out of ``names`` (the
            identity task, made after the split when the data has identities): they are only
            listed among the valid names in errors.

    Returns:
        The selected task specs, each once, in table order.

    Raises:
        ConfigError: an unknown name, or no name at all; the message lists the valid names.
    """
    aliases = dict(aliases or {})
    if names is None:
        names = ["all"]
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    valid = ", ".join(sorted(set(table) | set(aliases) | set(also_valid) | {"all"}))
    wanted: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name == "all":
            # identity is a different problem (retrieval), camera an auxiliary task: asked for by name
            expanded: Iterable[str] = [n for n, s in table.items() if s.type.in_all and n not in AUXILIARY]
        elif name in aliases:
            expanded = aliases[name]
        elif name in table:
            expanded = [name]
        else:
            raise ConfigError(f"unknown task {name!r}; valid tasks for this dataset: {valid}")
        for n in expanded:
            if n not in wanted:
                wanted.append(n)
    if not wanted:
        raise ConfigError(f"no task selected (tasks={','.join(names)!r}); valid tasks for this dataset: {valid}")
    order = list(table)
    return [table[n] for n in sorted(wanted, key=order.index)]
