"""Workdir locks: each part of a workdir (demos/, stage1/, a stage 2's folder, an evaluation
folder) is locked exclusive to write it and shared to read it, with `fcntl.flock` on files in
WORKDIR/.locks/ (the kernel releases a dead holder's lock). A refused launcher stops at once,
naming the holder; a filesystem that refuses locks raises `LockError` rather than run unlocked."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from absl import logging

LOCK_DIR = ".locks"


class LockError(RuntimeError):
    """Another launcher holds the lock (the message names it), or locking is impossible here."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _describe(record: dict) -> str:
    return (f"pid {record.get('pid')} on {record.get('host')} ({record.get('mode')}, started "
            f"{record.get('started')})")


class PartLock:
    """An exclusive (to write) or shared (to read) lock on one part of a workdir; a context manager.

    Args:
      workdir: the launcher's workdir.
      part: the part's name: 'demos', 'stage1', a stage 2's folder, 'eval_NAME'.
      exclusive: True to write the part (one holder), False to read it (many holders).
      mode: what the holder is doing, for the refusal message (e.g. '--mode=stage1').
    """

    def __init__(self, workdir: Path, part: str, exclusive: bool, mode: str) -> None:
        self.directory = Path(workdir) / LOCK_DIR
        self.part, self.exclusive, self.mode = part, exclusive, mode
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._fd: int | None = None

    @property
    def record_path(self) -> Path:
        return self.directory / f"{self.part}.{self.host}.{self.pid}.json"

    def _records(self) -> list[tuple[Path, dict]]:
        out = []
        for path in sorted(self.directory.glob(f"{self.part}.*.json")):
            if path != self.record_path:
                try:
                    out.append((path, json.loads(path.read_text())))
                except (OSError, ValueError):  # half-written by a killed holder, or just removed
                    pass
        return out

    def acquire(self) -> None:
        """Takes the lock without waiting.

        Raises:
          LockError: another launcher holds it (naming who), or the filesystem cannot lock.
        """
        if self._fd is not None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / f"{self.part}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:  # .locks is a file, or not writable
            what = ("is not a folder" if self.directory.exists() and not self.directory.is_dir()
                    else f"cannot hold lock files ({e.strerror or e})")
            raise LockError(f"{self.directory} {what}; the launcher keeps its workdir locks there: "
                            "remove it or make it a writable folder, or use another --workdir.") from e
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockError(f"cannot lock {self.part}/ in {self.directory.parent}: the filesystem "
                                f"refused a file lock ({e.strerror or e}); see the launcher docs on "
                                "shared filesystems.") from e
            # who blocks us: a writer; or, when we would write, the readers too
            holders = [r for _, r in self._records() if (r.get("exclusive") or self.exclusive)
                       and (r.get("host") != self.host or _alive(int(r.get("pid", -1))))]
            who = "; ".join(_describe(r) for r in holders) or "another launcher"
            action = "writing" if any(r.get("exclusive") for r in holders) else "reading"
            raise LockError(f"{self.part}/ in {self.directory.parent} is in use: {who} is {action} it. "
                            f"Wait for it to finish (or stop it), or use another --workdir.") from None
        self._fd = fd
        for path, record in self._records():  # the records of holders that no longer hold it
            # holding it exclusive, nobody else holds it; holding it shared, no writer does
            if self.exclusive or record.get("exclusive") or (
                    record.get("host") == self.host and not _alive(int(record.get("pid", -1)))):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                logging.warning("%s/: took over from %s, which no longer holds its lock (it was "
                                "stopped or died).", self.part, _describe(record))
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": self.pid, "host": self.host, "mode": self.mode,
                                   "exclusive": self.exclusive,
                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        os.replace(tmp, self.record_path)

    def release(self) -> None:
        """Releases the lock and removes this holder's record."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.record_path.unlink()
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "PartLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(workdir: Path, mode: str, write: list[str], read: list[str] = ()) -> Iterator[None]:
    """Holds exclusive locks on the parts `write` and shared locks on `read`, all or none.

    Raises:
      LockError: as `PartLock.acquire`, before anything is held.
    """
    locks = [PartLock(workdir, p, True, mode) for p in write]
    locks += [PartLock(workdir, p, False, mode) for p in read if p not in write]
    with contextlib.ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield
