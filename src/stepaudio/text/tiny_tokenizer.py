"""A small byte-level BPE tokenizer in the Qwen2 style, carrying the Step special tokens.

Used by tiny test checkpoints: it has the same structure as the official tokenizer.json (byte-level
BPE + added special tokens) but a few hundred merges instead of 151k, so special-token ids differ
from the official ones, which keeps the code honest about resolving them by name.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from .tokenizer import AUDIO_END, AUDIO_PATCH, AUDIO_START, BOT, EOT

# Listed in the relative order of the official vocabulary (spec §5.1).
STEP_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", EOT, BOT,
                       AUDIO_START, AUDIO_END, AUDIO_PATCH, "<tts_start>", "<tts_end>")

# Qwen2's pre-tokenizer split pattern (also used by the default model's full-size tokenizer).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. What is the capital of France? Paris.",
    "Listen to the audio and answer the question. The speaker sounds happy, and the music is slow.",
    "<think>\nThe audio contains a short spoken sentence.\n</think>\nThe answer is B.",
    "human assistant system tool_json_schemas function_output input",
    "How many beeps are there? Which tone is higher? Is the pitch rising or falling? 0123456789",
    "你好，世界。这是一个语音助手。",
]


def build_tiny_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """Train a deterministic byte-level BPE on a fixed corpus and append the Step special tokens."""
    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.add_special_tokens(list(STEP_SPECIAL_TOKENS))
    return tok
