"""Market-1501 in the course layout.

::

    root/
      train/PPPP_cC_FFFFFFFFF.jpg     labelled crops: identity PPPP, camera C
      annotations_train.csv           one row per identity: id + 27 columns coded 1/2 (age 1-4)
      test/000000.jpg ...             unlabelled gallery (course deliverable input)
      queries/000000.jpg ...          unlabelled queries (course deliverable input)

Task table (labels are per identity; every image of an identity shares its row):
nine binary attributes (``gender hair up down clothes hat backpack bag handbag``: label =
coded value - 1, so 0 = the first value of the README, e.g. ``gender`` 0 male / 1 female),
``age`` (4 classes), ``upcolor`` (8 colours + ``multicolor`` when no colour column is set) and
``downcolor`` (9 colours + ``multicolor``). When several colour columns are set (rare
annotation noise) the first in column order wins.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from mtl.data.sources.base import SourceData, make_table, require_dir, require_file
from mtl.errors import DataError
from mtl.tasks import BINARY, CATEGORICAL, TaskSpec

NAME = "market1501_course"

UP_COLORS = ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
DOWN_COLORS = ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown")
UP_COLUMNS = tuple(f"up{c}" for c in UP_COLORS)
DOWN_COLUMNS = tuple(f"down{c}" for c in DOWN_COLORS)

# (task, coded column, class names in code order 1, 2, ...)
BINARY_ATTRIBUTES = (
    ("gender", ("male", "female")),
    ("hair", ("short", "long")),
    ("up", ("long_sleeve", "short_sleeve")),
    ("down", ("long_lower", "short_lower")),
    ("clothes", ("dress", "pants")),
    ("hat", ("no", "yes")),
    ("backpack", ("no", "yes")),
    ("bag", ("no", "yes")),
    ("handbag", ("no", "yes")),
)
AGE_CLASSES = ("young", "teenager", "adult", "old")
ANNOTATION_COLUMNS = (
    ("age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender")
    + UP_COLUMNS
    + DOWN_COLUMNS
)
MARKET_ALIASES = {"color": ("upcolor", "downcolor")}
FILENAME = re.compile(r"^(\d+)_c(\d+)_.*\.jpe?g$", re.IGNORECASE)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def market_tasks() -> dict[str, TaskSpec]:
    """The Market-1501 attribute task table (shared by the course and original layouts)."""
    tasks = {name: TaskSpec(name, classes, BINARY) for name, classes in BINARY_ATTRIBUTES}
    tasks["age"] = TaskSpec("age", AGE_CLASSES, CATEGORICAL)
    tasks["upcolor"] = TaskSpec("upcolor", UP_COLORS + ("multicolor",), CATEGORICAL)
    tasks["downcolor"] = TaskSpec("downcolor", DOWN_COLORS + ("multicolor",), CATEGORICAL)
    return tasks


def _color_index(coded: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    is_set = coded[list(columns)].to_numpy() == 2
    # argmax gives the first set column; rows with none set are multicolour (last class)
    return np.where(is_set.any(axis=1), is_set.argmax(axis=1), len(columns))


def labels_from_annotations(coded: pd.DataFrame, source: str = "annotations") -> pd.DataFrame:
    """Convert the 27 coded columns (1/2, age 1-4) to task label indices.

    Args:
        coded: one row per identity with the columns of ``ANNOTATION_COLUMNS``.
        source: name used in error messages (file name).

    Returns:
        A DataFrame with the same index and one int64 column per task of ``market_tasks()``.

    Raises:
        DataError: a missing column, or a value outside its coding (names row and column).
    """
    missing = [c for c in ANNOTATION_COLUMNS if c not in coded.columns]
    if missing:
        raise DataError(f"{source}: missing attribute columns: {', '.join(missing)}")
    for column in ANNOTATION_COLUMNS:
        valid = (1, 2, 3, 4) if column == "age" else (1, 2)
        values = pd.to_numeric(coded[column], errors="coerce")
        bad = ~values.isin(valid)
        if bad.any():
            row = bad.to_numpy().nonzero()[0][0]
            raise DataError(
                f"{source}: row {row + 2} (id {coded.iloc[row].get('id', '?')}), column {column!r}: "
                f"invalid value {coded[column].iloc[row]!r}, expected one of {valid}"
            )
    coded = coded[list(ANNOTATION_COLUMNS)].apply(pd.to_numeric).astype("int64")
    out = pd.DataFrame(index=coded.index)
    for name, _ in BINARY_ATTRIBUTES:
        out[name] = coded[name] - 1
    out["age"] = coded["age"] - 1
    out["upcolor"] = _color_index(coded, UP_COLUMNS)
    out["downcolor"] = _color_index(coded, DOWN_COLUMNS)
    return out.astype("int64")


def parse_filename(name: str) -> tuple[int, int]:
    """``0002_c3_010187163.jpg`` -> (identity 2, camera 3)."""
    m = FILENAME.match(name)
    if not m:
        raise DataError(f"image name {name!r} does not follow PPPP_cC_*.jpg")
    return int(m.group(1)), int(m.group(2))


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def detect(root: str | Path) -> bool:
    root = Path(root)
    return (root / "annotations_train.csv").is_file() and (root / "train").is_dir()


def load(root: str | Path, train: bool = True) -> SourceData:
    """Read a course-layout folder into a SourceData (see module docstring).

    Args:
        root: the folder.
        train: read ``train/`` and ``annotations_train.csv`` (training, evaluation). ``False``
            reads only the unlabelled ``test/`` and ``queries/`` (what the course deliverables
            need): ``train/`` and the CSV may then be absent, ``test/`` must be there, and every
            task column is ``-1``.

    Raises:
        DataError: missing folder or CSV, bad CSV value, or a train identity without a row;
            (``train=False``) no ``test/`` folder.
    """
    root = Path(root).resolve()
    tasks = market_tasks()
    if not train:
        return SourceData(NAME, str(root), make_table(unlabelled_rows(root, require_test=True), tasks), tasks,
                          dict(MARKET_ALIASES))
    train_dir = require_dir(root / "train", "Market-1501 course layout")
    csv = require_file(root / "annotations_train.csv", "Market-1501 course layout")
    annotations = pd.read_csv(csv)
    if "id" not in annotations.columns:
        raise DataError(f"{csv}: no 'id' column")
    ids = pd.to_numeric(annotations["id"], errors="coerce")
    if ids.isna().any():
        row = int(ids.isna().to_numpy().nonzero()[0][0])
        raise DataError(f"{csv}: row {row + 2}, column 'id': invalid value {annotations['id'].iloc[row]!r}")
    labels = labels_from_annotations(annotations, source=str(csv))
    labels.index = ids.astype("int64").to_numpy()
    if labels.index.duplicated().any():
        dup = labels.index[labels.index.duplicated()][0]
        raise DataError(f"{csv}: identity {dup} has more than one row")
    rows = []
    unlabelled: set[int] = set()
    for path in list_images(train_dir):
        identity, camera = parse_filename(path.name)
        row = {"path": str(path), "identity": identity, "camera": camera, "subset": "train"}
        if identity in labels.index:
            row.update(labels.loc[identity].to_dict())
        else:
            unlabelled.add(identity)
        rows.append(row)
    if unlabelled:
        raise DataError(
            f"{csv}: no annotation row for {len(unlabelled)} identities of train/ "
            f"(e.g. {sorted(unlabelled)[:5]})"
        )
    rows += unlabelled_rows(root)
    return SourceData(NAME, str(root), make_table(rows, tasks), tasks, dict(MARKET_ALIASES))


def unlabelled_rows(root: Path, require_test: bool = False) -> list[dict]:
    """Rows of the unlabelled ``queries/`` (subset ``query``) and ``test/`` (subset ``test``) images.

    Args:
        root: the course-layout folder.
        require_test: raise when ``test/`` is missing (the deliverables cannot be made without it).
    """
    if require_test and not (root / "test").is_dir():
        raise DataError(f"Market-1501 course layout: folder not found: {root / 'test'} (the course deliverables "
                        f"need test/, and queries/ for reid_test.txt)")
    rows = []
    for folder, subset in (("queries", "query"), ("test", "test")):
        if (root / folder).is_dir():
            rows += [{"path": str(p), "subset": subset} for p in list_images(root / folder)]
    return rows
