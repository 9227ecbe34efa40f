"""Extraction: images/s of ``mtl.predictions.predict_images`` (what ``mtl-predict`` runs: decode,
resize, batched inference, predictions.csv and embeddings.npy written) over the Market-1501 course
``test/`` images vs a bare ``model.predict`` on the same images already decoded and resized in memory.

The model is an untrained full multi-task model (every Market attribute + identity; the speed does
not depend on the weights); both sides run the sub-model ``predict_images`` runs (the attribute
outputs and the embedding: ``mtl.reid.embedding.feature_model``). Target: package >= 0.9 x baseline.

    python bench/bench_extraction.py [--data DIR] [--limit N] [--json out.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import (DEFAULT_DATA, add_size_args, best, compare, finish, images_in, market_specs, rates_in_turn,
                     result, skipped)

NAME, TITLE = "extraction", "Extraction: predict_images vs bare model.predict (images/s)"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="Market-1501 course folder (its test/ is read)")
    p.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    p.add_argument("--batch-size", type=int, default=64)
    add_size_args(p)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", help="write the result record here")
    args = p.parse_args(argv)
    start = time.time()
    folder = Path(args.data) / "test"
    if not folder.is_dir():
        return finish(skipped(NAME, TITLE, f"no data folder {folder}"), start, args.json)
    paths = images_in(folder, args.limit)

    import numpy as np

    from mtl.inference import image_batches
    from mtl.models.builder import build_model
    from mtl.predictions import predict_images
    from mtl.reid.embedding import feature_model
    from mtl.reid.heads import EMBEDDING
    from mtl.tasks import attribute_tasks

    tasks = market_specs()
    h, w, b = args.height, args.width_px, args.batch_size
    model = build_model(tasks, input_shape=(h, w, 3), width=args.width)
    sub = feature_model(model, [t.name for t in attribute_tasks(tasks)] + [EMBEDDING])
    # the same preprocessed tensors: the package's own decode + resize, done once, in memory
    images = np.concatenate([x.numpy() for x in image_batches(paths, h, w, 256)])
    out = Path(tempfile.mkdtemp(prefix="bench_extraction_"))
    sub.predict(images[:b], batch_size=b, verbose=0)  # tracing
    predict_images(model, tasks, paths[:b], h, w, out, batch_size=b, log=None)
    runs = {"bare": lambda: sub.predict(images, batch_size=b, verbose=0),
            "package": lambda: predict_images(model, tasks, paths, h, w, out, batch_size=b, log=None)}
    record = result(NAME, TITLE, details={"images": len(paths), "folder": str(folder), "batch_size": b,
                                          "size": [h, w], "width": args.width})
    rates = rates_in_turn(runs, len(paths), args.repeats)
    record["details"]["rates"] = rates
    record["notes"] = ["the baseline is given the images decoded and resized; the package decodes them from disk "
                       "as it goes (tf.data, in parallel with the model) and writes the CSV and embeddings"]
    compare(record, ("model.predict on decoded tensors", best(rates, "bare")),
            ("predict_images from files", best(rates, "package")), "images/s", target=0.9)
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return finish(record, start, args.json)


if __name__ == "__main__":
    main()
