"""Atomic writes: readers see the old file (or folder) or the complete new one, never a partial one."""

# Hand-written: the stdlib has no atomic file or folder replace that keeps open()'s permissions.

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import jax
import numpy as np

from twostage_jax._checks import human_bytes


def _umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:  # Linux: no window in which another thread sees 0
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: str) -> int:
    """The permission bits `open(path, 'w')` would leave: the old file's, else 0o666 & ~umask."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(path).st_mode)
    return 0o666 & ~_umask()


def _fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Makes renames inside `directory` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Opens a temporary file beside `path`; on success fsyncs it and renames it over `path`.

    On any exception the temporary file is removed and `path` is left untouched. The file gets
    the permissions an ordinary `open(path, 'w')` gives: those of the file it replaces, or
    0o666 less the umask for a new one.

    Args:
      path: destination file; its directory must exist.
      mode: 'wb' or 'w'.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=directory)
    try:
        os.fchmod(fd, _new_file_mode(path))  # mkstemp creates 0o600
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields an empty temporary folder beside `path`; on success it replaces `path` as a unit.

    Write every file of the new folder into the yielded one. On success the old folder (if
    any) is renamed aside, the new one renamed to `path`, and the old one deleted, so `path`
    never mixes old and new files. On any exception the temporary folder is removed and `path`
    is left untouched. A kill between the two renames leaves both folders whole, as hidden
    `.NAME.old-*` and `.NAME.tmp-*` siblings of `path`.

    Args:
      path: destination folder; its parent must exist.
    """
    path = Path(path).absolute()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0o700
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old)  # a folder may replace an empty folder
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_atomic_folder(path: str | os.PathLike[str]) -> list[str]:
    """Clears what a killed `atomic_folder(path)` left: its hidden `.NAME.tmp-*` and
    `.NAME.old-*` siblings. Where `path` itself is missing (killed between the two renames), the
    newest `.NAME.old-*` (the previous folder, whole) is renamed back to `path` first.

    Call it only while no `atomic_folder(path)` of another process runs (under the folder's lock).

    Returns:
      One phrase per folder restored or removed, for a log line (empty if there were none).
    """
    path = Path(path).absolute()
    stale = sorted(path.parent.glob(f".{glob.escape(path.name)}.tmp-*"))
    old = sorted(path.parent.glob(f".{glob.escape(path.name)}.old-*"), key=lambda p: p.stat().st_mtime)
    done = []
    if old and not path.exists():
        os.replace(old[-1], path)
        done.append(f"restored {path.name}/ from {old[-1].name}")
        old = old[:-1]
    for folder in stale + old:
        shutil.rmtree(folder, ignore_errors=True)
        done.append(f"removed {folder.name}")
    return done


def json_default(x: Any) -> Any:
    """`json.dump`'s `default`: numpy and JAX scalars and arrays, tuples and sets as JSON values."""
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, (tuple, set)):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as indented JSON to `path` via a temporary file and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=json_default)


def read_json_file(path: str | os.PathLike[str], what: str, error: type[Exception] = ValueError) -> Any:
    """Reads a JSON file that a user supplied, with errors that say which file it is.

    Args:
      path: the file.
      what: what the file is, for the messages ("calibration file").
      error: the exception raised for a file that is not JSON.

    Raises:
      FileNotFoundError: no such file.
      error: not UTF-8 JSON.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {what} at {path!r}.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{what} {path!r} is not valid JSON: {err}") from err


class DiskFullError(RuntimeError):
    """A write failed for want of space; the message names what, where, and what to do."""


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or an error it was raised from: orbax and tensorstore wrap them) is a
    full disk or an exhausted quota."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quot" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def free_space(path: Path) -> str:
    """The free space on the filesystem of `path` (or of its nearest existing folder), as text."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return f"{human_bytes(shutil.disk_usage(path).free)} free there"
    except OSError:
        return "free space unknown"


@contextlib.contextmanager
def reporting_disk_full(what: str, where: Path, after: str,
                        cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """Turns a full disk while writing `what` into one DiskFullError line.

    Args:
      what: what was being written ("the stage1 checkpoint of step 12").
      where: the folder written to (its filesystem's free space is reported).
      after: the state left and what to do ("free some space and continue with --resume.").
      cleanup: removes what the failed write left, run before the error is raised.

    Raises:
      DiskFullError: naming `what`, `where` and the free space, for ENOSPC / EDQUOT; any other
        error passes through unchanged.
    """
    try:
        yield
    except DiskFullError:
        raise  # already reported (by an inner, more precise, report)
    except Exception as e:
        if not is_disk_full(e):
            raise
        if cleanup is not None:
            cleanup()
        raise DiskFullError(f"no space left on the device while writing {what} to {where} "
                            f"({free_space(where)}); {after}") from e
