"""Shared command-line plumbing: the flags every command takes, config resolution, error display.

Light on purpose: every ``mtl-<command> --help`` imports this module, so nothing here (nor at the
top of any ``mtl.cli`` module) imports TensorFlow or Keras; commands import them inside ``main``,
after the arguments are parsed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from mtl.config import Config, build_config, format_keys, load_yaml, parse_overrides, task_names, valid_values
from mtl.errors import MtlError


def one_of(names: Sequence[str]) -> str:
    """``"a, b or c"``: the valid values of a flag, for its help text."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def new_parser(command: str, doc: str) -> argparse.ArgumentParser:
    """The parser of ``mtl-<command>``, described by its module docstring (description and examples).

    Args:
        command: the command's short name (``train``), i.e. the module ``mtl.cli.<command>``.
        doc: the module's docstring, shown verbatim by ``--help``.

    Returns:
        A parser whose usage line names the program as it was invoked: ``scripts/train.py`` through
        the checkout wrapper, else the console script ``mtl-train``.
    """
    first = sys.argv[0] if sys.argv and sys.argv[0] else ""
    prog = first if Path(first).name == f"{command}.py" else f"mtl-{command}"
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The data, task and config flags of every command that resolves a config (train, tune, study)."""
    p.add_argument("--data", help="data folder (default: the embedded synthetic pedestrians, generated on first use)")
    # validated by mtl.config, whose one-line error names the key, the value and the valid values
    p.add_argument("--format", metavar="FORMAT", help=f"data format: {one_of(valid_values('data.format'))} "
                                                      "(default auto: detected from the folder's layout)")
    p.add_argument("--tasks", help="comma-separated tasks, an alias (color) or all (default: all attributes); "
                                   "--tasks help lists the data's tasks and exits")
    p.add_argument("--config", help="YAML config file (see configs/); flags and --set override it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.epochs=5 --set model.dropout=0.5 (repeatable); "
                        "--set help is --show-config")
    p.add_argument("--show-config", action="store_true",
                   help="list every config key with its type, default and meaning (and the value that --config, "
                        "flags and --set give it), then exit")


def config_from_args(args: argparse.Namespace, flag_values: dict | None = None) -> Config:
    """defaults <- --config YAML <- explicit flags <- --set.

    Args:
        args: parsed arguments of a parser with :func:`add_common_args`.
        flag_values: the command's own flags as nested config sections (``{"train": {"epochs": 5}}``);
            None values (flags not given) are left out.

    Returns:
        The validated config.

    Raises:
        ConfigError: a bad key or value (one line naming it and the valid values).
    """
    flags: dict = {"tasks": args.tasks, "data": {"path": args.data, "format": args.format}}
    for section, values in (flag_values or {}).items():
        flags.setdefault(section, {}).update(values)
    flags = _drop_none(flags)
    overrides = parse_overrides([item for item in args.set if item != HELP])  # --set help: see show_info
    return build_config(load_yaml(args.config) if args.config else None, flags, overrides)


HELP = "help"  # --tasks help, --set help


def show_info(args: argparse.Namespace, cfg: Config) -> bool:
    """Answer ``--show-config`` (or ``--set help``) and ``--tasks help``, if asked.

    A command calls it right after :func:`config_from_args` and returns 0 when it answers True:
    nothing is trained or written (``--tasks help`` on the embedded default data generates that
    data into its cache on first use, as training would).

    Args:
        args: parsed arguments of a parser with :func:`add_common_args`.
        cfg: the config they resolve to.

    Returns:
        True when something was printed and the command should end.

    Raises:
        MtlError: ``--tasks help`` on a data folder that cannot be read.
    """
    if args.show_config or HELP in args.set:
        print(format_keys(cfg))
        return True
    if HELP in task_names(cfg.tasks):
        from mtl.data.sources import describe_tasks, load_source
        from mtl.data.synthetic import ensure_synthetic

        # the data folder as mtl.data.prepare.data_root finds it (that module imports TensorFlow)
        root = cfg.data.path or ensure_synthetic()
        print(describe_tasks(load_source(root, cfg.data.format, rare_threshold=cfg.data.rare_threshold)))
        return True
    return False


def require(p: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """argparse's check of required flags, made after :func:`show_info` (``--show-config`` needs no ``--out``).

    Args:
        p: the command's parser (its error exits 2 with the usage line).
        args: the parsed arguments.
        *names: attribute names of the required flags (``out`` for ``--out``).
    """
    missing = ["--" + n.replace("_", "-") for n in names if getattr(args, n) is None]
    if missing:
        p.error(f"the following arguments are required: {', '.join(missing)}")


def check_junk_threshold(value: float | None) -> None:
    """``--junk-threshold`` of ``mtl-evaluate`` and ``mtl-predict``: in [0, 1], checked before
    loading anything (that the run has the ``junk`` output is checked once its model is loaded:
    ``mtl.reid.protocol.require_junk_output``).

    Raises:
        DataError: out of range (one line).
    """
    from mtl.errors import DataError

    if value is not None and not 0 <= value <= 1:
        raise DataError(f"--junk-threshold must be in [0, 1], got {value}")


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


def command_line(command: str, argv: Sequence[str] | None) -> str:
    """The command line recorded in a run, search or study folder (``command.txt``, ``run.json``).

    Args:
        command: the command's short name (``train``).
        argv: the arguments ``main`` was called with, or None when they come from ``sys.argv``.

    Returns:
        ``scripts/train.py ...`` as typed for the checkout wrapper (the report shows it with
        ``python`` in front), else ``mtl-train ...`` (console script, or ``main(argv)`` in process).
    """
    if argv is None:
        first = sys.argv[0] if sys.argv and sys.argv[0] else ""
        if Path(first).name == f"{command}.py":
            return shlex.join(sys.argv)
        argv = sys.argv[1:]
    return shlex.join([f"mtl-{command}", *argv])


# ---------------------------------------------------------------------------------------------
# TensorFlow's start-up noise
# ---------------------------------------------------------------------------------------------

# Lines TensorFlow's C++ side writes to the process's stderr while it is imported, which say nothing
# a user can act on. On some CPUs (AMD EPYC) they come even with TF_CPP_MIN_LOG_LEVEL=3: the
# environment variable alone is not enough, so the import runs with file descriptor 2 captured.
TF_NOISE = tuple(re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) (is called )?are written to STDERR",
    r"^I\d{4} [\d:.]+\s+\d+ \S+:\d+\]",  # glog-style INFO lines (never a warning)
    r"cpu_feature_guard\.cc:\d+\]",
    r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags",
    r"oneDNN custom operations are on",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"TF-TRT Warning: Could not find TensorRT",
    r"Could not find cuda drivers on your machine",
))


def is_tf_noise(line: str) -> bool:
    """Whether ``line`` (written to stderr while TensorFlow is imported) is known start-up noise."""
    return any(p.search(line) for p in TF_NOISE)


@contextlib.contextmanager
def stderr_captured():
    """Capture what the process writes to file descriptor 2 (C++ libraries as well as Python).

    Yields:
        A list that holds the captured text (one string) once the block ends; descriptor 2 is
        restored whatever happens in the block.
    """
    captured: list[str] = []
    sys.stderr.flush()
    with tempfile.TemporaryFile() as tmp:  # a file, not a pipe: a pipe that fills up would block the writer
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode(errors="replace"))


def _emit_without_noise(text: str) -> None:
    """Write the captured lines back to stderr, except TensorFlow's known start-up noise."""
    kept = [line for line in text.splitlines() if line.strip() and not is_tf_noise(line)]
    if kept:
        sys.stderr.write("\n".join(kept) + "\n")
        sys.stderr.flush()


def quiet_tensorflow_logging() -> None:
    """Ask TensorFlow's C++ side (set before its import) and absl's Python logging for warnings and up only."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "absl.logging" in sys.modules or "tensorflow" in sys.modules:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)


def import_tensorflow_quietly():
    """Import TensorFlow (once) without its start-up noise on stderr, and return the module.

    The import runs with descriptor 2 captured; what was written is shown again afterwards, less
    the lines of ``TF_NOISE`` (real warnings stay, readable). Commands get this through
    :func:`run_main`, which makes the first ``import tensorflow`` (or ``import keras``) of the
    process, wherever it happens, go through here: ``--help`` stays free of TensorFlow.
    """
    if "tensorflow" not in sys.modules:
        _load_quietly(lambda: importlib.import_module("tensorflow"))
    quiet_tensorflow_logging()
    return sys.modules["tensorflow"]


def _load_quietly(load) -> None:
    """TensorFlow's own ``__init__``, run with descriptor 2 captured and its noise left out."""
    quiet_tensorflow_logging()
    try:
        with stderr_captured() as captured:
            load()
    finally:
        _emit_without_noise("".join(captured))
    quiet_tensorflow_logging()


def quiet_tensorflow_import() -> None:
    """Make the process's first import of TensorFlow go through :func:`import_tensorflow_quietly`
    (nothing is imported now; TensorFlow already imported: only its logging is turned down)."""
    if "tensorflow" in sys.modules:
        quiet_tensorflow_logging()
    else:
        from mtl.importhook import on_first_import

        on_first_import("tensorflow", _load_quietly)


def run_main(main: Callable[[], int]) -> None:
    """Run a command's main; user errors print one clear line (no traceback) and exit 2.

    TensorFlow, when the command imports it (after parsing its arguments), is imported without its
    start-up noise (:func:`quiet_tensorflow_import`).
    """
    quiet_tensorflow_import()
    try:
        sys.exit(main())
    except MtlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `mtl-train --show-config | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit would fail again
        sys.exit(0)
