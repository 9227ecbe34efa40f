"""Re-identification evaluation of a trained model: which images are queries and gallery, and the
metrics of ranking the gallery for each query.

Query / gallery construction:

* **original Market-1501 layout** (``query/`` and ``bounding_box_test/``): the queries are
  ``query/``, the gallery ``bounding_box_test/``; junk boxes (identity -1) were dropped by the
  source, distractors (identity 0) stay in the gallery, where they match no query;
* **labelled folder** (the course layout's ``train/``, or any table of held-out people):
  ``mtl.data.splits.query_gallery_split``, one query per identity and camera, every other image
  of these people in the gallery (identities seen by one camera only stay as distractors).
  Which labelled images are evaluated is chosen by :func:`evaluation_images`.

Metrics (``mtl.reid.evaluate.evaluate_rank``: same identity and same camera removed from each
query's ranking): mAP, mINP, rank-1/5/10 and the CMC curve, for the plain distance and after
k-reciprocal re-ranking (``mtl.reid.rerank``), plus ``chance``: the same metrics for a random
ranking of the same query / gallery sets, what any descriptor must clearly beat.

Distances (``mtl.reid.distance``): ``cosine`` (default; the descriptors are the BN-neck output,
the choice of BoT at test time) or ``euclidean`` on the raw descriptors. With the attribute
outputs of a multi-task model, the attribute distance ``d_attr`` (mean absolute difference of
attribute probabilities) can be combined with the appearance distance ``d_feat``, as two course
reports did: ``d_feat + w * d_attr`` (``attr_weight``) and ``d_feat * (alpha + d_attr)``
(``attr_alpha``); each is reported next to the plain one, so a user sees whether attributes help.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mtl.data.splits import query_gallery_split
from mtl.errors import ConfigError, DataError, MtlError
from mtl.scoring import class_probabilities, evaluate_attributes
from mtl.reid.distance import (attribute_distance, combine_multiplicative, combine_weighted, cosine_distance,
                               euclidean_distance)
from mtl.reid.evaluate import evaluate_rank
from mtl.tasks import JUNK, TaskSpec, attribute_tasks, classification_tasks

DISTANCES = ("cosine", "euclidean")
IMAGE_CHOICES = ("auto", "val", "unseen", "all")
RERANK_CHOICES = ("auto", "yes", "no")
# re-ranking parameters of Zhong et al. (also BoT's): k1, k2, lambda
RERANK_PARAMS = {"k1": 20, "k2": 6, "lambda_value": 0.3}
# above this many query + gallery images, "auto" skips re-ranking of the attribute-combined
# distances: they need dense (Q+G)^2 matrices (the plain distance is re-ranked from features,
# in bounded memory, at any size)
DENSE_RERANK_LIMIT = 8000
CMC_RANKS = 20  # length of the CMC curve stored in metrics
# retrieval examples (reid_examples.json, shown by the report): queries chosen from best to worst
# average precision (an odd count holds the median), each with its first EXAMPLE_TOP gallery images
EXAMPLE_QUERIES = 9
EXAMPLE_TOP = 10
NO_CAMERAS = "not applicable (products have no camera views)"
# a gallery image whose junk probability is above this is left out of the ranking,
# for a model trained with data.junk_fraction > 0 (its ``junk`` output)
JUNK_THRESHOLD = 0.5
ONE_CAMERA = "skipped (no identity is seen by two cameras)"


# === Which images ===

def has_query_gallery(source) -> bool:
    """Whether the source has its own query / gallery subsets (the original Market-1501 layout)."""
    subsets = set(source.table["subset"].unique())
    return {"query", "gallery"} <= subsets


def evaluation_images(source, run_split: pd.DataFrame | None = None, run_root: str | None = None,
                      images: str = "auto", seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Query and gallery images of ``source`` for evaluating a run.

    Args:
        source: a ``SourceData``.
        run_split: the run's ``split.csv`` (path, identity, camera, split), or None.
        run_root: the data folder the run was trained on (``data.json`` root), or None.
        images: for a labelled folder (no query/gallery subsets):

            * ``val``: the run's validation images (``split.csv``; the folder must be the run's);
            * ``unseen``: every labelled image whose identity the run did not train on;
            * ``all``: every labelled image (a folder of new people);
            * ``auto``: ``val`` when the folder is the one the run was trained on, else ``unseen``.

            The original layout always uses ``query/`` and ``bounding_box_test/`` (``auto`` only).
        seed: of the query / gallery split of a labelled folder.

    Returns:
        ``(query, gallery, description)``: two source-table frames and a one-line description. A
        folder where no identity is seen by two cameras (products) has no query: every image is
        in ``gallery``, for the attribute metrics alone.

    Raises:
        ConfigError: an unknown ``images`` value, or one that does not apply.
        DataError: no image left to evaluate.
    """
    if images not in IMAGE_CHOICES:
        raise ConfigError(f"unknown images choice {images!r}; valid: {', '.join(IMAGE_CHOICES)}")
    if has_query_gallery(source):
        if images != "auto":
            raise ConfigError(f"--images {images} applies to a labelled folder; {source.root} has its own "
                              "query/ and gallery (bounding_box_test/) images, which are always used")
        query, gallery = source.subset("query"), source.subset("gallery")
        gallery = gallery[gallery["identity"] >= 0].reset_index(drop=True)  # junk, if a loader kept it
        return query, gallery, f"query/ ({len(query)}) against bounding_box_test/ ({len(gallery)})"
    labelled = source.subset("train")
    labelled = labelled[labelled["identity"] >= 0]
    same_folder = run_root is not None and Path(run_root).resolve() == Path(source.root).resolve()
    if images == "auto":
        images = "val" if same_folder and run_split is not None else "unseen"
    if images in ("val", "unseen") and run_split is None:
        raise ConfigError(f"--images {images} needs the run's split.csv")
    if images == "val":
        val_paths = set(run_split.loc[run_split["split"] == "val", "path"])
        table = labelled[labelled["path"].isin(val_paths)]
        if table.empty:
            raise DataError(f"none of the run's validation images (split.csv) is in {source.root}; "
                            "evaluate the folder the run was trained on, or use --images unseen / all")
        what = "the run's validation identities"
    elif images == "unseen":
        trained = set(run_split.loc[run_split["split"] == "train", "identity"])
        table = labelled[~labelled["identity"].isin(trained)]
        what = "every labelled identity the run did not train on"
    else:
        table = labelled
        what = "every labelled image"
    if table.empty:
        raise DataError(f"no labelled image left to evaluate in {source.root} ({what})")
    query, gallery = query_gallery_split(table.reset_index(drop=True), seed)
    if query.empty:  # products, or people seen by one camera: attributes only
        return query, table.reset_index(drop=True), (
            f"{what}: {len(table)} images; re-identification {no_ranking_reason(table)}")
    ids = table["identity"].nunique()
    return query, gallery, f"{what}: {ids} identities, {len(query)} queries, {len(gallery)} gallery images"


def no_ranking_reason(table: pd.DataFrame) -> str:
    """Why ``table`` gives no re-identification query, in the words of its kind of data.

    Returns:
        ``NO_CAMERAS`` when no image has a camera (products: camera -1), else ``ONE_CAMERA``.
    """
    cameras = table["camera"] if "camera" in table else pd.Series([], dtype=int)
    return NO_CAMERAS if not (pd.to_numeric(cameras, errors="coerce") >= 0).any() else ONE_CAMERA


def has_junk_output(model) -> bool:
    """Whether ``model`` has the auxiliary ``junk`` output (trained with ``data.junk_fraction > 0``)."""
    return any(layer.name == JUNK for layer in model.layers)


def require_junk_output(model, run_dir) -> None:
    """A junk threshold was given for the run in ``run_dir``: its ``model`` must have the ``junk`` output.

    Raises:
        DataError: it has none (one line, naming the run).
    """
    if not has_junk_output(model):
        raise DataError(f"--junk-threshold: the run {run_dir} has no junk output (train it with data.junk_fraction > 0)")


def junk_flags(probabilities, threshold: float = JUNK_THRESHOLD) -> np.ndarray:
    """``(N,)`` bool: the images whose ``junk`` output (P(junk), ``(N,)`` or ``(N, 1)``) is above ``threshold``."""
    return np.asarray(probabilities, np.float32).reshape(len(probabilities), -1)[:, -1] > threshold


# === Metrics ===

def rank_metrics(distmat, q_ids, g_ids, q_cams, g_cams, cmc_ranks: int = CMC_RANKS) -> dict:
    """``evaluate_rank`` as a JSON-ready dict: mAP, mINP, rank1/5/10 and the first CMC values."""
    r = evaluate_rank(distmat, np.asarray(q_ids), np.asarray(g_ids), np.asarray(q_cams), np.asarray(g_cams),
                      max_rank=cmc_ranks)
    return {"mAP": float(r["mAP"]), "mINP": float(r["mINP"]), "rank1": float(r["rank1"]),
            "rank5": float(r["rank5"]), "rank10": float(r["rank10"]),
            "cmc": [round(float(v), 6) for v in r["cmc"]],
            "num_valid_queries": int(r["num_valid_queries"]), "num_queries": int(r["num_queries"])}


def chance_metrics(q_ids, g_ids, q_cams, g_cams, draws: int = 3, seed: int = 0) -> dict:
    """Metrics of random rankings (mean over ``draws``): the floor a descriptor must clearly beat."""
    rng = np.random.default_rng(seed)
    runs = [rank_metrics(rng.random((len(q_ids), len(g_ids)), dtype=np.float32), q_ids, g_ids, q_cams, g_cams)
            for _ in range(draws)]
    return {k: float(np.mean([r[k] for r in runs])) for k in ("mAP", "mINP", "rank1", "rank5", "rank10")}


def feature_distance(a: np.ndarray, b: np.ndarray, distance: str = "cosine") -> np.ndarray:
    """``cosine`` or ``euclidean`` distances between the rows of ``a`` and ``b`` (float32)."""
    if distance == "cosine":
        return cosine_distance(a, b)
    if distance == "euclidean":
        return euclidean_distance(a, b)
    raise ConfigError(f"unknown distance {distance!r}; valid: {', '.join(DISTANCES)}")


def attribute_vectors(outputs: dict, tasks: Sequence[TaskSpec]) -> np.ndarray | None:
    """Attribute probabilities side by side, ``(N, A)``: one column per binary attribute (P(class 1)),
    one per class of each categorical attribute; None without classification tasks."""
    columns = []
    for spec in classification_tasks(tasks):
        probs = class_probabilities(outputs[spec.name], spec)
        columns.append(probs[:, 1:] if spec.type.yes_no else probs)
    return np.concatenate(columns, axis=1) if columns else None


def query_average_precision(distmat, q_ids, g_ids, q_cams, g_cams) -> np.ndarray:
    """Average precision of each query under the protocol of ``evaluate_rank`` (same identity
    and camera removed; ties ordered by gallery index), NaN for a query with no match left.

    One stable sort per query row: for choosing example queries, not for the reported mAP
    (``evaluate_rank`` is the fast, exact one; their mean agrees with its mAP).

    Returns:
        ``(Q,)`` float64 array.
    """
    distmat = np.asarray(distmat)
    q_ids, g_ids, q_cams, g_cams = map(np.asarray, (q_ids, g_ids, q_cams, g_cams))
    ap = np.full(len(distmat), np.nan)
    for i, row in enumerate(distmat):
        order = np.argsort(row, kind="stable")
        same = g_ids[order] == q_ids[i]
        keep = ~(same & (g_cams[order] == q_cams[i]))
        hits = same[keep]
        if hits.any():
            ranks = np.flatnonzero(hits) + 1
            ap[i] = float(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return ap


def choose_queries(ap: np.ndarray, count: int = EXAMPLE_QUERIES) -> list[tuple[int, str]]:
    """``count`` queries spread from the best to the worst average precision.

    Queries without a match (NaN) are never chosen. The first is the best, the last the worst and,
    for an odd ``count``, the middle one the median (the lower middle one of an even number of
    queries); ties go to the lower query index.

    Returns:
        ``[(query index, label)]``, best first; labels ``best AP``, ``median AP``, ``worst AP`` or
        ``AP rank k of n``.
    """
    valid = np.flatnonzero(np.isfinite(ap))
    if count <= 0 or not len(valid):
        return []
    order = valid[np.lexsort((valid, -ap[valid]))]  # best first, lower index first among ties
    n = len(order)
    # floor: the middle of an odd count lands on (n - 1) // 2, the median (the lower one for an even n)
    positions = sorted({int(np.floor(p)) for p in np.linspace(0, n - 1, min(count, n))})
    chosen = []
    for pos in positions:
        if pos == 0:
            label = "best AP"
        elif pos == n - 1:
            label = "worst AP"
        elif pos == (n - 1) // 2:
            label = "median AP"
        else:
            label = f"AP rank {pos + 1} of {n}"
        chosen.append((int(order[pos]), label))
    return chosen


def retrieval_examples(distmat, query: pd.DataFrame, gallery: pd.DataFrame, queries: int = EXAMPLE_QUERIES,
                       top: int = EXAMPLE_TOP) -> list[dict]:
    """Ranked retrieval examples in the format of ``reid_examples.json`` (``mtl.report``).

    The queries are chosen by their average precision (:func:`choose_queries`: best, ..., median,
    ..., worst); each lists its gallery images in distance order (ties by gallery index, as the
    metrics rank them) down to its ``top``-th ranked one. Images the protocol removes (same
    identity and camera) are listed where they fall, flagged ``same_camera_removed``; they take
    no rank.

    Args:
        distmat: ``(Q, G)`` distances of the ranking the metrics report (``plain``).
        query, gallery: the frames the rows / columns come from (``path``, ``identity``, ``camera``).
        queries: how many queries; ``top``: ranked gallery images per query.

    Returns:
        ``[{"query", "query_identity", "query_camera", "ap", "chosen_as", "gallery": [{"path",
        "identity", "camera", "distance", "match", "same_camera_removed"}]}]``.
    """
    distmat = np.asarray(distmat)
    q_ids, g_ids = query["identity"].to_numpy(), gallery["identity"].to_numpy()
    q_cams, g_cams = query["camera"].to_numpy(), gallery["camera"].to_numpy()
    ap = query_average_precision(distmat, q_ids, g_ids, q_cams, g_cams)
    out = []
    for i, label in choose_queries(ap, queries):
        items, ranked = [], 0
        for j in np.argsort(distmat[i], kind="stable"):
            if ranked == top:
                break
            same = g_ids[j] == q_ids[i]
            removed = bool(same and g_cams[j] == q_cams[i])
            ranked += not removed
            items.append({"path": str(gallery["path"].iloc[j]), "identity": _plain(g_ids[j]),
                          "camera": _plain(g_cams[j]), "distance": round(float(distmat[i, j]), 4),
                          "match": bool(same and not removed), "same_camera_removed": removed})
        out.append({"query": str(query["path"].iloc[i]), "query_identity": _plain(q_ids[i]),
                    "query_camera": _plain(q_cams[i]), "ap": round(float(ap[i]), 4), "chosen_as": label,
                    "gallery": items})
    return out


def _plain(value):
    """A numpy scalar as the JSON-ready Python value."""
    return value.item() if isinstance(value, np.generic) else value


def _dense_rerank(d_qg, d_qq, d_gg):
    from mtl.reid.rerank import re_ranking

    return re_ranking(d_qg, d_qq, d_gg, **RERANK_PARAMS)


def evaluate_embeddings(q_feat, g_feat, q_ids, g_ids, q_cams, g_cams, distance: str = "cosine",
                        rerank: str = "auto", q_attr=None, g_attr=None, attr_weight: float | None = None,
                        attr_alpha: float | None = None, chance: bool = True) -> dict:
    """Ranking metrics of query descriptors against gallery descriptors.

    Args:
        q_feat, g_feat: ``(Q, D)`` / ``(G, D)`` descriptors.
        q_ids, g_ids, q_cams, g_cams: identities and cameras.
        distance: ``cosine`` or ``euclidean``.
        rerank: ``yes`` / ``no`` / ``auto``. The plain distance is re-ranked from features in
            bounded memory (``yes`` and ``auto``); the attribute-combined ones need dense
            ``(Q+G)^2`` matrices and ``auto`` re-ranks them up to ``DENSE_RERANK_LIMIT`` images.
        q_attr, g_attr: ``(Q, A)`` / ``(G, A)`` attribute probabilities, for the combined distances.
        attr_weight: report ``d_feat + attr_weight * d_attr`` as ``attr_weighted``.
        attr_alpha: report ``d_feat * (attr_alpha + d_attr)`` as ``attr_multiplicative``.
        chance: also report the metrics of random rankings (``chance``).

    Returns:
        ``{"distance", "num_query", "num_gallery", "plain": metrics, "reranked": metrics,
        "attr_weighted": ..., "attr_weighted_reranked": ..., "chance": ..., "notes": [...]}``
        (metrics as in ``rank_metrics``; keys present only when computed).
    """
    if rerank not in RERANK_CHOICES:
        raise ConfigError(f"unknown rerank choice {rerank!r}; valid: {', '.join(RERANK_CHOICES)}")
    combine = {}
    if attr_weight is not None:
        combine["attr_weighted"] = lambda d, a: combine_weighted(d, a, attr_weight)
    if attr_alpha is not None:
        combine["attr_multiplicative"] = lambda d, a: combine_multiplicative(d, a, attr_alpha)
    if combine and (q_attr is None or g_attr is None):
        raise ConfigError("attribute-combined distances need a model with attribute tasks")
    ids = (q_ids, g_ids, q_cams, g_cams)
    out: dict = {"distance": distance, "num_query": int(len(q_feat)), "num_gallery": int(len(g_feat)), "notes": []}
    d_qg = feature_distance(q_feat, g_feat, distance)
    out["plain"] = rank_metrics(d_qg, *ids)
    if rerank == "auto" and len(q_feat) + len(g_feat) <= RERANK_PARAMS["k1"] + 1:
        rerank = "no"
        out["notes"].append(f"not re-ranked: {len(q_feat) + len(g_feat)} images are too few for k1={RERANK_PARAMS['k1']}")
    if rerank != "no":
        from mtl.reid.rerank import re_ranking_features

        out["reranked"] = rank_metrics(re_ranking_features(q_feat, g_feat, metric=distance, **RERANK_PARAMS), *ids)
    if combine:
        a_qg = attribute_distance(q_attr, g_attr)
        dense = rerank == "yes" or (rerank == "auto" and len(q_feat) + len(g_feat) <= DENSE_RERANK_LIMIT)
        if dense:
            d_qq, d_gg = feature_distance(q_feat, q_feat, distance), feature_distance(g_feat, g_feat, distance)
            a_qq, a_gg = attribute_distance(q_attr, q_attr), attribute_distance(g_attr, g_attr)
        elif rerank == "auto":
            out["notes"].append(f"attribute-combined distances not re-ranked: {len(q_feat) + len(g_feat)} images "
                                f"> {DENSE_RERANK_LIMIT} (use rerank=yes to force; needs dense (Q+G)^2 matrices)")
        for name, fn in combine.items():
            out[name] = rank_metrics(fn(d_qg, a_qg), *ids)
            if dense:
                out[f"{name}_reranked"] = rank_metrics(_dense_rerank(fn(d_qg, a_qg), fn(d_qq, a_qq), fn(d_gg, a_gg)),
                                                       *ids)
        out["attr_weight"], out["attr_alpha"] = attr_weight, attr_alpha
    if chance:
        out["chance"] = chance_metrics(*ids)
    if not out["notes"]:
        del out["notes"]
    return out


def evaluate_labelled(model, tasks: Sequence[TaskSpec], query: pd.DataFrame, gallery: pd.DataFrame, height: int,
                      width: int, batch_size: int = 64, distance: str = "cosine", rerank: str = "auto",
                      attr_weight: float | None = None, attr_alpha: float | None = None,
                      attributes: bool = True, examples: int = 0,
                      junk_threshold: float = JUNK_THRESHOLD, threshold: bool = False, masks=None) -> dict:
    """Evaluate a model on labelled query / gallery images with one pass of feature extraction.

    A model with the ``junk`` output (``data.junk_fraction``) ranks only the gallery images it
    does not predict junk (P(junk) > ``junk_threshold`` are dropped, so that non-person crops are not
    retrieved); ``reid`` then holds ``junk_dropped`` (how many) and ``junk_threshold``.

    Args:
        model: the trained multi-task model; its descriptor is ``embedding`` (or ``pool``
            without the identity head, see ``mtl.reid.embedding``).
        tasks: the model's task specs (attribute tasks are evaluated and, if asked, combined).
        query, gallery: source-table frames (path, identity, camera, task columns).
        height, width, batch_size: input size and images per batch.
        distance, rerank, attr_weight, attr_alpha: see ``evaluate_embeddings``.
        attributes: also compute attribute metrics on the query and gallery images together.
        examples: also return this many ranked retrieval examples of the plain distance
            (:func:`retrieval_examples`, the content of ``reid_examples.json``); 0: none.
        junk_threshold: see above (only for a model with the ``junk`` output).
        threshold: also choose the distance threshold of variable-length retrieval on these
            people (``reid["threshold"]``: ``mtl.reid.threshold.holdout_threshold``, plain distance).
        masks: the person masks of the images, for a model trained with ``data.person_mask``
            (``mtl.data.masks.MaskFolder``; see ``mtl.inference.extract_features``).

    Returns:
        ``{"reid": evaluate_embeddings result plus "feature_layer", "attributes": {"tasks",
        "summary", "num_images"}, "examples": [...]}`` (``reid`` only when there are queries,
        ``attributes`` only when asked and the model has attribute tasks, ``examples`` only when
        asked and there are queries).

    Raises:
        DataError: no query and no attribute metrics: nothing to evaluate.
    """
    from mtl.inference import extract_features
    from mtl.reid.embedding import embedding_layer_name, feature_model

    attr_tasks = attribute_tasks(tasks)
    ranking = not query.empty
    if not ranking and not (attributes and attr_tasks):
        raise DataError("nothing to evaluate: no query image (no identity seen by two cameras) and no attribute "
                        "metrics asked for")
    layer = embedding_layer_name(model)
    needs_attr = attr_tasks and (attributes or attr_weight is not None or attr_alpha is not None)
    junk = ranking and has_junk_output(model)
    names = ([layer] if ranking else []) + ([t.name for t in attr_tasks] if needs_attr else [])
    names += [JUNK] if junk and JUNK not in names else []
    both = pd.concat([query, gallery], ignore_index=True)
    outputs = extract_features(feature_model(model, names), both["path"], height, width, batch_size,
                               desc=f"extracting features of {len(both)} images", masks=masks)
    nq = len(query)
    attr = attribute_vectors(outputs, attr_tasks) if needs_attr else None
    result = {}
    if ranking:
        feats = outputs[layer].reshape(len(both), -1)
        # the gallery the ranking sees: without the images the model predicts junk
        kept = ~junk_flags(outputs[JUNK][nq:], junk_threshold) if junk else np.ones(len(gallery), bool)
        g_rows = nq + np.flatnonzero(kept)
        ranked = gallery[kept].reset_index(drop=True)
        reid = evaluate_embeddings(
            feats[:nq], feats[g_rows], query["identity"].to_numpy(), ranked["identity"].to_numpy(),
            query["camera"].to_numpy(), ranked["camera"].to_numpy(), distance, rerank,
            None if attr is None else attr[:nq], None if attr is None else attr[g_rows], attr_weight, attr_alpha)
        result["reid"] = {"feature_layer": layer, **reid}
        if junk:
            result["reid"] |= {"junk_dropped": int((~kept).sum()), "junk_threshold": float(junk_threshold)}
        if threshold:  # variable-length retrieval (a distance threshold), chosen on these people
            from mtl.reid.threshold import holdout_threshold

            result["reid"]["threshold"] = holdout_threshold(
                feature_distance(feats[:nq], feats[g_rows], distance), query["identity"].to_numpy(),
                ranked["identity"].to_numpy(), query["camera"].to_numpy(), ranked["camera"].to_numpy(), distance)
        if examples > 0:
            result["examples"] = retrieval_examples(feature_distance(feats[:nq], feats[g_rows], distance), query,
                                                    ranked, queries=examples)
    if attributes and attr_tasks:
        present = [t for t in attr_tasks if t.name in both.columns]
        labels = {t.name: both[t.name].to_numpy() for t in present}
        probabilities = {t.name: class_probabilities(outputs[t.name], t) for t in present}
        result["attributes"] = {**evaluate_attributes(labels, probabilities, present), "num_images": int(len(both))}
    return result


def evaluate_holdout(model, table: pd.DataFrame, height: int, width: int, batch_size: int = 64, seed: int = 0,
                     distance: str = "cosine", rerank: str = "auto", junk_threshold: float = JUNK_THRESHOLD,
                     masks=None) -> dict:
    """Re-identification metrics on held-out labelled people (e.g. the validation split of ``train``).

    The table is split into one query per identity and camera and a gallery
    (``query_gallery_split``); returns the ``reid`` part of ``evaluate_labelled`` (with
    ``junk_dropped`` for a model with the ``junk`` output: gallery images above
    ``junk_threshold`` are not ranked), or ``{"skipped": reason}`` when no query can be formed.
    It includes ``threshold``: the distance threshold of variable-length retrieval chosen on these
    people, with its 2-fold cross-validated F1 (``mtl.reid.threshold.holdout_threshold``).
    ``masks``: the person masks of a 4-channel model (``evaluate_labelled``).
    """
    query, gallery = query_gallery_split(table.reset_index(drop=True), seed)
    if query.empty or gallery.empty:
        return {"skipped": "no held-out identity is seen by two cameras"}
    try:
        return evaluate_labelled(model, [], query, gallery, height, width, batch_size, distance, rerank,
                                 attributes=False, junk_threshold=junk_threshold, threshold=True,
                                 masks=masks)["reid"]
    except MtlError:
        raise
    except ValueError as exc:  # evaluate_rank: no query has a match left after the same-camera rule
        return {"skipped": str(exc)}
