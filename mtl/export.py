"""Export a trained run for serving: a TensorFlow SavedModel, a LiteRT (TFLite) flat buffer or an
ONNX graph, each with the input contract a serving user needs, and the runtimes that load them.

The exported model is ``serving_model(model, tasks, height, width)``: a functional ``keras.Model``
wrapping the run's model, so its layers and weights are the trained ones:

* input ``image``: RAW ``uint8`` RGB images, batch ``(N, H, W, 3)``, values 0-255, ``H x W`` the
  run's size (``data.image_height`` x ``data.image_width``). The wrapper casts to float32 (the
  model's input: RGB floats in [0, 255]); the trunk normalises inside (``mtl.models.trunks``).
  The SavedModel also accepts ``(N, h, w, 3)`` of any size: it resizes inside with the training
  pipeline's own resize (``tf.image.resize``, bilinear, antialiased: ``mtl.data.pipeline``),
  which leaves an image of the run's size unchanged. The ONNX and LiteRT converters have no
  antialiased resize (``ScaleAndTranslate``: "No Op registered" in onnxruntime, "neither a custom
  op nor a flex op" in the LiteRT converter), so those take the run's size only: resize with an
  antialiased bilinear filter (PIL's ``Image.resize(..., Image.BILINEAR)``) before.
* outputs, named:
    - ``<task>`` for every attribute task: ``float32 (N, K)`` class probabilities in the order of
      the run's class names, exactly ``mtl.scoring.class_probabilities``: the softmax of a
      categorical task; ``[1 - p, p]`` for a binary task (its one sigmoid unit ``p``); a
      regression task's ``float32 (N, 1)`` value (``TaskKind.serving_output``).
    - ``embedding``: ``float32 (N, D)`` the re-identification descriptor, L2-normalised as
      ``mtl.reid.embedding.extract_embeddings`` does (``x / max(|x|, tiny)``; compare with the dot
      product or the Euclidean distance): the identity head's BN-neck output, or the pooled trunk
      features of a run without the identity task.
  The identity classifier (a softmax over the *training* identities) is a training device and is
  not exported; nor is the centre-loss output.

The export folder (default ``RUN/export/<format>``) holds the artifact (``rundir.EXPORT_FILES``)
and ``model.json``: the run's ``ModelInfo`` whose ``serving`` section records the format, the file,
the input (name, shape, dtype, channel order, value range, resizing) and each output (name, shape,
dtype, what it is, class names), and the parity measured when it was exported.

Keras 3's ``Model.export`` does the conversion (``tf_saved_model``; ``onnx`` through ``tf2onnx``;
``litert`` through the TensorFlow Lite converter). ONNX needs ``tf2onnx`` (and ``onnxruntime`` to
run it), LiteRT runs with ``ai-edge-litert``: the ``export`` extra.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from mtl.choices import EXPORT_FORMATS
from mtl.errors import ConfigError, MtlError
from mtl.rundir import EXPORT, EXPORT_FILES, MODEL_JSON, ModelInfo, RunDir
from mtl.tasks import attribute_tasks

SAVED_MODEL, LITERT, ONNX = EXPORT_FORMATS
# our format name -> Keras's ``Model.export(format=...)``
KERAS_FORMATS = {SAVED_MODEL: "tf_saved_model", LITERT: "litert", ONNX: "onnx"}
# the package each format needs to convert, and to run (pip names; the ``export`` extra)
CONVERTERS = {SAVED_MODEL: None, LITERT: None, ONNX: "tf2onnx"}
RUNTIMES = {SAVED_MODEL: None, LITERT: "ai_edge_litert", ONNX: "onnxruntime"}
PIP_NAMES = {"tf2onnx": "tf2onnx", "ai_edge_litert": "ai-edge-litert", "onnxruntime": "onnxruntime"}

INPUT_NAME = "image"
EMBEDDING_OUTPUT = "embedding"
# formats whose converter has the antialiased resize of the training pipeline (see the docstring)
RESIZES_INSIDE = (SAVED_MODEL,)


@dataclass(frozen=True)
class ExportResult:
    """What ``export_run`` wrote.

    Attributes:
        folder: the export folder.
        artifact: the exported file (or SavedModel folder).
        size_bytes: the artifact's size on disk.
        info: the ``ModelInfo`` written to ``folder/model.json`` (with ``serving``).
    """

    folder: Path
    artifact: Path
    size_bytes: int
    info: ModelInfo


def check_format(name: str) -> str:
    """``name`` if it is an export format, else a ``ConfigError`` naming the valid ones."""
    if name not in EXPORT_FORMATS:
        raise ConfigError(f"--format: unknown export format {name!r}; valid: {', '.join(EXPORT_FORMATS)}")
    return name


def require(module: str, fmt: str, what: str) -> None:
    """Raise a one-line ``MtlError`` when ``module`` (the converter or runtime of ``fmt``) is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MtlError(f"{fmt} {what} needs the package {PIP_NAMES.get(module, module)}, not installed: "
                       f"pip install 'mtl-keras[export]' (or pip install {PIP_NAMES.get(module, module)})")


def serving_model(model, tasks, height: int, width: int, resize: bool = False):
    """The serving model: raw uint8 images -> named probabilities and the L2-normalised embedding.

    Args:
        model: the run's trained model (``mtl.models.builder.build_model``).
        tasks: the run's task specs (``tasks.json``).
        height, width: the run's input size.
        resize: accept images of any size and resize them inside (antialiased bilinear, the
            training pipeline's resize); False: the input is ``(N, height, width, 3)``.

    Returns:
        A functional ``keras.Model`` named ``mtl_serving``: input ``image`` (uint8), outputs a dict
        ``{task: (N, K) probabilities, "embedding": (N, D)}`` (see the module docstring).
    """
    import keras

    from mtl.reid.embedding import embedding_layer_name

    exported = attribute_tasks(tasks)
    layer = embedding_layer_name(model)
    features = keras.Model(model.input, {**{t.name: model.get_layer(t.name).output for t in exported},
                                         EMBEDDING_OUTPUT: model.get_layer(layer).output}, name="mtl_features")
    image = keras.Input((None, None, 3) if resize else (height, width, 3), dtype="uint8", name=INPUT_NAME)
    x = keras.ops.cast(image, "float32")  # the model takes RGB floats in [0, 255]; the trunk normalises
    if resize:
        x = keras.ops.image.resize(x, (height, width), interpolation="bilinear", antialias=True)
    # inference mode pinned in the graph: no converter may see a dropout or a batch-statistics branch
    raw = features(x, training=False)
    outputs = {}
    for t in exported:
        # what mtl.scoring.class_probabilities gives (a sigmoid unit p is the two classes [1 - p, p])
        outputs[t.name] = t.type.serving_output(raw[t.name], t)
    e = keras.ops.reshape(raw[EMBEDDING_OUTPUT], (-1, int(np.prod(raw[EMBEDDING_OUTPUT].shape[1:]))))
    # mtl.reid.embedding.l2_normalize: x / max(|x|, tiny); a zero row stays zero
    norm = keras.ops.sqrt(keras.ops.sum(e * e, axis=-1, keepdims=True))
    outputs[EMBEDDING_OUTPUT] = e / keras.ops.maximum(norm, float(np.finfo(np.float32).tiny))
    # each output's layer takes its key's name: converters name the outputs after them
    outputs = {name: keras.layers.Identity(name=name)(v) for name, v in outputs.items()}
    return keras.Model(image, outputs, name="mtl_serving")


def input_spec(serving):
    """The serving model's input as a ``tf.TensorSpec`` named ``image`` (the exported input's name;
    given explicitly, the ONNX export also works on a model never called)."""
    import tensorflow as tf

    return tf.TensorSpec(tuple(serving.input.shape), tf.uint8, name=INPUT_NAME)


def serving_contract(tasks, height: int, width: int, fmt: str, artifact: str, embedding_layer: str,
                     embedding_dim: int) -> dict:
    """The ``serving`` section of an export's ``model.json``: the input and every output.

    Args:
        tasks: the run's task specs.
        height, width: the run's input size.
        fmt: the export format.
        artifact: the artifact's name in the export folder.
        embedding_layer: the layer the embedding comes from (``embedding`` or ``pool``).
        embedding_dim: its size.
    """
    resize = fmt in RESIZES_INSIDE
    outputs = {t.name: t.type.serving_contract(t) for t in attribute_tasks(tasks)}
    outputs[EMBEDDING_OUTPUT] = {"shape": [None, embedding_dim], "dtype": "float32", "kind": "embedding",
                                 "what": f"re-identification descriptor (layer {embedding_layer!r}), "
                                         "L2-normalised: compare by dot product or Euclidean distance",
                                 "l2_normalized": True, "layer": embedding_layer}
    return {
        "format": fmt,
        "file": artifact,
        "input": {"name": INPUT_NAME, "shape": [None, None, None, 3] if resize else [None, height, width, 3],
                  "dtype": "uint8", "channel_order": "RGB", "value_range": [0, 255], "layout": "NHWC",
                  "size": [height, width],
                  "resize": ("inside: any size, bilinear with antialiasing (tf.image.resize, as in training)"
                             if resize else f"none: give {height}x{width} images, resized with an antialiased "
                                            "bilinear filter (e.g. PIL Image.BILINEAR)"),
                  "normalization": "inside the model"},
        "outputs": outputs,
        "output_names": list(outputs),
    }


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def export_folder(run_dir: str | Path, fmt: str) -> Path:
    """The default export folder of a run: ``RUN/export/<format>``."""
    return Path(run_dir) / EXPORT / fmt


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, overwrite: bool = False,
               check_images: int = 8, log=print) -> ExportResult:
    """Export a finished run in ``fmt`` and check it with its own runtime.

    Args:
        run_dir: the run folder.
        fmt: one of ``EXPORT_FORMATS``.
        out: the export folder (default ``RUN/export/<format>``).
        overwrite: replace an existing export in ``out``.
        check_images: random uint8 images (seed 0) run through the exported model and the Keras model
            to measure the parity recorded in ``model.json`` (0: no check; a missing runtime: none).
        log: where progress lines go (None: quiet).

    Returns:
        ``ExportResult``.

    Raises:
        MtlError: unknown format, missing converter, not a finished run, an export already there.
    """
    from mtl.io import atomic_write_json, ensure_writable, make_folder
    from mtl.runs import load_run

    log = log or (lambda *a, **k: None)
    check_format(fmt)
    if CONVERTERS[fmt]:
        require(CONVERTERS[fmt], fmt, "export")
    folder = Path(out) if out else export_folder(run_dir, fmt)
    artifact = folder / EXPORT_FILES[fmt]
    if artifact.exists() and not overwrite:
        raise MtlError(f"{artifact} exists: pass --overwrite to replace it, or choose another --out")
    ensure_writable(folder)
    run = load_run(run_dir)
    cfg = run.config
    h, w = cfg.data.image_height, cfg.data.image_width
    serving = serving_model(run.model, run.tasks, h, w, resize=fmt in RESIZES_INSIDE)
    log(f"exporting {run.run_dir} as {fmt} ...", flush=True)
    make_folder(folder)
    # the converter writes into a temporary name in the same folder, renamed when complete: an
    # interrupted export never leaves a half-written artifact under the real name
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=folder))
    try:
        staged = tmp / EXPORT_FILES[fmt]
        with _quiet_converters():
            serving.export(str(staged), format=KERAS_FORMATS[fmt], verbose=False,
                           input_signature=[input_spec(serving)])
        if artifact.is_dir():
            shutil.rmtree(artifact)
        elif artifact.exists():
            artifact.unlink()
        os.replace(staged, artifact)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = _size(artifact)
    from mtl.reid.embedding import embedding_layer_name

    layer = embedding_layer_name(run.model)
    contract = serving_contract(run.tasks, h, w, fmt, EXPORT_FILES[fmt], layer,
                                int(serving.get_layer(EMBEDDING_OUTPUT).output.shape[-1]))
    contract["size_bytes"] = size
    if check_images and (RUNTIMES[fmt] is None or _installed(RUNTIMES[fmt])):
        images = np.random.default_rng(0).integers(0, 256, (check_images, h, w, 3), dtype=np.uint8)
        contract["parity"] = {"images": check_images, "inputs": "random uint8, seed 0",
                              "max_abs_diff": max_abs_diff(predict(serving, images), load_exported(artifact, fmt)(images))}
    base = RunDir(run.run_dir).read_json(MODEL_JSON) or {}
    info = ModelInfo.from_dict(base) if base else _fallback_info(serving, cfg)
    # a run trained before model.json recorded class names: tasks.json has them
    info = dataclasses.replace(info, classes=info.classes or {t.name: list(t.classes) for t in run.tasks},
                               serving=contract)
    atomic_write_json(folder / MODEL_JSON, dataclasses.asdict(info))
    log(f"written: {artifact} ({size / 1e6:.2f} MB) and {folder / MODEL_JSON}"
        + (f"; parity with Keras on {check_images} images: max abs diff "
           f"{max(contract['parity']['max_abs_diff'].values()):.1e}" if "parity" in contract else ""),
        flush=True)
    return ExportResult(folder, artifact, size, info)


def _fallback_info(serving, cfg) -> ModelInfo:
    # a run written before model.json existed: the fields a serving user needs, counts unknown (0)
    return ModelInfo(trunk=cfg.model.trunk, weights=cfg.model.weights, head=cfg.model.head,
                     input_shape=[cfg.data.image_height, cfg.data.image_width, 3], outputs=list(serving.output_names),
                     params_total=0, params_trainable=0, params_trunk=0)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


class _quiet_converters:
    """tf2onnx and absl log every rewrite at INFO/WARNING: keep the command's output readable."""

    def __enter__(self):
        self._levels = {n: logging.getLogger(n).level for n in ("tf2onnx", "absl")}
        for n in self._levels:
            logging.getLogger(n).setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for n, level in self._levels.items():
            logging.getLogger(n).setLevel(level)


def predict(serving, images: np.ndarray) -> dict[str, np.ndarray]:
    """The Keras serving model's outputs on uint8 images (the reference of the parity check)."""
    out = serving(np.asarray(images, dtype=np.uint8), training=False)
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def load_exported(artifact: str | Path, fmt: str) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A function ``uint8 images (N, H, W, 3) -> {output name: float32 array}`` running the exported
    artifact with the format's own runtime: TensorFlow's SavedModel loader (signature
    ``serving_default``), onnxruntime, or the LiteRT interpreter (its signature runner).

    Raises:
        MtlError: the runtime is not installed (names the package).
    """
    check_format(fmt)
    artifact = str(artifact)
    if RUNTIMES[fmt]:
        require(RUNTIMES[fmt], fmt, "inference")
    if fmt == SAVED_MODEL:
        import tensorflow as tf

        signature = tf.saved_model.load(artifact).signatures["serving_default"]
        return lambda images: {k: v.numpy() for k, v in signature(**{INPUT_NAME: tf.constant(images)}).items()}
    if fmt == ONNX:
        import onnxruntime

        session = onnxruntime.InferenceSession(artifact, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return lambda images: dict(zip(names, session.run(names, {INPUT_NAME: np.asarray(images, np.uint8)})))
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=artifact).get_signature_runner()
    # the signature runner resizes the input to each call's batch
    return lambda images: {k: np.asarray(v) for k, v in runner(**{INPUT_NAME: np.asarray(images, np.uint8)}).items()}


def max_abs_diff(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> dict[str, float]:
    """``{output: max |reference - other|}`` over the outputs of ``reference`` (all must be in ``other``).

    Raises:
        MtlError: an output is missing or has another shape.
    """
    diffs = {}
    for name, ref in reference.items():
        if name not in other:
            raise MtlError(f"the exported model has no output {name!r} (it has {', '.join(sorted(other))})")
        got = np.asarray(other[name], dtype=np.float32)
        if got.shape != ref.shape:
            raise MtlError(f"output {name!r}: shape {got.shape}, the Keras model gives {ref.shape}")
        diffs[name] = float(np.abs(got - ref).max())
    return diffs
