"""Task specifications and the resolution of user task names against a dataset's task table.

A task is one model output. Three kinds exist:

* ``binary``: two classes, one sigmoid unit, masked binary cross-entropy;
* ``categorical``: ``K`` classes, softmax, masked sparse categorical cross-entropy;
* ``identity``: person identity for re-identification (classifier over training identities
  plus an embedding; see ``mtl.reid``).

Labels are integer class indices, ``-1`` where the label is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from mtl.errors import ConfigError

BINARY = "binary"
CATEGORICAL = "categorical"
IDENTITY = "identity"
KINDS = (BINARY, CATEGORICAL, IDENTITY)

# Auxiliary tasks: trained beside the attributes to shape the trunk or to filter
# retrieval, never part of ``all`` nor of the course deliverables. ``camera`` is asked for by name
# (``--tasks ...,camera``) and labelled from the file names; ``junk`` is added by
# ``data.junk_fraction`` (random zoomed-in crops of training images, ``mtl.data.pipeline.add_junk``).
CAMERA = "camera"
JUNK = "junk"
AUXILIARY = (CAMERA, JUNK)


@dataclass(frozen=True)
class TaskSpec:
    """One task of a dataset.

    Args:
        name: output name of the model (a valid Python identifier).
        classes: class names, index ``i`` is label ``i``.
        kind: one of ``KINDS``.
    """

    name: str
    classes: tuple[str, ...]
    kind: str = CATEGORICAL

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"task {self.name!r}: unknown kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if self.kind == BINARY and len(self.classes) != 2:
            raise ConfigError(f"binary task {self.name!r} needs exactly 2 classes, got {len(self.classes)}")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "TaskSpec":
        return cls(name=d["name"], classes=tuple(d["classes"]), kind=d.get("kind", CATEGORICAL))


def camera_task(cameras: Iterable[int]) -> TaskSpec:
    """The auxiliary camera-classification task of images whose file names give the camera.

    The class index is the camera number as written in the file name (``0002_c3_...`` -> class
    ``c3``, index 3), so a source table's ``camera`` column is the task's label column as it is
    (``-1`` = unknown); Market-1501 numbers cameras from 1, so its class ``c0`` is never used.

    Args:
        cameras: camera numbers of the labelled images (``< 0``: unknown, ignored).

    Returns:
        A categorical ``camera`` task with classes ``c0 .. c<largest camera>``.

    Raises:
        ValueError: no known camera.
    """
    known = [int(c) for c in cameras if int(c) >= 0]
    if not known:
        raise ValueError("no known camera number")
    return TaskSpec(CAMERA, tuple(f"c{i}" for i in range(max(known) + 1)), CATEGORICAL)


def junk_task() -> TaskSpec:
    """The auxiliary binary ``junk`` task: class 1 for a random zoomed-in crop made in training
    (``data.junk_fraction``), class 0 for every real image."""
    return TaskSpec(JUNK, ("person", "junk"), BINARY)


def attribute_tasks(tasks: Sequence[TaskSpec]) -> list[TaskSpec]:
    """The attribute tasks (binary and categorical) among ``tasks``, in their order: the ones with
    class probabilities (the identity task has an embedding instead)."""
    return [t for t in tasks if t.kind in (BINARY, CATEGORICAL)]


def resolve(
    names: str | Sequence[str] | None,
    table: Mapping[str, TaskSpec],
    aliases: Mapping[str, Sequence[str]] | None = None,
    also_valid: Sequence[str] = (),
) -> list[TaskSpec]:
    """Turn user task names (``"age,color"``) into the dataset's task specs, in table order.

    ``all`` (or ``None``) selects every attribute task of the table (``identity`` and the
    auxiliary tasks of ``AUXILIARY`` must be named); ``aliases`` maps a short name to several
    tasks (``color`` -> ``upcolor, downcolor``).

    Args:
        names: a comma-separated string or a list of names; ``None`` means ``all``.
        table: the dataset's tasks, ``{name: spec}``.
        aliases: short names for several tasks of the table.
        also_valid: names the caller resolves itself and has taken out of ``names`` (the
            identity task, made after the split when the data has identities): they are only
            listed among the valid names in errors.

    Returns:
        The selected task specs, each once, in table order.

    Raises:
        ConfigError: an unknown name, or no name at all; the message lists the valid names.
    """
    aliases = dict(aliases or {})
    if names is None:
        names = ["all"]
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    valid = ", ".join(sorted(set(table) | set(aliases) | set(also_valid) | {"all"}))
    wanted: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name == "all":
            # identity is a different problem (retrieval), camera an auxiliary task: asked for by name
            expanded: Iterable[str] = [n for n, s in table.items()
                                       if s.kind != IDENTITY and n not in AUXILIARY]
        elif name in aliases:
            expanded = aliases[name]
        elif name in table:
            expanded = [name]
        else:
            raise ConfigError(f"unknown task {name!r}; valid tasks for this dataset: {valid}")
        for n in expanded:
            if n not in wanted:
                wanted.append(n)
    if not wanted:
        raise ConfigError(f"no task selected (tasks={','.join(names)!r}); valid tasks for this dataset: {valid}")
    order = list(table)
    return [table[n] for n in sorted(wanted, key=order.index)]
