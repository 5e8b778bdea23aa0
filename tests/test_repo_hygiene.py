"""Committed files name no machine's absolute paths, and the pages users read no process words.

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

The README, docs/*.md and the results index (experiments/results/README.md) are read by users,
who have no use for how the work was organised: tracker numbers ("Issue 12", "the issue's
targets"), "Round 4", "this session", "landing", dates and commit hashes. Such words go stale
and say nothing about the code; a figure says what it was measured on and compared to instead.
Provenance (the commit a study ran at) belongs beside the results, in experiments/results/'s
folders, not in these pages.
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


PROCESS_DOCS = ["README.md", "docs/*.md", "experiments/results/README.md"]
PROCESS_WORDS = {
    "a tracker number": re.compile(r"\b[Ii]ssues?\s*#?\d+|\b[Tt]he issue's\b"),
    "a work-session word": re.compile(r"\b[Tt]his session\b|\b[Ll]andings?\b"),
    "a round number": re.compile(r"\bRound \d+"),
    "a date": re.compile(r"\b20\d\d-\d\d-\d\d\b"),
    "a commit hash": re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b"),
}


def _process_words(text: str) -> list[tuple[int, str, str]]:
    """(line, kind, words) of every process word in `text`."""
    return [(text.count("\n", 0, m.start()) + 1, kind, m.group(0))
            for kind, pattern in PROCESS_WORDS.items() for m in pattern.finditer(text)]


def test_the_process_word_patterns_find_process_words_and_nothing_else():
    hits = ["Issue 12's bad-input probe", "issue #24", "(issues 11)", "Against the issue's targets",
            "re-trained this session", "This session's runs", "the landing that moved", "two landings",
            "## Round 4", "Round 12 (plan.md)", "on 2026-12-04", "at eabf6ff", "commit 534f377",
            "a7e092b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8"]
    misses = ["an issue tracker", "issues with the camera", "once per session", "for the session",
              "round 5 of 20 layouts", "2026", "2026-12", "12-04", "100000",
              "1e-3", "deadbeef", "#2f5597", "0.5 cm", "v3", "push-v3", "(2, -2, 0)"]
    assert all(_process_words(s) for s in hits), [s for s in hits if not _process_words(s)]
    assert not any(_process_words(s) for s in misses), [(s, _process_words(s)) for s in misses
                                                        if _process_words(s)]


def test_readme_docs_and_the_results_index_hold_no_process_words():
    pages = sorted({p for pattern in PROCESS_DOCS for p in ROOT.glob(pattern)})
    assert len(pages) >= 3 and ROOT / "README.md" in pages  # the globs found the pages
    found = [f"{page.relative_to(ROOT).as_posix()}:{line}: {kind}: {words!r}"
             for page in pages for line, kind, words in _process_words(page.read_text())]
    assert not found, ("process words in user-facing pages (say what a figure is measured on or "
                       "compared to instead; keep provenance beside the results):\n" + "\n".join(found))
