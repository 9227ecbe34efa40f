"""The shared test helpers of conftest.py say the same thing in their two forms."""

from conftest import TINY_FLAGS, tiny_config
from mtl.config import build_config, parse_overrides


def test_tiny_flags_are_the_tiny_config():
    assert TINY_FLAGS[::2] == ["--set"] * (len(TINY_FLAGS) // 2)
    assert build_config(parse_overrides(TINY_FLAGS[1::2])) == tiny_config()
    assert tiny_config() != build_config()


def test_tiny_config_layers_update_sections():
    cfg = tiny_config("/data", {"train": {"epochs": 3, "batch_size": 8}}, tasks="age", train={"epochs": 2})
    assert (cfg.tasks, cfg.data.path, cfg.data.image_height) == ("age", "/data", 32)
    assert (cfg.train.epochs, cfg.train.batch_size) == (2, 8)  # a later layer updates, never replaces
    assert cfg.model.private_multipliers == (4, 2)
