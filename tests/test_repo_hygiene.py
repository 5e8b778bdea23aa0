"""Committed files name no machine's absolute paths.

Results, study scripts and docs are read on other machines: a path such as `/work/main/runs/...`
or `/home/me/...` is meaningless there (and says where someone's checkout lives). Paths inside the
repository are written relative to its root (`runs/repro/push-v3/bc`); placeholders for the
reader's own folders are written as such (`/path/to/rlbench_demos`, `/shared/runs/q`).

What counts as a machine path: a path starting at one of the usual top-level folders of a
machine's own disk (`/work/`, `/tmp/`, `/home/`, `/root/`, `/Users/`, `/mnt/`, `/scratch/`,
`/private/`, `/var/folders/`), or a Windows drive path (`C:\\Users\\...`, also JSON-escaped).
Not counted (the exclusions, each by construction of the pattern):
  * the same words inside a longer path or a URL (`runs/work/`, `https://host/home/`): the
    leading `/` must not follow a letter, digit, `_`, `.`, `-`, `~` or another `/`;
  * `X:\\` followed by anything but a user or system folder (`"a:\\n"` in code is an escape);
  * binary files (a NUL byte in the first 8 KiB, or not UTF-8), such as the committed figures.
  * this file, whose docstring and pattern test must spell out what the pattern finds.
Only files git tracks are read (`git ls-files`), so ignored build outputs and `runs/` are not.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()

MACHINE_PATH = re.compile(
    r"(?<![\w.~\-/])/(?:work|tmp|home|root|Users|mnt|scratch|private|var/folders)/"
    r"|(?<![\w\\])[A-Z]:\\{1,2}(?:Users|Documents and Settings|Windows|Temp)\b")


def _tracked_text_files() -> list[tuple[str, str]]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to tell tracked files by")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    files = []
    for name in filter(None, names.decode().split("\0")):
        path = ROOT / name
        if name == SELF:
            continue
        if not path.is_file():  # deleted in the working tree, or a submodule
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            files.append((name, data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return files


def test_the_pattern_finds_machine_paths_and_nothing_else():
    hits = ['"workdir": "/work/main/runs/repro/push-v3/bc"', "cd /tmp/x", "see /home/me/notes",
            "C:\\Users\\me", '"C:\\\\Users\\\\me"', "/Users/me/repo", "(/root/.cache)"]
    misses = ["runs/repro/push-v3/bc", "https://example.org/home/page", "runs/work/x", "~/tmp/x",
              "/path/to/rlbench_demos", "/shared/runs/q", 'f"{key}:\\n"', "a/tmp/b", "./tmp/x"]
    assert all(MACHINE_PATH.search(s) for s in hits), [s for s in hits if not MACHINE_PATH.search(s)]
    assert not any(MACHINE_PATH.search(s) for s in misses), [s for s in misses if MACHINE_PATH.search(s)]


def test_no_tracked_text_file_holds_an_absolute_machine_path():
    files = _tracked_text_files()
    assert len(files) > 50  # the listing worked
    found = [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}"
             for name, text in files for m in MACHINE_PATH.finditer(text)]
    assert not found, ("absolute machine paths in committed files (write them relative to the "
                       "repository, or as a placeholder):\n" + "\n".join(found[:50]))
