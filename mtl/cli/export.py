"""Export a trained run for serving: TensorFlow SavedModel, LiteRT (TFLite) or ONNX.

The exported model takes RAW uint8 RGB images (N, H, W, 3), values 0-255, of the run's size H x W
(the SavedModel also any size: it resizes inside as training did); normalisation is inside. It
returns named outputs: per attribute task its class probabilities (N, K) (a binary task: [1 - p, p]),
and "embedding" (N, D), the L2-normalised re-identification descriptor. The identity classifier
(over the training identities) is not exported.

Written to --out (default RUN/export/<format>/): the artifact (saved_model/, model.tflite or
model.onnx) and model.json, whose "serving" section is the whole contract: input name, shape,
dtype, channel order, value range, resizing; every output's shape and class names; the file size
and the parity with the Keras model measured with the format's own runtime (--check images).

ONNX needs tf2onnx, and onnxruntime to check it; LiteRT is checked with ai-edge-litert:
pip install 'mtl-keras[export]'.

Examples:
    mtl-export --run runs/joint --format saved_model
    mtl-export --run runs/joint --format onnx --out deploy/onnx
    mtl-export --run runs/joint --format litert --overwrite

From a checkout without installing: python scripts/export.py (same flags).
"""

from __future__ import annotations

import argparse

from mtl.choices import EXPORT_FORMATS
from mtl.cli.common import new_parser, one_of, run_main
from mtl.errors import ConfigError


def parser() -> argparse.ArgumentParser:
    """The arguments of ``mtl-export``."""
    p = new_parser("export", __doc__)
    p.add_argument("--run", required=True, help="run directory written by mtl-train")
    p.add_argument("--format", required=True, metavar="FORMAT", help=f"export format: {one_of(EXPORT_FORMATS)}")
    p.add_argument("--out", help="export folder (default: RUN/export/<format>)")
    p.add_argument("--overwrite", action="store_true", help="replace an export already in the folder")
    p.add_argument("--check", type=int, default=8, metavar="N",
                   help="random uint8 images run through the export and the Keras model to measure their "
                        "max abs difference, recorded in model.json (default 8; 0: no check)")
    return p


def main(argv=None) -> int:
    """Export as ``mtl-export`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Raises:
        MtlError: bad input (run, format, existing export, missing converter); :func:`entry` prints it.
    """
    args = parser().parse_args(argv)
    if args.format not in EXPORT_FORMATS:
        raise ConfigError(f"--format: unknown export format {args.format!r}; valid: {', '.join(EXPORT_FORMATS)}")
    if args.check < 0:
        raise ConfigError(f"--check must be >= 0, got {args.check}")
    from mtl.export import export_run
    from mtl.runs import load_run

    if load_run(args.run, model=False).config.data.person_mask:  # the serving contract is one uint8 RGB image
        raise ConfigError(f"--run {args.run}: the model takes a person mask as a 4th input channel "
                          "(data.person_mask); mtl-export supports RGB models only")
    export_run(args.run, args.format, args.out, overwrite=args.overwrite, check_images=args.check)
    return 0


def entry() -> None:
    """The console script ``mtl-export``."""
    run_main(main)


if __name__ == "__main__":
    entry()
