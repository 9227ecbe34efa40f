"""Typed, frozen configuration. Defaults live here; YAML files and ``--set key=value`` override.

Resolution order: dataclass defaults <- YAML (``--config``) <- command-line flags and ``--set``.
The resolved config is saved as ``config.yaml`` in every run directory and reloads unchanged.
Unknown keys are errors that list the valid ones (a typo must never be silently ignored).
Every resolved config is validated (:func:`validate`: types, choices, ranges, task-name syntax)
before any work starts, so a bad value is one line naming the key, the value and what is valid,
not a traceback halfway through a run.

No TensorFlow here: light commands import this module. The valid trunk and format names are
therefore plain tuples (``TRUNK_NAMES``, ``FORMAT_NAMES``); tests hold them equal to the tables
they mirror (``mtl.models.trunks.TRUNKS``, ``mtl.data.sources.FORMATS``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from mtl.errors import ConfigError

# Valid values of the choice keys. Mirrors of tables that live in TensorFlow-importing modules;
# tests/test_config_validation.py fails if one drifts from its table.
FORMAT_NAMES = ("market1501_course", "market1501", "fashion", "imaterialist")  # mtl.data.sources.FORMATS
TRUNK_NAMES = ("resnet_small", "resnet18ish", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large",
               "efficientnet_b0", "efficientnet_lite0", "mobilenet_v2")  # mtl.models.trunks.TRUNKS
HEADS = ("private", "public")  # mtl.models.heads.HEAD_TYPES
POOLINGS = ("avg", "gem", "max")  # mtl.models.builder.POOLINGS
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
KEEP = ("best", "last")
DISTRIBUTE = ("none", "mirrored", "multiworker", "auto")  # mtl.distribute.DISTRIBUTE
MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")  # Keras dtype policies (mtl.engine.precision_policy)
SAMPLERS = ("auto", "pk", "random")
LOSS_BALANCING = ("fixed", "uncertainty", "dwa")  # mtl.balancing.LOSS_BALANCING
CLASS_WEIGHTING = ("none", "inverse", "positive", "confusion")  # mtl.balancing.CLASS_WEIGHTING
METRIC_LOSSES = ("triplet", "contrastive", "centroid_triplet")  # mtl.reid.losses.METRIC_LOSSES
TUNERS = ("random", "bayesian", "hyperband")
MIN_IMAGE_SIDE = 8  # smaller images leave the trunks nothing to convolve


def _key(default: Any = dataclasses.MISSING, help: str = "", factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its meaning: ``--show-config`` lists it (:func:`describe_keys`).

    Args:
        default: the default value.
        help: what the key means (one line); every key has one (a test checks it).
        factory: instead of ``default``, a function making it (mutable defaults: ``dict``).

    Returns:
        A ``dataclasses.field`` whose ``metadata["help"]`` is ``help``.
    """
    return field(default=default, default_factory=factory, metadata={"help": help})


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from, their size and the train/validation split."""

    path: str | None = _key(None, "data folder; null: the embedded synthetic pedestrians")
    format: str = _key("auto", f"on-disk format: auto (detected) or {', '.join(FORMAT_NAMES)}")
    image_height: int = _key(128, "images are resized to this height (pixels)")
    image_width: int = _key(64, "images are resized to this width (pixels)")
    val_fraction: float = _key(0.2, "share of the identities held out for validation")
    split_seed: int = _key(0, "seed of the train/validation split and of the max_images subset")
    rare_threshold: float = _key(0.01, "product data: classes rarer than this share are grouped as 'other'")
    cache: bool = _key(True, "cache decoded images in memory (small datasets)")
    max_images: int = _key(0, "0: all; otherwise a deterministic subset of whole identities (quick runs)")
    val_identities: int = _key(0, "> 0: hold out exactly this many identities for validation (overrides "
                                  "val_fraction)")
    # a task-set study fixes it so that every task set is trained and validated on the same images
    stratify: str | None = _key(None, "tasks the train/validation split is stratified on; null: the trained tasks")
    junk_fraction: float = _key(0.0, "share of each training batch replaced by random zoomed-in crops (10-30% of "
                                     "the image) labelled junk in an auxiliary junk output; retrieval then drops "
                                     "gallery images predicted junk; 0: off")
    person_mask: str | None = _key(None, "folder of person masks written by mtl-masks (the data's layout, .png): a "
                                         "4th input channel; null: RGB only")


@dataclass(frozen=True)
class AugmentConfig:
    """Random changes to the training images (validation images are never changed)."""

    flip: bool = _key(True, "mirror images left-right at random")
    pad_crop: int = _key(8, "pixels of padding before a random crop back to size; 0 disables")
    color_jitter: float = _key(0.2, "max relative brightness/contrast/saturation change; 0 disables")
    random_erasing: float = _key(0.5, "probability of blanking a random rectangle; 0 disables")


@dataclass(frozen=True)
class ModelConfig:
    """The network: a shared trunk and one head per task."""

    trunk: str = _key("resnet_small", f"shared trunk: {', '.join(TRUNK_NAMES)}")
    weights: str | None = _key(None, "trunk weights: null (random), imagenet or a local weights file")
    width: float = _key(1.0, "width multiplier of the small residual trunks (resnet_small, resnet18ish)")
    head: str = _key("private", "private: hidden layers per task; public: hidden layers shared by the tasks")
    public_units: tuple[int, ...] = _key((384, 384), "public heads: widths of the shared hidden layers")
    private_multipliers: tuple[int, ...] = _key((16, 8), "private heads: hidden widths = m x the task's "
                                                         "number of classes")
    task_units: int = _key(128, "public heads: width of each task's dense layer before its output")
    dropout: float = _key(0.3, "dropout rate in the heads")
    embedding_dim: int = _key(256, "identity task: size of the re-identification embedding (0: pooled features)")
    attention: tuple[str, ...] = _key((), "CBAM attention blocks after these trunk stages: stage1.. (or their "
                                          "numbers; resnet_small, resnet18ish, efficientnet_lite0) and/or last "
                                          "(after the trunk's output, any trunk); empty: none")
    pooling: str = _key("avg", f"global pooling of the feature map: {', '.join(POOLINGS)} (gem: generalised "
                               "mean, learned exponent)")
    last_stride: int = _key(2, "1: the trunk's last downsampling stage keeps stride 1 (feature map twice as "
                               "large; resnet_small, resnet18ish, efficientnet_lite0)")


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe: schedule, optimizer, losses, batches."""

    epochs: int = _key(30, "maximum number of epochs (early stopping may end sooner)")
    batch_size: int = _key(64, "images per batch")
    optimizer: str = _key("adamw", "adam, adamw or sgd (Nesterov momentum 0.9)")
    learning_rate: float = _key(1e-3, "peak learning rate (after the warm-up)")
    weight_decay: float = _key(5e-4, "weight decay of adamw and sgd (adam has none)")
    trunk_lr_multiplier: float = _key(1.0, "the trunk's learning rate = this x learning_rate (< 1 for a "
                                           "pretrained trunk; 0 holds it still)")
    freeze_trunk_epochs: int = _key(0, "pretrained trunks: train the heads only for this many epochs first")
    warmup_epochs: int = _key(1, "epochs of linear learning-rate warm-up")
    schedule: str = _key("cosine", "learning-rate schedule after the warm-up: cosine, step or constant")
    step_epochs: int = _key(10, "step schedule: multiply the learning rate by step_factor every step_epochs")
    step_factor: float = _key(0.1, "step schedule: the factor of each step (0.1: divide by 10; 0.5: "
                                   "halve)")
    sgd_from_epoch: int = _key(0, "switch to SGD (Nesterov momentum 0.9) after this many epochs of "
                                  "train.optimizer, the schedule carrying on (e.g. AdamW, then SGD); "
                                  "0: no switch")
    sgd_learning_rate: float | None = _key(None, "peak learning rate of SGD after train.sgd_from_epoch; "
                                                 "null: 10 x learning_rate (SGD needs a larger rate than Adam)")
    patience: int | None = _key(None, "early stopping: epochs without a better validation loss; "
                                      "null: max(6, 1 + sqrt(epochs))")
    keep: str = _key("best", "best: early stopping, keep the lowest-validation-loss epoch; last: the full "
                             "schedule, keep the last epoch")
    loss_weights: dict[str, float] = _key(factory=dict, help="task -> weight of its loss (default 1), "
                                                             "e.g. age:2,gender:0.5")
    class_weighting: str = _key("none", "class weights within each attribute's loss: none, inverse (inverse "
                                        "frequency, capped), positive (binary: w_pos=exp(1-p), w_neg=exp(p), p the "
                                        "positive ratio, as DeepMAR; categorical: inverse) or confusion "
                                        "(updated each epoch: the lowest training recall weighs more)")
    loss_balancing: str = _key("fixed", "weights of the task losses: fixed (train.loss_weights), uncertainty "
                                        "(learnt, Kendall et al. 2018) or dwa (dynamic weight averaging, Liu et "
                                        "al. 2019); see mtl.balancing")
    dwa_temperature: float = _key(2.0, "loss_balancing=dwa: softmax temperature (larger: closer to equal weights)")
    label_smoothing: float = _key(0.0, "label smoothing of the attribute tasks' cross-entropy")
    seed: int = _key(0, "seed of the weights, augmentation and batch order")
    # tf.config.experimental.enable_op_determinism
    deterministic: bool = _key(False, "deterministic ops: the same command and seed on the same machine give "
                                      "the same results, somewhat more slowly")
    mixed_precision: str = _key("none", "Keras dtype policy: none (float32), mixed_float16 (GPUs with tensor "
                                        "cores, loss scaling added) or mixed_bfloat16 (TPUs, recent GPUs); "
                                        "losses stay float32")
    jit_compile: bool = _key(False, "compile with XLA (GPU; 4-14x slower on CPU: keep off there)")
    steps_per_execution: int = _key(1, "training steps per call of the compiled function (fewer host round "
                                       "trips on a GPU; callbacks see every Nth batch)")
    distribute: str = _key("auto", "none (one device), mirrored (one model copy per local GPU), multiworker "
                                   "(several machines: TF_CONFIG on each, see the README) or auto (mirrored "
                                   "with more than one GPU, else none)")
    steps_per_epoch: int = _key(0, "optimizer steps per epoch; 0: one pass over the training data")
    tensorboard: bool = _key(True, "write TensorBoard logs into the run's tensorboard/ folder "
                                   "(view: tensorboard --logdir runs)")
    # identity task (re-identification), see mtl.reid
    sampler: str = _key("auto", "batches: pk (P identities x K images), random, or auto (pk with the "
                                "identity task)")
    p_identities: int = _key(0, "P of P x K batches; 0: batch_size // k_images")
    k_images: int = _key(4, "K of P x K batches: images per identity")
    triplet_margin: float | None = _key(0.3, "identity task: margin of the triplet and centroid_triplet losses "
                                             "(Euclidean, on the embedding as it is); null: soft margin")
    id_label_smoothing: float = _key(0.1, "identity task: label smoothing of its cross-entropy")
    center_loss: float = _key(0.0, "identity task: weight of the centre loss (BoT: 5e-4); 0: off")
    metric_loss: str = _key("triplet", "identity task: the embedding's metric loss: triplet (Hermans 2017), "
                                       "contrastive (pairs, Hadsell 2006) or centroid_triplet (each "
                                       "image vs the leave-one-out centroid of its identity and the other "
                                       "identities' centroids, Wieczorek 2021)")
    hard_mining: bool = _key(True, "identity task's metric loss: true: each anchor's hardest negative in the "
                                   "batch (triplet: batch-hard, its hardest positive too); false: every "
                                   "negative (triplet: batch-all)")
    contrastive_margin: float = _key(1.0, "metric_loss=contrastive: margin on L2-normalised embeddings "
                                          "(distances in [0, 2]; 1.0: negatives pushed below cosine 0.5)")


@dataclass(frozen=True)
class TuneConfig:
    """Hyperparameter search (``scripts/tune.py``, ``mtl.tuning``); training ignores this section."""

    tuner: str = _key("bayesian", "search strategy: random, bayesian or hyperband")
    max_trials: int = _key(10, "number of trials")
    objective: str = _key("masked_loss", "what the search optimises: masked_loss, a task metric (age.accuracy), "
                                         "several (mean), mA or reid_mAP")
    patience: int | None = _key(None, "early stopping inside each trial; null: the training rule")
    space: dict[str, Any] = _key(factory=dict, help="narrows or fixes the search space: config key -> value, "
                                                     "list or {min, max}, e.g. model.dropout: [0.1, 0.3]")


@dataclass(frozen=True)
class Config:
    """A whole run: its tasks and one section per part."""

    tasks: str = _key("all", "comma-separated task names, aliases (color) or all; --tasks help lists them")
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


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

# A rule takes a key's value (already of the declared type) and returns what is wrong with it,
# or None; validate() prefixes the key and the value.
Rule = Callable[[Any], "str | None"]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _choice(values: tuple[str, ...]) -> Rule:
    return lambda v: None if v in values else f"valid values: {', '.join(values)}"


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


def _anything(v) -> None:
    return None


# Every key of Config and its rule; a test holds this table to the dataclasses' fields.
RULES: dict[str, Rule] = {
    "tasks": _names(),
    "data.path": _text(optional=True),
    "data.format": _choice(("auto",) + FORMAT_NAMES),
    "data.image_height": _at_least(MIN_IMAGE_SIDE),
    "data.image_width": _at_least(MIN_IMAGE_SIDE),
    "data.val_fraction": _interval(0, 1, low_open=True, high_open=True),
    "data.split_seed": _at_least(0),  # numpy's generators take no negative seed
    "data.rare_threshold": _interval(0, 1, high_open=True),
    "data.cache": _anything,
    "data.max_images": _at_least(0),
    "data.val_identities": _at_least(0),
    "data.stratify": _names(optional=True),
    "data.junk_fraction": _interval(0, 1, high_open=True),
    "data.person_mask": _text(optional=True),
    "augment.flip": _anything,
    "augment.pad_crop": _at_least(0),
    "augment.color_jitter": _interval(0, 1),
    "augment.random_erasing": _interval(0, 1),
    "model.trunk": _choice(TRUNK_NAMES),
    "model.weights": _text(optional=True),  # the file is looked for when the trunk is built
    "model.width": _above(0),
    "model.head": _choice(HEADS),
    "model.public_units": _each(_at_least(1)),
    "model.private_multipliers": _each(_at_least(1)),
    "model.task_units": _at_least(1),
    "model.dropout": _interval(0, 1, high_open=True),
    "model.embedding_dim": _at_least(0),  # 0: the BN neck sits on the pooled features (BoT)
    # the syntax here; mtl.models.trunks.attention_stages checks the names against the trunk's stages
    "model.attention": _each(lambda v: None if re.fullmatch(r"(stage)?[1-9][0-9]*|last", v.strip().lower())
                             else "must be a stage name (stage1, stage2, ..), a stage number or last"),
    "model.pooling": _choice(POOLINGS),
    "model.last_stride": lambda v: None if v in (1, 2) else "valid values: 1, 2",
    "train.epochs": _at_least(1),
    "train.batch_size": _at_least(1),
    "train.optimizer": _choice(OPTIMIZERS),
    "train.learning_rate": _above(0),
    "train.weight_decay": _at_least(0),
    "train.trunk_lr_multiplier": _at_least(0),  # 0 holds the trunk's weights still
    "train.freeze_trunk_epochs": _at_least(0),
    "train.warmup_epochs": _at_least(0),
    "train.schedule": _choice(SCHEDULES),
    "train.step_epochs": _at_least(1),
    "train.step_factor": _interval(0, 1, low_open=True),
    "train.sgd_from_epoch": _at_least(0),  # and below epochs, after freeze_trunk_epochs: validate()
    "train.sgd_learning_rate": _above(0, optional=True),
    "train.patience": _at_least(0, optional=True),
    "train.keep": _choice(KEEP),
    "train.loss_weights": _weights,
    "train.class_weighting": _choice(CLASS_WEIGHTING),
    "train.loss_balancing": _choice(LOSS_BALANCING),
    "train.dwa_temperature": _above(0),
    "train.label_smoothing": _interval(0, 1, high_open=True),
    "train.seed": _at_least(0),
    "train.deterministic": _anything,
    "train.mixed_precision": _choice(MIXED_PRECISION),
    "train.jit_compile": _anything,
    "train.steps_per_execution": _at_least(1),
    "train.distribute": _choice(DISTRIBUTE),
    "train.steps_per_epoch": _at_least(0),
    "train.tensorboard": _anything,
    "train.sampler": _choice(SAMPLERS),
    "train.p_identities": _at_least(0),
    "train.k_images": _at_least(2),  # batch-hard triplets need two images of a person
    "train.triplet_margin": _above(0, optional=True),
    "train.id_label_smoothing": _interval(0, 1, high_open=True),
    "train.center_loss": _at_least(0),
    "train.metric_loss": _choice(METRIC_LOSSES),
    "train.hard_mining": _anything,
    "train.contrastive_margin": _interval(0, 2, low_open=True),  # unit vectors are at most 2 apart
    "tune.tuner": _choice(TUNERS),
    "tune.max_trials": _at_least(1),
    "tune.objective": _text(),  # resolved against the tasks' metrics by mtl.tuning
    "tune.patience": _at_least(0, optional=True),
    "tune.space": _anything,  # its keys and values are checked by mtl.tuning (they name search parameters)
}


def config_keys(cfg_type: type = Config, prefix: str = "") -> dict[str, Any]:
    """Every leaf key of the config dataclasses, dotted, with its type annotation.

    Args:
        cfg_type: a config dataclass (default: the whole ``Config``).
        prefix: prepended to each key.

    Returns:
        ``{"tasks": str, "data.path": str | None, ...}`` in declaration order.
    """
    hints = typing.get_type_hints(cfg_type)
    keys: dict[str, Any] = {}
    for f in dataclasses.fields(cfg_type):
        if dataclasses.is_dataclass(hints[f.name]):
            keys.update(config_keys(hints[f.name], f"{prefix}{f.name}."))
        else:
            keys[f"{prefix}{f.name}"] = hints[f.name]
    return keys


def _field(key: str) -> dataclasses.Field:
    """The dataclass field of a dotted key (``train.epochs``)."""
    cls: Any = Config
    *sections, name = key.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    return next(f for f in dataclasses.fields(cls) if f.name == name)


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
                    _field(key).metadata.get("help", ""))
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
    for key, annotation in config_keys().items():
        value = _get(cfg, key)
        problem = _type_problem(value, annotation) or RULES[key](value)
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
