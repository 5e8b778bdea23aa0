"""Workdir locks: a second writer (or a reader of a part being written) is refused at once,
naming the holder; a lock whose holder died is taken over, saying so."""

import os
import signal
import socket

import pytest

from twostage_jax.launch.lock import LockError, PartLock, locked

from tests._launcher import hold_lock, release_lock

def test_a_second_process_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path, caplog):
    writer = hold_lock(tmp_path, "stage1", "write", "--mode=stage1")
    try:
        for exclusive in (True, False):
            with pytest.raises(LockError) as e:
                PartLock(tmp_path, "stage1", exclusive, "--mode=eval").acquire()
            message = str(e.value)
            assert "stage1/" in message and "is writing it" in message
            assert f"pid {writer.pid} on {socket.gethostname()} (--mode=stage1, started " in message
        with locked(tmp_path, "--mode=stage2", write=["stage2"], read=["demos"]):
            pass  # other parts are free
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    # the kernel released the dead holder's lock; its record is stale, removed and reported
    with caplog.at_level("WARNING"):
        with PartLock(tmp_path, "stage1", True, "--mode=stage1 --resume") as lock:
            assert lock.record_path.exists()
    assert f"took over from pid {writer.pid}" in caplog.text
    assert not list((tmp_path / ".locks").glob("stage1.*.json"))  # released: no records left


def test_readers_share_and_block_a_writer(tmp_path):
    reader = hold_lock(tmp_path, "stage1", "read", "--mode=eval")
    try:
        with PartLock(tmp_path, "stage1", False, "--mode=eval"):  # a second reader
            with pytest.raises(LockError, match=f"pid {reader.pid} .* is reading it"):
                PartLock(tmp_path, "stage1", True, "--mode=stage1").acquire()
    finally:
        release_lock(reader)
    with PartLock(tmp_path, "stage1", True, "--mode=stage1"):
        pass
    os.sync()


def test_a_locks_path_that_cannot_hold_locks_is_named(tmp_path):
    (tmp_path / ".locks").write_text("x")  # a file where the lock folder goes
    with pytest.raises(LockError, match=r"\.locks is not a folder; the launcher keeps its workdir locks there"):
        with locked(tmp_path, "--mode=eval", write=["eval"]):
            pass
    (tmp_path / ".locks").unlink()
    (tmp_path / ".locks").mkdir()
    if os.geteuid() != 0:  # root writes anyway
        (tmp_path / ".locks").chmod(0o500)
        with pytest.raises(LockError, match=r"\.locks cannot hold lock files \(Permission denied\)"):
            with locked(tmp_path, "--mode=eval", write=["eval"]):
                pass
