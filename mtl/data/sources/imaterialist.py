"""iMaterialist FGVC4 (CVPR 2017) product attribute recognition, JSON files.

Layout read (file names of the challenge; the short names in brackets are accepted too)::

    root/
        fgvc4_iMat.train.data.json        (train.json)        -> split "train"
        fgvc4_iMat.validation.data.json   (validation.json)   -> split "validation"
        fgvc4_iMat.test.image.json        (test.json)         -> split "test" (no annotations)
        fgvc4_iMat.task_map.json          (task_map.json)     optional
        fgvc4_iMat.label_map.json         (label_map.json)    optional
        images/<imageId>.jpg              (option ``images``; ``{split}`` is replaced by the split)

Schema assumed (strings or numbers are both accepted for ids)::

    split file:  {"images": [{"imageId": "1", "url": ["http://..."]}, ...],
                  "annotations": [{"imageId": "1", "taskId": "3", "labelId": "17"}, ...]}
    task map:    {"taskInfo": [{"taskId": "1", "taskName": "dress:color"}, ...]}
    label map:   {"labelInfo": [{"labelId": "17", "labelName": "black",
                                 "taskId": "3", "taskName": "dress:color"}, ...]}

The 2017 challenge files give one annotation per (image, task) with a scalar ``labelId`` and
its ``taskId``. An annotation may instead carry a list of label ids without ``taskId``
(``{"imageId": "1", "labelId": ["62", "17"]}``, the later iMaterialist layout): each label's
task is then read from the label map's ``taskId``. Task names come from the task map, else
from the label map's ``taskName``, else ``task_<id>``; they are made identifiers
(``apparel class`` -> ``apparel_class``, ``dress:color`` -> ``dress_color``). Class names come
from the label map (else the label id). A task's classes are the labels the label map gives
it plus those its annotations use in the train and validation files present (so the task
table does not depend on ``split``; both files are therefore read and must be valid whichever
split is asked for), ordered by label id. Tasks with fewer than
``min_classes`` classes (default 2) are left out. All tasks are categorical.

Each row is one image; a task that does not apply to the image (no annotation) is -1. If an
image has two labels for one task the first is kept and a warning counts them. ``split``
picks the files read (``"train"``, ``"validation"``, ``"test"``, a list or ``"train,validation"``);
train and validation images are labelled (subset ``train``: the project's split module holds
out its own validation), test images are subset ``test``. Image ids restart at 1 in each
challenge file, so reading two splits needs separate image folders (``images="{split}"``).
identity and camera are -1. Rows whose image file is missing (dead URLs) are dropped with a
warning that counts them; images are not opened.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

from mtl.data.sources.base import DataError, SourceData, make_table, require_dir, require_file
from mtl.tasks import CATEGORICAL, TaskSpec

NAME = "imaterialist"  # key of mtl.data.sources.FORMATS
SPLIT_FILES = {
    "train": ("fgvc4_iMat.train.data.json", "train.json"),
    "validation": ("fgvc4_iMat.validation.data.json", "validation.json"),
    "test": ("fgvc4_iMat.test.image.json", "test.json"),
}
SUBSET = {"train": "train", "validation": "train", "test": "test"}
TASK_MAP_FILES = ("fgvc4_iMat.task_map.json", "task_map.json")
LABEL_MAP_FILES = ("fgvc4_iMat.label_map.json", "label_map.json")
IMAGE_SUFFIX = ".jpg"


def identifier(name: str) -> str:
    """A task name made a Python identifier: ``'apparel class'`` -> ``'apparel_class'``.

    Lower case, runs of other characters than letters / digits become ``_``; a leading digit
    gets a ``t_`` prefix; an empty result is ``task``.
    """
    s = re.sub(r"[^0-9a-zA-Z]+", "_", str(name)).strip("_").lower()
    if not s:
        s = "task"
    if s[0].isdigit():
        s = "t_" + s
    return s


def detect(root: str | Path) -> bool:
    """True when ``root`` holds the challenge's JSON files (a split file and a map, or fgvc4 names)."""
    r = Path(root)
    if any((r / names[0]).is_file() for names in SPLIT_FILES.values()):
        return True
    has_split = any((r / names[1]).is_file() for names in SPLIT_FILES.values())
    has_map = any((r / n).is_file() for n in TASK_MAP_FILES + LABEL_MAP_FILES)
    return has_split and has_map


def load(
    root: str | Path,
    split: str | Sequence[str] = "train",
    images: str = "images",
    task_map: str | Path | None = None,
    label_map: str | Path | None = None,
    min_classes: int = 2,
) -> SourceData:
    """Read iMaterialist JSON files (see the module docstring).

    Args:
        root: folder holding the JSON files.
        split: ``train``, ``validation``, ``test`` or several (list or comma-separated).
        images: image folder relative to ``root`` (or absolute), ``{split}`` replaced by the split name.
        task_map, label_map: paths of the map files; default: found in ``root`` if there.
        min_classes: tasks with fewer classes are left out.

    Raises:
        DataError: missing or malformed file, label missing from the label map, an annotation
            whose task cannot be told, no image on disk.
    """
    root = require_dir(root, "iMaterialist dataset").resolve()
    splits = _splits(split)
    tasks_info = _read_task_map(_map_path(root, task_map, TASK_MAP_FILES, "task map"))
    label_info = _read_label_map(_map_path(root, label_map, LABEL_MAP_FILES, "label map"))

    # parse the requested files and, for a split-independent task table, the labelled ones present
    parsed: dict[str, tuple[list[str], list[tuple[str, str, str]]]] = {}
    for name in dict.fromkeys([*splits, "train", "validation"]):
        path = _split_path(root, name, required=name in splits)
        if path is not None:
            parsed[name] = _read_split(path, label_info)

    task_ids, tasks, class_index = _task_table(parsed, tasks_info, label_info, min_classes)

    folders = {s: _image_dir(root, images, s) for s in splits}
    if len(splits) > 1 and len(set(folders.values())) < len(splits):
        raise DataError(
            f"iMaterialist: image ids restart in each split, so splits {', '.join(splits)} need separate "
            f"image folders: use images='{{split}}' (or similar) instead of {images!r}"
        )

    rows: list[dict] = []
    conflicts = missing = total = 0
    for s in splits:
        image_ids, annotations = parsed[s]
        labels: dict[str, dict[str, int]] = {}
        for image_id, task_id, label_id in annotations:
            if task_id not in class_index:
                continue
            per_image = labels.setdefault(image_id, {})
            name = task_ids[task_id]
            if name in per_image:
                conflicts += per_image[name] != class_index[task_id][label_id]
                continue
            per_image[name] = class_index[task_id][label_id]
        folder = folders[s]
        files = set(os.listdir(folder))
        for image_id in dict.fromkeys([*image_ids, *labels]):
            total += 1
            file = image_id + IMAGE_SUFFIX
            if file not in files:
                missing += 1
                continue
            row = {"path": str(folder / file), "identity": -1, "camera": -1, "subset": SUBSET[s]}
            row.update(labels.get(image_id, {}))
            rows.append(row)
    if conflicts:
        warnings.warn(f"iMaterialist: {conflicts} (image, task) pairs have several labels; the first is kept", stacklevel=2)
    if missing:
        warnings.warn(
            f"iMaterialist: {missing} of {total} images are not on disk ({', '.join(map(str, folders.values()))}) "
            "and are dropped",
            stacklevel=2,
        )
    if not rows:
        raise DataError(f"iMaterialist: none of the {total} images of {', '.join(splits)} is on disk as <imageId>.jpg")
    return SourceData(name=NAME, root=str(root), table=make_table(rows, tasks), tasks=tasks)


# -- reading -------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _records(data: dict, key: str, path: Path, required: bool = True) -> list[dict]:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise DataError(f"{path}: expected a list of objects under {key!r}")
    return value


def _field(record: dict, key: str, path: Path, where: str) -> str:
    if key not in record or record[key] is None:
        raise DataError(f"{path}: {where} has no {key!r}: {json.dumps(record)[:120]}")
    return str(record[key]).strip()


def _read_task_map(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    data = _read_json(path)
    out = {}
    for i, r in enumerate(_records(data, "taskInfo", path)):
        out[_field(r, "taskId", path, f"taskInfo[{i}]")] = _field(r, "taskName", path, f"taskInfo[{i}]")
    return out


def _read_label_map(path: Path | None) -> dict[str, dict[str, str | None]]:
    if path is None:
        return {}
    data = _read_json(path)
    out = {}
    for i, r in enumerate(_records(data, "labelInfo", path)):
        label_id = _field(r, "labelId", path, f"labelInfo[{i}]")
        out[label_id] = {
            "name": str(r.get("labelName", label_id)).strip(),
            "task": None if r.get("taskId") is None else str(r["taskId"]).strip(),
            "task_name": None if r.get("taskName") is None else str(r["taskName"]).strip(),
        }
    return out


def _read_split(path: Path, label_info: dict) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Image ids (file order) and (image, task, label) triples of one split file."""
    data = _read_json(path)
    image_ids = [_field(r, "imageId", path, f"images[{i}]") for i, r in enumerate(_records(data, "images", path, False))]
    triples = []
    for i, r in enumerate(_records(data, "annotations", path, required=False)):
        where = f"annotations[{i}]"
        image_id = _field(r, "imageId", path, where)
        raw = r.get("labelId")
        if raw is None:
            raise DataError(f"{path}: {where} has no 'labelId'")
        label_ids = [str(x).strip() for x in (raw if isinstance(raw, list) else [raw])]
        for label_id in label_ids:
            if label_info and label_id not in label_info:
                raise DataError(f"{path}: {where} (image {image_id}): label {label_id} is not in the label map")
            task_id = r.get("taskId")
            if task_id is None:
                task_id = label_info.get(label_id, {}).get("task")
            if task_id is None:
                raise DataError(
                    f"{path}: {where} (image {image_id}): label {label_id} has no taskId and the label map "
                    "gives none; a label map with taskId per label is needed for this file"
                )
            triples.append((image_id, str(task_id).strip(), label_id))
    return image_ids, triples


def _sort_key(value: str):
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def _task_table(parsed, tasks_info, label_info, min_classes):
    """(taskId -> task name, task table, taskId -> {labelId: class index})."""
    labels_of: dict[str, set[str]] = {}
    for label_id, info in label_info.items():
        if info["task"] is not None:
            labels_of.setdefault(info["task"], set()).add(label_id)
    for name in ("train", "validation"):
        for _, task_id, label_id in parsed.get(name, ([], []))[1]:
            labels_of.setdefault(task_id, set()).add(label_id)
    task_names_from_labels = {i["task"]: i["task_name"] for i in label_info.values() if i["task"] and i["task_name"]}

    task_ids: dict[str, str] = {}
    tasks: dict[str, TaskSpec] = {}
    class_index: dict[str, dict[str, int]] = {}
    for task_id in sorted(labels_of, key=_sort_key):
        label_ids = sorted(labels_of[task_id], key=_sort_key)
        if len(label_ids) < min_classes:
            continue
        raw_name = tasks_info.get(task_id) or task_names_from_labels.get(task_id) or f"task_{task_id}"
        name = base = identifier(raw_name)
        k = 2
        while name in tasks or name in ("path", "identity", "camera", "subset"):
            name, k = f"{base}_{k}", k + 1
        names = [label_info.get(lab, {}).get("name") or lab for lab in label_ids]
        dup = {n for n in names if names.count(n) > 1}
        names = [f"{n} ({lab})" if n in dup else n for n, lab in zip(names, label_ids)]
        task_ids[task_id] = name
        tasks[name] = TaskSpec(name, tuple(names), CATEGORICAL)
        class_index[task_id] = {lab: i for i, lab in enumerate(label_ids)}
    if not tasks:
        raise DataError(f"iMaterialist: no task with at least {min_classes} classes in the annotations / label map")
    return task_ids, tasks, class_index


# -- paths ---------------------------------------------------------------------------------


def _splits(split) -> list[str]:
    if isinstance(split, str):
        split = re.split(r"[,+]", split)
    out = []
    for s in split:
        s = str(s).strip()
        if s and s not in out:
            out.append(s)
    unknown = [s for s in out if s not in SPLIT_FILES]
    if unknown or not out:
        raise DataError(f"iMaterialist: unknown split {', '.join(unknown) or repr(split)}; valid: {', '.join(SPLIT_FILES)}")
    return out


def _split_path(root: Path, split: str, required: bool) -> Path | None:
    for name in SPLIT_FILES[split]:
        if (root / name).is_file():
            return root / name
    if required:
        raise DataError(f"iMaterialist: no {split} file in {root} (expected {' or '.join(SPLIT_FILES[split])})")
    return None


def _map_path(root: Path, given, names, what) -> Path | None:
    if given is not None:
        p = Path(given)
        return require_file(p if p.is_absolute() else root / p, f"iMaterialist {what}")
    for n in names:
        if (root / n).is_file():
            return root / n
    return None


def _image_dir(root: Path, images: str, split: str) -> Path:
    p = Path(str(images).replace("{split}", split))
    return require_dir(p if p.is_absolute() else root / p, f"iMaterialist images of split {split!r}").resolve()
