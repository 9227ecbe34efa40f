"""Predict with a trained run: on any images (--images), or the course deliverables (--data).

Any images (pedestrian and product runs alike):

  mtl-predict --run R --images PATH [PATH ...] [--out DIR] [--probabilities]

  PATH is an image file, a folder (searched recursively for .jpg .jpeg .png .bmp .gif; hidden
  names left out) or a .txt file of paths, one per line (relative paths: from the list's folder).
  Written into --out (default: R/predictions/):
    predictions.csv      one row per image, in the order listed: path, then per attribute task
                         <task> (the predicted class name) and <task>_prob (its probability);
                         with --probabilities also <task>=<class> for every class
    embeddings.npy       with the identity task: float32 (rows, D), L2-normalised descriptors;
                         row i is data row i of predictions.csv
    skipped_images.csv   images that cannot be read or decoded (path, reason); they have no row
  Images go through the model 4,096 at a time: memory stays bounded for millions of paths.

Course deliverables of a Market-1501 course-layout folder (only test/ and queries/ are needed):

  classification_test.csv  one row per test/ image (sorted): file_name, then the attribute columns
                           in the order and coding of annotations_train.csv (1/2, age 1-4, one-hot
                           1/2 colour columns plus upmulticolor / downmulticolor). Written when the
                           run predicts Market attributes; attributes the run lacks have no column
                           (the command lists them). A test/ image the pipeline cannot decode still
                           gets its row (graders expect one per file), predicted as the class the
                           model predicts most often over the other test/ images; the command says so.
  reid_test.txt            one line per queries/ image (sorted): "000123.jpg: 004567.jpg, ...", the
                           test/ gallery ranked best first, --top images (default 100). Images that
                           cannot be decoded are left out of the rankings (and a query gets no line).
                           --reid-threshold makes the lines variable-length: every
                           test/ image at distance <= the threshold, best first, at least the nearest
                           one, at most --top; auto: the threshold the run chose on its held-out people
                           (metrics.json reid.threshold, with its cross-validated F1).
                           A run trained with data.junk_fraction > 0 leaves out of the gallery the test/
                           images it predicts junk (P(junk) > --junk-threshold, default 0.5; report
                           003); the command prints how many.
  A run trained with data.person_mask (a 4th input channel) reads the masks of test/ and queries/
  from its data.person_mask folder, or --masks DIR for another --data (mtl-masks --data DATA --out
  DIR writes them); --images refuses such a run (no masks for arbitrary files yet).
  Written into --out (default: the run directory). Retrieval uses the run's identity embedding
  (BN-neck output), or the pooled trunk features of a run without the identity task; distances are
  computed a block of queries at a time (re-ranking, when asked, holds one queries x gallery matrix).

Examples:
    mtl-predict --run runs/joint --images photos/ more.jpg --out predictions/
    mtl-predict --run runs/products --images list.txt --probabilities
    mtl-predict --run runs/reid --data ../shared/data/market1501-course
    mtl-predict --run runs/joint --out deliverables/ --top 50 --rerank
    mtl-predict --run runs/reid --reid-threshold auto

From a checkout without installing: python scripts/predict.py (same flags).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from mtl.cli.common import check_junk_threshold, new_parser, run_main
from mtl.errors import DataError

DEFAULT_TOP = 100


def parser() -> argparse.ArgumentParser:
    """The arguments of ``mtl-predict``."""
    p = new_parser("predict", __doc__)
    p.add_argument("--run", required=True, help="run directory written by mtl-train")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--images", nargs="+", metavar="PATH",
                        help="image files, folders (recursive) or .txt lists of paths: writes predictions.csv")
    source.add_argument("--data", help="course-layout folder with test/ and queries/: writes the course deliverables "
                                       "(default, without --images: the run's data folder)")
    p.add_argument("--out", help="output folder (default: RUN/predictions/ with --images, the run directory for the "
                                 "deliverables)")
    p.add_argument("--probabilities", action="store_true",
                   help="with --images: also one column per class, <task>=<class>")
    p.add_argument("--top", type=int, help=f"deliverables: gallery images listed per query (default {DEFAULT_TOP})")
    p.add_argument("--distance", choices=["cosine", "euclidean"],
                   help="deliverables: descriptor distance, cosine (default) or euclidean on the raw BN-neck output")
    p.add_argument("--rerank", action="store_true",
                   help="deliverables: k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) of the whole test gallery")
    p.add_argument("--batch-size", type=int, help="images per batch of inference (default: the run's)")
    p.add_argument("--reid-threshold", default="none", metavar="auto|DISTANCE|none",
                   help="deliverables: list every test/ image at distance <= this per query (best first, at least "
                        "the nearest one, at most --top); auto: the threshold the run chose on its held-out people "
                        "to maximise F1 (metrics.json reid.threshold); none (default): the fixed --top images")
    p.add_argument("--junk-threshold", type=float,
                   help="deliverables, a run with the junk output (data.junk_fraction > 0): test/ images with "
                        "P(junk) above this are left out of reid_test.txt (default 0.5)")
    p.add_argument("--masks", metavar="DIR",
                   help="deliverables, a run trained with data.person_mask: the person masks of --data (mtl-masks "
                        "--data DATA --out DIR; default: the run's data.person_mask)")
    return p


def main(argv=None) -> int:
    """Predict as ``mtl-predict`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Raises:
        MtlError: bad input (run, images, data folder, flags); :func:`entry` prints it as one line.
    """
    args = parser().parse_args(argv)
    if args.top is not None and args.top < 1:
        raise DataError(f"--top must be >= 1, got {args.top}")
    if args.batch_size is not None and args.batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {args.batch_size}")
    args.reid_threshold = parse_reid_threshold(args.reid_threshold)
    check_junk_threshold(args.junk_threshold)
    if args.images:
        given = [flag for flag, value in (("--top", args.top), ("--distance", args.distance),
                                          ("--rerank", args.rerank),
                                          ("--reid-threshold", args.reid_threshold is not None),
                                          ("--junk-threshold", args.junk_threshold is not None),
                                          ("--masks", args.masks)) if value]
        if given:
            raise DataError(f"{', '.join(given)}: only for the course deliverables (--data), not with --images")
        return predict_any_images(args)
    if args.probabilities:
        raise DataError("--probabilities goes with --images (the deliverables have fixed columns)")
    from mtl.deliverables import write_deliverables

    # prints the images read, each file written and its shape
    write_deliverables(args.run, data=args.data, out=args.out, top=args.top or DEFAULT_TOP, distance=args.distance,
                       rerank=args.rerank, reid_threshold=args.reid_threshold, batch_size=args.batch_size,
                       junk_threshold=args.junk_threshold, masks=args.masks, log=lambda line: print(line, flush=True))
    return 0


def predict_any_images(args: argparse.Namespace) -> int:
    """``--images``: ``predictions.csv`` (and ``embeddings.npy``) for the images named."""
    from mtl.data.images import list_images
    from mtl.io import ensure_writable
    from mtl.rundir import PREDICTIONS_DIR
    from mtl.runs import load_run

    paths = list_images(args.images)  # a typo fails here, before the model is loaded
    out = Path(args.out) if args.out else Path(args.run) / PREDICTIONS_DIR
    run = load_run(args.run, model=False)  # a folder that is not a run: one line, before any work
    ensure_writable(out)
    from mtl.models.builder import load_model
    from mtl.predictions import predict_images

    cfg = run.config
    if cfg.data.person_mask:  # predict_images has no mask input yet: a clear refusal, not a shape error
        raise DataError(f"--images: the run {args.run} takes a person mask as a 4th input channel "
                        "(data.person_mask); predicting on any images with it is not supported: use the "
                        "deliverables (--data, masks written by mtl-masks)")
    start = time.time()
    print(f"{len(paths)} image(s) to predict with {run.run_dir}", flush=True)
    result = predict_images(load_model(args.run), run.tasks, paths, cfg.data.image_height,
                            cfg.data.image_width, out, batch_size=args.batch_size or cfg.train.batch_size,
                            probabilities=args.probabilities, log=lambda line: print(line, flush=True))
    print(f"written: {result.csv} ({result.rows} rows)", flush=True)
    if result.embeddings is not None:
        print(f"written: {result.embeddings} (row i = row i of {result.csv.name})", flush=True)
    print(f"done in {time.time() - start:.0f} s", flush=True)
    return 0


def parse_reid_threshold(text: str) -> str | float | None:
    """``--reid-threshold``: ``none`` -> None, ``auto`` -> ``"auto"``, a finite number -> float.

    Raises:
        DataError: anything else (names the value and the valid ones).
    """
    value = str(text).strip().lower()
    if value in ("none", "auto"):
        return None if value == "none" else "auto"
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise DataError(f"--reid-threshold {text!r}: expected auto, none or a distance (a finite number)")
    return number


def entry() -> None:
    """The console script ``mtl-predict``."""
    run_main(main)


if __name__ == "__main__":
    entry()
