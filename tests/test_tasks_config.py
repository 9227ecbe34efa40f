import pytest

from mtl.config import build_config, parse_overrides, patience_for, to_dict, load_yaml, save_config
from mtl.data.sources.market_course import MARKET_ALIASES, market_tasks
from mtl.errors import ConfigError
from mtl.tasks import TaskSpec, resolve


def test_resolve_alias_expands_color_to_two_heads():
    names = [t.name for t in resolve("age,color", market_tasks(), MARKET_ALIASES)]
    assert names == ["age", "upcolor", "downcolor"]


def test_resolve_all_is_every_attribute_in_table_order():
    table = {**market_tasks(), "identity": TaskSpec("identity", ("1", "2"), "identity")}
    names = [t.name for t in resolve("all", table)]
    assert names == list(market_tasks())
    assert "identity" in [t.name for t in resolve("all,identity", table)]


def test_unknown_task_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        resolve("age,colour", market_tasks(), MARKET_ALIASES)
    assert "colour" in str(e.value) and "upcolor" in str(e.value) and "color" in str(e.value)


def test_binary_task_needs_two_classes():
    with pytest.raises(ConfigError):
        TaskSpec("x", ("a", "b", "c"), "binary")


def test_overrides_are_typed_and_unknown_keys_rejected():
    cfg = build_config({"train": {"epochs": 3}}, parse_overrides(["model.public_units=128,64", "train.loss_weights={age: 2}",
                                                                  "data.path=none", "augment.flip=false"]))
    assert cfg.train.epochs == 3 and cfg.model.public_units == (128, 64)
    assert cfg.train.loss_weights == {"age": 2.0} and cfg.data.path is None and cfg.augment.flip is False
    with pytest.raises(ConfigError, match="epochs"):
        build_config(parse_overrides(["train.epoch=3"]))
    with pytest.raises(ConfigError, match="int"):
        build_config(parse_overrides(["train.epochs=abc"]))


def test_saved_config_reloads_unchanged(tmp_path):
    cfg = build_config(parse_overrides(["tasks=age,color", "model.head=public", "train.loss_weights={age: 0.5}"]))
    save_config(cfg, tmp_path / "config.yaml")
    again = build_config(load_yaml(tmp_path / "config.yaml"))
    assert again == cfg and to_dict(again) == to_dict(cfg)


def test_patience_rule_from_the_seeds():
    assert patience_for(20, None) == 6
    assert patience_for(100, None) == 11
    assert patience_for(100, 3) == 3


def test_unknown_task_lists_identity_where_the_data_can_train_it():
    with pytest.raises(ConfigError) as e:
        resolve("age,identiy", market_tasks(), MARKET_ALIASES, also_valid=("identity",))
    assert "'identiy'" in str(e.value) and "identity," in str(e.value) and "upcolor" in str(e.value)
    with pytest.raises(ConfigError) as e:
        resolve("identiy", market_tasks(), MARKET_ALIASES)
    assert "identity," not in str(e.value)


@pytest.mark.parametrize("names", ["", " , ", []])
def test_empty_task_list_is_an_error_listing_the_valid_names(names):
    with pytest.raises(ConfigError) as e:
        resolve(names, market_tasks(), MARKET_ALIASES, also_valid=("identity",))
    assert "no task selected" in str(e.value) and "identity" in str(e.value) and "upcolor" in str(e.value)
