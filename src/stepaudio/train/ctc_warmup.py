"""Adaptor warm-up without the decoder: CTC from audio rows to the decoder's own token embeddings.

Teaching the adaptor through the 0.5B decoder costs ~4 s per step on 2 cores, and the first hundreds of
steps pass before the decoder hears anything (measured: at step 100 its transcripts ignored the audio).
Here the adaptor's rows are scored against the frozen embedding rows of the transcript's tokens (cosine,
learnt temperature, plus a blank), with CTC, on encoder features computed once. That costs milliseconds
per clip, so thousands of clips pass in minutes, and the rows the decoder later reads already point at
the words spoken. The scale of the rows is pulled to the embeddings' typical norm.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..audio.features import log_mel_spectrogram
from ..model.step_audio import StepAudioForCausalLM
from ..text.tokenizer import StepTokenizer
from .speech import Voice, augment, random_voice, speak


@dataclass
class Clip:
    features: torch.Tensor   # encoder output [T, d] at 25 Hz
    tokens: list[int]        # the transcript's token ids


def make_clips(model: StepAudioForCausalLM, tokenizer: StepTokenizer, text_source: Callable[[np.random.Generator], str],
               n: int, seed: int, progress: bool = True,
               voice_source: Callable[[np.random.Generator], Voice] = random_voice) -> list[Clip]:
    """`n` spoken clips of `text_source(rng)` in `voice_source(rng)` (random training voices), encoded once."""
    rng = np.random.default_rng([seed, 7])
    clips = []
    for _ in tqdm(range(n), desc="ctc warm-up: encoding clips", disable=not progress, file=sys.stderr):
        text = text_source(rng)
        wav = augment(speak(text, voice_source(rng)), rng)
        mel = log_mel_spectrogram(wav, n_mels=model.config.audio.n_mels)
        with torch.no_grad():
            feats, _ = model.encode_features(mel)
        clips.append(Clip(feats[0], tokenizer.encode(text)))
    return clips


class CTCHead(nn.Module):
    """Cosine scores of adaptor rows against the frozen embeddings of `vocab` (token ids) and a blank (row 0)."""

    def __init__(self, embeddings: torch.Tensor, vocab: list[int]):
        super().__init__()
        self.vocab = sorted(set(vocab))
        self.index = {t: i + 1 for i, t in enumerate(self.vocab)}
        self.register_buffer("targets", F.normalize(embeddings[torch.tensor(self.vocab)].float(), dim=-1))
        self.blank = nn.Parameter(torch.randn(embeddings.shape[1]) * 0.02)
        self.log_temperature = nn.Parameter(torch.tensor(np.log(20.0), dtype=torch.float32))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        table = torch.cat([F.normalize(self.blank, dim=0)[None], self.targets])
        return F.normalize(rows, dim=-1) @ table.T * self.log_temperature.exp()


def ctc_warmup(model: StepAudioForCausalLM, clips: list[Clip], epochs: int = 12, batch: int = 32,
               lr: float = 1e-3, seed: int = 0, progress: bool = True, head: CTCHead | None = None) -> list[float]:
    """Train `model.adapter` (and `head`, by default one over the clips' tokens) in place; returns the mean
    loss of each epoch."""
    embed = model.model.embed_tokens.weight.detach()
    head = head or CTCHead(embed, [t for c in clips for t in c.tokens])
    index = head.index
    target_norm = float(embed[:151643].float().norm(dim=-1).mean()) if embed.shape[0] > 151643 else float(
        embed.float().norm(dim=-1).mean())
    params = list(model.adapter.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(total=epochs * -(-len(clips) // batch), desc="ctc warm-up", disable=not progress, file=sys.stderr)
    for _ in range(epochs):
        losses = []
        for chunk in torch.randperm(len(clips), generator=gen).split(batch):
            rows, lengths, targets, target_lengths = [], [], [], []
            for i in chunk.tolist():
                clip = clips[i]
                rows.append(model.adapt(clip.features[None], torch.tensor([clip.features.shape[0]])))
                targets += [index[t] for t in clip.tokens]
                target_lengths.append(len(clip.tokens))
            lengths = [r.shape[0] for r in rows]
            padded = nn.utils.rnn.pad_sequence(rows)  # [T, B, H]
            log_probs = head(padded).log_softmax(-1)
            ctc = F.ctc_loss(log_probs, torch.tensor(targets), torch.tensor(lengths), torch.tensor(target_lengths),
                             zero_infinity=True)
            norms = torch.cat(rows).norm(dim=-1)
            loss = ctc + ((norms / target_norm).log() ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(ctc.detach()))
            bar.update()
            bar.set_postfix(ctc=f"{losses[-1]:.2f}")
        history.append(float(np.mean(losses)))
    bar.close()
    return history
