"""README.md stays true: its library example runs, and its test command is the one CI runs.

The runnable ```python blocks of docs/*.md run here too, after the README's: in the same
process they reuse its compiled training programs (tests/test_docs.py checks the rest of docs/).
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_library_example_runs():
    block = next(b for b in _blocks("python") if "crop_at_pixel" in b)
    assert len([line for line in block.splitlines() if line.strip()]) <= 15
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["crop"].shape == (16, 16, 3)
    assert abs(float(scope["a"][0]) - 0.3333) < 1e-3  # tanh(atanh .5 + atanh -.2)
    assert int(scope["state"].step) == 3
    assert float(scope["metrics"].bc.bc_loss) > 0
    train_block = next(b for b in _blocks("python") if "make_train" in b)
    exec(compile(train_block, "README.md", "exec"), scope)
    assert scope["states"].step.tolist() == [10, 10, 10]
    assert scope["metrics"].bc.bc_loss.shape == (3, 10)


def test_ci_runs_the_readme_test_command():
    bash = _blocks("bash")
    test_cmd = next(b.strip() for b in bash if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci


def _docs_blocks() -> list[tuple[str, str]]:
    fence = re.compile(r"^```python([^\n]*)\n(.*?)^```", flags=re.S | re.M)
    return [(f"{doc.name}[{i}]", m.group(2)) for doc in sorted((ROOT / "docs").glob("*.md"))
            for i, m in enumerate(fence.finditer(doc.read_text())) if not m.group(1).strip()]


@pytest.mark.parametrize("name,code", _docs_blocks(), ids=[n for n, _ in _docs_blocks()])
def test_docs_python_block_runs(name, code):
    exec(compile(code, name, "exec"), {"__name__": "docs_example"})
