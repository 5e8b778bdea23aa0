"""README.md stays true: its library example runs, and its test command is the one CI runs."""

import re
from pathlib import Path

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
