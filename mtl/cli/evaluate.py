"""Evaluate a trained run on labelled data: attribute metrics and re-identification metrics.

Which images are evaluated:
  * original Market-1501 layout (query/, bounding_box_test/): query/ against bounding_box_test/
    (junk boxes dropped, distractors kept in the gallery);
  * a labelled folder (course layout train/ + annotations_train.csv), chosen by --images:
      auto    (default) the run's validation identities (split.csv) when DIR is the folder the run
              was trained on, else every labelled identity the run did not train on;
      val     the run's validation identities (split.csv);
      unseen  every labelled image whose identity was not a training identity of the run;
      all     every labelled image (a folder of new people).
    Its images are split into one query per identity and camera, the rest gallery. Products (fashion,
    imaterialist) have no camera views, and people seen by one camera only form no query: there is
    no re-identification then, the images are evaluated for their attributes only.
Attribute metrics (per attribute accuracy, macro F1, per class P/R/F1, mA, and the instance-based
accuracy / precision / recall / F1 of the PAR literature, mtl.scoring.instance_metrics) are
computed on the same images (queries and gallery together), for every task of the run or those of
--tasks.

Labels are those of the run's class table (tasks.json), matched by class name: another folder
(or another part of the same collection) orders and groups its classes otherwise. A value the
run has no class for counts as the run's "other" class when it has one, else as unknown (left
out of the metrics); the command prints how many rows per task. Images the pipeline cannot
decode are skipped, counted and named (the "skipped_images" of the evaluation).

Before computing anything the command checks that the run's metrics.json can be read and that
the run folder (and --out) can be written, so a long evaluation is never lost at the end.

Re-identification: the descriptor is the BN-neck output "embedding" of the identity head (the
pooled trunk features for a run without the identity task); distance cosine (default) or
euclidean; mAP, mINP, rank-1/5/10 and CMC without and with k-reciprocal re-ranking, and the
metrics of a random ranking ("chance"). --attr-weight / --attr-alpha add attribute-combined
distances (d_feat + w * d_attr and d_feat * (alpha + d_attr)) to measure whether attributes help.

A run trained with data.junk_fraction > 0 (an auxiliary junk class) ranks only the gallery images
it does not predict junk: P(junk) above --junk-threshold (default 0.5) are left out, and the
command prints how many.

Retrieval examples: with a ranking, RUN/reid_examples.json gets --examples queries (default 9),
chosen from the best to the worst average precision (best, median and worst among them), each with
its top 10 gallery images; mtl-report shows them (--queries N).

Output: the key "evaluation" of RUN/metrics.json (the training metrics in the other keys are kept;
a previous "evaluation" is replaced, and the command says so), RUN/reid_examples.json, and --out
FILE if given.

Examples:
    mtl-evaluate --run runs/reid
    mtl-evaluate --run runs/reid --data ../shared/data/market1501-course --rerank no
    mtl-evaluate --run runs/joint --attr-weight 0.5 --attr-alpha 1.0
    mtl-evaluate --run runs/products            # attributes of the held-out products

From a checkout without installing: python scripts/evaluate.py (same flags).
"""

from __future__ import annotations

import argparse

from mtl.cli.common import check_junk_threshold, new_parser, one_of, run_main
from mtl.config import valid_values
from mtl.errors import ConfigError

EXAMPLE_QUERIES = 9  # mtl.reid.protocol.EXAMPLE_QUERIES, without importing the numerical stack for --help


def parser() -> argparse.ArgumentParser:
    """The arguments of ``mtl-evaluate``."""
    p = new_parser("evaluate", __doc__)
    p.add_argument("--run", required=True, help="run directory written by mtl-train")
    p.add_argument("--data", help="data folder to evaluate on (default: the folder the run was trained on)")
    p.add_argument("--format", default="auto", metavar="FORMAT",
                   help=f"data format: {one_of(valid_values('data.format'))} (default auto: detected from the "
                        "folder's layout)")
    p.add_argument("--images", default="auto", choices=["auto", "val", "unseen", "all"],
                   help="which labelled images of a course-layout folder are evaluated (see above; default auto)")
    p.add_argument("--distance", default="cosine", choices=["cosine", "euclidean"],
                   help="descriptor distance: cosine (default) or euclidean on the raw BN-neck output")
    p.add_argument("--rerank", default="auto", choices=["auto", "yes", "no"],
                   help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3): auto (default) re-ranks the plain "
                        "distance always and the attribute-combined ones up to 8000 images; yes: always; no: never")
    p.add_argument("--attr-weight", type=float, metavar="W",
                   help="also rank with d_feat + W * d_attr (attribute distance; needs attribute tasks)")
    p.add_argument("--attr-alpha", type=float, metavar="ALPHA",
                   help="also rank with d_feat * (ALPHA + d_attr) (needs attribute tasks)")
    p.add_argument("--seed", type=int, help="seed of the query/gallery split of a labelled folder "
                                            "(default: the run's data.split_seed)")
    p.add_argument("--batch-size", type=int, help="images per batch of feature extraction (default: the run's)")
    p.add_argument("--tasks", help="comma-separated tasks of the run to evaluate (default: all of the run's tasks)")
    p.add_argument("--no-attributes", action="store_true", help="skip the attribute metrics")
    p.add_argument("--examples", type=int, default=EXAMPLE_QUERIES, metavar="N",
                   help=f"ranked retrieval examples written to RUN/reid_examples.json for the report: N queries "
                        f"from best to worst AP (default {EXAMPLE_QUERIES}; 0: none)")
    p.add_argument("--out", help="also write the evaluation to this JSON file")
    p.add_argument("--junk-threshold", type=float, metavar="P",
                   help="a run trained with data.junk_fraction > 0: gallery images it predicts junk with "
                        "P(junk) above this are left out of the ranking (default 0.5; 1: none left out)")
    p.add_argument("--masks", metavar="DIR",
                   help="a run trained with data.person_mask: the person masks of --data (mtl-masks --data DATA "
                        "--out DIR; default: the run's data.person_mask)")
    return p


def main(argv=None) -> int:
    """Evaluate as ``mtl-evaluate`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Raises:
        MtlError: bad input (run, data, --tasks, unwritable output); :func:`entry` prints it as one line.
    """
    args = parser().parse_args(argv)
    if args.examples < 0:
        raise ConfigError(f"--examples {args.examples}: give 0 (no retrieval examples) or more")
    check_junk_threshold(args.junk_threshold)
    from mtl.evaluation import evaluate_run

    # prints the data, the results and the files written (a long evaluation: each line at once)
    evaluate_run(args.run, data=args.data, format=args.format, images=args.images, distance=args.distance,
                 rerank=args.rerank, attr_weight=args.attr_weight, attr_alpha=args.attr_alpha, seed=args.seed,
                 batch_size=args.batch_size, tasks=args.tasks, attributes=not args.no_attributes,
                 examples=args.examples, out=args.out, junk_threshold=args.junk_threshold, masks=args.masks,
                 log=lambda line: print(line, flush=True))
    return 0


def entry() -> None:
    """The console script ``mtl-evaluate``."""
    run_main(main)


if __name__ == "__main__":
    entry()
