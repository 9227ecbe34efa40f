"""Shared fixtures: tiny synthetic datasets, the tiny config every training test uses, real tiny
runs (trained once per session) and the location of the real data."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Mapping

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MTL_PROGRESS", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# The tiny model of the tests: 32 x 16 images, a quarter-width trunk, small private heads. Training
# tests add what they need (tasks, epochs, batch size) on top; TINY_FLAGS is the same on a command line.
TINY: dict[str, dict[str, Any]] = {"data": {"image_height": 32, "image_width": 16},
                                   "model": {"width": 0.25, "private_multipliers": [4, 2]}}
TINY_FLAGS = ["--set", "data.image_height=32", "--set", "data.image_width=16", "--set", "model.width=0.25",
              "--set", "model.private_multipliers=4,2"]


def tiny_config(root: str | Path | None = None, *layers: Mapping[str, Any] | None, **overrides: Any):
    """The tests' tiny config, validated.

    Args:
        root: the dataset folder (``data.path``); None: the embedded default.
        *layers: nested dicts applied in turn over ``TINY`` (as YAML files would be).
        **overrides: the last layer, by section: ``tasks="age,gender"``, ``train={"epochs": 2}``.
            A section given here updates that section; it does not replace it.

    Returns:
        The resolved ``mtl.config.Config``.
    """
    from mtl.config import build_config

    return build_config(TINY, {"data": {"path": str(root)}} if root is not None else None, *layers, overrides)


def shared_dataset(name: str) -> Path:
    """Path of a real dataset in ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic course-layout dataset, generated once per test session."""
    from mtl.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic") / "data", identities=24, images_per_identity=6,
                    unlabelled_identities=4, seed=1)


@pytest.fixture
def imat_root(tmp_path) -> Path:
    """A tiny iMaterialist FGVC4 folder (``tests.source_folders``)."""
    from tests.source_folders import write_imaterialist

    return write_imaterialist(tmp_path / "imat")


@pytest.fixture
def market_root(tmp_path) -> Path:
    """A tiny Market-1501 original-layout folder with its attribute file (``tests.source_folders``)."""
    from tests.source_folders import write_market_original

    return write_market_original(tmp_path / "Market-1501-v15.09.15")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never write into the user's ~/.cache from tests."""
    monkeypatch.setenv("MTL_CACHE", str(tmp_path_factory.getbasetemp() / "mtl-cache"))


# ------------------------------------------------------------------------------------------
# Real tiny runs, written by the real code once per session. Tests must not change them: copy
# one (shutil.copytree into tmp_path) before breaking or editing a file.

STUDY_MAIN, STUDY_AUX = "gender", "upcolor"  # the study's sets: gender alone, gender+upcolor


@pytest.fixture(scope="session")
def tiny_study(synthetic_root, tmp_path_factory) -> Path:
    """A real task-set study (``mtl.study.run_study``): ``gender`` alone and ``gender+upcolor``,
    2 epochs each, in ``<study>/<set>/seed0``."""
    from mtl.study import run_study

    out = tmp_path_factory.mktemp("study") / "study"
    argv = ["scripts/study.py", "--data", str(synthetic_root), "--main", STUDY_MAIN, "--aux", STUDY_AUX, "--epochs", "2",
            *TINY_FLAGS, "--set", "train.batch_size=32", "--out", str(out)]  # what scripts/study.py records
    run_study(tiny_config(synthetic_root, train={"epochs": 2, "batch_size": 32}), STUDY_MAIN, [STUDY_AUX], out,
              command=shlex.join(argv), progress=lambda *a, **k: None)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_study) -> Path:
    """A real attribute run (``gender`` binary, ``upcolor`` categorical; no identity): the
    study's ``gender+upcolor`` run, so the study costs one more tiny training only."""
    return tiny_study / f"{STUDY_MAIN}+{STUDY_AUX}" / "seed0"


@pytest.fixture(scope="session")
def tiny_reid_run(synthetic_root, tmp_path_factory) -> Path:
    """A real run with the identity task and three attributes (two binary, one categorical),
    2 epochs, with its re-id metrics and retrieval examples (``write_retrieval_examples``)."""
    from mtl.config import parse_overrides
    from mtl.experiment import train

    out = tmp_path_factory.mktemp("runs") / "reid"
    tasks, settings = "identity,gender,hat,upcolor", ["model.embedding_dim=16", "train.learning_rate=0.002"]
    cfg = tiny_config(synthetic_root, parse_overrides(settings), tasks=tasks, train={"epochs": 2, "batch_size": 32})
    # what scripts/train.py records (its sys.argv) for the same training
    argv = ["scripts/train.py", "--data", str(synthetic_root), "--tasks", tasks, "--epochs", "2", "--batch-size", "32",
            *TINY_FLAGS, *[x for s in settings for x in ("--set", s)], "--out", str(out)]
    train(cfg, out, command=shlex.join(argv), log=None)
    write_retrieval_examples(out)
    return out


def write_retrieval_examples(run: str | Path, queries: int = 3) -> Path:
    """``reid_examples.json`` of a finished identity run, as ``mtl-evaluate --images val`` writes it:
    its own model ranks the gallery of its validation people (``query_gallery_split``, as the
    end-of-training re-id metrics do) and ``mtl.reid.protocol.evaluate_labelled`` picks ``queries``
    queries from best to worst AP (3: best, median, worst), without adding an evaluation to
    ``metrics.json``.

    Returns:
        The file written.
    """
    from mtl.data.splits import query_gallery_split
    from mtl.reid.protocol import evaluate_labelled
    from mtl.rundir import REID_EXAMPLES, RunDir
    from mtl.runs import load_run

    loaded = load_run(run)
    cfg = loaded.config
    val = loaded.split[loaded.split["split"] == "val"].reset_index(drop=True)
    query, gallery = query_gallery_split(val, cfg.data.split_seed)
    result = evaluate_labelled(loaded.model, [], query, gallery, cfg.data.image_height, cfg.data.image_width,
                               rerank="no", attributes=False, examples=queries)
    folder = RunDir(run)
    folder.write_json(REID_EXAMPLES, result["examples"])
    return folder.file(REID_EXAMPLES)
