"""Shared pytest fixtures."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------
# Audio: real speech from espeak-ng, re-encoded by the ffmpeg CLI, so that the encoders that make
# the test files are independent of the decoders under test (soundfile, PyAV).
# ---------------------------------------------------------------------------------------------

SPEECH_TEXT = "The quick brown fox jumps over the lazy dog. Step Audio listens, thinks, and then answers."

# File extension -> ffmpeg output options. Bitrates are pinned so the measured codec error is stable.
FFMPEG_CODECS = {
    "flac": ["-c:a", "flac"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "128k"],
    "ogg": ["-c:a", "libvorbis", "-q:a", "4"],  # Ogg Vorbis
    "opus": ["-c:a", "libopus", "-b:a", "64k"],  # Ogg Opus
    "webm": ["-c:a", "libopus", "-b:a", "64k"],
    "m4a": ["-c:a", "aac", "-b:a", "128k"],
    "mka": ["-c:a", "pcm_s16le"],  # lossless, but only PyAV can open Matroska
}


def _require_tool(name: str) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed")


def ffmpeg_encode(src: Path | str, dst: Path, *options: str, input_format: str | None = None) -> Path:
    """Encode `src` to `dst` with the ffmpeg CLI; the codec comes from `options` or dst's extension."""
    _require_tool("ffmpeg")
    codec = list(options) or FFMPEG_CODECS[dst.suffix.lstrip(".")]
    source = ["-f", input_format, "-i", str(src)] if input_format else ["-i", str(src)]
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *source, *codec, str(dst)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr}")
    return dst


@pytest.fixture(scope="session")
def ffmpeg() -> Callable[..., Path]:
    """ffmpeg_encode, skipping the test when the ffmpeg CLI is missing."""
    _require_tool("ffmpeg")
    return ffmpeg_encode


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 6 s of English speech: 22.05 kHz mono 16-bit WAV from espeak-ng."""
    _require_tool("espeak-ng")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), SPEECH_TEXT], check=True, capture_output=True)
    return path


@pytest.fixture(scope="session")
def encoded_speech(speech_wav: Path) -> Callable[[str], Path]:
    """Return the speech re-encoded to a given extension (made once per session)."""
    cache: dict[str, Path] = {}

    def encode(ext: str) -> Path:
        if ext not in cache:
            cache[ext] = ffmpeg_encode(speech_wav, speech_wav.with_suffix(f".{ext}"))
        return cache[ext]

    return encode
