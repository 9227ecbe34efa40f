"""Every custom Keras object of mtl serialises, and a run's model.keras loads with plain Keras.

* each registered object: ``get_config -> from_config -> get_config`` is identical, the config
  names every constructor argument, Keras's registry finds the class by its registered name, and
  layers, losses, metrics, schedules and optimizers behave the same after the round trip;
* ``.keras`` files of every model kind (attributes; attributes + identity with the centre loss;
  the efficientnet_lite0 and mobilenet_v2 trunks), compiled with the package's own optimizer and
  schedule, reload in a fresh process that runs only ``import mtl, keras`` and
  ``keras.saving.load_model`` (``compile=True`` and ``False``), with the same predictions;
* a missing, truncated or foreign file is a one-line ``DataError``.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import mtl
from mtl.engine import TrainArgs, compile_model
from mtl.errors import DataError
from mtl.losses import (BalancedLoss, MaskedBinaryCrossentropy, MaskedHuber, MaskedSparseCategoricalCrossentropy,
                        UncertaintyWeights)
from mtl.metrics import MaskedAccuracy, MaskedCrossentropy, MaskedHuberMetric, MaskedMeanAbsoluteError
from mtl.models.builder import build_model, load_model
from mtl.models.attention import CBAM
from mtl.models.layers import GeMPooling, MaskFusion, Normalize
from mtl.optim import WarmupSchedule, make_optimizer
from mtl.reid.heads import CenterDistances
from mtl.reid.losses import (BatchAllTripletLoss, BatchHardTripletLoss, CenterLoss, CentroidTripletLoss,
                             ContrastiveLoss)
from mtl.tasks import TaskSpec

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.25, 0.25, 0.5]], np.float32)
LABELS = np.array([0, -1, 2, 1])
IDS = np.array([0, 0, 1, 1, 2, -1])  # identities of a metric-learning batch (-1: unknown)
VALUES = np.array([2011.0, np.nan, 2016.0, 2012.0], np.float32)  # regression labels (NaN: missing)
VALUE_PREDS = np.array([[2012.5], [2000.0], [2013.0], [2012.0]], np.float32)
TRUNK_PATHS = ["trunk_w"]


def _schedule(kind="cosine"):
    return WarmupSchedule(0.1, total_steps=100, warmup_steps=10, kind=kind, step_size=30)


# (object, input for its behaviour check); one entry per registered class at least
CASES = {
    "Normalize": (Normalize((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), bgr=True, name="norm"),
                  RNG.uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)),
    "CenterDistances": (CenterDistances(4, name="center"), RNG.normal(size=(3, 5)).astype(np.float32)),
    "MaskedSparseCategoricalCrossentropy": (
        MaskedSparseCategoricalCrossentropy(class_weights=[1.0, 2.0, 3.0], label_smoothing=0.1, name="xent"),
        (LABELS, PROBS)),
    "MaskedBinaryCrossentropy": (
        MaskedBinaryCrossentropy(class_weights=[1.0, 3.0], label_smoothing=0.2, from_logits=True),
        (np.array([1, 0, -1, 1]), np.array([[2.0], [-1.0], [0.5], [-0.3]], np.float32))),
    "BatchHardTripletLoss": (BatchHardTripletLoss(0.2),
                             (np.array([0, 0, 1, 1, 2, -1]), RNG.normal(size=(6, 4)).astype(np.float32))),
    "BatchHardTripletLoss-soft": (BatchHardTripletLoss(None),
                                  (np.array([0, 0, 1, 1, 2, -1]), RNG.normal(size=(6, 4)).astype(np.float32))),
    "CenterLoss": (CenterLoss(0.01), (LABELS, PROBS * 10)),
    "BatchAllTripletLoss": (BatchAllTripletLoss(0.2), (IDS, RNG.normal(size=(6, 4)).astype(np.float32))),
    "ContrastiveLoss": (ContrastiveLoss(0.8, hard_mining=False), (IDS, RNG.normal(size=(6, 4)).astype(np.float32))),
    "CentroidTripletLoss": (CentroidTripletLoss(0.5, hard_mining=True),
                            (IDS, RNG.normal(size=(6, 4)).astype(np.float32))),
    "BalancedLoss": (BalancedLoss(BatchHardTripletLoss(0.2)), (IDS, RNG.normal(size=(6, 4)).astype(np.float32))),
    "UncertaintyWeights": (UncertaintyWeights(["age", "gender"], name="unc"), RNG.normal(size=(3, 5)).astype(np.float32)),
    "CBAM": (CBAM(reduction=4, kernel_size=3, identity_init=False, name="cbam"),
             RNG.normal(size=(2, 5, 4, 8)).astype(np.float32)),
    "GeMPooling": (GeMPooling(p=2.5, eps=1e-5, name="gem"), RNG.uniform(0, 3, (2, 4, 4, 3)).astype(np.float32)),
    "MaskFusion": (MaskFusion(name="fusion"), RNG.uniform(0, 255, (2, 4, 4, 4)).astype(np.float32)),
    "MaskedAccuracy": (MaskedAccuracy(name="acc"), (LABELS, PROBS)),
    "MaskedCrossentropy": (MaskedCrossentropy(name="xe"), (LABELS, PROBS)),
    "MaskedHuber": (MaskedHuber(scale=2.5, delta=0.5), (VALUES, VALUE_PREDS)),
    "MaskedMeanAbsoluteError": (MaskedMeanAbsoluteError(name="mae"), (VALUES, VALUE_PREDS)),
    "MaskedHuberMetric": (MaskedHuberMetric(scale=2.5, name="huber"), (VALUES, VALUE_PREDS)),
    "WarmupSchedule-cosine": (_schedule("cosine"), None),
    "WarmupSchedule-step": (_schedule("step"), None),
    "WarmupSchedule-constant": (_schedule("constant"), None),
    "TrunkLRAdam": (make_optimizer("adam", _schedule(), trunk_lr_multiplier=0.1, trunk_paths=TRUNK_PATHS), None),
    "TrunkLRAdamW": (make_optimizer("adamw", _schedule(), 1e-4, 0.1, TRUNK_PATHS), None),
    "TrunkLRSGD": (make_optimizer("sgd", 0.05, 1e-4, 0.0, TRUNK_PATHS), None),
}


def _round_trip(obj):
    config = obj.get_config()
    clone = type(obj).from_config(copy.deepcopy(config))  # from_config may consume its argument
    return config, clone


def test_every_registered_mtl_object_has_a_case():
    registered = {name.split(">", 1)[1] for name in keras.saving.get_custom_objects() if name.startswith("mtl>")}
    covered = {type(obj).__name__ for obj, _ in CASES.values()}
    assert registered == covered


def test_the_registration_modules_cover_every_registered_class_of_the_package():
    # a new module with a custom object must be added to mtl.KERAS_OBJECT_MODULES, or models using
    # it only load where that module happens to be imported
    found = set()
    for path in (REPO / "mtl").rglob("*.py"):
        if "register_keras_serializable" in path.read_text() and path.name != "__init__.py":
            found.add(".".join(path.relative_to(REPO).with_suffix("").parts))
    assert found == set(mtl.KERAS_OBJECT_MODULES)


def test_registration_modules_do_not_import_each_other_at_module_level():
    # the registration runs inside the first `import keras`, which may come from one of these
    # modules while it is half-imported: a module-level `from mtl.losses import X` in another of
    # them would then fail (tests below: every import order, in fresh processes)
    import ast

    modules = set(mtl.KERAS_OBJECT_MODULES)
    for name in modules:
        tree = ast.parse((REPO / Path(*name.split("."))).with_suffix(".py").read_text())
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                imported = {a.name for a in node.names}
            else:
                continue
            assert not imported & modules, f"{name} imports {imported & modules} at module level"


@pytest.mark.parametrize("case", list(CASES))
def test_config_round_trip_is_identical_and_names_every_constructor_argument(case):
    obj, _ = CASES[case]
    config, clone = _round_trip(obj)
    assert type(clone) is type(obj)
    assert clone.get_config() == config
    # through Keras's registry, as load_model does ("mtl>Name")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(again) is type(obj) and again.get_config() == config
    params = [p.name for p in inspect.signature(type(obj).__init__).parameters.values()
              if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    assert set(params) <= set(config), f"get_config misses {set(params) - set(config)}"


@pytest.mark.parametrize("case", ["Normalize", "CenterDistances", "CBAM", "GeMPooling", "MaskFusion",
                                  "UncertaintyWeights"])
def test_layers_compute_the_same_after_the_round_trip(case):
    layer, x = CASES[case]
    expected = np.asarray(layer(x))
    _, clone = _round_trip(layer)
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(clone(x)), expected, rtol=1e-6)


@pytest.mark.parametrize("case", ["MaskedSparseCategoricalCrossentropy", "MaskedBinaryCrossentropy",
                                  "BatchHardTripletLoss", "BatchHardTripletLoss-soft", "CenterLoss",
                                  "BatchAllTripletLoss", "ContrastiveLoss", "CentroidTripletLoss", "BalancedLoss"])
def test_losses_give_the_same_value_after_the_round_trip(case):
    loss, (y, pred) = CASES[case]
    _, clone = _round_trip(loss)
    value = float(loss(y, pred))
    assert value > 0  # a check that compares zeros would prove nothing
    assert float(clone(y, pred)) == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize("case", ["MaskedAccuracy", "MaskedCrossentropy"])
def test_metrics_give_the_same_result_after_the_round_trip(case):
    metric, (y, pred) = CASES[case]
    _, clone = _round_trip(metric)
    for m in (metric, clone):
        m.reset_state()
        m.update_state(y, pred)
    assert float(metric.result()) > 0
    assert float(clone.result()) == pytest.approx(float(metric.result()), rel=1e-6)


@pytest.mark.parametrize("case", ["WarmupSchedule-cosine", "WarmupSchedule-step", "WarmupSchedule-constant"])
def test_schedules_give_the_same_rates_after_the_round_trip(case):
    schedule, _ = CASES[case]
    _, clone = _round_trip(schedule)
    steps = [0, 5, 10, 40, 70, 100, 150]
    np.testing.assert_allclose([float(clone(s)) for s in steps], [float(schedule(s)) for s in steps], rtol=1e-6)


@pytest.mark.parametrize("case", ["TrunkLRAdam", "TrunkLRAdamW", "TrunkLRSGD"])
def test_optimizers_update_the_same_after_the_round_trip(case):
    optimizer, _ = CASES[case]
    _, clone = _round_trip(optimizer)
    results = []
    for opt in (type(optimizer).from_config(copy.deepcopy(optimizer.get_config())), clone):
        variables = [keras.Variable(np.ones(3, np.float32), name=name) for name in ("trunk_w", "head_w")]
        opt.apply([np.full(3, 0.5, np.float32), np.full(3, 0.5, np.float32)], variables)
        results.append([np.asarray(v) for v in variables])
    (trunk, head), (trunk2, head2) = results
    np.testing.assert_allclose(trunk2, trunk, rtol=1e-6)
    np.testing.assert_allclose(head2, head, rtol=1e-6)
    # the trunk's lower learning rate survives the round trip: it moves less than the head
    assert np.all(np.abs(trunk - 1) < np.abs(head - 1))


# --- .keras files -----------------------------------------------------------------------------

ATTRIBUTES = [TaskSpec("hat", ("no", "yes"), "binary"), TaskSpec("color", ("r", "g", "b"))]
IDENTITY = TaskSpec("identity", ("1", "2", "3"), "identity")
KINDS = {  # name: (tasks, build_model arguments, TrainArgs arguments)
    "attributes": (ATTRIBUTES, {"trunk": "resnet_small", "width": 0.25}, {}),
    "identity": (ATTRIBUTES + [IDENTITY], {"trunk": "resnet_small", "width": 0.25, "embedding_dim": 8,
                                           "center_loss": True}, {"center_loss": 5e-4}),
    "efficientnet_lite0": (ATTRIBUTES, {"trunk": "efficientnet_lite0", "weights": None}, {}),
    "mobilenet_v2": (ATTRIBUTES, {"trunk": "mobilenet_v2", "weights": None}, {}),
}
INPUT = (32, 32, 3)


def _save_kind(kind: str, folder: Path) -> Path:
    """Build, compile with the package's optimizer, save ``kind.keras``, its input, predictions and
    optimizer config next to it."""
    tasks, build_args, train_args = KINDS[kind]
    model = build_model(tasks, INPUT, **build_args)
    compile_model(model, tasks, TrainArgs(epochs=1, **train_args), steps_per_epoch=1)
    path = folder / f"{kind}.keras"
    model.save(path)
    x = RNG.uniform(0, 255, (2, *INPUT)).astype(np.float32)
    np.save(folder / f"{kind}_x.npy", x)
    np.savez(folder / f"{kind}_pred.npz", **model.predict(x, verbose=0))
    (folder / f"{kind}_optimizer.json").write_text(json.dumps(model.optimizer.get_config()))
    return path


@pytest.fixture(scope="module")
def attribute_model_file(tmp_path_factory) -> Path:
    return _save_kind("attributes", tmp_path_factory.mktemp("keras_files"))


# Runs in a fresh interpreter: nothing but `import mtl, keras` before keras.saving.load_model.
FRESH_PROCESS_LOAD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import mtl, keras

    report = {}
    for path in sys.argv[1:]:
        stem = path[:-len(".keras")]
        x = np.load(stem + "_x.npy")
        expected = np.load(stem + "_pred.npz")
        compiled = keras.saving.load_model(path)  # compile=True, the default
        plain = keras.saving.load_model(path, compile=False)
        same = all(np.allclose(m.predict(x, verbose=0)[k], expected[k], rtol=1e-5, atol=1e-6)
                   for m in (compiled, plain) for k in expected.files)
        opt = compiled.optimizer
        report[path] = {
            "same_predictions": same,
            "optimizer": type(opt).__name__,
            "optimizer_config": opt.get_config(),
            "schedule": type(opt._learning_rate).__name__,
            "losses": sorted(type(v).__name__ for v in compiled.loss.values()),
            "plain_compiled": plain.compiled,
        }
    print(json.dumps(report))
""")


def _fresh_load(paths) -> dict:
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS_LOAD, *map(str, paths)], capture_output=True,
                         text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_run_model_reloads_with_plain_keras_in_a_fresh_process(attribute_model_file):
    # the reported bug: `import mtl, keras; keras.saving.load_model(...)` could not find mtl's classes
    r = _fresh_load([attribute_model_file])[str(attribute_model_file)]
    assert r["same_predictions"] and r["optimizer"] == "TrunkLRAdamW" and r["schedule"] == "WarmupSchedule"


@pytest.mark.slow
def test_every_model_kind_reloads_with_plain_keras_in_a_fresh_process(tmp_path, attribute_model_file):
    paths = [attribute_model_file] + [_save_kind(kind, tmp_path) for kind in KINDS if kind != "attributes"]
    report = _fresh_load(paths)
    expected_losses = {
        "attributes": ["MaskedBinaryCrossentropy", "MaskedSparseCategoricalCrossentropy"],
        "identity": ["BatchHardTripletLoss", "CenterLoss", "MaskedBinaryCrossentropy",
                     "MaskedSparseCategoricalCrossentropy", "MaskedSparseCategoricalCrossentropy"],
    }
    for path in paths:
        kind = Path(path).stem
        r = report[str(path)]
        assert r["same_predictions"], kind
        assert r["optimizer"] == "TrunkLRAdamW" and r["schedule"] == "WarmupSchedule", kind
        saved = json.loads((Path(path).parent / f"{kind}_optimizer.json").read_text())
        assert r["optimizer_config"] == saved, kind  # trunk paths and schedule included
        assert r["optimizer_config"]["trunk_paths"], kind
        assert r["losses"] == expected_losses.get(kind, expected_losses["attributes"]), kind
        assert not r["plain_compiled"]


def _one_line_error(path) -> str:
    with pytest.raises(DataError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_truncated_model_file_is_a_one_line_data_error(tmp_path, attribute_model_file):
    data = attribute_model_file.read_bytes()
    truncated = tmp_path / "model.keras"
    truncated.write_bytes(data[: len(data) // 2])
    message = _one_line_error(truncated)
    assert message.startswith(f"cannot load model {truncated}: not a valid .keras file (")
    # and the run-folder form names the same file
    assert _one_line_error(tmp_path) == message


def test_a_corrupt_member_or_foreign_file_is_a_one_line_data_error(tmp_path, attribute_model_file):
    data = bytearray(attribute_model_file.read_bytes())
    corrupt = tmp_path / "corrupt.keras"
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # inside the weights, the archive's directory intact
    corrupt.write_bytes(bytes(data))
    assert re.match(rf"cannot load model {re.escape(str(corrupt))}: not a valid \.keras file \(.*corrupt",
                    _one_line_error(corrupt))
    foreign = tmp_path / "text.keras"
    foreign.write_text("not a model\n")
    assert "not a valid .keras file" in _one_line_error(foreign)


def test_a_missing_model_file_is_named(tmp_path):
    assert _one_line_error(tmp_path / "nope.keras") == f"model file not found: {tmp_path / 'nope.keras'}"
    assert _one_line_error(tmp_path) == f"model file not found: {tmp_path / 'model.keras'}"


def test_load_model_takes_a_run_folder_and_compiles_on_request(tmp_path, attribute_model_file):
    (tmp_path / "model.keras").write_bytes(attribute_model_file.read_bytes())
    model = mtl.load_model(tmp_path)
    assert not model.compiled
    compiled = load_model(attribute_model_file, compile=True)
    assert type(compiled.optimizer).__name__ == "TrunkLRAdamW"
    x = np.load(attribute_model_file.with_name("attributes_x.npy"))
    expected = np.load(attribute_model_file.with_name("attributes_pred.npz"))
    for m in (model, compiled):
        out = m.predict(x, verbose=0)
        for k in expected.files:
            np.testing.assert_allclose(out[k], expected[k], rtol=1e-5, atol=1e-6)


# --- the public API -----------------------------------------------------------------------------

def test_public_api_is_listed_and_resolves_to_the_entry_points():
    from mtl import config, experiment, inference, runs
    from mtl.models import builder
    from mtl.reid import protocol

    assert set(mtl.__all__) <= set(dir(mtl))
    assert mtl.__version__ == "0.1.0"
    assert mtl.build_model is builder.build_model and mtl.load_model is builder.load_model
    assert mtl.train is experiment.train and mtl.Config is config.Config and mtl.load_run is runs.load_run
    assert mtl.evaluate is inference.evaluate_model and mtl.evaluate_reid is protocol.evaluate_labelled
    with pytest.raises(AttributeError):
        mtl.no_such_name  # noqa: B018


def test_load_config_reads_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  batch_size: 8\n")
    cfg = mtl.load_config(path, {"train": {"epochs": 5}})
    assert isinstance(cfg, mtl.Config)
    assert (cfg.train.epochs, cfg.train.batch_size) == (5, 8)
    assert mtl.load_config().train.epochs == mtl.Config().train.epochs


# --- registration in every import order -----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("first", ["import keras", "import mtl.losses", "import mtl.optim",
                                   "import mtl, tensorflow"])
def test_objects_are_registered_whatever_is_imported_first(first):
    # "mtl.losses": its own `import keras` runs the registration while it is half-imported;
    # "mtl, tensorflow": TensorFlow imports Keras (after asking importlib.util.find_spec for it)
    code = (f"{first}; import mtl, keras; "
            "print(sorted(k for k in keras.saving.get_custom_objects() if k.startswith('mtl>')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    names = {f"mtl>{type(obj).__name__}" for obj, _ in CASES.values()}
    assert out.stdout.strip().splitlines()[-1] == str(sorted(names))
