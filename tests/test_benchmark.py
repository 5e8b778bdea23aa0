"""experiments/tools/benchmark.py (section selection, flag errors, its JSON) and rounding_sensitivity."""

import json

import pytest

from experiments.tools import benchmark


def test_one_section_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    payload = benchmark.main(["--quick", "--sections=crops", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["sections"] == ["crops"] == payload["sections"]
    names = [r["name"] for r in saved["rows"]]
    assert names[:3] == ["crop/16x16/batch128", "crop/32x32/batch128", "crop/64x64/batch128"]
    assert all(r["value"] > 0 for r in saved["rows"][:3])
    assert saved["rows"][-1]["value"] == "unavailable"  # sim not selected, and says so
    assert {"backend", "device", "versions", "wall_s"} <= saved.keys()
    assert "crop/64x64/batch128" in capsys.readouterr().out


def test_unknown_section_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--sections=crops,bogus", "--out", str(tmp_path / "x.json")])
    assert "--sections" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_rounding_sensitivity_rejects_bad_steps(capsys):
    from experiments.tools import rounding_sensitivity
    for bad in ("ten", "1", ""):
        with pytest.raises(SystemExit):
            rounding_sensitivity.main([f"--steps={bad}"])
        assert "--steps" in capsys.readouterr().err
