"""Read PyTorch checkpoint files (``torch.save`` of a state dict) into numpy arrays, without torch.

A checkpoint is a pickle, and unpickling runs whatever callables the file names. A checkpoint
is untrusted input, so this reader resolves only the handful of globals a state dict needs
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter``, the
``torch.*Storage`` types) to local, harmless stand-ins, and refuses every other global with
``UnsafeCheckpointError`` *before* anything is called. Nothing from torch is imported; the
stand-ins only record shapes and offsets, and tensors are cut out of the raw storage bytes with
bounds-checked strides.

Both on-disk formats are read:

* zip (torch >= 1.6): ``<root>/data.pkl`` plus one entry ``<root>/data/<key>`` per storage and
  an optional ``<root>/byteorder`` (``little`` / ``big``);
* legacy (older torch, still shipped in many packages): five pickles in a row (magic number,
  protocol version, system info, the object, the storage keys), then each storage as an int64
  element count followed by its raw bytes.

Public API: ``load(path)`` returns the unpickled object with every tensor as a ``numpy.ndarray``;
``load_state_dict(path)`` returns a flat ``{name: ndarray}``.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Mapping

import numpy as np

from mtl.errors import MtlError

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "load",
    "load_state_dict",
]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


class CheckpointError(MtlError):
    """The file is not a readable PyTorch checkpoint (corrupt, truncated, unsupported)."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The checkpoint's pickle names something other than the tensors of a state dict."""


# --------------------------------------------------------------------------------------------
# Stand-ins for the globals a state dict pickle references.


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co: only carries the numpy dtype. Not callable."""

    __slots__ = ("name", "dtype", "bfloat16")

    def __init__(self, name: str, dtype: str, bfloat16: bool = False):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.bfloat16 = bfloat16

    def __repr__(self):
        return f"torch.{self.name}"

    def __reduce__(self):  # never re-pickled; keep the object inert
        raise TypeError("storage type stand-ins cannot be pickled")


_STORAGE_TYPES = {
    name: _StorageType(name, dtype, name == "BFloat16Storage")
    for name, dtype in [
        ("FloatStorage", "<f4"),
        ("DoubleStorage", "<f8"),
        ("HalfStorage", "<f2"),
        ("BFloat16Storage", "<u2"),  # raw 16 bits, widened to float32 on materialisation
        ("LongStorage", "<i8"),
        ("IntStorage", "<i4"),
        ("ShortStorage", "<i2"),
        ("CharStorage", "<i1"),
        ("ByteStorage", "<u1"),
        ("BoolStorage", "?"),
    ]
}


class _Storage:
    """One storage of the checkpoint: its dtype and (once read) its raw 1-D numpy data."""

    __slots__ = ("stype", "numel", "data")

    def __init__(self, stype: _StorageType, numel: int):
        self.stype = stype
        self.numel = numel
        self.data: np.ndarray | None = None

    def __setstate__(self, state):
        raise UnsafeCheckpointError("checkpoint pickle tried to set the state of a storage")


class _StorageView:
    """A slice of a storage (legacy format's ``view_metadata``), in elements."""

    __slots__ = ("base", "offset", "size")

    def __init__(self, base: _Storage, offset: int, size: int):
        self.base, self.offset, self.size = base, offset, size

    def __setstate__(self, state):
        raise UnsafeCheckpointError("checkpoint pickle tried to set the state of a storage")


class _LazyTensor:
    """What ``_rebuild_tensor_v2`` returns here: a recipe, materialised once storages are read."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __setstate__(self, state):
        raise UnsafeCheckpointError("checkpoint pickle tried to set the state of a tensor")


def _int_tuple(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise CheckpointError(f"tensor {what} must be a tuple of non-negative ints, got {value!r}")
    return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> _LazyTensor:
    if not isinstance(storage, (_Storage, _StorageView)):
        raise UnsafeCheckpointError(f"tensor built from {type(storage).__name__}, not a storage")
    if not isinstance(storage_offset, int) or isinstance(storage_offset, bool) or storage_offset < 0:
        raise CheckpointError(f"bad tensor storage offset {storage_offset!r}")
    size = _int_tuple(size, "size")
    stride = _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in length")
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *metadata):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    if not isinstance(data, _LazyTensor):
        raise UnsafeCheckpointError(f"parameter built from {type(data).__name__}, not a tensor")
    return data


# (module, name) -> object handed to the unpickler. Nothing else resolves.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): stype for name, stype in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ``_SAFE_GLOBALS`` and hands storages to ``on_storage``."""

    def __init__(self, file: BinaryIO, on_storage=None):
        super().__init__(file, encoding="utf-8")
        self._on_storage = on_storage

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f"refusing to load checkpoint: its pickle references {module}.{name}, which is not "
                "part of a plain state dict of tensors (it could run arbitrary code). Only "
                "state dicts (OrderedDict of tensors) are supported; re-save the file with "
                "torch.save(model.state_dict(), path)."
            ) from None

    def persistent_load(self, pid):
        if self._on_storage is None:
            raise UnsafeCheckpointError("unexpected persistent id in a checkpoint header pickle")
        if not isinstance(pid, tuple) or not pid:
            raise UnsafeCheckpointError(f"unsupported persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise UnsafeCheckpointError(f"unsupported persistent id kind {kind!r} (only 'storage')")
        return self._on_storage(pid[1:])


# --------------------------------------------------------------------------------------------
# Materialisation.


def _storage_type(obj) -> _StorageType:
    if not isinstance(obj, _StorageType):
        raise UnsafeCheckpointError(f"storage of unsupported type {obj!r}")
    return obj


def _key(obj) -> str:
    if isinstance(obj, bytes):
        obj = obj.decode("ascii")
    if not isinstance(obj, str) or not obj or "/" in obj or "\\" in obj or obj.startswith("."):
        raise CheckpointError(f"bad storage key {obj!r}")
    return obj


def _raw_to_array(raw: bytes, stype: _StorageType, numel: int, big_endian: bool, key: str) -> np.ndarray:
    itemsize = stype.dtype.itemsize
    if len(raw) < numel * itemsize:
        raise CheckpointError(
            f"storage {key!r} holds {len(raw)} bytes, {numel} x {itemsize} expected (truncated file?)"
        )
    dtype = stype.dtype.newbyteorder(">") if big_endian and itemsize > 1 else stype.dtype
    return np.frombuffer(raw, dtype=dtype, count=numel)


def _materialise(t: _LazyTensor) -> np.ndarray:
    storage = t.storage
    start = t.offset
    if isinstance(storage, _StorageView):
        start += storage.offset
        limit = storage.offset + storage.size
        storage = storage.base
    else:
        limit = storage.numel
    data = storage.data
    if data is None:
        raise CheckpointError("a tensor refers to a storage whose data the file does not contain")
    limit = min(limit, data.shape[0])
    stype = storage.stype
    if 0 in t.size:
        out = np.zeros(t.size, dtype=np.float32 if stype.bfloat16 else data.dtype.newbyteorder("="))
        return out
    count = int(np.prod(t.size, dtype=np.float64))
    if count > 64 * max(limit, 1):  # a broadcast (stride 0) tensor could ask for any amount of memory
        raise CheckpointError(f"tensor of size {t.size} is implausibly large for its storage of {limit} elements")
    last = start + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if last >= limit:
        raise CheckpointError(
            f"tensor of size {t.size}, stride {t.stride}, offset {t.offset} reaches element {last} "
            f"of a storage of {limit} elements"
        )
    base = data[start:]
    view = np.lib.stride_tricks.as_strided(
        base, shape=t.size, strides=tuple(s * data.dtype.itemsize for s in t.stride), writeable=False
    )
    out = np.array(view, dtype=data.dtype.newbyteorder("="), order="C", copy=True)
    if stype.bfloat16:
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _resolve(obj, memo: dict[int, Any] | None = None):
    """Replace every ``_LazyTensor`` in a nest of dicts/lists/tuples by its ndarray."""
    if memo is None:
        memo = {}
    if isinstance(obj, _LazyTensor):
        if id(obj) not in memo:
            memo[id(obj)] = _materialise(obj)
        return memo[id(obj)]
    if isinstance(obj, (_Storage, _StorageView)):
        raise CheckpointError("checkpoint holds a bare storage; only tensors are supported")
    if isinstance(obj, Mapping):
        out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _resolve(v, memo)
        return out
    if isinstance(obj, list):
        return [_resolve(v, memo) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, memo) for v in obj)
    return obj


# --------------------------------------------------------------------------------------------
# The two formats.


def _load_zip(zf: zipfile.ZipFile) -> Any:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise CheckpointError(f"zip checkpoint without a single <root>/data.pkl (entries: {names[:5]}...)")
    root = pkl[0][: -len("data.pkl")]
    big_endian = False
    if root + "byteorder" in names:
        order = zf.read(root + "byteorder").decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise CheckpointError(f"unknown byteorder {order!r} in checkpoint")
        big_endian = order == "big"
    storages: dict[str, _Storage] = {}

    def on_storage(data):
        if len(data) != 4:
            raise CheckpointError(f"unexpected storage record {data!r} in zip checkpoint")
        stype, key, _location, numel = data
        stype, key = _storage_type(stype), _key(key)
        if key not in storages:
            entry = f"{root}data/{key}"
            if entry not in names:
                raise CheckpointError(f"zip checkpoint lacks storage entry {entry}")
            info = zf.getinfo(entry)
            count = info.file_size // stype.dtype.itemsize
            storage = _Storage(stype, count)
            storage.data = _raw_to_array(zf.read(entry), stype, count, big_endian, key)
            storages[key] = storage
        return storages[key]

    with zf.open(pkl[0]) as fh:
        obj = _RestrictedUnpickler(io.BytesIO(fh.read()), on_storage).load()
    return _resolve(obj)


def _load_legacy(fh: BinaryIO) -> Any:
    def header():
        return _RestrictedUnpickler(fh).load()

    try:
        magic = header()
    except UnsafeCheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"not a PyTorch checkpoint (neither zip nor legacy pickle): {exc}") from None
    if magic != LEGACY_MAGIC_NUMBER:
        raise CheckpointError("not a PyTorch checkpoint: bad magic number (a plain pickle or tar file?)")
    version = header()
    if version != LEGACY_PROTOCOL_VERSION:
        raise CheckpointError(f"unsupported legacy checkpoint protocol version {version!r}")
    sys_info = header()
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True

    storages: dict[str, _Storage] = {}
    views: dict[str, _StorageView] = {}

    def on_storage(data):
        if len(data) != 5:
            raise CheckpointError(f"unexpected storage record {data!r} in legacy checkpoint")
        stype, root_key, _location, numel, view_metadata = data
        stype, root_key = _storage_type(stype), _key(root_key)
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"bad storage size {numel!r}")
        if root_key not in storages:
            storages[root_key] = _Storage(stype, numel)
        base = storages[root_key]
        if view_metadata is None:
            return base
        view_key, offset, size = view_metadata
        view_key = _key(view_key)
        if view_key not in views:
            if not all(isinstance(v, int) and v >= 0 for v in (offset, size)) or offset + size > base.numel:
                raise CheckpointError(f"bad storage view {view_metadata!r}")
            views[view_key] = _StorageView(base, offset, size)
        return views[view_key]

    obj = _RestrictedUnpickler(fh, on_storage).load()
    keys = header()
    here = fh.tell()
    end = fh.seek(0, os.SEEK_END)
    fh.seek(here)
    if not isinstance(keys, list):
        raise CheckpointError("legacy checkpoint: storage key list missing")
    for key in keys:
        key = _key(key)
        if key not in storages:
            raise CheckpointError(f"legacy checkpoint: data for unknown storage {key!r}")
        storage = storages[key]
        head = fh.read(8)
        if len(head) != 8:
            raise CheckpointError("legacy checkpoint truncated (storage header)")
        (numel,) = struct.unpack("<q" if little else ">q", head)
        if numel != storage.numel:
            raise CheckpointError(f"storage {key!r}: {numel} elements on disk, {storage.numel} declared")
        nbytes = numel * storage.stype.dtype.itemsize
        if nbytes > end - fh.tell():
            raise CheckpointError(f"legacy checkpoint truncated (storage {key!r} needs {nbytes} bytes)")
        raw = fh.read(nbytes)
        storage.data = _raw_to_array(raw, storage.stype, numel, not little, key)
    return _resolve(obj)


def load(path: str | os.PathLike | BinaryIO) -> Any:
    """Read a checkpoint; return its object with every tensor as a C-contiguous numpy array.

    Raises ``UnsafeCheckpointError`` if the pickle references anything but the globals of a
    state dict (nothing is executed in that case), ``CheckpointError`` for malformed files.
    """
    if isinstance(path, (str, os.PathLike)):
        with open(path, "rb") as fh:
            return load(fh)
    fh = path
    start = fh.tell()
    try:
        if zipfile.is_zipfile(fh):
            fh.seek(start)
            with zipfile.ZipFile(fh) as zf:
                return _load_zip(zf)
        fh.seek(start)
        return _load_legacy(fh)
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError, IndexError,
            AttributeError, zipfile.BadZipFile, UnicodeDecodeError, struct.error) as exc:
        # malformed pickle opcodes, wrong arity for a whitelisted callable, truncated data...
        raise CheckpointError(f"malformed PyTorch checkpoint: {type(exc).__name__}: {exc}") from exc


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "params")


def load_state_dict(path: str | os.PathLike | BinaryIO, key: str | None = None) -> dict[str, np.ndarray]:
    """Read a checkpoint and return a flat ``{name: ndarray}`` of its tensors, in file order.

    ``key`` selects a sub-dict (``{"state_dict": ..., "epoch": 3}``); without it a lone
    well-known wrapper key (``state_dict``, ``model``...) is unwrapped. Nested dicts are
    flattened with dots; non-tensor values (epoch counters, strings) are dropped.
    """
    obj = load(path)
    if key is not None:
        obj = obj[key]
    elif isinstance(obj, Mapping) and not any(isinstance(v, np.ndarray) for v in obj.values()):
        found = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if len(found) == 1:
            obj = obj[found[0]]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    out: dict[str, np.ndarray] = {}

    def walk(prefix: str, d: Mapping):
        for k, v in d.items():
            name = f"{prefix}{k}"
            if isinstance(v, np.ndarray):
                out[name] = v
            elif isinstance(v, Mapping):
                walk(name + ".", v)

    walk("", obj)
    return out
