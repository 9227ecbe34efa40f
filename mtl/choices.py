"""The names that the config's choice keys (and ``mtl-export --format``) choose among, each
declared once, in a module that imports nothing.

The code behind most choices imports TensorFlow (``mtl.optim``, ``mtl.callbacks``,
``mtl.distribute``, ``mtl.engine``, ``mtl.balancing``, ``mtl.data.prepare``, ``mtl.models``,
``mtl.reid.losses``, ``mtl.tuning``) and ``mtl.export`` imports numpy and pandas, while light
commands list and check the names without them (``mtl.config``'s validation, ``--help``,
``--show-config``). So each implementing module takes its names from here, and ``mtl.config``
names the table by reference (``"mtl.choices:OPTIMIZERS"``), read when a value is first checked.

A new choice (an optimizer, say) is its name here plus its code in the module that implements it.
Trunks and poolings map each name to code (``mtl.models.trunks.TRUNKS``, ``mtl.models.builder.POOLINGS``),
so their keys are written there again; ``tests/test_config_validation.py`` holds them equal to these.
"""

from __future__ import annotations

# model.trunk: mtl.models.trunks.TRUNKS builds each
TRUNK_NAMES = ("resnet_small", "resnet18ish", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large",
               "efficientnet_b0", "efficientnet_lite0", "mobilenet_v2")
HEAD_TYPES = ("private", "public")  # model.head: mtl.models.heads
POOLINGS = ("avg", "gem", "max")  # model.pooling: mtl.models.builder.POOLINGS makes each layer
OPTIMIZERS = ("adam", "adamw", "sgd")  # train.optimizer: mtl.optim
SCHEDULES = ("cosine", "step", "constant")  # train.schedule: mtl.optim.WarmupSchedule
KEEP = ("best", "last")  # train.keep, which epoch's weights a run ends with: mtl.callbacks
DISTRIBUTE = ("none", "mirrored", "multiworker", "auto")  # train.distribute: mtl.distribute
# train.mixed_precision -> Keras dtype policy ("none": Keras's default float32): mtl.engine.precision_policy
PRECISION_POLICIES = {"none": "float32", "mixed_float16": "mixed_float16", "mixed_bfloat16": "mixed_bfloat16"}
SAMPLERS = ("auto", "pk", "random")  # train.sampler: mtl.data.prepare
LOSS_BALANCING = ("fixed", "uncertainty", "dwa")  # train.loss_balancing: mtl.balancing
CLASS_WEIGHTING = ("none", "inverse", "positive", "confusion")  # train.class_weighting: mtl.balancing
METRIC_LOSSES = ("triplet", "contrastive", "centroid_triplet")  # train.metric_loss: mtl.reid.losses.embedding_loss
TUNERS = ("random", "bayesian", "hyperband")  # tune.tuner: mtl.tuning.tuners.make_tuner
EXPORT_FORMATS = ("saved_model", "litert", "onnx")  # mtl-export --format: mtl.export
