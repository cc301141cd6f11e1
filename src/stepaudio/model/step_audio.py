"""StepAudio: encoder + adaptor + Qwen2 decoder, with audio features spliced into `<audio_patch>` rows."""

from __future__ import annotations

import torch
from torch import nn

from ..config import StepAudioConfig
from .adaptor import Adaptor
from .decoder import Qwen2Model
from .encoder import AudioEncoder
from .kv_cache import KVCache

# How many mel frames the encoder is told are real: vLLM passes L, transformers passes L - 2.
_LENGTH_TRIM = {"vllm": 0, "hf": 2}


class StepAudioForCausalLM(nn.Module):
    """Attribute names match the checkpoint: `encoder.*`, `adapter.*`, `model.*`, `lm_head.*`."""

    def __init__(self, config: StepAudioConfig):
        super().__init__()
        self.config = config
        self.encoder = AudioEncoder(config.audio)
        self.adapter = Adaptor(config.audio)
        self.model = Qwen2Model(config.text)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        if config.text.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def dtype(self) -> torch.dtype:
        """The LLM's dtype (read from the embedding, which no optimisation ever swaps out)."""
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @torch.inference_mode()
    def encode_audio(self, mels: list[torch.Tensor], formula: str = "vllm") -> list[torch.Tensor]:
        """Mel chunks [n_mels, L_i] -> one LLM-embedding tensor [n_i, hidden] per chunk.

        Chunks are encoded one at a time, as vLLM does for a single item: padding a batch would let
        the convolutions see padded frames and make a chunk's features depend on its neighbours.
        """
        return [self.adapt(*self.encode_features(mel, formula)) for mel in mels]

    def encode_features(self, mel: torch.Tensor, formula: str = "vllm") -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output [1, T, d] and its length for one mel chunk [n_mels, L] (training caches these)."""
        if formula not in _LENGTH_TRIM:
            raise ValueError(f"unknown audio token formula {formula!r}; use one of {sorted(_LENGTH_TRIM)}")
        param = self.encoder.conv1.weight
        length = torch.tensor([mel.shape[-1] - _LENGTH_TRIM[formula]], device=param.device)
        return self.encoder(mel.to(param)[None], length)

    def adapt(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Adaptor rows [n, hidden] for one encoded chunk, cut to its real length (differentiable)."""
        emb, emb_lens = self.adapter(feats, lengths)
        return emb[0, : int(emb_lens[0])]

    def embed(self, input_ids: torch.Tensor, audio_embeds: torch.Tensor | None = None,
              audio_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the rows marked in `audio_rows` replaced, in order, by `audio_embeds`.

        The caller marks the rows (the prompt's `<audio_patch>` positions), so a generated token that
        happens to be `<audio_patch>` is never mistaken for audio.
        """
        embeds = self.model.embed_tokens(input_ids)
        if audio_embeds is None or audio_rows is None:
            return embeds
        n_rows = int(audio_rows.sum())
        if n_rows != audio_embeds.shape[0]:
            raise ValueError(f"prompt has {n_rows} <audio_patch> tokens but the audio gives {audio_embeds.shape[0]} "
                             "embeddings")
        embeds = embeds.clone()
        embeds[audio_rows] = audio_embeds.to(embeds.dtype)
        return embeds

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, audio_embeds: torch.Tensor | None = None,
                audio_rows: torch.Tensor | None = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Final hidden states [B, T, H]; turn the rows you need into logits with `compute_logits`."""
        return self.model(self.embed(input_ids, audio_embeds, audio_rows), positions, kv_cache)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
