#!/usr/bin/env python
"""Train a multi-task model (shared trunk, one head per task).

Examples:
    python scripts/train.py --tasks age,color                  # embedded synthetic data
    python scripts/train.py --data ../shared/data/market1501-course --tasks all
    python scripts/train.py --config configs/market1501_cpu.yaml --set train.epochs=5
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mtl.cli import add_common_args, config_from_args, run_main  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--trunk", help="trunk name (see mtl.models.trunks.TRUNKS), e.g. resnet_small, efficientnet_lite0")
    p.add_argument("--weights", help="trunk weights: none, imagenet, or a local .weights.h5 file")
    p.add_argument("--head", choices=["public", "private"], help="public: shared hidden layers; private: per-task")
    p.add_argument("--epochs", type=int, help="maximum number of epochs (early stopping may end sooner)")
    p.add_argument("--batch-size", type=int, help="images per batch")
    p.add_argument("--out", help="run directory (default runs/<date>-<tasks>); rerun the same command into the same "
                   "--out to resume an interrupted run")
    p.add_argument("--overwrite", action="store_true",
                   help="train afresh into an --out that holds a finished run or one with another config")
    p.add_argument("--report", nargs="?", const="", default=None, metavar="OUT",
                   help="at the end, render the HTML report of the run (default reports/<run name>/index.html, "
                        "or OUT: an .html file or a folder); same as running scripts/report.py on the run")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    cfg = config_from_args(args, {"model": {"trunk": args.trunk, "weights": args.weights, "head": args.head},
                                  "train": {"epochs": args.epochs, "batch_size": args.batch_size}})
    out = Path(args.out or f"runs/{datetime.now():%Y%m%d-%H%M%S}-{cfg.tasks.replace(',', '-')}")
    from mtl.experiment import train

    metrics = train(cfg, out, overwrite=args.overwrite)
    summary = metrics["summary"]
    for name, r in metrics["tasks"].items():
        print(f"  {name:12s} accuracy {r['accuracy']:.3f}  macro-F1 {r['macro_f1']:.3f}  "
              f"(majority {r['majority_accuracy']:.3f})")
    if summary["mean_accuracy"] is not None:
        ma = f"  mA {summary['mA']:.3f}" if summary["mA"] is not None else ""
        print(f"mean accuracy {summary['mean_accuracy']:.3f}{ma}")
    reid = metrics.get("reid", {})
    if "plain" in reid:
        reranked = f", re-ranked mAP {reid['reranked']['mAP']:.3f}" if "reranked" in reid else ""
        print(f"re-identification on the validation people: mAP {reid['plain']['mAP']:.3f}  "
              f"rank-1 {reid['plain']['rank1']:.3f}{reranked}  (random ranking: mAP {reid['chance']['mAP']:.3f})")
    if args.report is None:
        print(f"run written to {out}  (report: python scripts/report.py {out})")
    else:
        from mtl.report import render_report

        print(f"run written to {out}", flush=True)
        report = render_report(out, args.report or None, quiet=False)
        print(f"report: {report}  (open file://{report.resolve()} in a browser)")
    return 0


if __name__ == "__main__":
    run_main(main)
