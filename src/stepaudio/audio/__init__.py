"""Audio front end: decode, resample and chunk (io), then log-mel features and token counts (features)."""

from stepaudio.audio.features import (
    HOP_LENGTH,
    MAX_CHUNK_SECONDS,
    N_FFT,
    RIGHT_PAD,
    log_mel_spectrogram,
    mel_filters,
    num_audio_tokens,
    num_mel_frames,
)
from stepaudio.audio.io import (
    CHUNK_SECONDS,
    SAMPLE_RATE,
    AudioError,
    load_audio,
    split_chunks,
    validate_waveform,
)

__all__ = [
    "CHUNK_SECONDS",
    "HOP_LENGTH",
    "MAX_CHUNK_SECONDS",
    "N_FFT",
    "RIGHT_PAD",
    "SAMPLE_RATE",
    "AudioError",
    "load_audio",
    "log_mel_spectrogram",
    "mel_filters",
    "num_audio_tokens",
    "num_mel_frames",
    "split_chunks",
    "validate_waveform",
]
