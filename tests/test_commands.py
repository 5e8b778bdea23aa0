"""Every command written in the docs and the current results parses against today's flags.

Launcher commands (`python -m twostage_jax.launch`, `twostage`) are dry-parsed into their
checked config (`main.dry_parse`: no work); the study drivers' and tools' commands are parsed by
their own absl flags, one subprocess per module (their flags are global). A stale flag, field
or value fails here, naming the file and line.
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path


from twostage_jax.launch import main as launcher

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
           ROOT / "experiments" / "results" / "README.md",
           *sorted(p for p in (ROOT / "experiments" / "results" / "current").rglob("*")
                   if p.suffix in (".md", ".sh"))]
START = re.compile(r"python -m (twostage_jax\.launch|experiments\.(?:studies|tools)\.[a-z_]+)|(?<![\w/.-])twostage(?= --)")
# placeholders written in the docs, and the shell variables of the committed scripts
PLACEHOLDERS = {"TASK": "push-v3", "$t": "push-v3", "$T": "push-v3", "DIR": "runs/x", "$wd": "runs/x",
                "$W": "runs/x", "$MAIN/": "", "N": "2", "RAW": "experiments/results/current/eight_tasks/raw",
                "OUT": "runs/out", "FOLDER": "runs/out", "MODE": "all", "$mode": "all", "NAME": "stage2b",
                "ARM": "stage2b", "ARMS": "stage2", "STAGE2_NAMES": "stage2", "$name": "stage2b",
                "$STEPS": "30000", "$SELECT": "(2000,4000)", "$@": "", "$P": "2"}


def _commands() -> list[tuple[str, str, list[str]]]:
    """(where, module, argv) of every command in `SOURCES`; a synopsis ('[--flag]') is skipped."""
    found = []
    for path in SOURCES:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            line, where = lines[i], f"{path.relative_to(ROOT)}:{i + 1}"
            while line.rstrip().endswith("\\") and i + 1 < len(lines):  # continued lines
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            for m in START.finditer(line):
                text = re.split(r"`|&&|\|\||(?<!\S)\|(?!\S)|;|(?<!\S)#|\)$|(?<!\S)\d?>", line[m.end():])[0]
                if "[" in text or "${" in text or "..." in text:
                    continue
                for key, value in sorted(PLACEHOLDERS.items(), key=lambda kv: -len(kv[0])):
                    end = "" if key.endswith("/") else r"(?!\w)"
                    text = re.sub(rf"(?<![\w$]){re.escape(key)}{end}", value, text)
                try:
                    argv = shlex.split(text)
                except ValueError:
                    raise AssertionError(f"{where}: cannot split {text!r}") from None
                found.append((where, m.group(1) or "twostage_jax.launch", argv))
    return found


COMMANDS = _commands()


def test_the_docs_hold_commands_to_check():
    modules = {m for _, m, _ in COMMANDS}
    assert len(COMMANDS) > 40 and "twostage_jax.launch" in modules
    assert {"experiments.studies.reproduce", "experiments.studies.summarize", "experiments.tools.benchmark"} <= modules


def test_every_launcher_command_parses():
    bad = []
    for where, module, argv in COMMANDS:
        if module != "twostage_jax.launch":
            continue
        try:
            launcher.dry_parse([a for a in argv if a != "--"] or ["--workdir=runs/x"])
        except launcher.UsageError as e:
            bad.append(f"{where}: {' '.join(argv)}\n    {e}")
    assert not bad, "\n".join(bad)


_DRIVER = """
import importlib, sys
from absl import flags
from twostage_jax.launch import overrides
from twostage_jax.launch.bounds import check_bounds
from twostage_jax.launch.launch_config import check_config
count = 0
for name in sys.argv[1:]:
    before = set(flags.FLAGS)
    driver = importlib.import_module(name)
    runs = ([(f"{driver.CONFIG}:{v}", extra) for _, v, extra in driver.ABLATIONS.values()]
            + [(f"{driver.CONFIG}:cql", driver.PAPER_SIZE)] if hasattr(driver, "ABLATIONS") else
            [(f"{driver.CONFIG}:{v}" if v else driver.CONFIG, [*extra, f"--config.stage2_name={arm}"])
             for arm, (v, extra) in driver.ARMS.items()])  # (each arm trains into its own run, as the study names it)
    for spec, extra in runs:
        config = overrides.config_from_flags(spec, overrides.split_overrides(extra)[1], {})
        check_config(config)
        check_bounds(config)
    count += len(runs)
    for flag in set(flags.FLAGS) - before:  # both drivers define flags of the same names
        delattr(flags.FLAGS, flag)
print(count)
"""


def test_the_launcher_flags_the_study_drivers_write_parse():
    drivers = ["experiments.studies.reproduce", "experiments.studies.validation_study"]
    out = subprocess.run([sys.executable, "-c", _DRIVER, *drivers], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and int(out.stdout.split()[-1]) > 10, out.stderr[-2000:]


_PARSE = """
import importlib, json, sys
from absl import flags
bad = []
for module_name, argvs in json.loads(sys.stdin.read()).items():
    before = set(flags.FLAGS)
    module = importlib.import_module(module_name)
    if hasattr(module, "define_flags"):
        module.define_flags()
    # a tool parses its own FlagValues (experiments.tools.parse_tool_flags); a study absl's global one
    values = next((v for v in vars(module).values() if isinstance(v, flags.FlagValues) and v is not flags.FLAGS),
                  flags.FLAGS)
    for where, argv in argvs:
        try:
            values([module_name, *argv])
        except flags.Error as e:
            bad.append(f"{where}: {' '.join(argv)}\\n    {e}")
        values.unparse_flags()
    for name in set(flags.FLAGS) - before:  # the next study defines flags of the same names
        delattr(flags.FLAGS, name)
print(json.dumps(bad))
"""


def test_every_study_and_tool_command_parses():
    by_module: dict[str, list] = {}
    for where, module, argv in COMMANDS:
        if module != "twostage_jax.launch":
            by_module.setdefault(module, []).append((where, argv))
    out = subprocess.run([sys.executable, "-c", _PARSE], input=json.dumps(by_module), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    bad = json.loads(out.stdout.strip().splitlines()[-1])
    assert not bad, "\n".join(bad)
