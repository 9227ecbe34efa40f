"""Input pipeline: decode + resize + augment throughput of ``mtl.data.pipeline.make_dataset`` vs a bare
parallel ``tf.io.decode_jpeg`` loop over the same files (the ceiling).

* baseline: ``Dataset.from_tensor_slices(paths).map(read_file + decode_jpeg, AUTOTUNE)``, batched;
* package: ``make_dataset(paths, labels, H, W, batch, training=True, augment=<config defaults>,
  cache=False)``: shuffle, decode, resize, flip, pad-crop, colour jitter, random erasing, batch.

Both read every file once per pass; a first untimed pass warms the page cache. The two are timed in
turn (``--repeats`` rounds, best of each: the machine is shared). Target: package >= 0.9 x baseline.

    python bench/bench_pipeline.py [--data DIR] [--limit N] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

from _common import DEFAULT_DATA, add_size_args, best, compare, finish, images_in, rates_in_turn, result, skipped

NAME, TITLE = "input_pipeline", "Input pipeline: decode + resize + augment (images/s)"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="Market-1501 course folder (its train/ is read)")
    p.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    p.add_argument("--batch-size", type=int, default=64)
    add_size_args(p, trunk_width=False)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="write the result record here")
    args = p.parse_args(argv)
    start = time.time()
    from pathlib import Path

    folder = Path(args.data) / "train"
    if not folder.is_dir():
        return finish(skipped(NAME, TITLE, f"no data folder {folder}"), start, args.json)
    paths = images_in(folder, args.limit)
    if not paths:
        return finish(skipped(NAME, TITLE, f"no .jpg images in {folder}"), start, args.json)

    import numpy as np
    import tensorflow as tf

    from mtl.config import AugmentConfig
    from mtl.data.pipeline import make_dataset

    record = result(NAME, TITLE, details={"images": len(paths), "folder": str(folder), "batch_size": args.batch_size,
                                          "size": [args.height, args.width_px]})
    aug = AugmentConfig()
    augment = {"flip": aug.flip, "pad_crop": aug.pad_crop, "color_jitter": aug.color_jitter,
               "random_erasing": aug.random_erasing}
    labels = {"gender": np.zeros(len(paths), np.int32)}

    def bare():
        ds = tf.data.Dataset.from_tensor_slices(paths)
        ds = ds.map(lambda p: tf.io.decode_jpeg(tf.io.read_file(p), channels=3), num_parallel_calls=tf.data.AUTOTUNE)
        # ragged: any image size; the batch is what a consumer would take
        ds = ds.ragged_batch(args.batch_size).prefetch(tf.data.AUTOTUNE)
        for _ in ds:
            pass

    def package():
        ds = make_dataset(paths, labels, args.height, args.width_px, args.batch_size, training=True, augment=augment,
                          cache=False, seed=0)
        for _ in ds:
            pass

    def decode_resize():  # the package's decode + resize alone: where the time goes
        for _ in make_dataset(paths, labels, args.height, args.width_px, args.batch_size, training=False, cache=False):
            pass

    bare()  # page cache, tf.data warm-up
    rates = rates_in_turn({"bare": bare, "package": package, "decode_resize": decode_resize}, len(paths),
                          args.repeats)
    record["details"].update(rates=rates, augment=augment,
                             cpu_ratio=round(best(rates, "package", "cpu") / best(rates, "bare", "cpu"), 4),
                             decode_resize_ratio=round(best(rates, "decode_resize") / best(rates, "bare"), 4))
    record["notes"] = [f"images per CPU second (the work done, whatever the load): bare {best(rates, 'bare', 'cpu'):,.0f}, "
                       f"package {best(rates, 'package', 'cpu'):,.0f} (ratio {record['details']['cpu_ratio']:.2f})",
                       f"decode + resize alone (make_dataset training=False): {best(rates, 'decode_resize'):,.0f} "
                       f"images/s, ratio {record['details']['decode_resize_ratio']:.2f}: the gap is the augmentation"]
    compare(record, ("parallel tf.io.decode_jpeg", best(rates, "bare")),
            ("make_dataset training=True, cache off", best(rates, "package")), "images/s", target=0.9)
    print("\n".join(record["notes"]))
    return finish(record, start, args.json)


if __name__ == "__main__":
    main()
