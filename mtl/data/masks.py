"""Person masks: a foreground mask per image, computed offline, read by the pipeline as a 4th channel.

The segmentation model is one shipped inside a PyPI wheel, read from the installed package's file,
never downloaded: MediaPipe's BlazePose GHUM "full" landmark model
(``mediapipe/modules/pose_landmark/pose_landmark_full.tflite``, Apache 2.0), whose third output is
a 256x256 person-segmentation logit map. It is run with the LiteRT interpreter (``ai-edge-litert``).
Its input is a square crop around one person, which is what a re-id crop already is: the image is
letterboxed to a square (zero padding left and right), resized to 256x256, scaled to [0, 1]; the
sigmoid of the output is cropped back and resized to the image. On Market-1501 64x128 crops it
gives clean silhouettes; MediaPipe's selfie-segmentation model (same wheel) was blurrier there.

Only mediapipe 0.10.21 and older wheels contain the ``.tflite`` files (0.10.30 and later dropped the
legacy solutions), and those pin ``protobuf<5`` and ``numpy<2``, which TensorFlow 2.21 cannot share.
So the wheel is installed for its files only, and mtl never imports it (``find_spec`` locates it)::

    pip install 'mtl-keras[masks]'                  # ai-edge-litert
    pip install --no-deps 'mediapipe==0.10.21'      # the model file; its dependencies are not needed

(``--model FILE`` takes the ``.tflite`` from anywhere else, e.g. unzipped from that wheel.)

Layout: the mask of ``DATA/<rel>/<name>.<ext>`` is ``MASKS/<rel>/<name>.png`` (8-bit grey, 255 =
person, same size as the image): ``mask_path``. ``data.person_mask: MASKS`` trains on them.
No TensorFlow here.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mtl.data.images import images_in_folder
from mtl.errors import DataError
from mtl.io import atomic_path
from mtl.progress import progress

MODEL_PACKAGE = "mediapipe"  # located with find_spec, never imported
MODEL_FILE = ("modules", "pose_landmark", "pose_landmark_full.tflite")
MODEL_VERSION = "0.10.21"  # the newest mediapipe wheel that still ships the .tflite files
MASK_SUFFIX = ".png"
INSTALL_HINT = (f"pip install 'mtl-keras[masks]' && pip install --no-deps 'mediapipe=={MODEL_VERSION}' "
                "(the wheel is used for its model file only), or pass the .tflite file with --model")


def find_model(path: str | Path | None = None) -> Path:
    """The segmentation model file: ``path``, else the one inside the installed ``mediapipe`` package.

    Args:
        path: an explicit ``.tflite`` file; None: ``MODEL_FILE`` of the installed package.

    Returns:
        The model file.

    Raises:
        DataError: the file is missing, or the package is not installed (with the install command).
    """
    if path is not None:
        if not Path(path).is_file():
            raise DataError(f"person-mask model file not found: {path}")
        return Path(path)
    spec = importlib.util.find_spec(MODEL_PACKAGE)  # finds the package folder without running its code
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder).joinpath(*MODEL_FILE)
        if candidate.is_file():
            return candidate
    where = "not installed" if spec is None else "installed without the model file (a version after " \
                                                 f"{MODEL_VERSION})"
    raise DataError(f"person-mask model {'/'.join(MODEL_FILE)}: package {MODEL_PACKAGE} is {where}; {INSTALL_HINT}")


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise DataError(f"person masks need the LiteRT interpreter (ai-edge-litert): {INSTALL_HINT}") from None
    return Interpreter


class PersonSegmenter:
    """A person mask for one RGB image with the pose model's segmentation output.

    Args:
        model: the ``.tflite`` file (``find_model``).
        threads: interpreter threads.
    """

    def __init__(self, model: str | Path, threads: int = 1):
        self.interpreter = _interpreter_class()(model_path=str(model), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.size = tuple(int(s) for s in self.input["shape"][1:3])  # (height, width) of the model input
        # the segmentation output: the one single-channel map of the input's size (the others are landmarks)
        maps = [d for d in self.interpreter.get_output_details()
                if len(d["shape"]) == 4 and tuple(d["shape"][1:]) == (*self.size, 1)]
        if len(maps) != 1:
            raise DataError(f"person-mask model {model}: expected one {self.size[0]}x{self.size[1]}x1 "
                            f"segmentation output, found {len(maps)}")
        self.output = maps[0]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The mask of one image.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.

        Returns:
            ``(H, W)`` uint8, 255 where the model sees the person, 0 elsewhere (soft edges).
        """
        from PIL import Image

        height, width = image.shape[:2]
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        # the model expects a square crop centred on the person: letterbox, as MediaPipe pads its ROI
        square = np.zeros((side, side, 3), np.uint8)
        square[top:top + height, left:left + width] = image
        x = np.asarray(Image.fromarray(square).resize(self.size[::-1], Image.BILINEAR), np.float32) / 255.0
        self.interpreter.set_tensor(self.input["index"], x[None])
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self.output["index"])[0, :, :, 0]
        prob = 1.0 / (1.0 + np.exp(-np.clip(logits, -30.0, 30.0)))
        mask = Image.fromarray(np.round(prob * 255.0).astype(np.uint8)).resize((side, side), Image.BILINEAR)
        return np.asarray(mask)[top:top + height, left:left + width]


def mask_path(image: str | Path, data_root: str | Path, mask_root: str | Path) -> Path:
    """Where the mask of ``image`` (a file under ``data_root``) is: same relative path, ``.png``.

    Raises:
        DataError: the image is not under ``data_root``.
    """
    try:
        rel = Path(os.path.abspath(image)).relative_to(os.path.abspath(data_root))
    except ValueError:
        raise DataError(f"image {image} is not under the data folder {data_root}: no person mask for it") from None
    return Path(mask_root) / rel.with_suffix(MASK_SUFFIX)


def mask_paths(images: Iterable[str | Path], data_root: str | Path, mask_root: str | Path) -> list[str]:
    """``mask_path`` of each image, all checked to exist (what the pipeline's ``mask_paths`` takes).

    Raises:
        DataError: a mask is missing (the count, the first few, and the command that writes them).
    """
    paths = [str(mask_path(p, data_root, mask_root)) for p in images]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"data.person_mask: {len(missing)} of {len(paths)} mask(s) missing under {mask_root}, "
                        f"e.g. {', '.join(missing[:3])}; write them with mtl-masks --data {data_root} "
                        f"--out {mask_root}")
    return paths


@dataclass(frozen=True)
class MaskFolder:
    """The person masks of the images under ``data_root``: what inference takes to feed a 4-channel
    model (``mtl.inference.extract_features(masks=...)``), for any subset or order of those images.

    Attributes:
        data_root: the data folder the images are under.
        mask_root: the mask folder (``mtl-masks --data data_root --out mask_root``).
    """

    data_root: str
    mask_root: str

    def paths(self, images: Iterable[str | Path]) -> list[str]:
        """The mask file of each image (``mask_paths``: all checked to exist)."""
        return mask_paths(images, self.data_root, self.mask_root)


def mask_folder(person_mask: str | Path | None, data_root: str | Path) -> MaskFolder | None:
    """``MaskFolder`` of a run's ``data.person_mask`` for the images under ``data_root``; None without masks.

    Relative folders are taken from the working directory (as ``data.path`` is) and made absolute.
    """
    if not person_mask:
        return None
    return MaskFolder(os.path.abspath(data_root), os.path.abspath(person_mask))


def write_masks(data_root: str | Path, out: str | Path, model: str | Path | None = None,
                images: Sequence[str] | None = None, overwrite: bool = False, threads: int = 1) -> dict[str, int]:
    """Write one mask PNG per image of ``data_root`` under ``out`` (``mask_path`` layout).

    Args:
        data_root: the data folder.
        out: the mask folder.
        model: the ``.tflite`` file; None: the installed package's (``find_model``).
        images: the images to mask (under ``data_root``); None: every image file in it.
        overwrite: recompute masks that exist; False skips them (a stopped run resumes).
        threads: interpreter threads.

    Returns:
        ``{"written": n, "skipped": n, "unreadable": n}``.

    Raises:
        DataError: no model, no images, or an image outside ``data_root``.
    """
    from PIL import Image, UnidentifiedImageError

    segmenter = PersonSegmenter(find_model(model), threads)
    images = list(images) if images is not None else list(images_in_folder(data_root))
    if not images:
        raise DataError(f"no images under {data_root}")
    counts = {"written": 0, "skipped": 0, "unreadable": 0}
    out = Path(out)
    if out.resolve() == Path(data_root).resolve():
        raise DataError(f"--out {out} is the data folder: the masks would be taken for images")
    for image_file in progress(images, total=len(images), desc="person masks", min_items=20):
        target = mask_path(image_file, data_root, out)
        if target.exists() and not overwrite:
            counts["skipped"] += 1
            continue
        try:
            with Image.open(image_file) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError):  # the pipeline drops it too (drop_unreadable)
            counts["unreadable"] += 1
            continue
        with atomic_path(target) as tmp:
            Image.fromarray(segmenter(rgb)).save(tmp, format="PNG")
        counts["written"] += 1
    return counts
