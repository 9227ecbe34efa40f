import numpy as np
import pandas as pd
import pytest

from mtl.data.splits import query_gallery_split, split_by_identity
from mtl.errors import DataError


def _table(n_ids=50, per_id=4, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(n_ids):
        hat = int(pid % 10 == 0)  # rare value: 5 identities of 50
        color = int(rng.integers(0, 3))
        for j in range(per_id):
            rows.append({"path": f"{pid}_{j}.jpg", "identity": pid, "camera": j % 3 + 1, "subset": "train",
                         "hat": hat, "color": color})
    return pd.DataFrame(rows)


def test_split_is_identity_disjoint_deterministic_and_stratified():
    table = _table()
    train, val = split_by_identity(table, ["hat", "color"], 0.2, seed=3)
    assert not set(train["identity"]) & set(val["identity"])
    assert len(train) + len(val) == len(table)
    assert val["identity"].nunique() == 10
    # the rare value reaches both sides, in proportion (5 identities -> 1 in validation)
    assert val.groupby("identity")["hat"].first().sum() == 1
    assert train.groupby("identity")["hat"].first().sum() == 4
    again_train, again_val = split_by_identity(table, ["hat", "color"], 0.2, seed=3)
    assert set(again_val["identity"]) == set(val["identity"])
    _, other_val = split_by_identity(table, ["hat", "color"], 0.2, seed=4)
    assert set(other_val["identity"]) != set(val["identity"])


def test_split_rejects_bad_fraction_and_single_identity():
    with pytest.raises(DataError):
        split_by_identity(_table(), ["hat"], 1.5)
    with pytest.raises(DataError):
        split_by_identity(_table(n_ids=1), ["hat"], 0.2)


def test_query_gallery_one_query_per_identity_and_camera():
    table = _table(n_ids=6, per_id=6)
    table.loc[table["identity"] == 5, "camera"] = 1  # seen by one camera only
    query, gallery = query_gallery_split(table, seed=0)
    assert len(query) == 5 * 3
    assert (query.groupby(["identity", "camera"]).size() == 1).all()
    assert 5 not in set(query["identity"]) and (gallery["identity"] == 5).sum() == 6
    assert len(query) + len(gallery) == len(table)
