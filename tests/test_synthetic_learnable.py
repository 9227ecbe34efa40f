"""The embedded default must be learnable: the README's first command, ``mtl-train --tasks
age,color``, must end with every task clearly above its majority baseline. Before the synthetic
people drew age as a head one pixel larger (young) or grey hair (old), ``age`` ended at 0.44 against
0.50; now age is drawn as body proportions and hair shade (``mtl.data.synthetic.AGE_BODY``)."""

import pytest

# The first command's recipe on a shorter schedule: the same data (the embedded default), tasks
# and trunk; half-size images, a half-width trunk, 14 epochs at a higher learning rate, no erasing.
SHORT = {"tasks": "age,color",
         "data": {"image_height": 64, "image_width": 32},
         "model": {"width": 0.5},
         "train": {"epochs": 14, "batch_size": 32, "learning_rate": 3e-3, "patience": 14},
         "augment": {"random_erasing": 0.0}}
MARGIN = 0.1  # accuracy above the majority class's, on the validation people


@pytest.mark.slow
def test_first_command_recipe_beats_the_majority_class_on_every_task(tmp_path):
    from mtl.config import build_config
    from mtl.experiment import train

    metrics = train(build_config(SHORT), tmp_path / "run", command="test", log=None)
    assert list(metrics["tasks"]) == ["age", "upcolor", "downcolor"]
    for task, r in metrics["tasks"].items():
        assert r["accuracy"] >= r["majority_accuracy"] + MARGIN, (task, r["accuracy"], r["majority_accuracy"])
