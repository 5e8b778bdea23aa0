"""Atomic writes: permissions as ordinary files get, and folders replaced as a unit."""

import errno
import os
import stat

import pytest

from twostage_jax._io import atomic_folder, atomic_open, recover_atomic_folder, write_json_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_get_the_permissions_of_ordinary_files(tmp_path, umask):
    saved = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
        write_json_atomic(tmp_path / "results.json", {"a": 1})
        with atomic_open(tmp_path / "frames.bin", "wb") as f:
            f.write(b"x")
        with atomic_folder(tmp_path / "eval") as tmp:
            (tmp / "results.json").write_text("{}")
    finally:
        os.umask(saved)
    assert _mode(tmp_path / "results.json") == _mode(tmp_path / "frames.bin") == _mode(tmp_path / "plain.txt")
    assert _mode(tmp_path / "results.json") == 0o666 & ~umask
    assert _mode(tmp_path / "eval") == 0o777 & ~umask
    # Replacing a file keeps its permissions, as open(path, 'w') does.
    os.chmod(tmp_path / "results.json", 0o604)
    write_json_atomic(tmp_path / "results.json", {"a": 2})
    assert _mode(tmp_path / "results.json") == 0o604


def test_atomic_folder_replaces_the_whole_folder_or_nothing(tmp_path):
    dest = tmp_path / "eval"
    dest.mkdir()
    (dest / "results.json").write_text("old")
    (dest / "stale.png").write_text("old plot")
    with pytest.raises(OSError):
        with atomic_folder(dest) as tmp:
            (tmp / "results.json").write_text("new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in dest.iterdir()) == ["results.json", "stale.png"]
    assert (dest / "results.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"], "temporary folder left behind"

    with atomic_folder(dest) as tmp:
        (tmp / "results.json").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["results.json"]
    assert (dest / "results.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


def test_a_folder_replace_killed_between_its_renames_is_recovered(tmp_path):
    # what a kill between atomic_folder's two renames leaves: the old folder aside, the new one
    # not yet in place (and an older run's leftover beside them)
    for name, text in ((".eval.old-a", "old"), (".eval.tmp-b", "new"), (".eval.tmp-c", "half"),
                       (".eval_x.tmp-d", "another folder's")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
    done = recover_atomic_folder(tmp_path / "eval")
    assert done == ["restored eval/ from .eval.old-a", "removed .eval.tmp-b", "removed .eval.tmp-c"]
    assert (tmp_path / "eval" / "results.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".eval_x.tmp-d", "eval"]
    assert recover_atomic_folder(tmp_path / "eval") == []
