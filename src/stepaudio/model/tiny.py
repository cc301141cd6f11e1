"""Random small Step-Audio checkpoints in the official format, for tests and for trying the stack."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import AudioEncoderConfig, StepAudioConfig, TextConfig
from ..text.tiny_tokenizer import build_tiny_tokenizer
from .loader import DTYPES
from .saver import save_checkpoint
from .step_audio import StepAudioForCausalLM


def tiny_config(vocab_size: int, *, hidden: int = 64, layers: int = 2, audio_state: int = 64,
                audio_layers: int = 2, n_mels: int = 128, tie_word_embeddings: bool = False,
                dtype: str = "bfloat16") -> StepAudioConfig:
    audio = AudioEncoderConfig(n_mels=n_mels, n_audio_ctx=1500, n_audio_state=audio_state, n_audio_head=4,
                               n_audio_layer=audio_layers, llm_dim=hidden, adapter_hidden=2 * hidden)
    text = TextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=4096, tie_word_embeddings=tie_word_embeddings)
    return StepAudioConfig(audio=audio, text=text, torch_dtype=dtype)


def random_state_dict(config: StepAudioConfig, seed: int) -> dict[str, torch.Tensor]:
    """fp32 random weights; biases and norm gains are random too so every term is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = StepAudioForCausalLM(config).state_dict()
    state = {}
    for name, p in shapes.items():
        if config.text.tie_word_embeddings and name == "lm_head.weight":
            continue
        if name.endswith("norm.weight") or name.endswith("_ln.weight") or name.endswith("layernorm.weight"):
            value = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
        else:
            std = 0.02 if p.dim() > 1 else 0.05
            value = std * torch.randn(p.shape, generator=gen)
        state[name] = value
    return state


def write_tiny_checkpoint(out_dir: str | Path, *, seed: int = 0, num_shards: int = 2, dtype: str = "bfloat16",
                          tie_word_embeddings: bool = False, hidden: int = 64, layers: int = 2) -> Path:
    """Write config.json (nested layout), sharded safetensors with index and tokenizer.json."""
    out = Path(out_dir)
    tokenizer = build_tiny_tokenizer()
    # The official vocabulary is padded past the tokenizer (158720 > 158258 tokens); do the same.
    vocab = -(-tokenizer.get_vocab_size(with_added_tokens=True) // 64) * 64
    config = tiny_config(vocab, hidden=hidden, layers=layers, tie_word_embeddings=tie_word_embeddings, dtype=dtype)
    state = {k: v.to(DTYPES[dtype]) for k, v in random_state_dict(config, seed).items()}
    save_checkpoint(state, config, out, num_shards=num_shards)
    tokenizer.save(str(out / "tokenizer.json"))
    return out
