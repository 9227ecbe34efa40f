"""Every recipe in configs/ is a valid config whose model builds (random weights, small input)."""

from pathlib import Path

import pytest

from mtl.config import build_config, load_yaml
from mtl.models.builder import build_model
from mtl.tasks import TaskSpec

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_recipe_loads_and_its_model_builds(path):
    cfg = build_config(load_yaml(path))
    tasks = [TaskSpec("a", ("x", "y"), "binary"), TaskSpec("b", ("x", "y", "z"))]
    model = build_model(tasks, input_shape=(64, 32, 3), trunk=cfg.model.trunk, weights=None,
                        width=cfg.model.width, head=cfg.model.head, public_units=cfg.model.public_units,
                        private_multipliers=cfg.model.private_multipliers, task_units=cfg.model.task_units,
                        dropout=cfg.model.dropout)
    assert set(model.output_names) == {"a", "b"}
