"""Write the course deliverables of a Market-1501 course-layout folder with a trained run.

  classification_test.csv  one row per test/ image (sorted): file_name, then the attribute columns
                           in the order and coding of annotations_train.csv (1/2, age 1-4, one-hot
                           1/2 colour columns plus upmulticolor / downmulticolor). Written when the
                           run predicts Market attributes; attributes the run lacks have no column
                           (the command lists them).
  reid_test.txt            one line per queries/ image (sorted): "000123.jpg: 004567.jpg, ...", the
                           test/ gallery ranked best first, --top images (default 100).

Retrieval uses the run's identity embedding (BN-neck output), or the pooled trunk features of a
run without the identity task. Features are extracted batch by batch with a progress bar: memory
is the descriptors plus one batch, and the distances are computed a block of queries at a time
(re-ranking, when asked, holds one queries x gallery matrix).

Examples:
    mtl-predict --run runs/reid --data ../shared/data/market1501-course
    mtl-predict --run runs/joint --out deliverables/ --top 50 --rerank

From a checkout without installing: python scripts/predict.py (same flags).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mtl.cli.common import new_parser, run_main
from mtl.errors import DataError


def parser() -> argparse.ArgumentParser:
    """The arguments of ``mtl-predict``."""
    p = new_parser("predict", __doc__)
    p.add_argument("--run", required=True, help="run directory written by mtl-train")
    p.add_argument("--data", help="course-layout folder with test/ and queries/ (default: the run's data folder)")
    p.add_argument("--out", help="folder for the deliverable files (default: the run directory)")
    p.add_argument("--top", type=int, default=100, help="gallery images listed per query (default 100)")
    p.add_argument("--distance", default="cosine", choices=["cosine", "euclidean"],
                   help="descriptor distance: cosine (default) or euclidean on the raw BN-neck output")
    p.add_argument("--rerank", action="store_true",
                   help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) of the whole test gallery")
    p.add_argument("--batch-size", type=int, help="images per batch of feature extraction (default: the run's)")
    return p


def main(argv=None) -> int:
    """Write the deliverables as ``mtl-predict`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Raises:
        MtlError: bad input (run, data folder, --top); :func:`entry` prints it as one line.
    """
    args = parser().parse_args(argv)
    if args.top < 1:
        raise DataError(f"--top must be >= 1, got {args.top}")
    import numpy as np

    from mtl.data.pipeline import drop_unreadable
    from mtl.data.relabel import load_for_run
    from mtl.deliverables import (CLASSIFICATION_FILE, COLOR_GROUPS, REID_FILE, SCALAR_COLUMNS, classification_frame,
                                  rank_gallery, top_k_rows, write_classification_csv, write_reid_txt)
    from mtl.rundir import load_run
    from mtl.metrics import class_probabilities
    from mtl.inference import extract_features
    from mtl.reid.embedding import embedding_layer_name, feature_model

    from mtl.io import ensure_writable, make_folder

    out = Path(args.out) if args.out else Path(args.run)
    ensure_writable(out)  # before hours of extraction
    run = load_run(args.run)
    cfg = run.config
    root = Path(args.data) if args.data else run.data_root()
    # the one reader of data for an existing run (labels, where read, follow the run's class table)
    source, _ = load_for_run(root, "market1501_course", run.tasks, require_labels=False)
    gallery = source.subset("test")
    queries = source.subset("query")
    if gallery.empty:
        raise DataError(f"{root}: no test/ images to predict")
    # a file the pipeline cannot decode would stop feature extraction: it is left out, and said so
    gallery, skipped_gallery = drop_unreadable(gallery)
    queries, skipped_queries = drop_unreadable(queries)
    for name, skipped in (("test/", skipped_gallery), ("queries/", skipped_queries)):
        if len(skipped):
            print(f"{name}: skipped {len(skipped)} image(s) the pipeline cannot decode (no row / line for them): "
                  + "; ".join(f"{p} ({r})" for p, r in zip(skipped["path"][:3], skipped["reason"][:3])), flush=True)
    if gallery.empty:
        raise DataError(f"{root}: no test/ image can be decoded")
    make_folder(out)
    h, w, batch = cfg.data.image_height, cfg.data.image_width, args.batch_size or cfg.train.batch_size
    deliverable = set(SCALAR_COLUMNS) | set(COLOR_GROUPS)
    attr_tasks = [t for t in run.tasks if t.name in deliverable]
    layer = embedding_layer_name(run.model)
    start = time.time()

    print(f"test/: {len(gallery)} images, queries/: {len(queries)} images; features: {layer}", flush=True)
    outputs = extract_features(feature_model(run.model, [layer] + [t.name for t in attr_tasks]), gallery["path"],
                               h, w, batch, desc="test/ images")
    if attr_tasks:
        predictions = {t.name: class_probabilities(outputs[t.name], t).argmax(1) for t in attr_tasks}
        frame = classification_frame(gallery["path"], predictions)
        write_classification_csv(out / CLASSIFICATION_FILE, frame)
        missing = sorted(deliverable - set(predictions))
        note = f" (the run does not predict {', '.join(missing)}: no columns for them)" if missing else ""
        print(f"written: {out / CLASSIFICATION_FILE} ({len(frame)} rows){note}", flush=True)
    else:
        print(f"the run predicts no Market attribute: {CLASSIFICATION_FILE} not written", flush=True)

    if queries.empty:
        print(f"{root}: no queries/ images: {REID_FILE} not written")
        return 0
    g_feat = outputs[layer].reshape(len(gallery), -1)
    del outputs
    q_feat = extract_features(feature_model(run.model, [layer]), queries["path"], h, w, batch,
                              desc="queries/ images")[layer].reshape(len(queries), -1)
    if args.rerank:
        from mtl.reid.protocol import RERANK_PARAMS
        from mtl.reid.rerank import re_ranking_features

        print("re-ranking (k-reciprocal) ...", flush=True)
        ranking = top_k_rows(re_ranking_features(q_feat, g_feat, metric=args.distance, **RERANK_PARAMS), args.top)
    else:
        ranking = rank_gallery(q_feat, g_feat, args.top, args.distance)
    write_reid_txt(out / REID_FILE, queries["path"], gallery["path"], ranking)
    print(f"written: {out / REID_FILE} ({len(queries)} queries x top {ranking.shape[1]}) "
          f"in {time.time() - start:.0f} s")
    return 0


def entry() -> None:
    """The console script ``mtl-predict``."""
    run_main(main)


if __name__ == "__main__":
    entry()
