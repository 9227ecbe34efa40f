"""Evaluating a trained model on labelled images.

* :func:`held_out_metrics`: the evaluation on the held-out (validation) people that follows
  training (``mtl.experiment.train``) and every tuning trial (``mtl.tuning.hypermodel``): the
  attribute metrics and per-image predictions, plus re-identification when the model has the
  identity task. Both call it through ``mtl.experiment.evaluation_args``, so a trial measures
  what training measures (the person masks of a 4-channel model included).
* :func:`evaluate_run`: a finished run on a labelled folder, the pipeline behind ``mtl-evaluate``
  (which images, the metrics, and where they are written: see that command's help). Its result
  is added to the run's ``metrics.json`` under ``"evaluation"``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from mtl.data.masks import mask_folder
from mtl.data.pipeline import drop_unreadable
from mtl.data.relabel import load_for_run, unseen_summary
from mtl.errors import ConfigError, DataError, WriteError
from mtl.inference import evaluate_model
from mtl.io import atomic_write_json, ensure_writable, folder_lock
from mtl.reid.heads import CENTER, EMBEDDING
from mtl.reid.protocol import (EXAMPLE_QUERIES, JUNK_THRESHOLD, evaluate_holdout, evaluate_labelled,
                               evaluation_images, no_ranking_reason, require_junk_output)
from mtl.rundir import METRICS, REID_EXAMPLES, RunDir
from mtl.runs import load_run
from mtl.scoring import instance_line
from mtl.tasks import KINDS, TaskSpec, find_identity

# the rankings printed by evaluate_run, in this order when present
_RANKINGS = ("plain", "reranked", "attr_weighted", "attr_weighted_reranked", "attr_multiplicative",
             "attr_multiplicative_reranked", "chance")


def held_out_metrics(model, tasks: Sequence[TaskSpec], table: pd.DataFrame, height: int, width: int,
                     batch_size: int, seed: int = 0, masks=None, rerank: str = "auto") -> tuple[dict, pd.DataFrame]:
    """The post-training evaluation on held-out labelled people (the validation split).

    Args:
        model: the trained multi-task model.
        tasks: its task specs.
        table: the held-out images (``path``, ``identity``, ``camera``, a label column per task).
        height, width, batch_size: the model's input size and the inference batch.
        seed: seed of the query / gallery split of the re-identification (``data.split_seed``).
        masks: the person masks of a 4-channel model (``mtl.data.masks.MaskFolder``), else None.
        rerank: re-ranking of the re-identification (``mtl.reid.protocol.evaluate_embeddings``):
            tuning trials only need the plain distance (``"no"``).

    Returns:
        ``(metrics, predictions)``: ``mtl.inference.evaluate_model``'s metrics, with ``"reid"``
        (``mtl.reid.protocol.evaluate_holdout``) for a model with the identity task, and its
        per-image predictions table.
    """
    metrics, predictions = evaluate_model(model, tasks, table, height, width, batch_size, masks=masks)
    if find_identity(tasks) is not None:
        metrics["reid"] = evaluate_holdout(model, table, height, width, batch_size, seed=seed, rerank=rerank,
                                           masks=masks)
    return metrics, predictions


def check_outputs(model, run_tasks: Sequence[TaskSpec], run_dir, wanted: str | None = None) -> list[TaskSpec]:
    """The run's tasks to evaluate, after checking that the model predicts each of them.

    Args:
        model: the run's model.
        run_tasks: the run's task specs (``tasks.json``).
        run_dir: the run folder (named in errors).
        wanted: ``--tasks`` (comma-separated names or ``all``), or None for every task of the run.

    Raises:
        DataError: ``tasks.json`` and the model's outputs disagree (names both).
        ConfigError: ``--tasks`` names a task the run's model does not predict (names both).
    """
    outputs = list(model.output_names)
    names = [t.name for t in run_tasks]
    extra = [o for o in outputs if o not in names and o not in (EMBEDDING, CENTER)]
    if [n for n in names if n not in outputs] or extra:
        raise DataError(f"{run_dir}: the model's outputs ({', '.join(outputs)}) do not match the tasks of "
                        f"tasks.json ({', '.join(names)})")
    if not wanted or wanted.strip() == "all":
        return list(run_tasks)
    asked = [n.strip() for n in wanted.split(",") if n.strip()]
    unknown = [n for n in asked if n not in names]
    if unknown or not asked:
        raise ConfigError(f"--tasks {wanted}: the run {run_dir} has no task {', '.join(unknown) or '(none given)'}; "
                          f"its model predicts {', '.join(names)}")
    return [t for t in run_tasks if t.name in asked]


def check_outputs_writable(run_dir: Path, out: str | Path | None) -> dict:
    """Before any work: read the run's ``metrics.json`` (the evaluation is added to it) and check
    that the run folder (and ``out``'s folder) can be written.

    Returns:
        The metrics read (``{}`` when the run has none).

    Raises:
        DataError: ``metrics.json`` exists but cannot be read or is not a JSON object.
        WriteError: a folder the results go to cannot be written.
    """
    metrics = RunDir(run_dir).read_metrics()
    if metrics is not None and not isinstance(metrics, dict):
        raise DataError(f"cannot read {RunDir(run_dir).file(METRICS)}: expected a JSON object, got "
                        f"{type(metrics).__name__}")
    ensure_writable(run_dir)
    if out:
        if Path(out).is_dir():
            raise WriteError(f"cannot write {out}: it is a folder (--out takes a JSON file name)")
        ensure_writable(Path(out).parent)
    return metrics or {}


def evaluate_run(run_dir: str | Path, data: str | Path | None = None, format: str = "auto", images: str = "auto",
                 distance: str = "cosine", rerank: str = "auto", attr_weight: float | None = None,
                 attr_alpha: float | None = None, seed: int | None = None, batch_size: int | None = None,
                 tasks: str | None = None, attributes: bool = True, examples: int = EXAMPLE_QUERIES,
                 out: str | Path | None = None, junk_threshold: float | None = None, masks: str | Path | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Evaluate a finished run on labelled data, as ``mtl-evaluate`` does (its flags are these arguments).

    Nothing is computed before the run's ``metrics.json`` is read and its folder (and ``out``'s)
    is known to be writable; the run folder is locked for the whole read-modify-write.

    Args:
        run_dir: the run folder.
        data: the labelled folder to evaluate on (default: the folder the run was trained on).
        format: its data format (``auto``: detected).
        images: which labelled images of a course-layout folder: ``auto``, ``val``, ``unseen`` or
            ``all`` (``mtl.reid.protocol.evaluation_images``).
        distance, rerank, attr_weight, attr_alpha: the rankings (``mtl.reid.protocol.evaluate_embeddings``).
        seed: seed of the query / gallery split (default: the run's ``data.split_seed``).
        batch_size: images per batch (default: the run's ``train.batch_size``).
        tasks: comma-separated tasks of the run to evaluate (default: all).
        attributes: compute the attribute metrics.
        examples: ranked retrieval examples written to ``reid_examples.json`` (0: none).
        out: also write the evaluation to this JSON file.
        junk_threshold: for a run with the ``junk`` output, the P(junk) above which gallery images
            are not ranked (default ``JUNK_THRESHOLD``).
        masks: the person masks of ``data`` for a 4-channel run (default: the run's ``data.person_mask``).
        log: where the progress, the results and the files written are told, one line per call.

    Returns:
        The evaluation, as written under ``metrics.json["evaluation"]``.

    Raises:
        MtlError: a missing or unfinished run, a run in use, bad data or ``tasks``, an unwritable output.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"--run {run_dir}: no such run folder")
    # one process at a time on a run: the evaluation is a read-modify-write of its metrics.json
    with folder_lock(run_dir, "evaluation"):
        metrics = check_outputs_writable(run_dir, out)
        log(f"loading run {run_dir}")
        run = load_run(run_dir)  # a corrupt or truncated model.keras is one line naming the file
        chosen = check_outputs(run.model, run.tasks, run_dir, tasks)
        if junk_threshold is not None:
            require_junk_output(run.model, run_dir)
        cfg = run.config
        root = Path(data) if data else run.data_root()
        # labelled with the run's class table, by class name (another folder orders its classes otherwise)
        source, unseen = load_for_run(root, format, chosen)
        unseen_line = unseen_summary(unseen, chosen)
        if unseen_line:
            log(f"{root}: {unseen_line}")
        seed = cfg.data.split_seed if seed is None else seed
        query, gallery, what = evaluation_images(source, run.split, run.data.get("root"), images, seed)
        query, skipped_query = drop_unreadable(query)
        gallery, skipped_gallery = drop_unreadable(gallery)
        skipped = pd.concat([skipped_query, skipped_gallery], ignore_index=True)
        if len(skipped):
            log(f"skipped {len(skipped)} image(s) the pipeline cannot decode, e.g. {skipped['path'][0]} "
                f"({skipped['reason'][0]})")
        log(f"evaluating on {root}: {what}")
        start = time.time()
        result = evaluate_labelled(run.model, chosen, query, gallery, cfg.data.image_height, cfg.data.image_width,
                                   batch_size or cfg.train.batch_size, distance, rerank, attr_weight, attr_alpha,
                                   attributes=attributes, examples=examples,
                                   junk_threshold=JUNK_THRESHOLD if junk_threshold is None else junk_threshold,
                                   masks=mask_folder(masks or cfg.data.person_mask, source.root))
        retrieval = result.pop("examples", None)
        evaluation = {
            "data": str(source.root), "format": source.name, "images": what,
            "settings": {"images": images, "distance": distance, "rerank": rerank, "attr_weight": attr_weight,
                         "attr_alpha": attr_alpha, "seed": seed, "junk_threshold": junk_threshold,
                         "tasks": [t.name for t in chosen]},
            "unseen_labels": unseen,
            "skipped_images": skipped.to_dict("records"),
            **result, "time_s": round(time.time() - start, 1),
        }
        for line in result_lines(result, no_ranking_reason(gallery)):
            log(line)
        _write(run_dir, metrics, evaluation, retrieval, out, log)
    return evaluation


def _write(run_dir: Path, metrics: dict, evaluation: dict, retrieval: list | None, out, log) -> None:
    """``metrics.json`` with the evaluation, ``reid_examples.json`` and ``out``, each told to ``log``."""
    run = RunDir(run_dir)
    if "evaluation" in metrics:
        log(f"replacing the previous evaluation in {run.file(METRICS)} (data {metrics['evaluation'].get('data')}); "
            "training metrics are kept")
    metrics["evaluation"] = evaluation
    run.write_metrics(metrics)
    log(f"written: {run.file(METRICS)} (key 'evaluation')")
    if retrieval:
        run.write_json(REID_EXAMPLES, retrieval)
        log(f"written: {run.file(REID_EXAMPLES)} ({len(retrieval)} ranked retrieval examples, "
            f"best to worst AP; shown by mtl-report)")
    if out:
        atomic_write_json(out, evaluation)
        log(f"written: {out}")


def result_lines(result: dict, no_ranking: str) -> list[str]:
    """What ``mtl-evaluate`` prints of an evaluation: per attribute task accuracy and macro F1, the
    means, and each ranking's mAP, rank-1/5/10 and mINP (or ``no_ranking``: why there is none).

    Args:
        result: ``mtl.reid.protocol.evaluate_labelled``'s result.
        no_ranking: the reason printed when ``result`` has no ``reid``.
    """
    lines = []
    attributes = result.get("attributes")
    if attributes:
        width = max(map(len, attributes["tasks"]), default=0)
        for name, r in attributes["tasks"].items():
            if r.get("accuracy") is not None:
                lines.append(f"  {name:{width}s}  accuracy {r['accuracy']:.3f}  macro-F1 {r['macro_f1']:.3f}")
            elif r.get("mae") is not None:  # a regression task
                lines.append(f"  {name:{width}s}  {KINDS[r['kind']].result_line(r)}")
        s = attributes["summary"]
        if s["mean_accuracy"] is not None:
            ma = f"  mA {s['mA']:.3f}" if s["mA"] is not None else ""
            lines.append(f"attributes: mean accuracy {s['mean_accuracy']:.3f}{ma} on {attributes['num_images']} images")
        if line := instance_line(s):  # the instance-based PAR metrics (mtl.scoring.instance_metrics)
            lines.append(f"attributes: {line}")
    reid = result.get("reid")
    if reid is None:
        lines.append(f"re-identification: {no_ranking}")
        return lines
    lines.append(f"re-identification ({reid['feature_layer']} features, {reid['distance']} distance, "
                 f"{reid['num_query']} queries, {reid['num_gallery']} gallery images):")
    if "junk_dropped" in reid:  # a run trained with data.junk_fraction (mtl.reid.protocol.evaluate_labelled)
        lines.append(f"  junk: {reid['junk_dropped']} gallery image(s) predicted junk "
                     f"(P > {reid['junk_threshold']:g}) left out of the ranking")
    for key in _RANKINGS:
        if key in reid:
            m = reid[key]
            lines.append(f"  {key:28s} mAP {m['mAP']:.4f}  rank-1 {m['rank1']:.4f}  rank-5 {m['rank5']:.4f}  "
                         f"rank-10 {m['rank10']:.4f}  mINP {m['mINP']:.4f}")
    lines.extend(f"  note: {note}" for note in reid.get("notes", []))
    return lines
