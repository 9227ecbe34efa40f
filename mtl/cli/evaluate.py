"""Evaluate a trained run on labelled data: attribute metrics and re-identification metrics.

Which images are evaluated:
  * original Market-1501 layout (query/, bounding_box_test/): query/ against bounding_box_test/
    (junk boxes dropped, distractors kept in the gallery);
  * a labelled folder (course layout train/ + annotations_train.csv), chosen by --images:
      auto    (default) the run's validation identities (split.csv) when DIR is the folder the run
              was trained on, else every labelled identity the run did not train on;
      val     the run's validation identities (split.csv);
      unseen  every labelled image whose identity was not a training identity of the run;
      all     every labelled image (a folder of new people).
    Its images are split into one query per identity and camera, the rest gallery. Products (fashion,
    imaterialist) have no camera views, and people seen by one camera only form no query: there is
    no re-identification then, the images are evaluated for their attributes only.
Attribute metrics (per attribute accuracy, macro F1, per class P/R/F1, mA, and the instance-based
accuracy / precision / recall / F1 of the PAR literature, mtl.scoring.instance_metrics) are
computed on the same images (queries and gallery together), for every task of the run or those of
--tasks.

Labels are those of the run's class table (tasks.json), matched by class name: another folder
(or another part of the same collection) orders and groups its classes otherwise. A value the
run has no class for counts as the run's "other" class when it has one, else as unknown (left
out of the metrics); the command prints how many rows per task. Images the pipeline cannot
decode are skipped, counted and named (the "skipped_images" of the evaluation).

Before computing anything the command checks that the run's metrics.json can be read and that
the run folder (and --out) can be written, so a long evaluation is never lost at the end.

Re-identification: the descriptor is the BN-neck output "embedding" of the identity head (the
pooled trunk features for a run without the identity task); distance cosine (default) or
euclidean; mAP, mINP, rank-1/5/10 and CMC without and with k-reciprocal re-ranking, and the
metrics of a random ranking ("chance"). --attr-weight / --attr-alpha add attribute-combined
distances (d_feat + w * d_attr and d_feat * (alpha + d_attr)) to measure whether attributes help.

A run trained with data.junk_fraction > 0 (an auxiliary junk class) ranks only the gallery images
it does not predict junk: P(junk) above --junk-threshold (default 0.5) are left out, and the
command prints how many.

Retrieval examples: with a ranking, RUN/reid_examples.json gets --examples queries (default 9),
chosen from the best to the worst average precision (best, median and worst among them), each with
its top 10 gallery images; mtl-report shows them (--queries N).

Output: the key "evaluation" of RUN/metrics.json (the training metrics in the other keys are kept;
a previous "evaluation" is replaced, and the command says so), RUN/reid_examples.json, and --out
FILE if given.

Examples:
    mtl-evaluate --run runs/reid
    mtl-evaluate --run runs/reid --data ../shared/data/market1501-course --rerank no
    mtl-evaluate --run runs/joint --attr-weight 0.5 --attr-alpha 1.0
    mtl-evaluate --run runs/products            # attributes of the held-out products

From a checkout without installing: python scripts/evaluate.py (same flags).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mtl.cli.common import check_junk_threshold, new_parser, one_of, run_main
from mtl.config import valid_values
from mtl.errors import ConfigError, DataError, MtlError, WriteError
from mtl.tasks import KINDS

EXAMPLE_QUERIES = 9  # mtl.reid.protocol.EXAMPLE_QUERIES, without importing the numerical stack for --help


def parser() -> argparse.ArgumentParser:
    """The arguments of ``mtl-evaluate``."""
    p = new_parser("evaluate", __doc__)
    p.add_argument("--run", required=True, help="run directory written by mtl-train")
    p.add_argument("--data", help="data folder to evaluate on (default: the folder the run was trained on)")
    p.add_argument("--format", default="auto", metavar="FORMAT",
                   help=f"data format: {one_of(valid_values('data.format'))} (default auto: detected from the "
                        "folder's layout)")
    p.add_argument("--images", default="auto", choices=["auto", "val", "unseen", "all"],
                   help="which labelled images of a course-layout folder are evaluated (see above; default auto)")
    p.add_argument("--distance", default="cosine", choices=["cosine", "euclidean"],
                   help="descriptor distance: cosine (default) or euclidean on the raw BN-neck output")
    p.add_argument("--rerank", default="auto", choices=["auto", "yes", "no"],
                   help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3): auto (default) re-ranks the plain "
                        "distance always and the attribute-combined ones up to 8000 images; yes: always; no: never")
    p.add_argument("--attr-weight", type=float, metavar="W",
                   help="also rank with d_feat + W * d_attr (attribute distance; needs attribute tasks)")
    p.add_argument("--attr-alpha", type=float, metavar="ALPHA",
                   help="also rank with d_feat * (ALPHA + d_attr) (needs attribute tasks)")
    p.add_argument("--seed", type=int, help="seed of the query/gallery split of a labelled folder "
                                            "(default: the run's data.split_seed)")
    p.add_argument("--batch-size", type=int, help="images per batch of feature extraction (default: the run's)")
    p.add_argument("--tasks", help="comma-separated tasks of the run to evaluate (default: all of the run's tasks)")
    p.add_argument("--no-attributes", action="store_true", help="skip the attribute metrics")
    p.add_argument("--examples", type=int, default=EXAMPLE_QUERIES, metavar="N",
                   help=f"ranked retrieval examples written to RUN/reid_examples.json for the report: N queries "
                        f"from best to worst AP (default {EXAMPLE_QUERIES}; 0: none)")
    p.add_argument("--out", help="also write the evaluation to this JSON file")
    p.add_argument("--junk-threshold", type=float, metavar="P",
                   help="a run trained with data.junk_fraction > 0: gallery images it predicts junk with "
                        "P(junk) above this are left out of the ranking (default 0.5; 1: none left out)")
    p.add_argument("--masks", metavar="DIR",
                   help="a run trained with data.person_mask: the person masks of --data (mtl-masks --data DATA "
                        "--out DIR; default: the run's data.person_mask)")
    return p


def _line(name: str, m: dict) -> str:
    return (f"  {name:28s} mAP {m['mAP']:.4f}  rank-1 {m['rank1']:.4f}  rank-5 {m['rank5']:.4f}  "
            f"rank-10 {m['rank10']:.4f}  mINP {m['mINP']:.4f}")


def check_outputs(model, run_tasks, run_dir, wanted: str | None = None) -> list:
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
    from mtl.reid.heads import CENTER, EMBEDDING

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


def check_outputs_writable(run_dir: Path, out: str | None) -> dict:
    """Before any work: read the run's ``metrics.json`` (the evaluation is added to it) and check
    that the run folder (and ``--out``'s folder) can be written.

    Returns:
        The metrics read (``{}`` when the run has none).

    Raises:
        DataError: ``metrics.json`` exists but cannot be read or is not a JSON object.
        WriteError: a folder the results go to cannot be written.
    """
    from mtl.io import ensure_writable
    from mtl.rundir import METRICS, RunDir

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


def main(argv=None) -> int:
    """Evaluate as ``mtl-evaluate`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Raises:
        MtlError: bad input (run, data, --tasks, unwritable output); :func:`entry` prints it as one line.
    """
    args = parser().parse_args(argv)
    if args.examples < 0:
        raise ConfigError(f"--examples {args.examples}: give 0 (no retrieval examples) or more")
    check_junk_threshold(args.junk_threshold)
    from mtl.io import folder_lock

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise DataError(f"--run {run_dir}: no such run folder")
    # one process at a time on a run: the evaluation is a read-modify-write of its metrics.json
    with folder_lock(run_dir, "evaluation"):
        return _evaluate(args, run_dir)


def _evaluate(args, run_dir: Path) -> int:
    """``main`` once the run folder is locked."""
    import pandas as pd

    from mtl.data.pipeline import drop_unreadable
    from mtl.data.masks import mask_folder
    from mtl.data.relabel import load_for_run, unseen_summary
    from mtl.reid.protocol import JUNK_THRESHOLD, evaluate_labelled, evaluation_images, no_ranking_reason
    from mtl.rundir import METRICS, REID_EXAMPLES, RunDir
    from mtl.runs import load_run

    metrics = check_outputs_writable(run_dir, args.out)
    print(f"loading run {run_dir}", flush=True)
    run = load_run(run_dir)  # a corrupt or truncated model.keras is one line naming the file
    tasks = check_outputs(run.model, run.tasks, run_dir, args.tasks)
    check_junk_threshold(args.junk_threshold, run.model, run_dir)
    cfg = run.config
    root = Path(args.data) if args.data else run.data_root()
    # labelled with the run's class table, by class name (another folder orders its classes otherwise)
    source, unseen = load_for_run(root, args.format, tasks)
    unseen_line = unseen_summary(unseen, tasks)
    if unseen_line:
        print(f"{root}: {unseen_line}", flush=True)
    seed = cfg.data.split_seed if args.seed is None else args.seed
    query, gallery, what = evaluation_images(source, run.split, run.data.get("root"), args.images, seed)
    query, skipped_query = drop_unreadable(query)
    gallery, skipped_gallery = drop_unreadable(gallery)
    skipped = pd.concat([skipped_query, skipped_gallery], ignore_index=True)
    if len(skipped):
        print(f"skipped {len(skipped)} image(s) the pipeline cannot decode, e.g. {skipped['path'][0]} "
              f"({skipped['reason'][0]})", flush=True)
    print(f"evaluating on {root}: {what}", flush=True)
    start = time.time()
    result = evaluate_labelled(run.model, tasks, query, gallery, cfg.data.image_height, cfg.data.image_width,
                               args.batch_size or cfg.train.batch_size, args.distance, args.rerank,
                               args.attr_weight, args.attr_alpha, attributes=not args.no_attributes,
                               examples=args.examples,
                               junk_threshold=JUNK_THRESHOLD if args.junk_threshold is None else args.junk_threshold,
                               masks=mask_folder(args.masks or cfg.data.person_mask, source.root))
    examples = result.pop("examples", None)
    evaluation = {
        "data": str(source.root), "format": source.name, "images": what,
        "settings": {"images": args.images, "distance": args.distance, "rerank": args.rerank,
                     "attr_weight": args.attr_weight, "attr_alpha": args.attr_alpha, "seed": seed,
                     "junk_threshold": args.junk_threshold,
                     "tasks": [t.name for t in tasks]},
        "unseen_labels": unseen,
        "skipped_images": skipped.to_dict("records"),
        **result, "time_s": round(time.time() - start, 1),
    }

    attributes = result.get("attributes")
    if attributes:
        width = max(map(len, attributes["tasks"]), default=0)
        for name, r in attributes["tasks"].items():
            if r.get("accuracy") is not None:
                print(f"  {name:{width}s}  accuracy {r['accuracy']:.3f}  macro-F1 {r['macro_f1']:.3f}")
            elif r.get("mae") is not None:  # a regression task
                print(f"  {name:{width}s}  {KINDS[r['kind']].result_line(r)}")
        s = attributes["summary"]
        if s["mean_accuracy"] is not None:
            ma = f"  mA {s['mA']:.3f}" if s["mA"] is not None else ""
            print(f"attributes: mean accuracy {s['mean_accuracy']:.3f}{ma} on {attributes['num_images']} images")
        from mtl.scoring import instance_line

        if line := instance_line(s):  # the instance-based PAR metrics (mtl.scoring.instance_metrics)
            print(f"attributes: {line}")
    reid = result.get("reid")
    if reid is None:
        print(f"re-identification: {no_ranking_reason(gallery)}")
    else:
        print(f"re-identification ({reid['feature_layer']} features, {reid['distance']} distance, "
              f"{reid['num_query']} queries, {reid['num_gallery']} gallery images):")
        if "junk_dropped" in reid:  # a run trained with data.junk_fraction (mtl.reid.protocol.evaluate_labelled)
            print(f"  junk: {reid['junk_dropped']} gallery image(s) predicted junk (P > {reid['junk_threshold']:g}) "
                  "left out of the ranking")
        for key in ("plain", "reranked", "attr_weighted", "attr_weighted_reranked", "attr_multiplicative",
                    "attr_multiplicative_reranked", "chance"):
            if key in reid:
                print(_line(key, reid[key]))
        for note in reid.get("notes", []):
            print(f"  note: {note}")

    metrics_path = RunDir(run_dir).file(METRICS)
    if "evaluation" in metrics:
        print(f"replacing the previous evaluation in {metrics_path} (data {metrics['evaluation'].get('data')}); "
              "training metrics are kept")
    metrics["evaluation"] = evaluation
    RunDir(run_dir).write_metrics(metrics)
    print(f"written: {metrics_path} (key 'evaluation')")
    if examples:
        RunDir(run_dir).write_json(REID_EXAMPLES, examples)
        print(f"written: {RunDir(run_dir).file(REID_EXAMPLES)} ({len(examples)} ranked retrieval examples, "
              f"best to worst AP; shown by mtl-report)")
    if args.out:
        from mtl.io import atomic_write_json

        atomic_write_json(args.out, evaluation)
        print(f"written: {args.out}")
    return 0


def entry() -> None:
    """The console script ``mtl-evaluate``."""
    run_main(main)


if __name__ == "__main__":
    entry()
