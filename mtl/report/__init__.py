"""HTML evaluation reports: one self-contained page per run, tuning, study or comparison.

``python scripts/report.py runs/NAME`` writes ``reports/NAME/index.html``: a single file with
every figure and thumbnail embedded as a ``data:`` URI, sortable tables driven by a few lines
of inline JavaScript, no network access and no server. Rendering reads files only; the model
is never rebuilt or loaded.

Library entry points::

    from mtl.report import render_report, render_comparison, report_command
    render_report("runs/a")                       # -> Path("reports/a/index.html")
    render_comparison(["runs/a", "runs/b"], "reports/a-vs-b")
    print(report_command("runs/a"))               # "python scripts/report.py runs/a"

What is read (every file optional; a missing or unreadable one omits its section)
---------------------------------------------------------------------------------

Training / evaluation run directory (written by ``mtl.experiment.train``):
``config.yaml``, ``command.txt``, ``tasks.json``, ``data.json``, ``model.json``,
``history.json``, ``metrics.json`` (the epoch kept: ``["training"]["kept_epoch"]``, else ``["best_epoch"]``),
``val_predictions.csv`` (``path``, ``<task>_true``, ``<task>_pred``, ``<task>_conf``; a true
label of ``-1`` is missing and skipped), ``split.csv``.

Evaluation on other images, ``metrics.json["evaluation"]`` (``scripts/evaluate.py``):
``{"data", "format", "images", "settings": {...}, "time_s", "attributes": {"tasks", "summary",
"num_images"}, "reid": {...}}``; its attribute metrics get their own section, its ``reid`` is
shown beside the training one (and is the one in the headline and in comparisons).

Re-identification, ``metrics.json["reid"]``, in either of two shapes. Flat::

    "reid": {"mAP": 0.71, "mINP": 0.35, "rank1": 0.88, "rank5": 0.95, "rank10": 0.97,
             "cmc": [0.88, 0.92, ...],            # cmc[k-1] = rank-k accuracy, any length
             "reranked": {"mAP": ..., "mINP": ..., "rank1": ..., "rank5": ..., "rank10": ...,
                          "cmc": [...]}}          # optional: the same after re-ranking

or nested, as ``mtl.reid.protocol.evaluate_embeddings`` returns it::

    "reid": {"distance": "cosine", "num_query": 750, "num_gallery": 19732,
             "plain": {mAP, mINP, rank1, rank5, rank10, cmc}, "reranked": {...},
             "attr_weighted": {...}, "chance": {...}, "notes": ["..."]}

Every entry that is a dict holding at least one of mAP / mINP / rank1 / rank5 / rank10 is a
ranking: one table row each (plain first, chance last and greyed), one CMC line each where it
has ``cmc``. Values are fractions in [0, 1]. Other scalar entries (sizes, distance, notes) are
listed as they are.

Retrieval examples, ``reid_examples.json`` in the run directory, written by ``mtl-evaluate``
(``mtl.reid.protocol.retrieval_examples``: queries from the best to the worst AP). A list; the
report shows at most ``MAX_QUERIES`` of them, each down to rank ``MAX_GALLERY``::

    [{"query": "/data/market/query/0001_c1s1_001051_00.jpg",   # image path
      "query_camera": 1, "query_identity": 1,
      "ap": 0.83, "chosen_as": "best AP",   # optional: why this query is shown
      "gallery": [                     # distance order down to rank 10 (items the protocol removes
                                       # are included where they fall: they take no rank)
          {"path": "...", "identity": 1, "camera": 2, "distance": 0.31,
           "match": true,                  # same identity (a correct retrieval)
           "same_camera_removed": false},  # same identity and camera: excluded by the protocol
          ...]},
     ...]

Image paths (here and in ``val_predictions.csv``) are absolute, or relative to the run
directory, or relative to the data root of ``data.json``; an image that cannot be found is
drawn as a grey placeholder. Only downscaled JPEG thumbnails are embedded.

Tuning directory (detected by ``trials.csv`` or ``tuning.json``, as ``mtl.tuning`` writes
them): ``trials.csv`` (one row per trial, any columns; a sortable table, best first),
``best_config.yaml`` (shown, with the command that trains it), ``tuning.json`` (scalars shown
as key / value pairs; ``"objective"`` is a column name or ``{"name", "direction"}`` with the
value in a ``trials.csv`` column of that name or called ``objective``; ``"best":
{"trial_id", "value", "hyperparameters"}``; ``"command"``).

Study directory (detected by ``study.csv`` or ``study.json``): ``study.csv`` (one row per
task set, any columns), ``study.json`` (flat dict as key/value pairs), and sub-directories
that are runs (their summary metrics are listed, each with the command rendering its own
report).
"""

from mtl.report.render import (MAX_GALLERY, MAX_QUERIES, detect_kind, render_comparison, render_report,
                               report_command)

__all__ = ["render_report", "render_comparison", "report_command", "detect_kind", "MAX_QUERIES", "MAX_GALLERY"]
