"""The README's commands stay true: CI runs the README's test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    main, tests = readme_commands()[:2]
    ci_lines = [ln for ln in (ROOT / ".ci/run").read_text().splitlines() if ln and not ln.startswith(("#", "set ", "cd "))]
    assert ci_lines == [tests]
    assert main.startswith("bash scripts/setup.sh &&") and tests.startswith("bash scripts/setup.sh --dev &&")


def test_main_command_uses_files_in_the_repository():
    main = readme_commands()[0]
    for path in re.findall(r"examples/\S+", main):
        assert (ROOT / path).is_file(), path
