"""Search task heads, loss weights and optimiser settings with keras-tuner.

Every trial builds its model with the same builder and recipe as mtl-train. The output
folder gets trials.csv (one row per trial: hyperparameters, objective, seconds), best_config.yaml
(train it with `mtl-train --config OUT/best_config.yaml`), tuning.json (summary)
and keras-tuner's own state in OUT/tuner/.

Objectives (--objective): a validation metric keras logs, named in full (val_age_accuracy) or
short (age.accuracy, age.xent, masked_loss, loss); a mean of several (age.accuracy,gender.accuracy
or mean(age.accuracy,gender.accuracy)); or a metric computed after each trial: mA (binary
attributes), <task>.f1 (macro F1), mean_accuracy, mean_macro_f1, reid_mAP (identity task).
The direction is inferred: losses are minimised, everything else maximised.

Search space: see docs/tuning.md; a `tune.space` section of the --config YAML narrows or fixes it
(example: configs/tune_market.yaml).

Distributed: set KERASTUNER_TUNER_ID (chief / worker0 / worker1 ...), KERASTUNER_ORACLE_IP and
KERASTUNER_ORACLE_PORT and run the same command in every process (docs/tuning.md).

Examples:
    mtl-tune --tasks age,gender --max-trials 4 --objective age.accuracy --out runs/tune-demo
    mtl-tune --config configs/tune_market.yaml --data ../shared/data/market1501-course \\
        --tuner bayesian --max-trials 6 --objective mA --out runs/tune-market

From a checkout without installing: python scripts/tune.py (same flags).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mtl.cli.common import (add_common_args, command_line, config_from_args, new_parser, one_of, require, run_main,
                            show_info)
from mtl.config import valid_values


def parser() -> argparse.ArgumentParser:
    """The arguments of ``mtl-tune``."""
    p = new_parser("tune", __doc__)
    add_common_args(p)
    tuners = valid_values("tune.tuner")
    p.add_argument("--tuner", choices=tuners,
                   help=f"search strategy: {one_of(tuners)} (default: tune.tuner of the config, bayesian)")
    p.add_argument("--max-trials", type=int,
                   help="total number of trials, those of a resumed search included (default: tune.max_trials, 10)")
    p.add_argument("--objective",
                   help="what to optimise, e.g. age.accuracy, 'age.accuracy,gender.accuracy', mA, reid_mAP "
                        "(default: tune.objective, masked_loss)")
    p.add_argument("--epochs", type=int, help="maximum epochs of one trial (early stopping may end it sooner)")
    p.add_argument("--patience", type=int,
                   help="early-stopping patience inside a trial (default: tune.patience, else the training rule)")
    p.add_argument("--out", help="output folder of the search (required)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the search already in --out (an error if its settings changed)")
    mode.add_argument("--overwrite", action="store_true",
                      help="delete the search already in --out and start again")
    return p


def main(argv=None) -> int:
    """Search as ``mtl-tune`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Raises:
        MtlError: bad input (config, objective, --out in use or with other settings); :func:`entry`
            prints it as one line.
    """
    p = parser()
    args = p.parse_args(argv)
    cfg = config_from_args(args, {"train": {"epochs": args.epochs},
                                  "tune": {"tuner": args.tuner, "max_trials": args.max_trials,
                                           "objective": args.objective, "patience": args.patience}})
    if show_info(args, cfg):
        return 0
    require(p, args, "out")
    from mtl.rundir import BEST_CONFIG, TRIALS
    from mtl.tuning import run_search

    command = command_line("tune", argv)
    summary = run_search(cfg, args.out, resume=args.resume, overwrite=args.overwrite, command=command)
    if summary.get("role") == "worker":
        print(f"worker done: ran {summary['trials_run']} trial(s)")
        return 0
    best = summary["best"]
    print(f"{summary['completed']} of {summary['trials']} trial(s) completed; best trial {best['trial']}: "
          f"{summary['objective']['name']} = {best['value']:.4f}")
    for name, value in best["hyperparameters"].items():
        print(f"  {name} = {value}")
    out = Path(args.out)
    print(f"trials table: {out / TRIALS}\nbest config:  {out / BEST_CONFIG}  "
          f"(mtl-train --config {out / BEST_CONFIG})")
    return 0


def entry() -> None:
    """The console script ``mtl-tune``."""
    run_main(main)


if __name__ == "__main__":
    entry()
