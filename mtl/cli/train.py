"""Train a multi-task model (shared trunk, one head per task) into a run folder.

The run folder gets the model (model.keras), its config (config.yaml, reloads unchanged), tasks,
data split, training history and validation metrics; rerun the same command into the same --out
to resume an interrupted run. Values: defaults <- --config YAML <- flags <- --set.

Examples:
    mtl-train --tasks age,color                                 # embedded synthetic data
    mtl-train --data ../shared/data/market1501-course --tasks all --out runs/market
    mtl-train --config configs/market1501_cpu.yaml --set train.epochs=5
    mtl-train --trunk efficientnet_lite0 --weights imagenet --head public --tasks all --report
    mtl-train --tasks help --data DIR                           # the tasks of a dataset
    mtl-train --show-config                                     # every config key: type, default, meaning

From a checkout without installing: python scripts/train.py (same flags).
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from mtl.cli.common import add_common_args, command_line, config_from_args, new_parser, one_of, run_main, show_info
from mtl.config import valid_values


def parser() -> argparse.ArgumentParser:
    """The arguments of ``mtl-train``."""
    p = new_parser("train", __doc__)
    add_common_args(p)
    p.add_argument("--trunk", metavar="NAME", help=f"trunk: {one_of(valid_values('model.trunk'))} "
                                                        "(default resnet_small)")
    p.add_argument("--weights", help="trunk weights: none, imagenet, or a local .weights.h5 file")
    p.add_argument("--head", choices=valid_values("model.head"),
                   help="private (default): hidden layers per task; public: hidden layers shared by the tasks")
    p.add_argument("--epochs", type=int, help="maximum number of epochs (early stopping may end sooner)")
    p.add_argument("--batch-size", type=int, help="images per batch")
    p.add_argument("--out", help="run directory (default runs/<date>-<tasks>); rerun the same command into the same "
                   "--out to resume an interrupted run")
    p.add_argument("--overwrite", action="store_true",
                   help="train afresh into an --out that holds a finished run or one with another config")
    p.add_argument("--report", nargs="?", const="", default=None, metavar="OUT",
                   help="at the end, render the HTML report of the run (default reports/<run name>/index.html, "
                        "or OUT: an .html file or a folder); same as running mtl-report on the run")
    p.add_argument("--verbose", action="store_true",
                   help="also print Keras's line of every metric each epoch (default: one compact line per epoch)")
    return p


def main(argv=None) -> int:
    """Train as ``mtl-train`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Raises:
        MtlError: bad input (config, data, --out); :func:`entry` prints it as one line.
    """
    args = parser().parse_args(argv)
    cfg = config_from_args(args, {"model": {"trunk": args.trunk, "weights": args.weights, "head": args.head},
                                  "train": {"epochs": args.epochs, "batch_size": args.batch_size}})
    if show_info(args, cfg):
        return 0
    out = Path(args.out or f"runs/{datetime.now():%Y%m%d-%H%M%S}-{cfg.tasks.replace(',', '-')}")
    from mtl.experiment import train

    # prints the data, tasks, model, one line per epoch, the epoch kept and the validation results
    train(cfg, out, command=command_line("train", argv), overwrite=args.overwrite, verbose=args.verbose)
    curves = f"; curves: tensorboard --logdir {out}" if cfg.train.tensorboard else ""
    if args.report is None:
        print(f"run written to {out}  (report: mtl-report {out}{curves})")
    else:
        from mtl.report import render_report

        print(f"run written to {out}", flush=True)
        report = render_report(out, args.report or None, quiet=False)
        print(f"report: {report}  (open file://{report.resolve()} in a browser)")
    return 0


def entry() -> None:
    """The console script ``mtl-train``."""
    run_main(main)


if __name__ == "__main__":
    entry()
