"""Write a person mask (a foreground mask, 8-bit PNG) for every image of a data folder, offline.

The model is MediaPipe's pose-landmark model, whose segmentation output separates the person from
the background; it is read from the installed mediapipe wheel (never downloaded) and run with
ai-edge-litert. Install (the wheel for its model file only; its pins conflict with TensorFlow):
    pip install 'mtl-keras[masks]' && pip install --no-deps 'mediapipe==0.10.21'

The mask of DATA/<rel>/<name>.jpg is OUT/<rel>/<name>.png. Existing masks are kept (a stopped run
resumes) unless --overwrite. Train on them with --set data.person_mask=OUT.

Examples:
    mtl-masks --data data/market1501 --out data/market1501-masks
    mtl-masks --data data/market1501 --out masks --model pose_landmark_full.tflite --threads 4

From a checkout without installing: python scripts/masks.py (same flags).
"""

from __future__ import annotations

import argparse

from mtl.cli.common import new_parser, run_main
from mtl.errors import ConfigError


def parser() -> argparse.ArgumentParser:
    """The arguments of ``mtl-masks``."""
    p = new_parser("masks", __doc__)
    p.add_argument("--data", required=True, help="data folder (every image under it, recursively)")
    p.add_argument("--out", required=True, help="mask folder (the data folder's layout, .png files)")
    p.add_argument("--model", help="the segmentation .tflite file (default: the installed mediapipe's "
                                    "modules/pose_landmark/pose_landmark_full.tflite)")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    p.add_argument("--overwrite", action="store_true", help="recompute masks that exist")
    return p


def main(argv=None) -> int:
    """Write the masks as ``mtl-masks`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Raises:
        MtlError: bad input (folder, model, missing package); :func:`entry` prints it.
    """
    args = parser().parse_args(argv)
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    from mtl.data.masks import write_masks

    counts = write_masks(args.data, args.out, args.model, overwrite=args.overwrite, threads=args.threads)
    print(f"masks in {args.out}: {counts['written']} written, {counts['skipped']} kept, "
          f"{counts['unreadable']} unreadable image(s) skipped")
    return 0


def entry() -> None:
    """The console script ``mtl-masks``."""
    run_main(main)


if __name__ == "__main__":
    entry()
