#!/usr/bin/env python
"""Task-set study: train the main task alone, then with each auxiliary task (and optionally all of
them), with the same recipe, seed and train/validation split, and compare the main task.

Writes, in --out: one run folder per task set and seed (<set>/seed<k>/, ordinary training runs:
report them with scripts/report.py), study.csv (per task set: the main task's validation loss at
the kept epoch, its lowest validation loss, accuracy, macro F1, and each one's difference to the
main task alone), study_runs.csv (the same per run) and study.json. Rerunning the same command
reuses finished runs and resumes an interrupted one.

Examples:
    python scripts/study.py --data ../shared/data/fashion-product-small --main articleType \\
        --aux baseColour,gender,season,usage --all --set data.image_height=80 --set data.image_width=60 \\
        --epochs 8 --out runs/study-fashion
    python scripts/study.py --tasks ignored --main age --aux gender,color --epochs 2 --out runs/study-demo
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mtl.cli import add_common_args, config_from_args, run_main  # noqa: E402
from mtl.errors import ConfigError  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)  # --tasks is ignored: the study picks the tasks of each set
    p.add_argument("--main", required=True, help="the main task (a name or an alias of one task, e.g. articleType)")
    p.add_argument("--aux", required=True,
                   help="comma-separated auxiliary tasks, each added to the main task on its own "
                        "(an alias such as colour counts as one)")
    p.add_argument("--all", action="store_true", help="also train the main task with every auxiliary task together")
    p.add_argument("--seeds", help="comma-separated training seeds (default: train.seed); several give a mean and spread")
    p.add_argument("--epochs", type=int, help="maximum epochs of each training (early stopping may end it sooner)")
    p.add_argument("--trunk", help="trunk name, e.g. resnet_small, efficientnet_lite0")
    p.add_argument("--weights", help="trunk weights: none, imagenet, or a local .weights.h5 file")
    p.add_argument("--out", required=True, help="output folder of the study")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain run folders of --out that were trained with another recipe (otherwise an error)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    cfg = config_from_args(args, {"model": {"trunk": args.trunk, "weights": args.weights},
                                  "train": {"epochs": args.epochs}})
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else None
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers, got {args.seeds!r}") from None
    from mtl.study import format_table, run_study

    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["scripts/study.py", *argv])
    report = run_study(cfg, args.main, [a for a in args.aux.split(",") if a.strip()], args.out,
                       include_all=args.all, seeds=seeds, overwrite=args.overwrite, command=command,
                       progress=lambda line: print(line, flush=True))
    print(format_table(report["sets"], report["main"]))
    print(f"written: {Path(args.out) / 'study.csv'}, {Path(args.out) / 'study.json'}")
    return 0


if __name__ == "__main__":
    run_main(main)
