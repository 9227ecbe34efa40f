"""mtl.io: atomic writes with ordinary permissions, write failures as WriteError, one lock per folder."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtl import io
from mtl.errors import MtlError, WriteError
from mtl.io import atomic_path, atomic_write_json, atomic_write_text, ensure_writable, folder_lock

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def umask():
    """Set the process umask for one test (``umask(0o002)``), restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(folder: Path) -> list[str]:
    """Temporary files an atomic write left behind in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


# --- permissions -----------------------------------------------------------------------------

@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_permissions_of_the_umask_not_0600(tmp_path, umask, mask, expected):
    umask(mask)
    assert io.current_umask() == mask
    atomic_write_text(tmp_path / "notes.txt", "hello")
    atomic_write_json(tmp_path / "runs" / "x" / "metrics.json", {"a": 1})
    assert mode(tmp_path / "notes.txt") == expected
    assert mode(tmp_path / "runs" / "x" / "metrics.json") == expected
    # replacing an existing file too (the old inode's mode does not carry over)
    atomic_write_text(tmp_path / "notes.txt", "again")
    assert mode(tmp_path / "notes.txt") == expected and (tmp_path / "notes.txt").read_text() == "again"


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664)])
def test_a_file_a_library_writes_into_the_temporary_path_gets_them_too(tmp_path, umask, mask, expected):
    umask(mask)
    target = tmp_path / "model.keras"
    with atomic_path(target) as tmp:
        # as Keras does: open the given (existing, mkstemp-made 0600) path for writing
        assert tmp.name.endswith("model.keras")
        with open(tmp, "w") as handle:
            handle.write("weights")
    assert mode(target) == expected and target.read_text() == "weights"
    assert leftovers(tmp_path) == []


# --- write failures --------------------------------------------------------------------------

def test_a_full_disk_while_writing_is_a_write_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.os, "fsync", no_space)  # the data reaching the disk fails, as on a full disk
    with pytest.raises(WriteError) as e:
        atomic_write_json(target, {"a": 1})
    assert str(e.value) == f"cannot write {target}: No space left on device"
    assert "\n" not in str(e.value)
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_a_full_disk_in_a_library_writer_or_at_replace_is_a_write_error(tmp_path, monkeypatch):
    target = tmp_path / "model.keras"
    target.write_text("old")
    with pytest.raises(WriteError, match=r"^cannot write .*model\.keras: No space left on device$"):
        with atomic_path(target) as tmp:
            tmp.write_text("half a mod")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))  # what h5py / zipfile raise
    assert target.read_text() == "old" and leftovers(tmp_path) == []

    def replace_fails(src, dst):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(io.os, "replace", replace_fails)
    with pytest.raises(WriteError, match=r"^cannot write .*model\.keras: Disk quota exceeded$"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_other_errors_of_the_writer_are_not_disguised_as_write_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "copy.txt"):
            (tmp_path / "missing-input.txt").read_text()
    assert leftovers(tmp_path) == [] and not (tmp_path / "copy.txt").exists()


def test_a_folder_that_cannot_be_created_is_a_write_error(tmp_path):
    # a path under a regular file fails for root too (ENOTDIR), unlike a chmod-ed folder
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(WriteError, match=r"^cannot write .*a-file/metrics\.json: .*a-file is a file, not a folder$"):
        atomic_write_json(tmp_path / "a-file" / "metrics.json", {})
    with pytest.raises(WriteError, match=r"^cannot write .*a-file/run/metrics\.json: Not a directory$"):
        atomic_write_json(tmp_path / "a-file" / "run" / "metrics.json", {})


def test_a_read_only_file_system_is_a_write_error(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(io.tempfile, "mkstemp", read_only)
    with pytest.raises(WriteError, match=r"^cannot write .*report\.html: Read-only file system$"):
        atomic_write_text(tmp_path / "report.html", "x")
    with pytest.raises(WriteError, match=r"^cannot write in .*: Read-only file system$"):
        ensure_writable(tmp_path)  # an existing folder: a file is created in it
    monkeypatch.setattr(io.tempfile, "mkdtemp", read_only)
    with pytest.raises(WriteError, match=r"^cannot write in .*out: Read-only file system \(cannot create folders"):
        ensure_writable(tmp_path / "out")  # a missing one: a folder is created in its parent
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(IS_ROOT, reason="root writes into a chmod 0555 folder anyway")
def test_a_folder_without_write_permission_is_a_write_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "metrics.json").write_text("old")
    folder.chmod(0o555)
    try:
        with pytest.raises(WriteError, match=r"^cannot write .*metrics\.json: Permission denied$"):
            atomic_write_json(folder / "metrics.json", {})
        with pytest.raises(WriteError, match=r"^cannot write in .*ro: Permission denied$"):
            ensure_writable(folder)
        with pytest.raises(WriteError, match=r"cannot create folders in .*ro\)$"):
            ensure_writable(folder / "run")
        assert (folder / "metrics.json").read_text() == "old"
    finally:
        folder.chmod(0o755)


# --- ensure_writable -------------------------------------------------------------------------

def test_ensure_writable_does_not_create_a_missing_folder(tmp_path):
    ensure_writable(tmp_path)
    ensure_writable(tmp_path / "runs" / "x")
    assert sorted(tmp_path.iterdir()) == []  # no folder made, no probe left


def test_ensure_writable_refuses_a_path_under_a_file(tmp_path):
    (tmp_path / "a-file").write_text("x")
    for folder in (tmp_path / "a-file", tmp_path / "a-file" / "runs" / "x"):
        with pytest.raises(WriteError, match=r"^cannot write in .*: .*a-file is a file, not a folder$"):
            ensure_writable(folder)


def test_ensure_writable_refuses_a_nearly_full_disk(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 3 << 20))
    with pytest.raises(WriteError, match=r"^cannot write in .*runs: only 3\.0 MB free on its disk"):
        ensure_writable(tmp_path / "runs")
    ensure_writable(tmp_path / "runs", min_free_bytes=1 << 20)
    assert not (tmp_path / "runs").exists()


# --- folder_lock -----------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from mtl.io import folder_lock
    with folder_lock(sys.argv[1], "search"):
        print("locked", flush=True)
        time.sleep(120)
""")


def test_a_folder_locked_by_another_process_is_refused_until_it_is_killed(tmp_path):
    folder = tmp_path / "runs" / "x"
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked", child.stderr.read()
        with pytest.raises(MtlError) as e:
            with folder_lock(folder, "search"):
                pytest.fail("took a lock another process holds")
        message = str(e.value)
        assert message.startswith(f"{folder} is in use by process {child.pid} (search started ")
        assert message.endswith("): wait for it to finish or stop it") and "\n" not in message
        # kill -9: no chance to clean up, the kernel drops the lock with the process
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        with folder_lock(folder, "training") as locked:
            assert locked == folder and (folder / ".lock").is_file()
            assert f"process {os.getpid()} (training started " in io.lock_holder(folder)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()


def test_one_lock_per_folder_within_a_process_too_and_released_after(tmp_path):
    from mtl.tuning import exclusive_folder  # the tuning/study name of the same lock

    with folder_lock(tmp_path / "study", "study"):
        with pytest.raises(MtlError, match=rf"in use by process {os.getpid()} \(study started "):
            with exclusive_folder(tmp_path / "study", "study"):
                pass
        with folder_lock(tmp_path / "other"):  # another folder is another lock
            pass
    with exclusive_folder(tmp_path / "study", "study"):
        pass
    with folder_lock(tmp_path / "study"):
        pass


def test_folder_lock_in_a_folder_that_cannot_be_created_is_a_write_error(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(WriteError, match="a-file is a file, not a folder"):
        with folder_lock(tmp_path / "a-file"):
            pass
