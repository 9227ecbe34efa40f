"""Shared command-line plumbing: the flags every script takes, config resolution, error display."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from mtl.config import Config, build_config, load_yaml, parse_overrides
from mtl.errors import MtlError


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="data folder (default: the embedded synthetic pedestrians, generated on first use)")
    p.add_argument("--format", help="data format: auto (default), market1501_course, market1501, fashion, imaterialist")
    p.add_argument("--tasks", help="comma-separated tasks, an alias (color) or all (default: all attributes)")
    p.add_argument("--config", help="YAML config file (see configs/); flags and --set override it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.epochs=5 --set model.dropout=0.5 (repeatable)")


def config_from_args(args: argparse.Namespace, flag_values: dict | None = None) -> Config:
    """defaults <- --config YAML <- explicit flags <- --set."""
    flags: dict = {"tasks": args.tasks, "data": {"path": args.data, "format": args.format}}
    for section, values in (flag_values or {}).items():
        flags.setdefault(section, {}).update(values)
    flags = _drop_none(flags)
    return build_config(load_yaml(args.config) if args.config else None, flags, parse_overrides(args.set))


def _drop_none(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


def run_main(main: Callable[[], int]) -> None:
    """Run a script's main; user errors print one clear line (no traceback) and exit 2."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.exit(main())
    except MtlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
