#!/usr/bin/env python
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
    Its images are split into one query per identity and camera, the rest gallery. Where no identity
    is seen by two cameras (products: fashion, imaterialist) there is no re-identification: the
    images are evaluated for their attributes only.
Attribute metrics (per attribute accuracy, macro F1, per class P/R/F1, mA) are computed on the
same images (queries and gallery together).

Re-identification: the descriptor is the BN-neck output "embedding" of the identity head (the
pooled trunk features for a run without the identity task); distance cosine (default) or
euclidean; mAP, mINP, rank-1/5/10 and CMC without and with k-reciprocal re-ranking, and the
metrics of a random ranking ("chance"). --attr-weight / --attr-alpha add attribute-combined
distances (d_feat + w * d_attr and d_feat * (alpha + d_attr)) to measure whether attributes help.

Output: the key "evaluation" of RUN/metrics.json (the training metrics in the other keys are kept;
a previous "evaluation" is replaced, and the command says so), and --out FILE if given.

Examples:
    python scripts/evaluate.py --run runs/reid
    python scripts/evaluate.py --run runs/reid --data ../shared/data/market1501-course --rerank no
    python scripts/evaluate.py --run runs/joint --attr-weight 0.5 --attr-alpha 1.0
    python scripts/evaluate.py --run runs/products            # attributes of the held-out products
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mtl.cli import run_main  # noqa: E402
from mtl.errors import DataError  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory written by scripts/train.py")
    p.add_argument("--data", help="data folder to evaluate on (default: the folder the run was trained on)")
    p.add_argument("--format", default="auto",
                   help="data format: auto (default), market1501_course, market1501, fashion, imaterialist")
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
    p.add_argument("--no-attributes", action="store_true", help="skip the attribute metrics")
    p.add_argument("--out", help="also write the evaluation to this JSON file")
    return p


def _line(name: str, m: dict) -> str:
    return (f"  {name:28s} mAP {m['mAP']:.4f}  rank-1 {m['rank1']:.4f}  rank-5 {m['rank5']:.4f}  "
            f"rank-10 {m['rank10']:.4f}  mINP {m['mINP']:.4f}")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from mtl.data.sources import load_source
    from mtl.experiment import load_run
    from mtl.io import atomic_write_json
    from mtl.reid.protocol import evaluate_labelled, evaluation_images

    run_dir = Path(args.run)
    print(f"loading run {run_dir}", flush=True)
    run = load_run(run_dir)
    cfg = run.config
    root = Path(args.data) if args.data else run.data_root()
    source = load_source(root, args.format, rare_threshold=cfg.data.rare_threshold)
    seed = cfg.data.split_seed if args.seed is None else args.seed
    query, gallery, what = evaluation_images(source, run.split, run.data.get("root"), args.images, seed)
    attr_names = [t.name for t in run.tasks if t.kind != "identity"]
    missing = [n for n in attr_names if n not in source.tasks]
    if missing:
        raise DataError(f"{root} has no labels for the run's tasks {', '.join(missing)}")
    print(f"evaluating on {root}: {what}", flush=True)
    start = time.time()
    result = evaluate_labelled(run.model, run.tasks, query, gallery, cfg.data.image_height, cfg.data.image_width,
                               args.batch_size or cfg.train.batch_size, args.distance, args.rerank,
                               args.attr_weight, args.attr_alpha, attributes=not args.no_attributes)
    evaluation = {
        "data": str(source.root), "format": source.name, "images": what,
        "settings": {"images": args.images, "distance": args.distance, "rerank": args.rerank,
                     "attr_weight": args.attr_weight, "attr_alpha": args.attr_alpha, "seed": seed},
        **result, "time_s": round(time.time() - start, 1),
    }

    attributes = result.get("attributes")
    if attributes:
        width = max(map(len, attributes["tasks"]), default=0)
        for name, r in attributes["tasks"].items():
            if r.get("accuracy") is not None:
                print(f"  {name:{width}s}  accuracy {r['accuracy']:.3f}  macro-F1 {r['macro_f1']:.3f}")
        s = attributes["summary"]
        if s["mean_accuracy"] is not None:
            ma = f"  mA {s['mA']:.3f}" if s["mA"] is not None else ""
            print(f"attributes: mean accuracy {s['mean_accuracy']:.3f}{ma} on {attributes['num_images']} images")
    reid = result.get("reid")
    if reid is None:
        print("re-identification: skipped (no identity is seen by two cameras)")
    else:
        print(f"re-identification ({reid['feature_layer']} features, {reid['distance']} distance, "
              f"{reid['num_query']} queries, {reid['num_gallery']} gallery images):")
        for key in ("plain", "reranked", "attr_weighted", "attr_weighted_reranked", "attr_multiplicative",
                    "attr_multiplicative_reranked", "chance"):
            if key in reid:
                print(_line(key, reid[key]))
        for note in reid.get("notes", []):
            print(f"  note: {note}")

    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if "evaluation" in metrics:
        print(f"replacing the previous evaluation in {metrics_path} (data {metrics['evaluation'].get('data')}); "
              "training metrics are kept")
    metrics["evaluation"] = evaluation
    atomic_write_json(metrics_path, metrics)
    print(f"written: {metrics_path} (key 'evaluation')")
    if args.out:
        atomic_write_json(args.out, evaluation)
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
