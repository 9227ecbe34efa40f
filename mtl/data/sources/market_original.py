"""Market-1501 in its original release layout, with the Lin et al. attribute file.

Layout read (the folder ``Market-1501-v15.09.15/`` of the original archive)::

    root/
        bounding_box_train/   0002_c1s1_000451_03.jpg ...   -> subset "train"
        query/                0001_c1s1_001051_00.jpg ...   -> subset "query"
        bounding_box_test/    0000_c1s1_000151_01.jpg ...   -> subset "gallery"
        market_attribute.mat  (optional, Market-1501_Attribute of Lin et al.)

File names are ``PPPP_cCsS_FFFFFF_NN.jpg``: identity ``PPPP``, camera ``C`` (1-6, kept as
written), sequence ``S``, frame, box number. Identity ``-1`` marks junk boxes: they are
dropped (``keep_junk=True`` keeps them, with identity -1). Identity ``0`` marks distractors:
they are kept in the gallery (their labels are -1). Other files (``Thumbs.db``,
``gt_bbox/``, ``gt_query/``) are ignored; a ``.jpg`` whose name does not follow the pattern
is skipped with a warning that counts them.

Attributes: ``market_attribute.mat`` from "Improving person re-identification by attribute
and identity learning" (Lin et al., https://github.com/vana77/Market-1501_Attribute). Read
with ``scipy.io.loadmat`` it holds a struct ``market_attribute`` with fields ``test`` and
``train``; each is a struct with one ``(1, N)`` array per attribute (``age``, ``backpack``,
``bag``, ``handbag``, ``clothes``, ``down``, ``up``, ``hair``, ``hat``, ``gender``, eight
``up<colour>`` and nine ``down<colour>`` fields) and ``image_index``, a ``(1, N)`` cell of
identity strings (``'0002'``). The two structs list their fields in different orders, so
fields are read by name. Labels are per identity and coded 1/2 (age 1-4) exactly like the
course CSV (``annotations_train.csv``), so they are converted with
:func:`mtl.data.sources.market_course.labels_from_annotations` into the same task table
(:func:`~mtl.data.sources.market_course.market_tasks`). Identities without an attribute row
(distractors, or identities the file lacks) get -1 for every task. Without the file all task
labels are -1 but identity and camera are present (a re-identification-only dataset).

No image is opened here.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mtl.data.sources.base import DataError, SourceData, make_table, require_dir, require_file

NAME = "market1501"  # key of mtl.data.sources.FORMATS
ATTRIBUTE_FILE = "market_attribute.mat"

#: folder -> subset
FOLDERS = {"bounding_box_train": "train", "query": "query", "bounding_box_test": "gallery"}

#: the 27 attribute fields of the Lin et al. file (same names as the course CSV columns)
ATTRIBUTE_FIELDS = (
    "age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender",
    "upblack", "upwhite", "upred", "uppurple", "upyellow", "upgray", "upblue", "upgreen",
    "downblack", "downwhite", "downpink", "downpurple", "downyellow", "downgray", "downblue",
    "downgreen", "downbrown",
)  # fmt: skip

_NAME_RE = re.compile(r"^(-?\d+)_c(\d+)(?:s\d+)?_.*\.jpe?g$", re.IGNORECASE)


def detect(root: str | Path) -> bool:
    """True when ``root`` has the original Market-1501 folders (``bounding_box_train``, ``query``)."""
    r = Path(root)
    return (r / "bounding_box_train").is_dir() and ((r / "query").is_dir() or (r / "bounding_box_test").is_dir())


def parse_name(name: str) -> tuple[int, int] | None:
    """``'0002_c1s1_000451_03.jpg'`` -> ``(2, 1)`` (identity, camera); None if it is not such a name."""
    m = _NAME_RE.match(name)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2))


def load(
    root: str | Path,
    attributes: str | Path | None = None,
    keep_junk: bool = False,
    **options,
) -> SourceData:
    """Read the original Market-1501 layout under ``root``.

    Args:
        root: the dataset folder (the one holding ``bounding_box_train/``).
        attributes: path of the attribute ``.mat`` file; default ``root/market_attribute.mat``
            when it exists (it is optional). A path given explicitly must exist.
        keep_junk: keep the junk boxes (identity -1) instead of dropping them.

    Raises:
        DataError: a folder is missing, the attribute file is unreadable or lacks a field,
            or a label is out of range.
    """
    from mtl.data.sources.market_course import MARKET_ALIASES, market_tasks

    if options:
        raise DataError(f"{NAME}: unknown options {', '.join(sorted(options))}; valid: attributes, keep_junk")
    root = require_dir(root, "Market-1501 (original layout)").resolve()
    for folder in FOLDERS:
        require_dir(root / folder, f"Market-1501 (original layout): {folder}/ of {root}")

    tasks = market_tasks()
    if attributes is None:
        att_path = root / ATTRIBUTE_FILE
        labels = read_attributes(att_path) if att_path.is_file() else None
    else:
        labels = read_attributes(require_file(attributes, "Market-1501 attribute file"))

    rows: list[dict] = []
    unparsed: list[str] = []
    for folder, subset in FOLDERS.items():
        with os.scandir(root / folder) as it:
            names = sorted(e.name for e in it if e.is_file() and e.name.lower().endswith((".jpg", ".jpeg")))
        for name in names:
            parsed = parse_name(name)
            if parsed is None:
                unparsed.append(f"{folder}/{name}")
                continue
            identity, camera = parsed
            if identity == -1 and not keep_junk:
                continue
            rows.append({"path": str(root / folder / name), "identity": identity, "camera": camera, "subset": subset})
    if unparsed:
        warnings.warn(
            f"{NAME}: skipped {len(unparsed)} .jpg file(s) not named like 0002_c1s1_000451_03.jpg "
            f"(first: {unparsed[0]})",
            stacklevel=2,
        )
    if not rows:
        raise DataError(f"{NAME}: no images named like 0002_c1s1_000451_03.jpg under {root}")

    table = make_table(rows, {})
    task_names = [t for t in tasks if t not in table.columns]
    if labels is not None:
        per_id = labels.reindex(columns=task_names)
        joined = per_id.reindex(table["identity"].to_numpy())
        for t in task_names:
            table[t] = joined[t].fillna(-1).astype("int64").to_numpy()
    else:
        for t in task_names:
            table[t] = np.full(len(table), -1, dtype="int64")
    return SourceData(name=NAME, root=str(root), table=table, tasks=tasks, aliases=dict(MARKET_ALIASES))


def read_attributes(path: str | Path) -> pd.DataFrame:
    """Per-identity task labels from a Lin et al. ``market_attribute.mat``.

    Returns a DataFrame indexed by identity (int) with one int column per task of
    ``market_tasks()`` (class index, -1 missing). Train and test identities are pooled
    (Market-1501 train and test identities are disjoint).
    """
    from mtl.data.sources.market_course import labels_from_annotations

    coded = read_attribute_codes(path).reset_index(drop=True)
    labels = labels_from_annotations(coded, source=str(path))
    labels = pd.DataFrame(labels).reset_index(drop=True)
    labels.index = pd.Index(coded["id"].to_numpy(), name="identity")
    return labels


def read_attribute_codes(path: str | Path) -> pd.DataFrame:
    """The raw 1/2 codes of a Lin et al. ``.mat``: columns ``id`` + the 27 attributes, one row per identity."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path))
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files
        raise DataError(f"{path}: MATLAB v7.3 files are not supported, save it with -v7: {e}") from e
    except Exception as e:  # noqa: BLE001 - scipy raises many types on a corrupt file
        raise DataError(f"{path}: cannot read the attribute .mat file: {e}") from e
    top = _find_struct(mat, path)
    frames = []
    for part in ("train", "test"):
        if part not in top.dtype.names:
            continue
        frames.append(_part_frame(top[part][0, 0] if top[part].size else None, path, part))
    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        raise DataError(f"{path}: the attribute struct has neither a 'train' nor a 'test' part")
    codes = pd.concat(frames, ignore_index=True)
    dup = codes["id"][codes["id"].duplicated()]
    if len(dup):
        raise DataError(f"{path}: identity {int(dup.iloc[0])} has two attribute rows")
    return codes


def _find_struct(mat: dict, path: Path) -> np.ndarray:
    """The top struct (``market_attribute``; any variable with train/test fields is accepted)."""
    candidates = ["market_attribute"] + [k for k in mat if not k.startswith("__") and k != "market_attribute"]
    for key in candidates:
        v = mat.get(key)
        if isinstance(v, np.ndarray) and v.dtype.names and ({"train", "test"} & set(v.dtype.names)) and v.size:
            return v.reshape(-1)[0]
    keys = [k for k in mat if not k.startswith("__")]
    raise DataError(f"{path}: no struct 'market_attribute' with train/test fields (variables: {', '.join(keys)})")


def _part_frame(part: np.ndarray | None, path: Path, name: str) -> pd.DataFrame | None:
    if part is None:
        return None
    fields = set(part.dtype.names or ())
    missing = [f for f in ("image_index", *ATTRIBUTE_FIELDS) if f not in fields]
    if missing:
        raise DataError(f"{path}: attribute struct '{name}' lacks fields: {', '.join(missing)}")
    ids = [_identity(x, path, name, i) for i, x in enumerate(_cells(part["image_index"]))]
    data: dict[str, object] = {"id": np.asarray(ids, dtype="int64")}
    for f in ATTRIBUTE_FIELDS:
        values = np.asarray(part[f]).reshape(-1)
        if len(values) != len(ids):
            raise DataError(
                f"{path}: field '{name}.{f}' has {len(values)} values but image_index has {len(ids)} identities"
            )
        valid = (1, 2, 3, 4) if f == "age" else (1, 2)
        numeric = pd.to_numeric(pd.Series(values), errors="coerce")
        bad = ~numeric.isin(valid).to_numpy()
        if bad.any():
            i = int(bad.nonzero()[0][0])
            raise DataError(
                f"{path}: {name} identity {ids[i]} (entry {i + 1}), field {f!r}: invalid value "
                f"{values[i]!r}, expected one of {valid}"
            )
        data[f] = numeric.astype("int64").to_numpy()
    return pd.DataFrame(data)


def _cells(arr) -> list:
    """Strings of a cell array ((1, N) object array of 1-element arrays) or of a char matrix."""
    a = np.asarray(arr)
    if a.dtype == object:
        out = []
        for x in a.reshape(-1):
            while isinstance(x, np.ndarray):  # unwrap 1-element arrays, however deeply nested
                x = x.reshape(-1)[0] if x.size else ""
            out.append(x)
        return out
    if a.dtype.kind in "US" and a.ndim == 2 and a.shape[0] > 1:  # char matrix: one row per identity
        return ["".join(str(c) for c in row) for row in a]
    return list(a.reshape(-1))


def _identity(x, path: Path, part: str, i: int) -> int:
    try:
        return int(str(x.decode() if isinstance(x, bytes) else x).strip())
    except ValueError:
        raise DataError(f"{path}: {part}.image_index entry {i} is not an identity number: {x!r}") from None
