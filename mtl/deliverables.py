"""The course deliverable files of the Market-1501 course layout.

``classification_test.csv``: one row per ``test/`` image, sorted by file name. The first column,
``file_name``, is the image's file name (``000123.jpg``); then the attribute columns in the order
and coding of ``annotations_train.csv``:

* ``age`` 1-4 (young, teenager, adult, old);
* ``backpack bag handbag clothes down up hair hat gender`` coded 1/2 (1 = the first value of the
  annotation README: no / dress / long / short hair / male, 2 = the second);
* the eight upper-body colour columns ``upblack .. upgreen`` then ``upmulticolor``, and the nine
  lower-body ``downblack .. downbrown`` then ``downmulticolor``, one-hot in the same 1/2 coding:
  exactly one of each group is 2 (``*multicolor`` = 2 where the annotation would set no colour).

``reid_test.txt``: one line per query image (``queries/``, sorted by name)::

    000123.jpg: 004567.jpg, 001234.jpg, ...

the gallery (``test/``) ranked best first, ``top`` images (100 by default, or the whole gallery
if smaller). File names only, no folders.

Variable-length lines (a distance threshold; :func:`threshold_rows`): each
query lists every gallery image at distance ``<= threshold``, best first, at least the nearest one
(a line needs one name, and a nearest guess costs less than no answer) and at most ``top``; the
rule ``mtl.reid.threshold`` chooses and scores the threshold under.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from mtl.data.masks import mask_folder
from mtl.data.relabel import load_for_run
from mtl.data.sources.market_course import BINARY_ATTRIBUTES, DOWN_COLUMNS, UP_COLUMNS
from mtl.errors import DataError
from mtl.io import atomic_path, atomic_write_text, ensure_writable, make_folder
from mtl.predictions import fill_with_majority
from mtl.reid.rerank import re_ranking_features
from mtl.reid.threshold import MIN_RETURN, TOP_K, returned_counts, top_k_rows
from mtl.rundir import METRICS, RunDir
from mtl.tasks import JUNK

FILE_COLUMN = "file_name"
CLASSIFICATION_FILE = "classification_test.csv"
REID_FILE = "reid_test.txt"
UP_MULTI, DOWN_MULTI = "upmulticolor", "downmulticolor"
# the annotation file's order: age, then the binary attributes as the CSV has them, then colours
SCALAR_COLUMNS = ("age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender")
COLOR_GROUPS = {"upcolor": UP_COLUMNS + (UP_MULTI,), "downcolor": DOWN_COLUMNS + (DOWN_MULTI,)}
BINARY_TASKS = tuple(name for name, _ in BINARY_ATTRIBUTES)


def classification_columns(tasks: Sequence[str] | None = None) -> list[str]:
    """Attribute columns of ``classification_test.csv`` (after ``file_name``), in file order.

    Args:
        tasks: the task names predicted; None means all (the complete deliverable).
    """
    wanted = None if tasks is None else set(tasks)
    columns = [c for c in SCALAR_COLUMNS if wanted is None or c in wanted]
    for task, group in COLOR_GROUPS.items():
        if wanted is None or task in wanted:
            columns += list(group)
    return columns


def classification_frame(file_names: Sequence[str], predictions: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Predicted class indices -> the deliverable's table in the annotation coding.

    Args:
        file_names: image file names, one per row.
        predictions: ``{task: class index per row}`` for the Market attribute tasks (indices as in
            ``mtl.data.sources.market_course.market_tasks``: binary 0/1, age 0-3, colour 0..K-1
            with the last class multicolour). Tasks absent here have no columns.

    Returns:
        ``file_name`` and the columns of ``classification_columns(predictions)``, int codes.
    """
    n = len(file_names)
    frame = pd.DataFrame({FILE_COLUMN: [Path(f).name for f in file_names]})
    for task in predictions:
        if task not in SCALAR_COLUMNS and task not in COLOR_GROUPS:
            raise DataError(f"task {task!r} has no column in {CLASSIFICATION_FILE}")
    for column in SCALAR_COLUMNS:
        if column in predictions:
            idx = np.asarray(predictions[column]).reshape(-1)
            limit = 4 if column == "age" else 2
            if len(idx) != n or idx.min(initial=0) < 0 or idx.max(initial=0) >= limit:
                raise DataError(f"{column}: expected {n} class indices in 0..{limit - 1}")
            frame[column] = idx.astype(np.int64) + 1
    for task, group in COLOR_GROUPS.items():
        if task in predictions:
            idx = np.asarray(predictions[task]).reshape(-1)
            if len(idx) != n or idx.min(initial=0) < 0 or idx.max(initial=0) >= len(group):
                raise DataError(f"{task}: expected {n} class indices in 0..{len(group) - 1}")
            for i, column in enumerate(group):
                frame[column] = np.where(idx == i, 2, 1).astype(np.int64)
    return frame[[FILE_COLUMN] + classification_columns(list(predictions))]


def write_classification_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Write the table of ``classification_frame`` (atomically, no index column)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def threshold_rows(distmat: np.ndarray, threshold: float, top: int, min_return: int = MIN_RETURN
                   ) -> list[np.ndarray]:
    """Variable-length rankings: per row, the column indices with distance ``<= threshold``,
    smallest first (ties: lower index), at least ``min_return`` and at most ``top`` of them.

    Returns:
        One int array per row (the rule of ``mtl.reid.threshold.returned_counts``).
    """
    ranked = top_k_rows(distmat, top)
    return [row[:n] for row, n in zip(ranked, returned_counts(distmat, threshold, min_return, top))]


def rank_gallery(q_feat: np.ndarray, g_feat: np.ndarray, top: int = 100, distance: str = "cosine",
                 chunk: int = 256, threshold: float | None = None) -> np.ndarray | list[np.ndarray]:
    """Gallery indices per query, best first, computed ``chunk`` queries at a time (memory: one
    ``chunk x G`` block of distances).

    Args:
        q_feat, g_feat: ``(Q, D)`` / ``(G, D)`` descriptors.
        top: images per query (with ``threshold``: at most).
        distance: ``cosine`` or ``euclidean``.
        threshold: None: ``(Q, min(top, G))`` array; a distance: the variable-length lines of
            :func:`threshold_rows`, one array per query.
    """
    from mtl.reid.protocol import feature_distance

    rows = []
    for i in range(0, len(q_feat), chunk):
        d = feature_distance(q_feat[i:i + chunk], g_feat, distance)
        rows.append(top_k_rows(d, top) if threshold is None else threshold_rows(d, threshold, top))
    if threshold is not None:
        return [row for block in rows for row in block]
    return np.concatenate(rows) if rows else np.zeros((0, min(top, len(g_feat))), np.int64)


def reid_lines(query_names: Sequence[str], gallery_names: Sequence[str],
               ranking: np.ndarray | Sequence[np.ndarray]) -> list[str]:
    """``"q.jpg: g1.jpg, g2.jpg, ..."`` lines from a ``(Q, top)`` array of gallery indices, or one
    index array per query (variable-length lines, each non-empty)."""
    gallery = np.asarray([Path(g).name for g in gallery_names])
    if len(query_names) != len(ranking):
        raise DataError(f"{len(query_names)} queries but {len(ranking)} rankings")
    for q, row in zip(query_names, ranking):
        if len(row) == 0:  # an empty gallery: "q.jpg: " would not be a valid line
            raise DataError(f"{REID_FILE}: no gallery image to list for {Path(q).name} (a line names at least one)")
    return [f"{Path(q).name}: {', '.join(gallery[np.asarray(row, np.int64)])}" for q, row in zip(query_names, ranking)]


def write_reid_txt(path: str | Path, query_names: Sequence[str], gallery_names: Sequence[str],
                   ranking: np.ndarray | Sequence[np.ndarray]) -> None:
    """Write ``reid_test.txt`` (see the module docstring), atomically."""
    atomic_write_text(path, "\n".join(reid_lines(query_names, gallery_names, ranking)) + "\n")


_REID_LINE = re.compile(r"^([^:,\s]+): ([^:,\s]+(?:, [^:,\s]+)*)$")


def read_reid_txt(path: str | Path) -> dict[str, list[str]]:
    """Parse a ``reid_test.txt``: ``{query: [gallery names, best first]}``.

    Raises:
        DataError: a line that does not follow the format, a repeated query, or a repeated
            gallery image within one line (names the line).
    """
    ranked: dict[str, list[str]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        m = _REID_LINE.match(line)
        if not m:
            raise DataError(f"{path}:{number}: expected 'query.jpg: g1.jpg, g2.jpg, ...', got {line[:80]!r}")
        query, names = m.group(1), m.group(2).split(", ")
        if query in ranked:
            raise DataError(f"{path}:{number}: query {query} listed twice")
        if len(set(names)) != len(names):
            raise DataError(f"{path}:{number}: a gallery image is listed twice for {query}")
        ranked[query] = names
    return ranked


# === The deliverables of a run ===

def write_deliverables(run_dir: str | Path, data: str | Path | None = None, out: str | Path | None = None,
                       top: int = TOP_K, distance: str | None = None, rerank: bool = False,
                       reid_threshold: str | float | None = None, batch_size: int | None = None,
                       junk_threshold: float | None = None, masks: str | Path | None = None,
                       log: Callable[[str], None] = print) -> list[Path]:
    """``classification_test.csv`` and ``reid_test.txt`` of a finished run on a course-layout folder,
    as ``mtl-predict --data`` writes them (its flags are these arguments).

    Only ``test/`` and ``queries/`` are read. A ``test/`` image the pipeline cannot decode keeps its
    row of ``classification_test.csv`` (the class predicted most often over the other images) and is
    left out of the rankings, as is a ``queries/`` image; a run with the ``junk`` output leaves out
    of the gallery the images it predicts junk.

    Args:
        run_dir: the run folder.
        data: the course-layout folder (default: the run's data folder).
        out: the folder written into (default: ``run_dir``); checked writable before any work.
        top: gallery images per query (with a threshold: at most).
        distance: ``cosine`` or ``euclidean`` (default: cosine, or the distance of ``auto``'s threshold).
        rerank: k-reciprocal re-ranking of the whole ``test/`` gallery.
        reid_threshold: None: ``top`` images per query; a distance: variable-length lines
            (:func:`threshold_rows`); ``"auto"``: the threshold the run chose (:func:`resolve_reid_threshold`).
        batch_size: images per batch (default: the run's ``train.batch_size``).
        junk_threshold: for a run with the ``junk`` output, the P(junk) above which a ``test/`` image
            is not retrieved (default ``mtl.reid.protocol.JUNK_THRESHOLD``).
        masks: the person masks of ``data`` for a 4-channel run (default: the run's ``data.person_mask``).
        log: where the progress and the files written are told, one line per call.

    Returns:
        The files written.

    Raises:
        MtlError: a folder without ``test/``, nothing decodable, a bad threshold or flag, an unwritable ``out``.
    """
    # the model's modules load TensorFlow: imported here so that the file formats above do not
    from mtl.data.pipeline import drop_unreadable
    from mtl.inference import extract_features
    from mtl.scoring import class_probabilities
    from mtl.reid.embedding import embedding_layer_name, feature_model
    from mtl.reid.protocol import JUNK_THRESHOLD, RERANK_PARAMS, has_junk_output, junk_flags, require_junk_output
    from mtl.runs import load_run

    out = Path(out) if out else Path(run_dir)
    ensure_writable(out)  # before hours of extraction
    reid_threshold, distance = resolve_reid_threshold(run_dir, reid_threshold, distance, rerank, log)
    run = load_run(run_dir)
    cfg = run.config
    root = Path(data) if data else run.data_root()
    if not (root / "test").is_dir():
        raise DataError(f"{root}: no test/ folder: the course deliverables need test/ (and queries/ for "
                        f"{REID_FILE}); to predict on any images: mtl-predict --run {run_dir} --images {root}")
    # the one reader of data for an existing run; only test/ and queries/ are read (no train/ needed)
    source, _ = load_for_run(root, "market1501_course", run.tasks, require_labels=False, train=False)
    gallery_all = source.subset("test")
    queries = source.subset("query")
    if gallery_all.empty:
        raise DataError(f"{root}: no test/ images to predict")
    # a file the pipeline cannot decode would stop feature extraction: it is left out of the extraction
    gallery, skipped_gallery = drop_unreadable(gallery_all)
    queries, skipped_queries = drop_unreadable(queries)
    if gallery.empty:
        raise DataError(f"{root}: no test/ image can be decoded")
    make_folder(out)
    h, w, batch = cfg.data.image_height, cfg.data.image_width, batch_size or cfg.train.batch_size
    deliverable = set(SCALAR_COLUMNS) | set(COLOR_GROUPS)
    attr_tasks = [t for t in run.tasks if t.name in deliverable]
    layer = embedding_layer_name(run.model)
    junk = has_junk_output(run.model)
    if junk_threshold is not None:
        require_junk_output(run.model, run_dir)
    start = time.time()
    for name, skipped in (("test/", skipped_gallery), ("queries/", skipped_queries)):
        if len(skipped):
            log(f"{name}: {len(skipped)} image(s) the pipeline cannot decode: "
                + "; ".join(f"{p} ({r})" for p, r in zip(skipped["path"][:3], skipped["reason"][:3])))

    log(f"test/: {len(gallery)} images, queries/: {len(queries)} images; features: {layer}")
    names = [layer] + [t.name for t in attr_tasks] + ([JUNK] if junk else [])
    masks = mask_folder(masks or cfg.data.person_mask, source.root)  # a 4-channel model's 4th channel
    outputs = extract_features(feature_model(run.model, names), gallery["path"], h, w, batch, desc="test/ images",
                               masks=masks)
    written = []
    if attr_tasks:
        predictions = {t.name: class_probabilities(outputs[t.name], t).argmax(1) for t in attr_tasks}
        decoded = ~gallery_all["path"].isin(skipped_gallery["path"]).to_numpy()
        frame = classification_frame(gallery_all["path"], fill_with_majority(predictions, decoded))
        write_classification_csv(out / CLASSIFICATION_FILE, frame)
        written.append(out / CLASSIFICATION_FILE)
        missing = sorted(deliverable - set(predictions))
        note = f" (the run does not predict {', '.join(missing)}: no columns for them)" if missing else ""
        log(f"written: {out / CLASSIFICATION_FILE} ({len(frame)} rows){note}")
        if len(skipped_gallery):
            log(f"note: {CLASSIFICATION_FILE} lists the {len(skipped_gallery)} test/ image(s) that cannot be "
                "decoded too (one row per file), with the class the model predicts most often over the other "
                "test/ images")
    else:
        log(f"the run predicts no Market attribute: {CLASSIFICATION_FILE} not written")

    if queries.empty:
        log(f"{root}: no queries/ images: {REID_FILE} not written")
        return written
    g_feat = outputs[layer].reshape(len(gallery), -1)
    if junk:  # the test/ images the run predicts junk (not a person) are not retrieved
        threshold = JUNK_THRESHOLD if junk_threshold is None else junk_threshold
        is_junk = junk_flags(outputs[JUNK], threshold)
        gallery, g_feat = gallery[~is_junk].reset_index(drop=True), g_feat[~is_junk]
        log(f"junk: {int(is_junk.sum())} of {len(is_junk)} test/ image(s) predicted junk (P > {threshold:g}) "
            f"left out of {REID_FILE}")
        if gallery.empty:
            raise DataError(f"every test/ image is predicted junk (P > {threshold:g}): raise --junk-threshold")
    del outputs
    q_feat = extract_features(feature_model(run.model, [layer]), queries["path"], h, w, batch,
                              desc="queries/ images", masks=masks)[layer].reshape(len(queries), -1)
    if rerank:
        log("re-ranking (k-reciprocal) ...")
        reranked = re_ranking_features(q_feat, g_feat, metric=distance, **RERANK_PARAMS)
        ranking = top_k_rows(reranked, top) if reid_threshold is None else threshold_rows(reranked, reid_threshold, top)
    else:
        ranking = rank_gallery(q_feat, g_feat, top, distance, threshold=reid_threshold)
    write_reid_txt(out / REID_FILE, queries["path"], gallery["path"], ranking)
    written.append(out / REID_FILE)
    note = ""
    if len(skipped_gallery) or len(skipped_queries):
        note = (f"; left out as they cannot be decoded: {len(skipped_gallery)} test/ and {len(skipped_queries)} "
                "queries/ image(s)")
    sizes = [len(row) for row in ranking]
    shape = (f"x top {max(sizes, default=0)}" if reid_threshold is None else
             f"with {min(sizes, default=0)}-{max(sizes, default=0)} images each, mean {np.mean(sizes or [0]):.1f}, "
             f"at distance <= {reid_threshold:.4g}")
    log(f"written: {out / REID_FILE} ({len(queries)} queries {shape}){note} in {time.time() - start:.0f} s")
    return written


def resolve_reid_threshold(run_dir: str | Path, reid_threshold: str | float | None, distance: str | None,
                           rerank: bool = False, log: Callable[[str], None] = print) -> tuple[float | None, str]:
    """The deliverable's distance threshold and the distance it is in.

    ``auto`` reads ``metrics.json["reid"]["threshold"]`` (chosen on the run's held-out people, in
    the plain distance it records, which is then the distance used unless ``distance`` names
    another: an error, as is ``rerank``, whose distances have another scale).

    Args:
        run_dir: the run folder.
        reid_threshold: None (fixed-length lines), a distance, or ``"auto"``.
        distance: the distance asked for; None: cosine, or the one ``auto``'s threshold was chosen in.
        rerank: re-ranked distances are asked for.
        log: where the threshold read for ``auto`` is told.

    Returns:
        ``(threshold or None, distance)``.

    Raises:
        DataError: ``auto`` for a run that records no threshold, or that does not fit the flags.
    """
    if reid_threshold != "auto":
        return reid_threshold, distance or "cosine"
    run = RunDir(run_dir)
    metrics = run.read_metrics() if run.file(METRICS).is_file() else None
    reid = (metrics or {}).get("reid")
    record = reid.get("threshold") if isinstance(reid, dict) else None
    if not isinstance(record, dict) or not isinstance(record.get("value"), (int, float)):
        raise DataError(f"--reid-threshold auto: {run_dir} records no threshold ({METRICS} reid.threshold: runs "
                        "with the identity task and held-out people seen by two cameras); give a distance or none")
    if rerank:
        raise DataError("--reid-threshold auto was chosen on plain distances; with --rerank give a distance "
                        "(re-ranked distances have another scale) or none")
    recorded = record.get("distance", "cosine")
    if distance and distance != recorded:
        raise DataError(f"--reid-threshold auto is a {recorded} distance; --distance {distance} does not fit "
                        f"(drop --distance, or give a {distance} threshold)")
    log(f"reid threshold: {record['value']:.4g} ({recorded}; chosen on the run's held-out people, "
        f"F1 {record.get('f1', float('nan')):.3f} cross-validated)")
    return float(record["value"]), recorded
