"""Shared fixtures: tiny synthetic datasets and the location of the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MTL_PROGRESS", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never write into the user's ~/.cache from tests."""
    monkeypatch.setenv("MTL_CACHE", str(tmp_path_factory.getbasetemp() / "mtl-cache"))
