"""Writing files safely: atomic replacement, ordinary permissions, clear errors, one lock per folder.

Every file a run writes goes through here, so that:

- an interruption never leaves a half-written file (a temporary file next to it replaces it at the end);
- the file gets the permissions any other program would give it (``0o666 & ~umask``), not the 0600 of
  ``tempfile.mkstemp``, so other users of a shared machine can read runs and deliverables;
- a full disk, a read-only mount or a folder without permission is one line (``WriteError``) naming the
  file and the reason, and the previous version of the file is left intact.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from mtl.errors import MtlError, WriteError

# Below this much free space a run is refused before it starts: a model file is several MB, and a
# full disk part-way through a run ended in tracebacks (or a segfault inside the HDF5 library).
MIN_FREE_BYTES = 16 * 1024 * 1024

# OSErrors raised by the code that writes into an ``atomic_path`` and that mean "this file cannot be
# written" (as opposed to, say, a missing input file the writer was reading).
_WRITE_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG", "EIO", "ENOTDIR", "EISDIR", "ENAMETOOLONG",
    "ETXTBSY", "EMFILE", "ENFILE") if hasattr(errno, name))


def _reason(e: OSError) -> str:
    """The operating system's words for ``e`` ("No space left on device"), without errno or path."""
    if e.strerror:
        return e.strerror
    if e.errno:
        return os.strerror(e.errno)
    return str(e) or type(e).__name__


def write_error(path: str | Path, e: OSError) -> WriteError:
    """``WriteError("cannot write <path>: <reason>")`` for an ``OSError`` met while writing ``path``."""
    return WriteError(f"cannot write {path}: {_reason(e)}")


# ---------------------------------------------------------------------------------------------
# Permissions
# ---------------------------------------------------------------------------------------------

def current_umask() -> int:
    """The process's umask.

    Read from ``/proc/self/status`` (Linux) where possible: setting the umask to read it back
    (``os.umask``) changes it for every thread for a moment, and a file another thread creates then
    would get the wrong permissions. Elsewhere, that is the only way.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a newly created file gets from ``open(..., "w")``: ``0o666 & ~umask`` (0644 under 022)."""
    return 0o666 & ~current_umask()


# ---------------------------------------------------------------------------------------------
# Checks before a run
# ---------------------------------------------------------------------------------------------

def ensure_writable(folder: str | Path, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    """Check, before any work, that files can be created in ``folder``, without creating it.

    Where ``folder`` exists, a temporary file is really created and deleted in it: ``os.access``
    says yes to root on a read-only mount and on some network file systems. Where it does not
    exist, the same is done with a temporary folder in its nearest existing ancestor (creating
    ``folder`` later needs exactly that). Then the free space of that disk is checked.

    Args:
        folder: the folder a command is about to write into (``--out``, a run folder).
        min_free_bytes: less free space than this is refused (a run writes models of several MB).

    Raises:
        WriteError: one line naming ``folder`` and why (read-only file system, permission denied,
            a path under a regular file, too little free space).
    """
    folder = Path(folder)
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise WriteError(f"cannot write in {folder}: {existing} is a file, not a folder")
    try:
        if existing == Path(os.path.abspath(folder)):
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=existing)
            os.close(fd)
            os.remove(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=existing))
    except OSError as e:
        where = "" if existing == Path(os.path.abspath(folder)) else f" (cannot create folders in {existing})"
        raise WriteError(f"cannot write in {folder}: {_reason(e)}{where}") from None
    try:
        free = shutil.disk_usage(existing).free
    except OSError:  # no figure (some network mounts): the writes themselves will tell
        return
    if free < min_free_bytes:
        raise WriteError(f"cannot write in {folder}: only {free / 2**20:.1f} MB free on its disk "
                         f"(at least {min_free_bytes / 2**20:.0f} MB needed)")


def make_folder(folder: str | Path, for_file: str | Path | None = None) -> Path:
    """``mkdir -p folder``; a failure is a ``WriteError`` naming it (read-only parent, path under a file).

    Args:
        folder: the folder to create (with its parents) unless it exists.
        for_file: the file the folder is made for, named in the error instead of the folder.

    Returns:
        ``folder`` as a ``Path``.
    """
    folder = Path(folder)
    what = f"cannot write {for_file}" if for_file is not None else f"cannot write in {folder}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file of that name
        raise WriteError(f"{what}: {folder} is a file, not a folder") from None
    except OSError as e:
        raise WriteError(f"{what}: {_reason(e)}") from None
    return folder


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------

@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path in the same folder; on success it replaces ``path`` atomically.

    The caller (or a library: Keras, matplotlib, pandas) writes the temporary file; when the block
    ends without error it gets ordinary permissions (``file_mode()``) and takes the place of ``path``.
    On any error the temporary file is removed and ``path`` keeps its previous content.

    Args:
        path: the file to write; its folder is created when missing.

    Yields:
        The temporary ``Path`` to write (its name ends with ``path``'s name: Keras checks suffixes).

    Raises:
        WriteError: the folder cannot be created, or writing fails for lack of space, permission or a
            read-only file system ("cannot write runs/x/metrics.json: No space left on device").
    """
    path = Path(path)
    make_folder(path.parent, for_file=path)
    try:
        # the temporary name ends with the real name: Keras checks suffixes (.keras, .weights.h5)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{path.name}", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) from None
    tmp = Path(tmp)
    try:
        try:
            yield tmp
        except OSError as e:
            if e.errno in _WRITE_ERRNOS:
                raise write_error(path, e) from e
            raise
        try:
            # mkstemp made it 0600 and whatever the writer did kept that inode's mode
            os.chmod(tmp, file_mode())
            os.replace(tmp, path)
        except OSError as e:
            raise write_error(path, e) from e
    finally:
        try:
            os.remove(tmp)
        except FileNotFoundError:  # replaced ``path``, as it should
            pass
        except OSError:  # cannot even remove it (the mount went read-only): the error above says why
            pass


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, with ordinary permissions.

    Raises:
        WriteError: see ``atomic_path``.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            # a full disk may only show when the data reaches it; better here than a truncated file
            os.fsync(handle.fileno())


def atomic_write_json(path: str | Path, data) -> None:
    """Write ``data`` as indented JSON (numpy scalars and arrays allowed) to ``path`` atomically.

    Raises:
        WriteError: see ``atomic_path``.
    """
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------------------------------
# One process per folder
# ---------------------------------------------------------------------------------------------

LOCK_NAME = ".lock"


def _lock_holder_writer(what: str):
    """``on_acquired`` callback of ``folder_lock``: write who holds the lock into the lock file itself.

    filelock opens an existing lock file without truncating it (its content belongs to the holder),
    so a process refused the lock can read who holds it; a holder killed with -9 leaves its line
    behind, but the kernel has dropped its lock, and the next holder overwrites the line.
    """
    import datetime

    def write(fd: int) -> None:
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        line = json.dumps({"pid": os.getpid(), "what": what, "started": started}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, line.encode(), 0)

    return write


def lock_holder(folder: str | Path) -> str:
    """Who holds ``folder``'s lock, in words: "process 1234 (search started 2025-01-31T10:00:00+00:00)".

    Read from the lock file; "another process" when it says nothing usable (the holder is just
    writing it, or an older version of this package wrote it).
    """
    try:
        info = json.loads((Path(folder) / LOCK_NAME).read_text(encoding="utf-8").strip() or "{}")
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
    details = " ".join(str(info[key]) for key in ("what",) if info.get(key))
    if info.get("started"):
        details = f"{details} started {info['started']}".strip()
    return f"process {pid} ({details})" if details else f"process {pid}"


@contextmanager
def folder_lock(folder: str | Path, what: str = "run"):
    """Hold an exclusive lock on ``folder`` while the block runs; refuse at once if another holds it.

    Two processes writing the same folder at once (the same command started twice) would mix
    their files; the second one stops with an error instead. The lock is ``filelock.FileLock`` on
    ``folder/.lock``, which is ``flock`` on Unix: the kernel drops it when its process ends, so a
    run killed with -9 never leaves a stale lock. The holder's pid, ``what`` and start time are
    written into the lock file for the error message. Two ``folder_lock`` on one folder in one
    process also exclude each other.

    Args:
        folder: the folder to lock; created when missing.
        what: what the holder is doing ("search", "study", "training"), shown to a refused process.

    Yields:
        ``folder`` as a ``Path``.

    Raises:
        MtlError: "runs/x is in use by process 1234 (search started ...): wait for it to finish or
            stop it".
        WriteError: the folder or its lock file cannot be created.
    """
    from filelock import FileLock, Timeout

    folder = make_folder(folder)
    try:
        lock = FileLock(folder / LOCK_NAME, blocking=False, on_acquired=_lock_holder_writer(what))
    except TypeError:  # filelock < 4 has no on_acquired (and truncates the file): the holder goes unnamed
        lock = FileLock(folder / LOCK_NAME, blocking=False)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise MtlError(f"{folder} is in use by {lock_holder(folder)}: wait for it to finish or stop it") from None
    except OSError as e:
        if e.errno == errno.ENOSYS:  # a file system without flock (some network mounts): nothing to lock with
            yield folder
            return
        raise WriteError(f"cannot write {folder / LOCK_NAME}: {_reason(e)}") from None
    try:
        yield folder
    finally:
        lock.release()
