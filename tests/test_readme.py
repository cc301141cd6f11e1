"""The README's commands stay true: CI runs the README's test command verbatim, and the main command, the chat
and demo lines and the Python snippet are run as written (on a free port instead of 9999), the snippet's imports
coming with the main command's setup alone."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from demo_fixtures import page_served, wait_until
from server_fixtures import free_port, serve_command
from stepaudio.default_model import DEFAULT_MODEL_NAME

ROOT = Path(__file__).resolve().parents[1]
SETUP = "bash scripts/setup.sh && "
README_PORT = ":9999"


def readme() -> str:
    return (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", readme())


def readme_line(command: str) -> str:
    """The README's inline `.venv/bin/stepaudio COMMAND ...` line."""
    [line] = re.findall(rf"`(\.venv/bin/stepaudio {command} [^`]+)`", readme())
    return line


def readme_snippet() -> str:
    """The Python example that talks to the server with the official `openai` client."""
    [snippet] = [s for s in re.findall(r"```python\n(.+?)\n```", readme(), re.S) if "from openai" in s]
    return snippet


def test_ci_runs_the_readme_test_command():
    main, tests = readme_commands()[:2]
    ci_lines = [ln for ln in (ROOT / ".ci/run").read_text().splitlines() if ln and not ln.startswith(("#", "set ", "cd "))]
    assert ci_lines == [tests]
    assert main.startswith(SETUP) and tests.startswith("bash scripts/setup.sh --dev &&")


def test_main_command_uses_files_in_the_repository():
    main = readme_commands()[0]
    for path in re.findall(r"examples/\S+", main):
        assert (ROOT / path).is_file(), path


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    return requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in extras | {""})


def main_setup_distributions() -> set[str]:
    """Every distribution the main command's setup installs: stepaudio's dependencies, the extras that
    scripts/setup.sh installs without --dev, and what those require in turn (read from the installed metadata)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [extras] = re.findall(r'^extras="\[(.+)\]"$', (ROOT / "scripts/setup.sh").read_text(), re.M)
    todo = [Requirement(r) for r in project["dependencies"]]
    todo += [Requirement(r) for extra in extras.split(",") for r in project["optional-dependencies"][extra]]
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or not _applies(requirement, set()):
            continue
        seen.add(name)
        try:
            needs = [Requirement(r) for r in metadata.requires(requirement.name) or []]
        except metadata.PackageNotFoundError:
            continue   # not installed here; the import check below then fails for what it provides
        todo += [r for r in needs if _applies(r, set(requirement.extras))]
    return seen


def test_the_python_snippets_imports_come_with_the_main_setup():
    imported = set()
    for node in ast.walk(ast.parse(readme_snippet())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    installed = main_setup_distributions()
    providers = metadata.packages_distributions()
    assert "openai" in imported
    for module in imported - set(sys.stdlib_module_names):
        assert {canonicalize_name(d) for d in providers.get(module, [])} & installed, (
            f"the README's snippet imports {module}, which `{SETUP}...` does not install")


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The README's main command after its setup step, as written (the default model), on a free port."""
    command = readme_commands()[0].removeprefix(SETUP)
    port = free_port()
    log = tmp_path_factory.mktemp("readme") / "serve.log"
    with serve_command([*shlex.split(command), "--port", str(port)], port, log, timeout=600, cwd=ROOT) as url:
        yield url


def on_port(text: str, url: str) -> str:
    return text.replace(README_PORT, ":" + url.rsplit(":", 1)[1])


def test_the_readme_chat_line_answers_the_spoken_question(readme_server):
    command = shlex.split(on_port(readme_line("chat"), readme_server))
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    thinking, answer = done.stdout.split("── answer ──\n")
    assert thinking.startswith("── thinking ──\n") and answer.strip()


def test_the_readme_python_snippet_runs(readme_server):
    done = subprocess.run([sys.executable, "-c", on_port(readme_snippet(), readme_server)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.strip()


def test_the_readme_demo_line_serves_the_page(readme_server):
    port = free_port()
    command = [*shlex.split(on_port(readme_line("demo"), readme_server)), "--port", str(port)]
    demo = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: demo.poll() is not None or page_served(port), 120, what="page served")
        assert demo.poll() is None, demo.stdout.read()
        assert DEFAULT_MODEL_NAME in httpx.get(f"http://127.0.0.1:{port}/config").text
    finally:
        demo.terminate()
        demo.wait(30)

