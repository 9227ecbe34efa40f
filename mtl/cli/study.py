"""Task-set study: train the main task alone, then with each auxiliary task (and optionally all of
them), with the same recipe, seed and train/validation split, and compare the main task.

Writes, in --out: one run folder per task set and seed (<set>/seed<k>/, ordinary training runs:
report them with mtl-report), study.csv (per task set: the main task's validation loss at
the kept epoch, its lowest validation loss, accuracy, macro F1, and each one's difference to the
main task alone), study_runs.csv (the same per run) and study.json. Rerunning the same command
reuses finished runs and resumes an interrupted one.

Examples:
    mtl-study --data ../shared/data/fashion-product-small --main articleType \\
        --aux baseColour,gender,season,usage --all --set data.image_height=80 --set data.image_width=60 \\
        --epochs 8 --out runs/study-fashion
    mtl-study --main age --aux gender,color --epochs 2 --out runs/study-demo

From a checkout without installing: python scripts/study.py (same flags).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mtl.cli.common import (add_common_args, command_line, config_from_args, new_parser, one_of, require, run_main,
                            show_info)
from mtl.config import valid_values
from mtl.errors import ConfigError


def parser() -> argparse.ArgumentParser:
    """The arguments of ``mtl-study``."""
    p = new_parser("study", __doc__)
    add_common_args(p)  # --tasks is ignored: the study picks the tasks of each set
    p.add_argument("--main", help="the main task (a name or an alias of one task, e.g. articleType; required)")
    p.add_argument("--aux",
                   help="required: comma-separated auxiliary tasks, each added to the main task on its own "
                        "(an alias such as colour counts as one)")
    p.add_argument("--all", action="store_true", help="also train the main task with every auxiliary task together")
    p.add_argument("--seeds", help="comma-separated training seeds (default: train.seed); several give a mean and spread")
    p.add_argument("--epochs", type=int, help="maximum epochs of each training (early stopping may end it sooner)")
    p.add_argument("--trunk", metavar="NAME", help=f"trunk: {one_of(valid_values('model.trunk'))} "
                                                        "(default resnet_small)")
    p.add_argument("--weights", help="trunk weights: none, imagenet, or a local .weights.h5 file")
    p.add_argument("--out", help="output folder of the study (required)")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain run folders of --out that were trained with another recipe (otherwise an error)")
    return p


def main(argv=None) -> int:
    """Run the study as ``mtl-study`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Raises:
        MtlError: bad input (config, tasks, --seeds, --out in use); :func:`entry` prints it as one line.
    """
    p = parser()
    args = p.parse_args(argv)
    cfg = config_from_args(args, {"model": {"trunk": args.trunk, "weights": args.weights},
                                  "train": {"epochs": args.epochs}})
    if show_info(args, cfg):
        return 0
    require(p, args, "main", "aux", "out")  # not argparse's required=True: --show-config needs none of them
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else None
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers, got {args.seeds!r}") from None
    from mtl.study import format_table, run_study

    command = command_line("study", argv)
    report = run_study(cfg, args.main, [a for a in args.aux.split(",") if a.strip()], args.out,
                       include_all=args.all, seeds=seeds, overwrite=args.overwrite, command=command,
                       progress=lambda line: print(line, flush=True))
    print(format_table(report["sets"], report["main"]))
    print(f"written: {Path(args.out) / 'study.csv'}, {Path(args.out) / 'study.json'}")
    return 0


def entry() -> None:
    """The console script ``mtl-study``."""
    run_main(main)


if __name__ == "__main__":
    entry()
