"""Typed, frozen configuration. Defaults live here; YAML files and ``--set key=value`` override.

Resolution order: dataclass defaults <- YAML (``--config``) <- command-line flags and ``--set``.
The resolved config is saved as ``config.yaml`` in every run directory and reloads unchanged.
Unknown keys are errors that list the valid ones (a typo must never be silently ignored).
Every resolved config is validated (:func:`validate`: types, choices, ranges, task-name syntax)
before any work starts, so a bad value is one line naming the key, the value and what is valid,
not a traceback halfway through a run.

Each key is declared once, by its dataclass field: default, meaning and rule together
(:func:`_key`). A choice key names the table of its valid values by reference
(``"mtl.choices:OPTIMIZERS"``, ``"mtl.data.sources:FORMATS"``), imported the first time a value
is checked or listed: no TensorFlow here, light commands import this module.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from mtl.errors import ConfigError

MIN_IMAGE_SIDE = 8  # smaller images leave the trunks nothing to convolve


# ---------------------------------------------------------------------------------------------
# Validation rules (each key's rule is declared with its field below)
# ---------------------------------------------------------------------------------------------

# A rule takes a key's value (already of the declared type) and returns what is wrong with it,
# or None; validate() prefixes the key and the value.
Rule = Callable[[Any], "str | None"]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@functools.cache
def _table_names(reference: str) -> tuple[str, ...]:
    """The names of the table ``"module:attribute"`` (a mapping's keys), importing its module."""
    module, _, attribute = reference.partition(":")
    return tuple(getattr(importlib.import_module(module), attribute))


@dataclass(frozen=True)
class _Choice:
    """The rule of a choice key: the value is one of the names of a table.

    Attributes:
        table: the names, or a ``"module:attribute"`` reference to the table that owns them (its
            keys, for a mapping), read on first use so that this module imports none of them.
        first: values valid besides the table's, listed before them (``data.format``'s ``auto``).
    """

    table: str | tuple[str, ...]
    first: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        """The table's names (``first`` excluded)."""
        return _table_names(self.table) if isinstance(self.table, str) else tuple(self.table)

    def values(self) -> tuple[str, ...]:
        """Every valid value: ``first``, then the table's names."""
        return self.first + self.names()

    def __call__(self, v) -> str | None:
        if v in self.first:  # the default of data.format: its table need not be imported
            return None
        return None if v in self.values() else f"valid values: {', '.join(map(str, self.values()))}"


def _at_least(low: float, optional: bool = False) -> Rule:
    none = "None or " if optional else ""
    return lambda v: None if (v is None and optional) or (v is not None and v >= low) \
        else f"must be {none}at least {_fmt(low)}"


def _above(low: float, optional: bool = False) -> Rule:
    none = "None or " if optional else ""
    return lambda v: None if (v is None and optional) or (v is not None and v > low) \
        else f"must be {none}greater than {_fmt(low)}"


def _interval(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Rule:
    """Inside ``[low, high]``, an end excluded where it is open (written as in mathematics)."""
    text = f"{'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"

    def check(v):
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return None if above and below else f"must be in {text}"

    return check


def _each(rule: Rule, nonempty: bool = False) -> Rule:
    """Every element of a tuple satisfies ``rule``."""

    def check(v):
        if nonempty and not v:
            return "needs at least one value"
        for x in v:
            problem = rule(x)
            if problem:
                return f"every value {problem}"
        return None

    return check


def _weights(v: Mapping[str, float]) -> str | None:
    """``{task: weight}``: task names as in ``tasks``, weights >= 0 (0 drops a task's loss)."""
    for name, w in v.items():
        if not name.isidentifier():
            return f"{name!r} is not a task name"
        if not w >= 0:
            return f"the weight of {name} must be at least 0"
    return None


def _text(optional: bool = False) -> Rule:
    return lambda v: None if (v is None and optional) or (v is not None and v.strip()) \
        else "must not be empty"


def task_names(text: str) -> list[str]:
    """The names of a comma-separated task list (``"age, color"`` -> ``["age", "color"]``).

    Args:
        text: the list, as ``tasks`` or ``data.stratify`` hold it.

    Returns:
        The names, stripped, empty entries dropped.
    """
    return [n.strip() for n in text.split(",") if n.strip()]


def _names(optional: bool = False) -> Rule:
    """A comma list of task names (syntax only: the dataset's task table is checked when it is read)."""

    def check(v):
        if v is None and optional:
            return None
        names = task_names(v)
        if not names:
            return "give at least one task name (comma-separated), an alias such as color, or all"
        bad = [n for n in names if not n.isidentifier()]
        if bad:
            return f"{bad[0]!r} is not a task name (task names are letters, digits and _)"
        return None

    return check


def _stage(v: str) -> str | None:
    """A ``model.attention`` entry's syntax (``mtl.models.trunks.attention_stages`` checks it
    against the trunk's stages when the model is built)."""
    return None if re.fullmatch(r"(stage)?[1-9][0-9]*|last", v.strip().lower()) \
        else "must be a stage name (stage1, stage2, ..), a stage number or last"


NAMES = "{names}"  # in a choice key's help: its table's names, as --show-config lists them


def _key(default: Any = dataclasses.MISSING, help: str = "", *, rule: Rule | None = None,
         factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its meaning and its rule: ``--show-config`` lists it
    (:func:`describe_keys`), :func:`validate` checks it.

    Args:
        default: the default value.
        help: what the key means (one line); every key has one (a test checks it). In a choice
            key's help, ``{names}`` stands for the names of its table (``_Choice.names``).
        rule: what a valid value is, beyond its declared type; None: the type is the whole rule
            (booleans).
        factory: instead of ``default``, a function making it (mutable defaults: ``dict``).

    Returns:
        A ``dataclasses.field`` whose ``metadata`` holds ``help`` and ``rule``.
    """
    return field(default=default, default_factory=factory, metadata={"help": help, "rule": rule})


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from, their size and the train/validation split."""

    path: str | None = _key(None, "data folder; null: the embedded synthetic pedestrians", rule=_text(optional=True))
    format: str = _key("auto", "on-disk format: auto (detected) or " + NAMES,
                       rule=_Choice("mtl.data.sources:FORMATS", first=("auto",)))
    image_height: int = _key(128, "images are resized to this height (pixels)", rule=_at_least(MIN_IMAGE_SIDE))
    image_width: int = _key(64, "images are resized to this width (pixels)", rule=_at_least(MIN_IMAGE_SIDE))
    val_fraction: float = _key(0.2, "share of the identities held out for validation",
                               rule=_interval(0, 1, low_open=True, high_open=True))
    split_seed: int = _key(0, "seed of the train/validation split and of the max_images subset",
                           rule=_at_least(0))  # numpy's generators take no negative seed
    rare_threshold: float = _key(0.01, "product data: classes rarer than this share are grouped as 'other'",
                                 rule=_interval(0, 1, high_open=True))
    cache: bool = _key(True, "cache decoded images in memory (small datasets)")
    max_images: int = _key(0, "0: all; otherwise a deterministic subset of whole identities (quick runs)",
                           rule=_at_least(0))
    val_identities: int = _key(0, "> 0: hold out exactly this many identities for validation (overrides "
                                  "val_fraction)", rule=_at_least(0))
    # a task-set study fixes it so that every task set is trained and validated on the same images
    stratify: str | None = _key(None, "tasks the train/validation split is stratified on; null: the trained tasks",
                                rule=_names(optional=True))
    junk_fraction: float = _key(0.0, "share of each training batch replaced by random zoomed-in crops (10-30% of "
                                     "the image) labelled junk in an auxiliary junk output; retrieval then drops "
                                     "gallery images predicted junk; 0: off",
                                rule=_interval(0, 1, high_open=True))
    person_mask: str | None = _key(None, "folder of person masks written by mtl-masks (the data's layout, .png): a "
                                         "4th input channel; null: RGB only", rule=_text(optional=True))


@dataclass(frozen=True)
class AugmentConfig:
    """Random changes to the training images (validation images are never changed)."""

    flip: bool = _key(True, "mirror images left-right at random")
    pad_crop: int = _key(8, "pixels of padding before a random crop back to size; 0 disables", rule=_at_least(0))
    color_jitter: float = _key(0.2, "max relative brightness/contrast/saturation change; 0 disables",
                               rule=_interval(0, 1))
    random_erasing: float = _key(0.5, "probability of blanking a random rectangle; 0 disables", rule=_interval(0, 1))


@dataclass(frozen=True)
class ModelConfig:
    """The network: a shared trunk and one head per task."""

    trunk: str = _key("resnet_small", "shared trunk: " + NAMES, rule=_Choice("mtl.choices:TRUNK_NAMES"))
    weights: str | None = _key(None, "trunk weights: null (random), imagenet or a local weights file",
                               rule=_text(optional=True))  # the file is looked for when the trunk is built
    width: float = _key(1.0, "width multiplier of the small residual trunks (resnet_small, resnet18ish)",
                        rule=_above(0))
    head: str = _key("private", "private: hidden layers per task; public: hidden layers shared by the tasks",
                     rule=_Choice("mtl.choices:HEAD_TYPES"))
    public_units: tuple[int, ...] = _key((384, 384), "public heads: widths of the shared hidden layers",
                                         rule=_each(_at_least(1)))
    private_multipliers: tuple[int, ...] = _key((16, 8), "private heads: hidden widths = m x the task's "
                                                         "number of classes", rule=_each(_at_least(1)))
    task_units: int = _key(128, "public heads: width of each task's dense layer before its output", rule=_at_least(1))
    dropout: float = _key(0.3, "dropout rate in the heads", rule=_interval(0, 1, high_open=True))
    embedding_dim: int = _key(256, "identity task: size of the re-identification embedding (0: pooled features)",
                              rule=_at_least(0))  # 0: the BN neck sits on the pooled features (BoT)
    attention: tuple[str, ...] = _key((), "CBAM attention blocks after these trunk stages: stage1.. (or their "
                                          "numbers; resnet_small, resnet18ish, efficientnet_lite0) and/or last "
                                          "(after the trunk's output, any trunk); empty: none", rule=_each(_stage))
    pooling: str = _key("avg", "global pooling of the feature map: " + NAMES + " (gem: generalised "
                               "mean, learned exponent)", rule=_Choice("mtl.choices:POOLINGS"))
    last_stride: int = _key(2, "1: the trunk's last downsampling stage keeps stride 1 (feature map twice as "
                               "large; resnet_small, resnet18ish, efficientnet_lite0)", rule=_Choice((1, 2)))


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe: schedule, optimizer, losses, batches."""

    epochs: int = _key(30, "maximum number of epochs (early stopping may end sooner)", rule=_at_least(1))
    batch_size: int = _key(64, "images per batch", rule=_at_least(1))
    optimizer: str = _key("adamw", "adam, adamw or sgd (Nesterov momentum 0.9)", rule=_Choice("mtl.choices:OPTIMIZERS"))
    learning_rate: float = _key(1e-3, "peak learning rate (after the warm-up)", rule=_above(0))
    weight_decay: float = _key(5e-4, "weight decay of adamw and sgd (adam has none)", rule=_at_least(0))
    trunk_lr_multiplier: float = _key(1.0, "the trunk's learning rate = this x learning_rate (< 1 for a "
                                           "pretrained trunk; 0 holds it still)", rule=_at_least(0))
    freeze_trunk_epochs: int = _key(0, "pretrained trunks: train the heads only for this many epochs first",
                                    rule=_at_least(0))
    warmup_epochs: int = _key(1, "epochs of linear learning-rate warm-up", rule=_at_least(0))
    schedule: str = _key("cosine", "learning-rate schedule after the warm-up: cosine, step or constant",
                         rule=_Choice("mtl.choices:SCHEDULES"))
    step_epochs: int = _key(10, "step schedule: multiply the learning rate by step_factor every step_epochs",
                            rule=_at_least(1))
    step_factor: float = _key(0.1, "step schedule: the factor of each step (0.1: divide by 10; 0.5: "
                                   "halve)", rule=_interval(0, 1, low_open=True))
    sgd_from_epoch: int = _key(0, "switch to SGD (Nesterov momentum 0.9) after this many epochs of "
                                  "train.optimizer, the schedule carrying on (e.g. AdamW, then SGD); "
                                  "0: no switch",
                               rule=_at_least(0))  # and below epochs, after freeze_trunk_epochs: validate()
    sgd_learning_rate: float | None = _key(None, "peak learning rate of SGD after train.sgd_from_epoch; "
                                                 "null: 10 x learning_rate (SGD needs a larger rate than Adam)",
                                           rule=_above(0, optional=True))
    patience: int | None = _key(None, "early stopping: epochs without a better validation loss; "
                                      "null: max(6, 1 + sqrt(epochs))", rule=_at_least(0, optional=True))
    keep: str = _key("best", "best: early stopping, keep the lowest-validation-loss epoch; last: the full "
                             "schedule, keep the last epoch", rule=_Choice("mtl.choices:KEEP"))
    loss_weights: dict[str, float] = _key(factory=dict, help="task -> weight of its loss (default 1), "
                                                             "e.g. age:2,gender:0.5", rule=_weights)
    class_weighting: str = _key("none", "class weights within each attribute's loss: none, inverse (inverse "
                                        "frequency, capped), positive (binary: w_pos=exp(1-p), w_neg=exp(p), p the "
                                        "positive ratio, as DeepMAR; categorical: inverse) or confusion "
                                        "(updated each epoch: the lowest training recall weighs more)",
                                rule=_Choice("mtl.choices:CLASS_WEIGHTING"))
    loss_balancing: str = _key("fixed", "weights of the task losses: fixed (train.loss_weights), uncertainty "
                                        "(learnt, Kendall et al. 2018) or dwa (dynamic weight averaging, Liu et "
                                        "al. 2019); see mtl.balancing", rule=_Choice("mtl.choices:LOSS_BALANCING"))
    dwa_temperature: float = _key(2.0, "loss_balancing=dwa: softmax temperature (larger: closer to equal weights)",
                                  rule=_above(0))
    label_smoothing: float = _key(0.0, "label smoothing of the attribute tasks' cross-entropy",
                                  rule=_interval(0, 1, high_open=True))
    seed: int = _key(0, "seed of the weights, augmentation and batch order", rule=_at_least(0))
    # tf.config.experimental.enable_op_determinism
    deterministic: bool = _key(False, "deterministic ops: the same command and seed on the same machine give "
                                      "the same results, somewhat more slowly")
    mixed_precision: str = _key("none", "Keras dtype policy: none (float32), mixed_float16 (GPUs with tensor "
                                        "cores, loss scaling added) or mixed_bfloat16 (TPUs, recent GPUs); "
                                        "losses stay float32", rule=_Choice("mtl.choices:PRECISION_POLICIES"))
    jit_compile: bool = _key(False, "compile with XLA (GPU; 4-14x slower on CPU: keep off there)")
    steps_per_execution: int = _key(1, "training steps per call of the compiled function (fewer host round "
                                       "trips on a GPU; callbacks see every Nth batch)", rule=_at_least(1))
    distribute: str = _key("auto", "none (one device), mirrored (one model copy per local GPU), multiworker "
                                   "(several machines: TF_CONFIG on each, see the README) or auto (mirrored "
                                   "with more than one GPU, else none)", rule=_Choice("mtl.choices:DISTRIBUTE"))
    steps_per_epoch: int = _key(0, "optimizer steps per epoch; 0: one pass over the training data", rule=_at_least(0))
    tensorboard: bool = _key(True, "write TensorBoard logs into the run's tensorboard/ folder "
                                   "(view: tensorboard --logdir runs)")
    # identity task (re-identification), see mtl.reid
    sampler: str = _key("auto", "batches: pk (P identities x K images), random, or auto (pk with the "
                                "identity task)", rule=_Choice("mtl.choices:SAMPLERS"))
    p_identities: int = _key(0, "P of P x K batches; 0: batch_size // k_images", rule=_at_least(0))
    k_images: int = _key(4, "K of P x K batches: images per identity",
                         rule=_at_least(2))  # batch-hard triplets need two images of a person
    triplet_margin: float | None = _key(0.3, "identity task: margin of the triplet and centroid_triplet losses "
                                             "(Euclidean, on the embedding as it is); null: soft margin",
                                        rule=_above(0, optional=True))
    id_label_smoothing: float = _key(0.1, "identity task: label smoothing of its cross-entropy",
                                     rule=_interval(0, 1, high_open=True))
    center_loss: float = _key(0.0, "identity task: weight of the centre loss (BoT: 5e-4); 0: off", rule=_at_least(0))
    metric_loss: str = _key("triplet", "identity task: the embedding's metric loss: triplet (Hermans 2017), "
                                       "contrastive (pairs, Hadsell 2006) or centroid_triplet (each "
                                       "image vs the leave-one-out centroid of its identity and the other "
                                       "identities' centroids, Wieczorek 2021)",
                            rule=_Choice("mtl.choices:METRIC_LOSSES"))
    hard_mining: bool = _key(True, "identity task's metric loss: true: each anchor's hardest negative in the "
                                   "batch (triplet: batch-hard, its hardest positive too); false: every "
                                   "negative (triplet: batch-all)")
    contrastive_margin: float = _key(1.0, "metric_loss=contrastive: margin on L2-normalised embeddings "
                                          "(distances in [0, 2]; 1.0: negatives pushed below cosine 0.5)",
                                     rule=_interval(0, 2, low_open=True))  # unit vectors are at most 2 apart


@dataclass(frozen=True)
class TuneConfig:
    """Hyperparameter search (``scripts/tune.py``, ``mtl.tuning``); training ignores this section."""

    tuner: str = _key("bayesian", "search strategy: random, bayesian or hyperband", rule=_Choice("mtl.choices:TUNERS"))
    max_trials: int = _key(10, "number of trials", rule=_at_least(1))
    objective: str = _key("masked_loss", "what the search optimises: masked_loss, a task metric (age.accuracy), "
                                         "several (mean), mA or reid_mAP",
                          rule=_text())  # resolved against the tasks' metrics by mtl.tuning
    patience: int | None = _key(None, "early stopping inside each trial; null: the training rule",
                                rule=_at_least(0, optional=True))
    space: dict[str, Any] = _key(factory=dict, help="narrows or fixes the search space: config key -> value, "
                                                     "list or {min, max}, e.g. model.dropout: [0.1, 0.3]")


@dataclass(frozen=True)
class Config:
    """A whole run: its tasks and one section per part."""

    tasks: str = _key("all", "comma-separated task names, aliases (color) or all; --tasks help lists them",
                      rule=_names())
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


def to_dict(cfg) -> dict:
    """Plain dict (tuples as lists) suitable for YAML/JSON."""
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if value is None:
        if type(None) in args or annotation is type(None):
            return None
        raise ConfigError(f"{key}: None is not allowed")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        non_none = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.lower() in ("none", "null", ""):
            return None
        return _coerce(value, non_none[0], key)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]  # --set model.attention=3 (YAML reads a number): a list of one
        return tuple(_coerce(v, args[0], key) for v in value)
    if origin is dict:
        if isinstance(value, str):
            value = dict(item.split(":", 1) for item in value.split(",") if item)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot read {value!r} as {annotation.__name__}") from None
    return value


# Values of older config files, read as what they meant: key -> {old value: new value}.
LEGACY_VALUES: dict[str, dict[Any, Any]] = {
    # train.mixed_precision was a bool (true: float16 compute) before it named the dtype policy
    "train.mixed_precision": {True: "mixed_float16", False: "none"},
    # train.class_weighting was a bool (true: inverse-frequency class weights)
    "train.class_weighting": {True: "inverse", False: "none"},
}


def _legacy_key(value: Any) -> Any:
    """``value`` as a key of ``LEGACY_VALUES`` (unhashable values match nothing)."""
    return value if isinstance(value, (bool, int, float, str, type(None))) else None


def _merge(obj, updates: Mapping[str, Any], prefix: str = ""):
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if value is None:  # an empty section in YAML (``train:`` and nothing under it)
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{full} is a section; give keys like {full}.<name>=value")
            changes[key] = _merge(current, value, prefix=f"{full}.")
        else:
            changes[key] = _coerce(LEGACY_VALUES.get(full, {}).get(_legacy_key(value), value), hints[key], full)
    return dataclasses.replace(obj, **changes)


def parse_overrides(items: list[str] | None) -> dict:
    """``["train.epochs=5", "model.head=public"]`` -> nested dict (values parsed as YAML scalars)."""
    nested: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({_yaml_problem(exc)})") from None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a nested dict.

    Args:
        path: the file.

    Returns:
        Its top-level mapping (empty for an empty file).

    Raises:
        ConfigError: one line naming the file when it is missing or unreadable, when its YAML
            is malformed (with the line and column of the problem) or when its top level is not
            a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the config file ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML{_yaml_where(exc)}: {_yaml_problem(exc)}") from None
    data = data or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{p}: expected a mapping (key: value lines) at the top level, "
                          f"got a {type(data).__name__}")
    return dict(data)


def _yaml_where(exc: yaml.YAMLError) -> str:
    """`` at line L, column C`` (1-based) of a YAML error that knows where it happened."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's description of the problem, on one line."""
    problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
    text = f"{problem} ({context})" if problem and context else problem or context or str(exc)
    return " ".join(text.split())


def build_config(*layers: Mapping[str, Any] | None) -> Config:
    """Defaults overridden by each layer in turn (nested dicts, as in YAML), then validated.

    Args:
        *layers: nested dicts of overrides (``None`` or empty layers are skipped).

    Returns:
        The resolved, validated config.

    Raises:
        ConfigError: an unknown key, a value of the wrong type or an invalid value (see ``validate``).
    """
    cfg = Config()
    for layer in layers:
        if layer:
            cfg = _merge(cfg, layer)
    return validate(cfg)




def config_keys(cfg_type: type = Config, prefix: str = "") -> dict[str, Any]:
    """Every leaf key of the config dataclasses, dotted, with its type annotation.

    Args:
        cfg_type: a config dataclass (default: the whole ``Config``).
        prefix: prepended to each key.

    Returns:
        ``{"tasks": str, "data.path": str | None, ...}`` in declaration order.
    """
    return {key: annotation for key, (annotation, _) in _leaves(cfg_type, prefix).items()}


@functools.cache
def _leaves(cfg_type: type = Config, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """``config_keys`` with each key's field (read once: ``validate`` runs for every trial of a search)."""
    hints = typing.get_type_hints(cfg_type)
    leaves: dict[str, tuple[Any, dataclasses.Field]] = {}
    for f in dataclasses.fields(cfg_type):
        if dataclasses.is_dataclass(hints[f.name]):
            leaves.update(_leaves(hints[f.name], f"{prefix}{f.name}."))
        else:
            leaves[f"{prefix}{f.name}"] = (hints[f.name], f)
    return leaves


def _field(key: str) -> dataclasses.Field:
    """The dataclass field of a dotted key (``train.epochs``)."""
    return _leaves()[key][1]


def _help(f: dataclasses.Field) -> str:
    """A field's meaning, a choice key's ``{names}`` replaced by its table's names."""
    rule = f.metadata.get("rule")
    text = f.metadata.get("help", "")
    return text.replace(NAMES, ", ".join(map(str, rule.names()))) if isinstance(rule, _Choice) else text


def valid_values(key: str) -> tuple[str, ...]:
    """The values a choice key takes, read from the table that owns them.

    Args:
        key: a dotted choice key (``model.trunk``, ``data.format``).

    Returns:
        Its valid values in the table's order (``data.format``: ``auto`` first).

    Raises:
        ValueError: ``key`` is not a choice key.
    """
    rule = _field(key).metadata["rule"] if key in _leaves() else None
    if not isinstance(rule, _Choice):
        raise ValueError(f"{key} is not a choice key")
    return rule.values()


def _type_name(annotation: Any) -> str:
    """``int``, ``str | None``, ``tuple[int, ...]``: a key's type as Python spells it."""
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def format_value(value: Any) -> str:
    """A value as it is written in YAML or after ``--set KEY=`` (``null``, ``true``, ``[384, 384]``)."""
    plain = list(value) if isinstance(value, tuple) else value
    text = yaml.safe_dump(plain, default_flow_style=True, width=1_000_000).strip()
    return text[:-len("...")].strip() if text.endswith("...") else text


@dataclass(frozen=True)
class KeyInfo:
    """One config key as ``--show-config`` lists it.

    Attributes:
        key: dotted name (``train.epochs``), as ``--set`` and YAML files spell it.
        section: the part before the dot (``""`` for top-level keys such as ``tasks``).
        type: the declared type (``int``, ``str | None``).
        default: the dataclass default.
        value: the value in the config described (the default when none is given).
        help: the field's meaning (``metadata["help"]``).
    """

    key: str
    section: str
    type: str
    default: Any
    value: Any
    help: str


def describe_keys(cfg: Config | None = None) -> list[KeyInfo]:
    """Every config key with its type, default and meaning, read from the dataclasses.

    Args:
        cfg: a resolved config whose values are reported too (default: the defaults).

    Returns:
        One entry per leaf key, in declaration order (the order of ``config_keys``).
    """
    defaults, cfg = Config(), cfg or Config()
    return [KeyInfo(key, key.rpartition(".")[0], _type_name(annotation), _get(defaults, key), _get(cfg, key),
                    _help(_field(key)))
            for key, annotation in config_keys().items()]


def format_keys(cfg: Config | None = None) -> str:
    """The text of ``--show-config``: one line ``key  type  default  meaning`` per key, by section.

    Args:
        cfg: the resolved config; where it differs from the defaults a ``value`` column shows its
            values (``=`` on the keys it leaves at their default).

    Returns:
        Lines whose columns are separated by at least two spaces (no column holds two in a row).
    """
    keys = describe_keys(cfg)
    changed = any(k.value != k.default for k in keys)
    rows = [["key", "type", "default"] + (["value"] if changed else []) + ["meaning"]]
    sections = []
    for k in keys:
        if k.section not in sections:
            sections.append(k.section)
    for k in keys:
        value = [format_value(k.value) if k.value != k.default else "="] if changed else []
        rows.append([k.key, k.type, format_value(k.default), *value, k.help])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]

    def line(row):
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]

    lines = ["Config keys: set them with --set KEY=VALUE or in a --config YAML file (sections as mappings).",
             "", line(rows[0])]
    for section in sections:
        lines += ["", f"[{section or 'top level'}]"]
        lines += [line(r) for r, k in zip(rows[1:], keys) if k.section == section]
    return "\n".join(lines)


def _type_problem(value: Any, annotation: Any) -> str | None:
    """What is wrong with the type of ``value`` (a Config built in code bypasses ``_coerce``)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        return _type_problem(value, next(a for a in args if a is not type(None)))
    if origin is tuple:
        if not isinstance(value, tuple):
            return "expected a list of numbers"
        return next((p for p in (_type_problem(x, args[0]) for x in value) if p), None)
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            return "expected a mapping with names as keys"
        return next((p for p in (_type_problem(x, args[1]) for x in value.values()) if p), None)
    if annotation is Any:
        return None
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "expected a finite number"
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "expected an integer"
    if not isinstance(value, annotation):
        return f"expected a {annotation.__name__}"
    return None


def _get(cfg: Config, key: str) -> Any:
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _check_sgd_switch(train: TrainConfig) -> None:
    """``train.sgd_from_epoch`` (set): some epochs of each optimizer, and AdamW on the whole network
    first: a switch while the trunk is frozen would never train it with AdamW."""
    where = f"train.sgd_from_epoch={train.sgd_from_epoch}"
    if train.optimizer == "sgd":
        raise ConfigError(f"{where}: switches train.optimizer to SGD, but it is sgd already; "
                          f"set train.optimizer to adam or adamw, or train.sgd_from_epoch=0")
    if train.sgd_from_epoch >= train.epochs:
        raise ConfigError(f"{where}: must be below train.epochs={train.epochs} (the epochs from it on use SGD); "
                          f"0: no switch")
    if train.sgd_from_epoch <= train.freeze_trunk_epochs:
        raise ConfigError(f"{where}: must be above train.freeze_trunk_epochs={train.freeze_trunk_epochs} "
                          f"(the trunk trains with train.optimizer before the switch); 0: no switch")


def validate(cfg: Config) -> Config:
    """Check every key of ``cfg``: its type, its choices or range, and the task lists' syntax.

    ``build_config`` calls it, so every way to a config (flags, ``--set``, YAML, a run's
    ``config.yaml``, tuning and study trials) is checked before any image is read or any file
    written. Task names are checked for syntax only; the dataset's task table is checked when the
    data is read (``mtl.tasks.resolve``).

    Args:
        cfg: the resolved config.

    Returns:
        ``cfg`` itself, unchanged.

    Raises:
        ConfigError: the first problem, on one line naming the key, the value and what is valid,
            e.g. ``train.epochs=-1: must be at least 1``.
    """
    for key, (annotation, f) in _leaves().items():
        value = _get(cfg, key)
        rule = f.metadata["rule"]
        problem = _type_problem(value, annotation) or (rule(value) if rule else None)
        if problem:
            shown = list(value) if isinstance(value, tuple) else value  # as written in YAML or --set
            raise ConfigError(f"{key}={shown!r}: {problem}")
    train = cfg.train
    if train.sgd_from_epoch:
        _check_sgd_switch(train)
    # P x K batches (the identity task, unless train.sampler=random): batch-hard triplets need
    # at least two people in a batch, or no negative exists
    if "identity" in task_names(cfg.tasks) and train.sampler != "random":
        if train.p_identities == 1:
            raise ConfigError("train.p_identities=1: a P x K batch of the identity task needs at least 2 "
                              "identities (0: batch_size // k_images)")
        people = train.p_identities or train.batch_size // train.k_images
        if people < 2:
            raise ConfigError(
                f"train.batch_size={train.batch_size}: with train.k_images={train.k_images} a P x K batch of "
                f"the identity task holds {people} {'identity' if people == 1 else 'identities'}; it needs at "
                f"least 2 (batch_size >= {2 * train.k_images}, or set train.p_identities)")
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    from mtl.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def patience_for(epochs: int, patience: int | None) -> int:
    """Early-stopping patience: ``max(6, 1 + sqrt(epochs))`` unless set (the seeds' rule)."""
    if patience is not None:
        return int(patience)
    return int(max(6, 1 + epochs ** 0.5))
