"""Precision@10 of attribute search (mtl.search) on held-out Market-1501 identities.

Needs a trained run whose validation identities were held out of training, e.g.::

    mtl-train --data ../shared/data/market1501-course --tasks all --trunk resnet_small --epochs 3 \\
        --set data.val_identities=100 --out /tmp/runs/m3
    .venv/bin/python bench/bench_attribute_search.py --run /tmp/runs/m3

The gallery is every image of the run's validation split (``split.csv``: people the model never
trained on), labelled from ``annotations_train.csv`` through the run's class table
(``mtl.data.relabel.load_for_run``). For every combination of values of the chosen attributes
(``--attributes``, default ``gender,upcolor,backpack``) and for every single value, the query
``task=value,...`` ranks the gallery by the model's joint probability (``mtl.search.search``), and
precision@k is the share of the top ``k`` images whose labels have all the asked values. A query
counts when at least ``k`` gallery images have them (otherwise precision@k cannot reach 1); the
mean over those queries is printed next to the chance level (the share of relevant images in the
gallery, what a random ranking gets on average).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run trained with held-out validation identities")
    p.add_argument("--data", help="the run's data folder (default: data.json's)")
    p.add_argument("--attributes", default="gender,upcolor,backpack", help="attributes whose values are combined")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)

    from mtl.data.relabel import load_for_run
    from mtl.inference import extract_features
    from mtl.scoring import class_probabilities
    from mtl.reid.embedding import feature_model
    from mtl.runs import load_run
    from mtl.search import Condition, Gallery, attribute_tasks, search

    run = load_run(args.run)
    if run.split is None or not (run.split["split"] == "val").any():
        raise SystemExit(f"{args.run}: no validation split in split.csv (train with data.val_identities=100)")
    root = args.data or run.data_root()
    source, _ = load_for_run(root, run.data.get("format", "auto"), run.tasks)
    val_paths = set(run.split.loc[run.split["split"] == "val", "path"].astype(str))
    table = source.table[source.table["path"].astype(str).isin(val_paths)].reset_index(drop=True)
    specs = {t.name: t for t in attribute_tasks(run.tasks)}
    names = [n.strip() for n in args.attributes.split(",") if n.strip()]
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise SystemExit(f"unknown attributes {unknown}; the run has {', '.join(specs)}")
    cfg = run.config
    outputs = extract_features(feature_model(run.model, list(specs)), table["path"], cfg.data.image_height,
                               cfg.data.image_width, args.batch_size, desc="held-out images")
    gallery = Gallery(table["path"].astype(str).tolist(),
                      {n: class_probabilities(outputs[n], t) for n, t in specs.items()}, None)
    print(f"gallery: {len(table)} images of {table['identity'].nunique()} held-out identities; k = {args.k}")

    def evaluate(group):
        rows = []
        for values in itertools.product(*[range(specs[n].num_classes) for n in group]):
            conds = [Condition(n, specs[n].classes[v], v) for n, v in zip(group, values)]
            relevant = np.ones(len(table), bool)
            for c in conds:
                relevant &= table[c.task].to_numpy() == c.class_index
            if relevant.sum() < args.k:
                continue
            hits = search(gallery, conds, top=args.k)["path"].map(dict(zip(gallery.paths, relevant)))
            rows.append((",".join(c.label for c in conds), float(hits.mean()), float(relevant.mean())))
        return rows

    for group in [[n] for n in names] + [names]:
        rows = evaluate(group)
        if not rows:
            print(f"{'+'.join(group)}: no value combination with >= {args.k} images")
            continue
        prec, chance = np.mean([r[1] for r in rows]), np.mean([r[2] for r in rows])
        print(f"{'+'.join(group)}: {len(rows)} queries, mean precision@{args.k} {prec:.3f} (chance {chance:.3f})")
        for label, pk, ch in rows:
            print(f"    {label:50s} precision@{args.k} {pk:.2f}  chance {ch:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
