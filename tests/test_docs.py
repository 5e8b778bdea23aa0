"""docs/ stays true: every Python block is runnable or marked, and relative links resolve.

Every ```python block of docs/*.md is run by tests/test_readme.py (after the README's blocks, in
the same process, so the examples that train reuse the README's compiled programs). A block that
only illustrates (it needs a simulator, a GPU, several hosts or files the reader would have) is
fenced ```python no-run instead; those are the only blocks skipped.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", flags=re.S | re.M)
LINKED = [ROOT / "README.md", *DOCS, *sorted((ROOT / "experiments" / "results").rglob("*.md"))]


def python_blocks() -> list[tuple[str, str, str]]:
    """(name, fence info, code) of every ```python block in docs/*.md."""
    blocks = []
    for doc in DOCS:
        for i, m in enumerate(FENCE.finditer(doc.read_text())):
            blocks.append((f"{doc.name}[{i}]", m.group(1).strip(), m.group(2)))
    return blocks


BLOCKS = python_blocks()


def test_every_python_block_is_run_or_marked_no_run():
    unknown = [(name, info) for name, info, _ in BLOCKS if info not in ("", "no-run")]
    assert not unknown, f"a ```python fence takes nothing or 'no-run' after it: {unknown}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped, spaces to
    hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[`*]", "", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def test_relative_links_resolve():
    broken = []
    for doc in LINKED:
        text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http(s):, mailto: ...
                continue
            path_part, _, anchor = target.partition("#")
            dest = (doc.parent / path_part).resolve() if path_part else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
