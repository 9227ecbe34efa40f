"""The command-line interface: one module per command, each installed as a console script.

=================  ======================  ================================================
console script     module                  what it does
=================  ======================  ================================================
``mtl-train``      ``mtl.cli.train``       train a multi-task model into a run folder
``mtl-evaluate``   ``mtl.cli.evaluate``    attribute and re-identification metrics of a run
``mtl-predict``    ``mtl.cli.predict``     predictions on any images, or the course deliverables
``mtl-export``     ``mtl.cli.export``      SavedModel / LiteRT / ONNX for serving, with parity checks
``mtl-search``     ``mtl.cli.search``      search a gallery by attributes and/or an example image
``mtl-tune``       ``mtl.cli.tune``        hyperparameter search (keras-tuner)
``mtl-study``      ``mtl.cli.study``       task-set study: main task alone vs with each auxiliary
``mtl-report``     ``mtl.cli.report``      HTML report of a run, search or study (or a comparison)
``mtl-masks``      ``mtl.cli.masks``       person masks of a data folder (``data.person_mask``), offline
=================  ======================  ================================================

Each module has ``parser()``, ``main(argv=None) -> int`` (usable in process: returns the exit
status, raises ``MtlError`` for bad input) and ``entry()`` (the console script: ``run_main(main)``,
which prints ``error: ...`` and exits 2 for bad input). ``python scripts/<command>.py`` in a checkout
runs the same ``entry`` without installing the package.
"""

from mtl.cli.common import add_common_args, command_line, config_from_args, run_main

COMMANDS = ("train", "evaluate", "predict", "export", "search", "tune", "study", "report", "masks")

__all__ = ["COMMANDS", "add_common_args", "command_line", "config_from_args", "run_main"]
