"""The whole search (:func:`run_search`) and the rules of its output folder.

* :func:`prepare_out_dir`: an existing search is never reused silently (``resume`` / ``overwrite``
  and a fingerprint of the search settings, saved in ``search.json``).
* Distributed search is keras-tuner's own: with ``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``
  and ``KERASTUNER_ORACLE_PORT`` set, the process whose id contains ``chief`` serves the oracle and
  writes the results, the others run trials (:func:`distributed_role`, :func:`wait_for_chief`,
  :func:`check_worker_settings`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Mapping

import keras_tuner

from mtl.choices import TUNERS
from mtl.config import Config, to_dict
from mtl.errors import ConfigError, MtlError
from mtl.io import folder_lock
from mtl.rundir import BEST_CONFIG, SEARCH_JSON, TRIALS, TUNING_JSON, RunDir, config_diff
from mtl.tuning.hypermodel import MtlHyperModel, trial_patience
from mtl.tuning.objective import Objective, resolve_objective
from mtl.tuning.results import trial_line, write_results
from mtl.tuning.space import config_for, declared_space, search_space
from mtl.tuning.tuners import PROJECT, make_tuner

RESULT_FILES = (TRIALS, BEST_CONFIG, TUNING_JSON)  # deleted by --overwrite, with search.json and the tuner folder
CHIEF_WAIT_S = 1800  # a worker waits this long for its chief (which prepares the data before it serves)


def distributed_role() -> str | None:
    """``chief`` or ``worker`` under keras-tuner's distributed mode (``KERASTUNER_*`` variables), else None."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if v not in os.environ]
    if missing:
        raise ConfigError(f"KERASTUNER_ORACLE_IP is set but {', '.join(missing)} is not: set all three "
                          "(see docs/tuning.md)")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"



# ---------------------------------------------------------------------------------------------
# Output folder: fingerprint, resume / overwrite
# ---------------------------------------------------------------------------------------------

def search_settings(cfg: Config, data, objective: Objective, tuner: str) -> dict:
    """Everything that makes trials comparable: tasks, data, resolved space, objective, tuner and
    the rest of the config. ``tune.max_trials`` is left out (a resumed search may run longer)."""
    config = to_dict(cfg)
    config["tune"].pop("max_trials", None)
    config["tune"].pop("space", None)  # represented by the resolved space below
    config["data"].pop("path", None)  # represented by the absolute data folder below
    space = declared_space(data.tasks, cfg.tune.space).get_config()["space"]
    return {
        "tasks": [t.to_dict() for t in data.tasks],
        "data": {"root": str(Path(data.source.root).resolve()), "format": data.source.name,
                 "train_images": int(len(data.train)), "val_images": int(len(data.val))},
        "objective": objective.to_dict(),
        "tuner": tuner,
        "space": {p["config"]["name"]: {"type": p["class_name"],
                                        **{k: v for k, v in p["config"].items() if k != "name"}} for p in space},
        "config": config,
    }


def fingerprint(settings: Mapping) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_out_dir(out: str | Path, settings: Mapping, resume: bool = False, overwrite: bool = False) -> str:
    """Apply the rules of an output folder before a search starts.

    * a folder with a search in it needs ``resume`` (continue it) or ``overwrite`` (delete the
      search's files and start again); neither is an error that says so;
    * ``resume`` with settings (search space, tasks, data, objective, tuner, config) other than
      those saved when the search started is an error that lists the differences;
    * otherwise ``search.json`` (settings and fingerprint) is written.

    Returns:
        ``"new"`` or ``"resume"``.
    """
    out = Path(out)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    folder = RunDir(out)
    saved = folder.file(SEARCH_JSON)
    exists = saved.is_file() or folder.file(PROJECT).exists()
    if exists and not (resume or overwrite):
        raise MtlError(f"{out} already holds a search; pass --resume to continue it, --overwrite to delete it "
                       "and start again, or choose another --out")
    if exists and resume:
        if not saved.is_file():
            raise MtlError(f"cannot --resume {out}: keras-tuner state without {SEARCH_JSON} (not started by "
                           "scripts/tune.py?); use --overwrite or another --out")
        old = folder.read_json(SEARCH_JSON)
        if old.get("fingerprint") != fingerprint(settings):
            diff = config_diff(old.get("settings", {}), settings)
            raise MtlError(f"cannot --resume {out}: the search space or settings changed since it started "
                           f"({'; '.join(diff) or 'fingerprint differs'}); use --overwrite to start again or another --out")
        return "resume"
    if exists and overwrite:
        if folder.file(PROJECT).exists():
            shutil.rmtree(folder.file(PROJECT))
        for name in (SEARCH_JSON, *RESULT_FILES):  # other files (the lock, the user's) stay
            folder.file(name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    folder.write_json(SEARCH_JSON, {"fingerprint": fingerprint(settings), "settings": settings,
                                    "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return "new"


def wait_for_chief(host: str, port: str | int, timeout_s: float = CHIEF_WAIT_S, poll_s: float = 1.0) -> None:
    """Block until the chief accepts connections: it serves only after it prepared ``--out``.

    Raises:
        MtlError: no chief after ``timeout_s`` seconds.
    """
    deadline = time.time() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=poll_s):
                return
        except OSError:
            if time.time() >= deadline:
                raise MtlError(f"worker: no chief at {host}:{port} after {timeout_s:.0f} s; start one with the same "
                               "command and KERASTUNER_TUNER_ID=chief") from None
            time.sleep(poll_s)


def check_worker_settings(out: str | Path, settings: Mapping) -> None:
    """A worker's settings must be the chief's (read from ``search.json``, written before the chief serves)."""
    folder = RunDir(out)
    saved = folder.file(SEARCH_JSON)
    if not saved.is_file():
        raise MtlError(f"worker: {saved} not found; start the chief with the same --out (a folder both can read)")
    old = folder.read_json(SEARCH_JSON)
    if old.get("fingerprint") != fingerprint(settings):
        diff = config_diff(old.get("settings", {}), settings)
        raise MtlError(f"worker: settings differ from the chief's ({'; '.join(diff)}); run the same command")



# ---------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------

def run_search(cfg: Config, out: str | Path, resume: bool = False, overwrite: bool = False,
               command: str | None = None, verbose: int | None = None) -> dict:
    """The whole search for ``cfg`` (its ``tune`` section) into ``out``.

    In keras-tuner's distributed mode the chief applies the folder rules, serves the oracle and
    writes the results; a worker checks its settings against the chief's and runs trials.

    Returns:
        The ``tuning.json`` summary (a worker returns ``{"role": "worker", "trials_run": n}``).
    """
    from mtl.callbacks import fit_verbosity
    from mtl.experiment import prepare, seed_run

    if cfg.tune.tuner not in TUNERS:
        raise ConfigError(f"unknown tuner {cfg.tune.tuner!r}; valid: {', '.join(TUNERS)}")
    if cfg.tune.max_trials < 1:
        raise ConfigError(f"tune.max_trials must be at least 1, got {cfg.tune.max_trials}")
    role = distributed_role()
    out = Path(out)
    seed_run(cfg)
    print("preparing data ...", flush=True)
    data = prepare(cfg)
    objective = resolve_objective(cfg.tune.objective, data.tasks, data.source.aliases)
    config_for(cfg, search_space(keras_tuner.HyperParameters(), data.tasks, cfg.tune.space))  # values are valid
    settings = search_settings(cfg, data, objective, cfg.tune.tuner)
    hypermodel = MtlHyperModel(cfg, data, objective, trial_patience(cfg),
                               verbose=fit_verbosity() if verbose is None else verbose)
    if role == "worker":
        if resume or overwrite:
            print("worker: --resume / --overwrite are the chief's to apply; ignored here", flush=True)
        host, port = os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"]
        print(f"worker {os.environ['KERASTUNER_TUNER_ID']}: waiting for the chief at {host}:{port} ...", flush=True)
        # before building the tuner: that creates the keras-tuner folder in --out, and a chief that
        # has not checked --out yet would take it for an earlier search and stop (workers then wait forever)
        wait_for_chief(host, port)
        tuner = make_tuner(cfg.tune.tuner, hypermodel, objective, out, cfg.tune.max_trials, cfg.train.epochs,
                           seed=cfg.train.seed, overwrite=False)
        check_worker_settings(out, settings)
        tuner.search(verbose=hypermodel.verbose)
        return {"role": "worker", "trials_run": len(tuner.memory_mb), "memory_mb": tuner.memory_mb}
    with folder_lock(out, "search"):
        return _run_chief_or_single(cfg, out, data, objective, settings, hypermodel, role, resume, overwrite, command)


def _run_chief_or_single(cfg, out, data, objective, settings, hypermodel, role, resume, overwrite, command) -> dict:
    """``run_search`` for the process that owns the folder (the chief, or the only process)."""
    mode = prepare_out_dir(out, settings, resume=resume, overwrite=overwrite)
    print(f"{'resuming' if mode == 'resume' else 'starting'} {cfg.tune.tuner} search in {out}: objective "
          f"{objective.name} ({objective.direction}), at most {cfg.tune.max_trials} trials", flush=True)
    tuner = make_tuner(cfg.tune.tuner, hypermodel, objective, out, cfg.tune.max_trials, cfg.train.epochs,
                       seed=cfg.train.seed, overwrite=(mode == "new"))

    def after_trial(t):  # trials.csv kept current; one console line, numbered as trials.csv numbers it
        summary = write_results(out, t, hypermodel, objective, command)
        if t.memory_mb:
            print(trial_line(t.oracle, t.memory_mb[-1]["trial_id"], objective, summary), flush=True)

    tuner.after_trial = after_trial
    if role == "chief":
        print(f"chief: serving the oracle on {os.environ['KERASTUNER_ORACLE_IP']}:"
              f"{os.environ['KERASTUNER_ORACLE_PORT']}; start the workers", flush=True)
    tuner.search(verbose=hypermodel.verbose)
    summary = write_results(out, tuner, hypermodel, objective, command)
    if summary["best"] is None:
        messages = [t.message for t in tuner.oracle.trials.values() if getattr(t, "message", None)]
        last = (messages[-1].strip().splitlines() or [""])[-1] if messages else "no trial ran"
        raise MtlError(f"no trial completed ({summary['trials']} tried); last error: {last}")
    return summary
