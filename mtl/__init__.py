"""mtl: multi-task image models (shared convolutional trunk, many task heads) for Keras 3.

Public API (each name is imported on first use, so ``import mtl`` itself is quick)::

    import mtl

    cfg = mtl.load_config("configs/market1501_cpu.yaml", {"train": {"epochs": 5}})   # a Config
    mtl.train(cfg, "runs/m1")                      # a run folder: model.keras, metrics.json, ...
    run = mtl.load_run("runs/m1")                  # config, tasks, model, data, split of a finished run
    model = mtl.load_model("runs/m1")              # a run folder or a .keras file
    metrics, per_image = mtl.evaluate(model, run.tasks, table, height, width)   # attribute metrics
    model = mtl.build_model(run.tasks, input_shape=(128, 64, 3))                  # an untrained model

``evaluate`` is ``mtl.inference.evaluate_model`` (attributes on a labelled table);
``evaluate_reid`` is ``mtl.reid.protocol.evaluate_labelled`` (attributes and ranking metrics on
labelled query / gallery tables, what ``mtl-evaluate`` runs).

Keras objects, and TensorFlow-free imports (the rule):

    ``import mtl`` never imports TensorFlow or Keras. mtl's Keras objects (layers, losses, metrics,
    optimizers, learning-rate schedules, all registered under the package name ``"mtl"``) are
    registered as soon as both mtl and Keras are imported, in either order: at ``import mtl`` when
    Keras is already loaded, otherwise right after Keras is first imported (a one-shot import
    hook; ``import tensorflow`` imports Keras too). So ``import mtl, keras`` followed by plain
    ``keras.saving.load_model("runs/R/model.keras")`` loads a run's model in a fresh process, with
    ``compile=True`` or ``False``, while ``import mtl.reid`` (numpy ranking metrics), ``mtl.config``
    and the other Keras-free modules stay free of TensorFlow, whether it is installed or not.

Why not register eagerly in this file: Python runs ``mtl/__init__.py`` before any submodule, so
every ``import mtl.reid`` or ``mtl.config`` would pay TensorFlow's import
(seconds) even where nothing uses Keras.
"""

import importlib as _importlib
import sys as _sys

__version__ = "0.1.0"

# name -> (module, attribute): the public entry points, imported on first access (PEP 562)
_LAZY_API = {
    "build_model": ("mtl.models.builder", "build_model"),
    "load_model": ("mtl.models.builder", "load_model"),
    "train": ("mtl.experiment", "train"),
    "evaluate": ("mtl.inference", "evaluate_model"),
    "evaluate_reid": ("mtl.reid.protocol", "evaluate_labelled"),
    "Config": ("mtl.config", "Config"),
    "load_run": ("mtl.runs", "load_run"),
}

__all__ = ["__version__", "build_model", "load_model", "load_config", "train", "evaluate", "evaluate_reid",
           "Config", "load_run"]

# Every module that defines a Keras object registered under "mtl" (tests/test_serialization.py
# checks that this list covers every register_keras_serializable in the package).
KERAS_OBJECT_MODULES = (
    "mtl.models.attention",
    "mtl.models.layers",
    "mtl.losses",
    "mtl.metrics",
    "mtl.optim",
    "mtl.reid.heads",
    "mtl.reid.losses",
)


def load_config(path=None, overrides=None):
    """The resolved, validated ``Config``: defaults <- the YAML file ``path`` <- ``overrides``.

    Args:
        path: a YAML config file (str or Path) (a recipe under ``configs/`` or a run's ``config.yaml``); None: defaults.
        overrides: a nested dict of values to change, as in YAML (``{"train": {"epochs": 5}}``).

    Returns:
        A frozen ``mtl.Config``.

    Raises:
        ConfigError: the file is missing or malformed, or a key or value is invalid (one line).
    """
    from mtl.config import build_config, load_yaml

    return build_config(load_yaml(path) if path is not None else None, overrides)


def __getattr__(name: str):
    if name in _LAZY_API:
        module, attribute = _LAZY_API[name]
        value = getattr(_importlib.import_module(module), attribute)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module 'mtl' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the public names, mtl's submodules imported so far and the usual module attributes
    return sorted(n for n in set(globals()) | set(__all__) if not n.startswith("_") or n in __all__
                  or (n.startswith("__") and n.endswith("__")))


def register_keras_objects() -> None:
    """Import every module that defines an mtl Keras object (each registers its classes).

    Called automatically (see the module docstring); calling it again does nothing. A module
    whose import is under way (the one whose ``import keras`` triggered this) is returned as it
    is and registers its own classes when it finishes.
    """
    for module in KERAS_OBJECT_MODULES:
        _importlib.import_module(module)


def _load_then_register(load) -> None:
    load()  # Keras's own __init__
    register_keras_objects()


def _install() -> None:
    from mtl.importhook import on_first_import

    keras = _sys.modules.get("keras")
    if keras is not None and not getattr(getattr(keras, "__spec__", None), "_initializing", False):
        register_keras_objects()
    elif "keras" not in _sys.modules:
        on_first_import("keras", _load_then_register)


_install()
