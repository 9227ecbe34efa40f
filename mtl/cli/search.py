"""Search a gallery of images with a trained run: by attribute values, by an example image, or both.

--where ranks the gallery by the model's joint probability of the asked values (the product of
the per-task probabilities; task and class names from the run's tasks.json). --query IMAGE ranks
by appearance (the identity descriptor; needs a run with the identity task); both together rank
by  distance - weight * log(joint probability)  (smaller is better; --weight, default 0.05).

The gallery (files, folders searched recursively, .txt lists of paths) is extracted once and kept
in RUN/index/ (predictions.csv with every class probability, embeddings.npy, the embedding index);
a later search over the same images reuses it (--rebuild to extract again). Unreadable images are
skipped and named. --index picks the index: exact (numpy, default) or, with the index extra
(pip install 'mtl-keras[index]'), flat, ivf or hnsw (approximate, for millions of images).

Examples:
    mtl-search --run runs/joint --gallery ../shared/data/market1501-course/test --where "upcolor=red,backpack=yes"
    mtl-search --run runs/joint --gallery photos/ --query photos/0001.jpg --where gender=female --top 50 --out hits.csv

From a checkout without installing: python scripts/search.py (same flags).
"""

from __future__ import annotations

import argparse

from mtl.cli.common import new_parser, one_of, run_main

INDEX_CHOICES = ("exact", "flat", "ivf", "hnsw")  # mtl.reid.index.KINDS (not imported: --help stays light)


def parser() -> argparse.ArgumentParser:
    """The arguments of ``mtl-search``."""
    p = new_parser("search", __doc__)
    p.add_argument("--run", required=True, help="run directory written by mtl-train")
    p.add_argument("--gallery", required=True, nargs="+", metavar="PATH",
                   help="gallery images: files, folders (recursive) or .txt lists of paths")
    p.add_argument("--where", help='attribute values, e.g. "upcolor=red,backpack=yes" (names from the run\'s tasks)')
    p.add_argument("--query", metavar="IMAGE", help="example image: rank by appearance (identity runs)")
    p.add_argument("--top", type=int, default=20, help="results listed (default 20)")
    p.add_argument("--weight", type=float, help="attribute weight with --query and --where (default 0.05)")
    p.add_argument("--candidates", type=int,
                   help="appearance candidates re-scored with --where (default: all with the exact index, else 1000)")
    p.add_argument("--out", help="write the results to this CSV file")
    p.add_argument("--index", default="exact", choices=INDEX_CHOICES, metavar="KIND",
                   help=f"embedding index: {one_of(INDEX_CHOICES)} (default exact; others need faiss-cpu)")
    p.add_argument("--distance", default="cosine", choices=["cosine", "euclidean"], help="descriptor distance")
    p.add_argument("--rebuild", action="store_true", help="extract the gallery again even if RUN/index/ has it")
    p.add_argument("--batch-size", type=int, help="images per batch of feature extraction (default: the run's)")
    return p


def main(argv=None) -> int:
    """Search as ``mtl-search`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Raises:
        MtlError: bad input (run, gallery, --where, --query); :func:`entry` prints it as one line.
    """
    args = parser().parse_args(argv)
    from mtl.errors import ConfigError, DataError

    if not args.where and not args.query:
        raise ConfigError("nothing to search by: give --where task=value,... and/or --query IMAGE")
    if args.top < 1:
        raise ConfigError(f"--top must be >= 1, got {args.top}")
    from pathlib import Path

    from mtl.rundir import INDEX
    from mtl.runs import load_run

    run = load_run(args.run, model=False)
    from mtl import search as lib

    conditions = lib.parse_where(args.where, run.tasks) if args.where else []  # before any extraction
    if args.query and not Path(args.query).is_file():
        raise DataError(f"query image not found: {args.query}")
    if args.out:
        from mtl.io import ensure_writable

        ensure_writable(Path(args.out).parent if Path(args.out).parent != Path("") else Path("."))
    from mtl.data.images import list_images

    paths = list_images(args.gallery)
    folder = run.run_dir / INDEX
    gallery = None
    if not args.rebuild and (folder / "predictions.csv").is_file():
        try:
            gallery = lib.Gallery.load(folder, run.tasks)
        except DataError as exc:
            print(f"{folder}: not reused ({exc})", flush=True)
        if gallery is not None and not gallery.covers(paths):
            gallery = None
        if gallery is not None and gallery.index is not None and (gallery.index.kind, gallery.index.metric) != (
                args.index, args.distance):
            gallery = None
    cfg = run.config
    h, w, batch = cfg.data.image_height, cfg.data.image_width, args.batch_size or cfg.train.batch_size
    model = None
    if gallery is None:
        run = load_run(args.run)
        model = run.model
        print(f"extracting {len(paths)} gallery images into {folder} ...", flush=True)
        gallery = lib.build_gallery(model, run.tasks, paths, folder, h, w, batch, args.index, args.distance)
    else:
        print(f"gallery: {len(gallery.paths)} images from {folder} ({'no index' if gallery.index is None else gallery.index.kind})",
              flush=True)
    query = None
    if args.query:
        if gallery.index is None:
            raise ConfigError(f"--query needs a run with the identity task (its descriptor); {args.run} has none: "
                              "search with --where only")
        if model is None:
            model = load_run(args.run).model
        from mtl.inference import extract_features
        from mtl.reid.embedding import embedding_model

        query = extract_features(embedding_model(model), [args.query], h, w, 1, desc="query")["output"].reshape(1, -1)
    weight = lib.DEFAULT_WEIGHT if args.weight is None else args.weight
    table = lib.search(gallery, conditions, query, args.top, weight, args.candidates)
    import pandas as pd

    with pd.option_context("display.max_colwidth", 60, "display.width", 200, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False))
    if args.out:
        from mtl.io import atomic_path

        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        print(f"written: {args.out} ({len(table)} rows)")
    return 0


def entry() -> None:
    """The console script ``mtl-search``."""
    run_main(main)


if __name__ == "__main__":
    entry()
