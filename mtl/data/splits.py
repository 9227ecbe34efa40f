"""Identity-disjoint splits: train/validation and query/gallery.

No person (or product) is ever in two splits, so validation measures generalisation to unseen
people. Identities are assigned greedily so that every attribute value reaches both sides in
proportion (the seeds' "if 200 people wear a hat, 160 go to train and 40 to validation").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mtl.errors import DataError


def split_by_identity(table: pd.DataFrame, tasks: list[str], val_fraction: float = 0.2,
                      seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split labelled rows into (train, validation) by identity, stratified on task labels.

    Each identity is summarised by its most common label per task. Identities are visited in a
    seeded random order, rarest attribute values first, and each goes to the side whose current
    count of that identity's values lags furthest behind its target share.

    Args:
        table: source table rows (``identity`` column, task columns, -1 = missing).
        tasks: task columns to stratify on.
        val_fraction: share of identities for validation (0 < f < 1).
        seed: makes the split deterministic.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    ids = np.sort(table["identity"].unique())
    if len(ids) < 2:
        raise DataError(f"need at least 2 identities to split, found {len(ids)}")
    # identity-level label profile: the most frequent label per task (-1 if all missing)
    profile = table.groupby("identity")[tasks].agg(lambda s: s.mode().iloc[0] if (s >= 0).any() else -1)
    profile = profile.loc[ids]
    keys = [(t, int(v)) for t in tasks for v in np.unique(profile[t]) if v >= 0]
    columns = {k: (profile[k[0]].to_numpy() == k[1]) for k in keys}
    totals = {k: int(c.sum()) for k, c in columns.items()}
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    # rarest value first: each identity's rarity is the count of its rarest labelled value
    rarity = np.array([min([totals[k] for k in keys if columns[k][i]], default=len(ids)) for i in range(len(ids))])
    order = order[np.argsort(rarity[order], kind="stable")]
    n_val_target = max(1, int(round(val_fraction * len(ids))))
    val_counts = {k: 0 for k in keys}
    seen_counts = {k: 0 for k in keys}
    is_val = np.zeros(len(ids), bool)
    n_val = 0
    for rank, i in enumerate(order):
        mine = [k for k in keys if columns[k][i]]
        remaining_slots = n_val_target - n_val
        remaining_ids = len(ids) - rank
        if remaining_slots <= 0:
            take = False
        elif remaining_slots >= remaining_ids:
            take = True
        else:
            # deficit of validation for this identity's values, against target share
            deficit = sum(val_fraction * (seen_counts[k] + 1) - val_counts[k] for k in mine) / max(1, len(mine))
            take = deficit > 0.5 or (not mine and rng.random() < val_fraction)
            if not take and deficit > 0 and rng.random() < val_fraction:
                take = True
        for k in mine:
            seen_counts[k] += 1
            val_counts[k] += int(take)
        is_val[i] = take
        n_val += int(take)
    val_ids = set(ids[is_val].tolist())
    in_val = table["identity"].isin(val_ids)
    return table[~in_val].reset_index(drop=True), table[in_val].reset_index(drop=True)


def query_gallery_split(table: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Market-1501 convention on a labelled held-out set: one query per (identity, camera).

    Each identity seen by at least two cameras contributes one random image per camera to the
    query set; all its other images form the gallery. Identities seen by one camera only stay in
    the gallery as distractors (they could never be matched under the same-camera rule).
    """
    rng = np.random.default_rng(seed)
    is_query = np.zeros(len(table), bool)
    for _, group in table.groupby("identity"):
        if group["camera"].nunique() < 2:
            continue
        for _, cam_group in group.groupby("camera"):
            is_query[table.index.get_indexer([rng.choice(cam_group.index)])[0]] = True
    return table[is_query].reset_index(drop=True), table[~is_query].reset_index(drop=True)
