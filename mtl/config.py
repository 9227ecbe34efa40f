"""Typed, frozen configuration. Defaults live here; YAML files and ``--set key=value`` override.

Resolution order: dataclass defaults <- YAML (``--config``) <- command-line flags and ``--set``.
The resolved config is saved as ``config.yaml`` in every run directory and reloads unchanged.
Unknown keys are errors that list the valid ones (a typo must never be silently ignored).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from mtl.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    path: str | None = None  # None: the embedded synthetic dataset
    format: str = "auto"  # a key of mtl.data.sources.FORMATS, or auto-detect
    image_height: int = 128
    image_width: int = 64
    val_fraction: float = 0.2
    split_seed: int = 0
    rare_threshold: float = 0.01  # product data: classes rarer than this are grouped as "other"
    cache: bool = True  # cache decoded images in memory (small datasets)
    max_images: int = 0  # 0: all; otherwise a deterministic subset of identities (quick runs)
    val_identities: int = 0  # > 0: hold out exactly this many identities for validation (overrides val_fraction)
    # tasks the train/val split is stratified on (default: the trained tasks); a task-set study
    # fixes it so that every task set is trained and validated on the same images
    stratify: str | None = None


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True
    pad_crop: int = 8  # pixels of padding before a random crop back to size; 0 disables
    color_jitter: float = 0.2  # max relative brightness/contrast/saturation change; 0 disables
    random_erasing: float = 0.5  # probability; 0 disables


@dataclass(frozen=True)
class ModelConfig:
    trunk: str = "resnet_small"
    weights: str | None = None  # None, "imagenet" or a local weights file
    width: float = 1.0  # width multiplier of the small residual trunks
    head: str = "private"  # private (per-task hidden layers) or public (shared hidden layers)
    public_units: tuple[int, ...] = (384, 384)
    private_multipliers: tuple[int, ...] = (16, 8)  # private hidden widths = m x num_classes
    task_units: int = 128  # per-task dense layer before the output in public heads
    dropout: float = 0.3
    embedding_dim: int = 256  # identity task


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adamw"  # adam | adamw | sgd (Nesterov momentum 0.9)
    learning_rate: float = 1e-3
    weight_decay: float = 5e-4
    trunk_lr_multiplier: float = 1.0  # < 1 for a pretrained trunk
    freeze_trunk_epochs: int = 0  # pretrained trunks: train heads only for this many epochs first
    warmup_epochs: int = 1
    schedule: str = "cosine"  # cosine | step | constant
    step_epochs: int = 10  # step schedule: divide by 10 every step_epochs
    patience: int | None = None  # None: max(6, 1 + sqrt(epochs)), as in the seeds
    keep: str = "best"  # best: early stopping, end with the lowest-validation-loss epoch | last: full schedule
    loss_weights: dict[str, float] = field(default_factory=dict)  # task -> weight, default 1
    class_weighting: bool = False  # weight classes by inverse frequency (capped)
    label_smoothing: float = 0.0
    seed: int = 0
    mixed_precision: bool = False  # GPU only: float16 compute
    jit_compile: bool = False  # XLA: slower on CPU, keep off there
    distribute: str = "none"  # none | mirrored
    steps_per_epoch: int = 0  # 0: one pass over the data
    # identity task (re-identification), see mtl.reid
    sampler: str = "auto"  # auto (pk with the identity task, else random) | pk | random
    p_identities: int = 0  # P of P x K batches; 0: batch_size // k_images
    k_images: int = 4  # K of P x K batches: images per identity
    triplet_margin: float | None = 0.3  # batch-hard triplet loss margin; None: soft margin
    id_label_smoothing: float = 0.1  # label smoothing of the identity cross-entropy
    center_loss: float = 0.0  # weight of the centre loss (BoT: 5e-4); 0: off


@dataclass(frozen=True)
class TuneConfig:
    """Hyperparameter search (``scripts/tune.py``, ``mtl.tuning``); training ignores this section."""

    tuner: str = "bayesian"  # random | bayesian | hyperband
    max_trials: int = 10
    objective: str = "masked_loss"  # e.g. age.accuracy, "age.accuracy,gender.accuracy" (mean), mA, reid_mAP
    patience: int | None = None  # early stopping inside each trial; None: the training rule (patience_for)
    space: dict[str, Any] = field(default_factory=dict)  # narrows or fixes the search space (mtl.tuning)


@dataclass(frozen=True)
class Config:
    tasks: str = "all"
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
            if not isinstance(value, Mapping):
                raise ConfigError(f"{full} is a section; give keys like {full}.<name>=value")
            changes[key] = _merge(current, value, prefix=f"{full}.")
        else:
            changes[key] = _coerce(value, hints[key], full)
    return dataclasses.replace(obj, **changes)


def parse_overrides(items: list[str] | None) -> dict:
    """``["train.epochs=5", "model.head=public"]`` -> nested dict (values parsed as YAML scalars)."""
    nested: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return dict(data)


def build_config(*layers: Mapping[str, Any] | None) -> Config:
    """Defaults overridden by each layer in turn (nested dicts, as in YAML)."""
    cfg = Config()
    for layer in layers:
        if layer:
            cfg = _merge(cfg, layer)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    from mtl.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def patience_for(epochs: int, patience: int | None) -> int:
    """Early-stopping patience: ``max(6, 1 + sqrt(epochs))`` unless set (the seeds' rule)."""
    if patience is not None:
        return int(patience)
    return int(max(6, 1 + epochs ** 0.5))
