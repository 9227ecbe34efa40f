"""Product attributes in the "Fashion Product Images" ``styles.csv`` layout.

Layout read::

    root/
        styles.csv     id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName
        images/<id>.jpg

Every row is one product photo: ``identity`` = product ``id``, ``camera`` = -1, ``subset`` =
``train`` (the project's split module holds out validation / test rows).

Tasks (categorical, one per column, in this order): ``gender``, ``masterCategory``,
``subCategory``, ``articleType``, ``baseColour``, ``season``, ``usage``; then ``year``, a
regression task (``NUMERIC_COLUMNS``: the value, ``2012.0`` or ``2012``), which ``--tasks all``
leaves out (it is missing for many rows and is not something a photo shows clearly): ask for it
by name (``--tasks articleType,year``). ``columns=`` picks any columns of the CSV
(``"articleType,baseColour"`` or a list); a column name that is not a Python identifier is
turned into one (``base colour`` -> ``base_colour``).

Labels: an empty cell (or ``NA``, ``N/A``, ``nan``, ``null``: see ``na_values``) is a missing
label (-1). Classes rarer than ``rare_threshold`` are grouped into one class ``other``, as in
the product-attribute report: a value below 1 is a fraction of the task's labelled rows
(default 0.01 = 1 %), a value of 1 or more a minimum number of rows, 0 disables grouping.
``other`` exists only when something was grouped (a class literally called ``other`` in the
data is merged into it). Class order is deterministic: by frequency (descending), then by
name, ``other`` last. Grouping and order are computed on the rows kept (after dropping
missing images).

Aliases: ``colour`` / ``color`` -> ``baseColour``, ``category`` -> ``masterCategory``,
``apparel`` -> ``articleType`` (only those whose task is loaded).

Reading is robust to the known defect of the public file: some ``productDisplayName`` values
contain unquoted commas, so a line has more than 10 fields; the extra fields are joined back
into the last column (quoted fields are read normally). Rows whose image file is missing are
dropped with a warning that counts them (images are not opened here; unreadable ones are
skipped by the pipeline). A non-integer or duplicated ``id`` raises ``DataError`` naming the
line and column.
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence


from mtl.data.sources.base import DataError, SourceData, make_table, require_dir, require_file
from mtl.tasks import CATEGORICAL, REGRESSION, TaskSpec

NAME = "fashion"  # key of mtl.data.sources.FORMATS
CSV_NAME = "styles.csv"
IMAGES_DIR = "images"
DEFAULT_COLUMNS = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
# columns read as numbers: regression tasks (loaded by default too, after DEFAULT_COLUMNS)
NUMERIC_COLUMNS = ("year",)
DEFAULT_RARE_THRESHOLD = 0.01
OTHER = "other"
NA_VALUES = ("", "NA", "N/A", "nan", "NaN", "null")
ALIASES = {
    "colour": ("baseColour",),
    "color": ("baseColour",),
    "category": ("masterCategory",),
    "apparel": ("articleType",),
}
_INTEGRAL_FLOAT = re.compile(r"^-?\d+\.0+$")


def detect(root: str | Path) -> bool:
    """True when ``root/styles.csv`` exists and its header starts with ``id`` and has product columns."""
    path = Path(root) / CSV_NAME
    if not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            header = [h.strip() for h in f.readline().split(",")]
    except OSError:
        return False
    return bool(header) and header[0] == "id" and bool({"masterCategory", "articleType"} & set(header))


def load(
    root: str | Path,
    columns: str | Sequence[str] | None = None,
    rare_threshold: float | None = DEFAULT_RARE_THRESHOLD,
    csv_name: str = CSV_NAME,
    images: str = IMAGES_DIR,
    na_values: Iterable[str] = NA_VALUES,
) -> SourceData:
    """Read a ``styles.csv`` folder (see the module docstring).

    Args:
        root: folder holding ``styles.csv`` and ``images/``.
        columns: task columns (list or comma-separated string); default ``DEFAULT_COLUMNS``.
        rare_threshold: classes rarer than this are grouped as ``other`` (fraction of labelled
            rows if < 1, row count if >= 1, 0 or None: no grouping).
        csv_name: name of the CSV file inside ``root``.
        images: image folder, relative to ``root`` (or absolute); images are ``<id>.jpg``.
        na_values: cell values read as a missing label.

    Raises:
        DataError: missing CSV / image folder, malformed line, bad or duplicated id, unknown
            column, no image found.
    """
    root = require_dir(root, "fashion product dataset").resolve()
    csv_path = require_file(root / csv_name, "fashion product dataset")
    image_dir = require_dir(root / images, f"fashion product images of {csv_path}").resolve()
    threshold = _check_threshold(rare_threshold)

    header, records = read_styles(csv_path)
    wanted = _task_columns(columns, header, csv_path)
    ids = _parse_ids(records, header, csv_path)
    col_index = {c: header.index(c) for c in wanted}
    na = set(na_values)

    files = set(os.listdir(image_dir))
    keep = [i for i, pid in enumerate(ids) if f"{pid}.jpg" in files]
    missing = len(ids) - len(keep)
    if missing:
        examples = ", ".join(str(ids[i]) for i in range(len(ids)) if f"{ids[i]}.jpg" not in files)
        warnings.warn(
            f"{csv_path}: {missing} of {len(ids)} rows have no image in {image_dir} and are dropped "
            f"(ids {examples[:80]}{'...' if len(examples) > 80 else ''})",
            stacklevel=2,
        )
    if not keep:
        raise DataError(f"{csv_path}: none of the {len(ids)} rows has an image <id>.jpg in {image_dir}")

    tasks: dict[str, TaskSpec] = {}
    labels: dict[str, list] = {}
    for column in wanted:
        values = [_clean(records[i][1][col_index[column]], na) for i in keep]
        name = _identifier(column)
        if name in tasks:
            raise DataError(f"{csv_path}: columns {column!r} and another give the same task name {name!r}")
        if column in NUMERIC_COLUMNS:
            tasks[name] = TaskSpec(name, (), REGRESSION)
            labels[name] = _numbers(values, [records[i][0] for i in keep], column, csv_path)
            continue
        classes, mapping = class_table(values, threshold)
        if not classes:
            raise DataError(f"{csv_path}: column {column!r} has no label in any row with an image")
        tasks[name] = TaskSpec(name, tuple(classes), CATEGORICAL)
        labels[name] = [-1 if v is None else mapping[v] for v in values]

    rows = [
        {"path": str(image_dir / f"{ids[i]}.jpg"), "identity": ids[i], "camera": -1, "subset": "train"}
        for i in keep
    ]
    table = make_table(rows, {})
    for name, values in labels.items():
        table[name] = tasks[name].type.table_column(values)
    aliases = {a: t for a, t in ALIASES.items() if all(x in tasks for x in t) and a not in tasks}
    return SourceData(name=NAME, root=str(root), table=table, tasks=tasks, aliases=aliases)


def read_styles(path: str | Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(line number, fields)`` records of a styles.csv, each with as many fields as the header.

    Extra fields (unquoted commas in the last column) are joined back into the last field;
    blank lines are skipped; a line with too few fields raises ``DataError``.
    """
    path = Path(path)
    records: list[tuple[int, list[str]]] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if not header or header == [""]:
                raise DataError(f"{path}: empty file, expected a header line starting with 'id'")
            n = len(header)
            for fields in reader:
                if not fields or all(not x.strip() for x in fields):
                    continue
                if len(fields) > n:
                    fields = fields[: n - 1] + [",".join(fields[n - 1 :])]
                elif len(fields) < n:
                    raise DataError(
                        f"{path}: line {reader.line_num} has {len(fields)} fields, the header has {n} "
                        f"({', '.join(header)})"
                    )
                records.append((reader.line_num, fields))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e})") from e
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV: {e}") from e
    if "id" not in header:
        raise DataError(f"{path}: no 'id' column in the header ({', '.join(header)})")
    return header, records


def class_table(values: Sequence[str | None], rare_threshold: float | None) -> tuple[list[str], dict[str, int]]:
    """Classes of one task and the value -> class index map (rare values -> ``other``).

    ``values`` holds one cleaned value per row, None where missing. See the module docstring
    for the threshold and the order.
    """
    counts = Counter(v for v in values if v is not None)
    labelled = sum(counts.values())
    if not rare_threshold:
        min_count = 0.0
    elif rare_threshold < 1:
        min_count = rare_threshold * labelled
    else:
        min_count = float(rare_threshold)
    kept = [v for v, c in counts.items() if c >= min_count and v != OTHER]
    grouped = [v for v in counts if v not in kept]
    classes = sorted(kept, key=lambda v: (-counts[v], v))
    mapping = {v: i for i, v in enumerate(classes)}
    if grouped:
        mapping.update({v: len(classes) for v in grouped})
        classes.append(OTHER)
    return classes, mapping


def _check_threshold(value) -> float:
    if value is None:
        return 0.0
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DataError(f"rare_threshold must be a number, got {value!r}") from None
    if value < 0 or value != value:
        raise DataError(f"rare_threshold must be >= 0 (fraction < 1, row count >= 1, 0 = off), got {value}")
    return value


def _task_columns(columns, header: list[str], path: Path) -> list[str]:
    if columns is None:
        wanted = [c for c in DEFAULT_COLUMNS + NUMERIC_COLUMNS if c in header]
        if not wanted:
            raise DataError(f"{path}: none of the default task columns ({', '.join(DEFAULT_COLUMNS)}) is in the header")
        return wanted
    if isinstance(columns, str):
        columns = columns.split(",")
    wanted = []
    for c in columns:
        c = str(c).strip()
        if c and c not in wanted:
            wanted.append(c)
    valid = [h for h in header if h != "id"]
    unknown = [c for c in wanted if c not in valid]
    if unknown:
        raise DataError(f"{path}: unknown task columns {', '.join(unknown)}; valid: {', '.join(valid)}")
    if not wanted:
        raise DataError(f"{path}: no task column selected")
    return wanted


def _parse_ids(records, header: list[str], path: Path) -> list[int]:
    col = header.index("id")
    ids: list[int] = []
    seen: dict[int, int] = {}
    for line, fields in records:
        raw = fields[col].strip()
        try:
            pid = int(raw)
        except ValueError:
            raise DataError(f"{path}: line {line}, column 'id': {raw!r} is not an integer product id") from None
        if pid in seen:
            raise DataError(f"{path}: line {line}, column 'id': id {pid} already used on line {seen[pid]}")
        seen[pid] = line
        ids.append(pid)
    return ids


def _clean(value: str, na: set[str]) -> str | None:
    v = value.strip()
    if v in na:
        return None
    if _INTEGRAL_FLOAT.match(v):
        v = v.split(".", 1)[0]
    return v


def _numbers(values: Sequence[str | None], lines: Sequence[int], column: str, path: Path) -> list[float | None]:
    """A numeric column's cleaned values as floats (None where missing); a DataError names the
    first cell that is not a finite number."""
    out: list[float | None] = []
    for value, line in zip(values, lines):
        try:
            number = None if value is None else float(value)
        except ValueError:
            number = float("nan")
        if number is not None and not math.isfinite(number):
            raise DataError(f"{path}: line {line}, column {column!r}: {value!r} is not a number")
        out.append(number)
    return out


def _identifier(column: str) -> str:
    from mtl.data.sources.imaterialist import identifier

    return column if column.isidentifier() else identifier(column)
