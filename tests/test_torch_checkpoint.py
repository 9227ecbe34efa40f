"""The torch-free checkpoint reader: round trips on hand-written files, refusal of unsafe pickles."""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

from mtl.models import torch_checkpoint as tc

# --------------------------------------------------------------------------------------------
# A tiny fake ``torch`` (installed in sys.modules only while a test writes a file) so the
# standard pickler emits the same GLOBAL / persistent-id records torch.save does.


class _FakeStorage:
    """One storage: a 1-D numpy array; pickled as a persistent id like torch does."""

    def __init__(self, data: np.ndarray, key: str):
        self.data, self.key = np.ascontiguousarray(data).ravel(), key


class _FakeTensor:
    def __init__(self, storage, offset, size, stride, parameter=False):
        self.storage, self.offset, self.size, self.stride, self.parameter = storage, offset, size, stride, parameter

    def __reduce_ex__(self, protocol):
        fake = sys.modules["torch._utils"]
        args = (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, collections.OrderedDict())
        if self.parameter:
            inner = _FakeTensor(self.storage, self.offset, self.size, self.stride)
            return fake._rebuild_parameter, (inner, True, collections.OrderedDict())
        return fake._rebuild_tensor_v2, args


_DTYPE_STORAGE = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


@pytest.fixture
def fake_torch(monkeypatch):
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    def _rebuild_parameter(*args):
        raise AssertionError("never called while writing")

    for fn in (_rebuild_tensor_v2, _rebuild_parameter):
        fn.__module__, fn.__qualname__ = "torch._utils", fn.__name__
        setattr(utils, fn.__name__, fn)
    for name in set(_DTYPE_STORAGE.values()) | {"BFloat16Storage"}:
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _TorchLikePickler(pickle.Pickler):
    def __init__(self, fh, torch, legacy: bool):
        super().__init__(fh, protocol=2)
        self.torch, self.legacy, self.seen = torch, legacy, {}

    def persistent_id(self, obj):
        if not isinstance(obj, _FakeStorage):
            return None
        self.seen[obj.key] = obj
        stype = getattr(self.torch, obj.storage_name)
        if self.legacy:
            return ("storage", stype, obj.key, "cpu", obj.data.size, None)
        return ("storage", stype, obj.key, "cpu", obj.data.size)


def _storage(data, key, name=None):
    s = _FakeStorage(data, key)
    s.storage_name = name or _DTYPE_STORAGE[s.data.dtype]
    return s


def write_zip(path, obj, torch, big_endian=False, root="archive"):
    buf = io.BytesIO()
    pickler = _TorchLikePickler(buf, torch, legacy=False)
    pickler.dump(obj)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{root}/data.pkl", buf.getvalue())
        zf.writestr(f"{root}/byteorder", "big" if big_endian else "little")
        for key, st in pickler.seen.items():
            data = st.data.astype(st.data.dtype.newbyteorder(">")) if big_endian else st.data
            zf.writestr(f"{root}/data/{key}", data.tobytes())
        zf.writestr(f"{root}/version", "3\n")


def write_legacy(path, obj, torch):
    with open(path, "wb") as fh:
        for header in (tc.LEGACY_MAGIC_NUMBER, tc.LEGACY_PROTOCOL_VERSION,
                       {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}):
            pickle.dump(header, fh, protocol=2)
        pickler = _TorchLikePickler(fh, torch, legacy=True)
        pickler.dump(obj)
        keys = sorted(pickler.seen)
        pickle.dump(keys, fh, protocol=2)
        for key in keys:
            data = pickler.seen[key].data
            fh.write(struct.pack("<q", data.size))
            fh.write(data.tobytes())


def _sample_state_dict():
    """Tensors exercising offsets, non-contiguous strides, a shared storage and several dtypes."""
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    # conv stored channels-last (as in converted TF weights): storage order is (O,H,W,I)
    conv_cl = np.ascontiguousarray(conv.transpose(0, 2, 3, 1))
    st_conv = _storage(conv_cl, "0")
    shared = _storage(np.arange(10, dtype=np.float32), "1")  # two tensors share one storage
    half = rng.standard_normal(5).astype(np.float16)
    expected = collections.OrderedDict(
        [
            ("conv.weight", conv),
            ("bn.weight", np.arange(10, dtype=np.float32)[2:6]),
            ("bn.bias", np.arange(10, dtype=np.float32)[6:10].reshape(2, 2)),
            ("bn.num_batches_tracked", np.array(7, dtype=np.int64)),
            ("half", half),
            ("flags", np.array([True, False, True])),
            ("fc.weight", rng.standard_normal((3, 2)).astype(np.float64).T),  # transposed view
            ("empty", np.zeros((0, 3), dtype=np.float32)),
        ]
    )
    fc_storage = np.ascontiguousarray(expected["fc.weight"].T)
    obj = collections.OrderedDict(
        [
            ("conv.weight", _FakeTensor(st_conv, 0, (4, 3, 2, 2), (12, 1, 6, 3), parameter=True)),
            ("bn.weight", _FakeTensor(shared, 2, (4,), (1,))),
            ("bn.bias", _FakeTensor(shared, 6, (2, 2), (2, 1))),
            ("bn.num_batches_tracked", _FakeTensor(_storage(np.array([7], np.int64), "2"), 0, (), ())),
            ("half", _FakeTensor(_storage(half, "3"), 0, (5,), (1,))),
            ("flags", _FakeTensor(_storage(np.array([True, False, True]), "4"), 0, (3,), (1,))),
            ("fc.weight", _FakeTensor(_storage(fc_storage, "5"), 0, (2, 3), (1, 2))),
            ("empty", _FakeTensor(_storage(np.zeros(0, np.float32), "6"), 0, (0, 3), (3, 1))),
        ]
    )
    obj._metadata = collections.OrderedDict([("", {"version": 1})])  # like torch state dicts
    return obj, expected


def _assert_same(got: dict, expected: dict):
    assert list(got) == list(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype, k
        assert got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)
        assert got[k].flags.c_contiguous and got[k].flags.writeable


@pytest.mark.parametrize("big_endian", [False, True])
def test_zip_round_trip(tmp_path, fake_torch, big_endian):
    obj, expected = _sample_state_dict()
    path = tmp_path / "model.pt"
    write_zip(path, obj, fake_torch, big_endian=big_endian)
    sys.modules.pop("torch")  # the reader must not need (or import) torch
    sys.modules.pop("torch._utils")
    _assert_same(tc.load_state_dict(path), expected)
    assert "torch" not in sys.modules


def test_zip_with_other_root_name_and_wrapper(tmp_path, fake_torch):
    obj, expected = _sample_state_dict()
    wrapped = {"epoch": 3, "state_dict": obj, "note": "hello"}
    path = tmp_path / "ckpt.pth"
    write_zip(path, wrapped, fake_torch, root="ckpt")
    _assert_same(tc.load_state_dict(path), expected)
    raw = tc.load(path)
    assert raw["epoch"] == 3 and raw["note"] == "hello"


def test_legacy_round_trip(tmp_path, fake_torch):
    obj, expected = _sample_state_dict()
    path = tmp_path / "legacy.pth"
    write_legacy(path, obj, fake_torch)
    _assert_same(tc.load_state_dict(path), expected)


def test_bfloat16_widened_to_float32(tmp_path, fake_torch):
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact in bfloat16
    obj = {"w": _FakeTensor(_storage(bits, "0", "BFloat16Storage"), 0, (3,), (1,))}
    path = tmp_path / "bf16.pt"
    write_zip(path, obj, fake_torch)
    got = tc.load_state_dict(path)["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, values)


def test_out_of_bounds_strides_are_refused(tmp_path, fake_torch):
    # 4 elements in the storage, but the tensor claims 3x3: reading it would run past the buffer.
    obj = {"w": _FakeTensor(_storage(np.zeros(4, np.float32), "0"), 0, (3, 3), (3, 1))}
    path = tmp_path / "oob.pt"
    write_zip(path, obj, fake_torch)
    with pytest.raises(tc.CheckpointError, match="reaches element"):
        tc.load_state_dict(path)


def test_truncated_legacy_file(tmp_path, fake_torch):
    obj, _ = _sample_state_dict()
    path = tmp_path / "legacy.pth"
    write_legacy(path, obj, fake_torch)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(tc.CheckpointError):
        tc.load_state_dict(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(b"hello world")
    with pytest.raises(tc.CheckpointError):
        tc.load(path)
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))  # a plain pickle, not torch.save
    with pytest.raises(tc.CheckpointError, match="magic"):
        tc.load(path)


# --------------------------------------------------------------------------------------------
# Hostile pickles: nothing may run.


def _evil_payloads(marker):
    cmd = f"touch {marker}"
    return {
        # GLOBAL 'os system' + REDUCE, written opcode by opcode
        "os.system": b"\x80\x02cos\nsystem\nq\x00X" + struct.pack("<I", len(cmd)) + cmd.encode() + b"\x85R.",
        # what pickle.dumps emits for os.system on Linux
        "posix.system": pickle.dumps(_Reduce(os.system, (cmd,)), protocol=2),
        # builtins.eval of an expression that would create the marker file
        "builtins.eval": pickle.dumps(_Reduce(eval, (f"open({str(marker)!r}, 'w')",)), protocol=2),
        # hidden inside an otherwise valid-looking state dict value
        "nested": pickle.dumps(collections.OrderedDict(w=_Reduce(os.system, (cmd,))), protocol=2),
    }


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("kind", ["os.system", "posix.system", "builtins.eval", "nested"])
@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_code_execution_is_refused(tmp_path, kind, container):
    marker = tmp_path / "pwned"
    payload = _evil_payloads(marker)[kind]
    path = tmp_path / "evil.pth"
    if container == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", payload)
    else:
        with open(path, "wb") as fh:
            for header in (tc.LEGACY_MAGIC_NUMBER, tc.LEGACY_PROTOCOL_VERSION, {"little_endian": True}):
                pickle.dump(header, fh, protocol=2)
            fh.write(payload)
            pickle.dump([], fh, protocol=2)
    with pytest.raises(tc.UnsafeCheckpointError, match="refusing"):
        tc.load(path)
    assert not marker.exists(), "the checkpoint's payload ran"
    assert isinstance(tc.UnsafeCheckpointError("x"), pickle.UnpicklingError)


def test_evil_header_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(_evil_payloads(marker)["os.system"])  # first (magic number) pickle
    with pytest.raises(tc.UnsafeCheckpointError):
        tc.load(path)
    assert not marker.exists()


def test_whitelisted_globals_cannot_be_abused(tmp_path, fake_torch):
    # Calling a storage type (as torch would to build one) or feeding the rebuild function
    # something other than a storage must fail cleanly, not run anything.
    path = tmp_path / "odd.pth"
    payload = b"\x80\x02ctorch\nFloatStorage\n)R."
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
    with pytest.raises(tc.CheckpointError):
        tc.load(path)
    payload = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(K\x01K\x00)))\x89}tR."
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
    with pytest.raises(tc.UnsafeCheckpointError):
        tc.load(path)


def test_broadcast_tensor_cannot_ask_for_unbounded_memory(tmp_path, fake_torch):
    obj = {"w": _FakeTensor(_storage(np.zeros(1, np.float32), "0"), 0, (100000, 100000), (0, 0))}
    path = tmp_path / "huge.pt"
    write_zip(path, obj, fake_torch)
    with pytest.raises(tc.CheckpointError, match="implausibly large"):
        tc.load_state_dict(path)


def test_legacy_storage_size_beyond_file_end(tmp_path, fake_torch):
    obj = {"w": _FakeTensor(_storage(np.zeros(4, np.float32), "0"), 0, (4,), (1,))}
    path = tmp_path / "legacy.pth"
    write_legacy(path, obj, fake_torch)
    data = bytearray(path.read_bytes())
    # patch the on-disk element count (the int64 before the 16 data bytes) to something absurd
    data[-24:-16] = struct.pack("<q", 1 << 40)
    path.write_bytes(bytes(data))
    with pytest.raises(tc.CheckpointError):
        tc.load_state_dict(path)
