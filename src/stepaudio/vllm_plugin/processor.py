"""vLLM's multimodal processor for Step-Audio: audio items -> log-mel chunks and placeholder tokens.

Resampling, log-mel, the 25 s chunking and the token count are this package's (`stepaudio.audio`), so
a prompt gets exactly the tokens our engine gives it: each audio item is cut into 25 s chunks (as the
official client and our server cut long audio), each chunk becomes `<audio_start>` + n x `<audio_patch>`
+ `<audio_end>`, and only the patch positions receive audio embeddings. One item stays one item for
vLLM's encoder cache, however many chunks it has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.multimodal.audio import AudioResampler
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)

from ..audio.features import MAX_CHUNK_SAMPLES, log_mel_spectrogram, num_audio_tokens, num_mel_frames
from ..audio.io import SAMPLE_RATE, resample, split_chunks
from ..text.tokenizer import AUDIO_END, AUDIO_PATCH, AUDIO_START
from .hf_config import StepAudio2Config


class _StepAudioResampler(AudioResampler):
    """Mono audio goes through our soxr resampler (the one our server uses), so both stacks hear the same."""

    def resample(self, audio: np.ndarray, *, orig_sr: float) -> np.ndarray:
        if audio.ndim != 1:
            return super().resample(audio, orig_sr=orig_sr)
        return resample(audio, int(orig_sr), SAMPLE_RATE)


class StepAudioProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> StepAudio2Config:
        return self.ctx.get_hf_config(StepAudio2Config)

    def get_data_parser(self) -> MultiModalDataParser:
        parser = MultiModalDataParser(target_sr=SAMPLE_RATE, target_channels=1,
                                      expected_hidden_size=self._get_expected_hidden_size())
        parser.audio_resampler = _StepAudioResampler(target_sr=SAMPLE_RATE)
        return parser

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"audio": None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int] | None = None
                                   ) -> Mapping[str, int]:
        # Long audio is split into chunks, so one item can fill the whole context (at least one full chunk).
        return {"audio": max(seq_len, num_audio_tokens(num_mel_frames(MAX_CHUNK_SAMPLES)) + 2)}

    def token_id(self, name: str) -> int:
        return self.get_tokenizer().get_vocab()[name]

    @property
    def n_mels(self) -> int:
        return int(self.get_hf_config().audio_encoder_config["n_mels"])


class StepAudioDummyInputsBuilder(BaseDummyInputsBuilder[StepAudioProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return AUDIO_PATCH * mm_counts.get("audio", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int],
                          mm_options: MultiModalDummyOptions) -> MultiModalDataDict:
        return {"audio": self._get_dummy_audios(length=MAX_CHUNK_SAMPLES, num_audios=mm_counts.get("audio", 0),
                                                overrides=mm_options.get("audio"))}


class StepAudioMultiModalProcessor(BaseMultiModalProcessor[StepAudioProcessingInfo]):
    def _apply_hf_processor_main(self, mm_items: MultiModalDataItems, hf_kwargs: Mapping[str, object]
                                 ) -> BatchFeature:
        """Log-mel per 25 s chunk of every audio item with our front end; there is no HF processor for Step-Audio."""
        mm_data, hf_kwargs, passthrough = self._get_hf_mm_inputs(mm_items, hf_kwargs)
        audios = mm_data.get("audio") or []
        if not audios:
            return self._finalize_hf_mm_data(mm_data, hf_kwargs, passthrough)
        chunks = [split_chunks(np.asarray(a, dtype=np.float32)) for a in audios]
        mels = [log_mel_spectrogram(c, n_mels=self.info.n_mels) for item in chunks for c in item]
        processed = BatchFeature({
            "audio_mels": torch.cat([m.T for m in mels]),  # [sum L, n_mels], sliced per item and chunk
            "audio_chunk_lens": torch.tensor([m.shape[-1] for m in mels]),
            "audio_chunks": torch.tensor([len(item) for item in chunks]),
        })
        return self._finalize_hf_mm_data(mm_data, hf_kwargs, passthrough, processed)

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
                              ) -> Mapping[str, MultiModalFieldConfig]:
        chunk_lens = hf_inputs.get("audio_chunk_lens", torch.empty(0, dtype=torch.long))
        chunks = hf_inputs.get("audio_chunks", torch.empty(0, dtype=torch.long))
        item_frames = torch.stack([part.sum() for part in torch.split(chunk_lens, chunks.tolist())]) \
            if len(chunks) else torch.empty(0, dtype=torch.long)
        return {"audio_mels": MultiModalFieldConfig.flat_from_sizes("audio", item_frames),
                "audio_chunk_lens": MultiModalFieldConfig.flat_from_sizes("audio", chunks, keep_on_cpu=True),
                "audio_chunks": MultiModalFieldConfig.batched("audio", keep_on_cpu=True)}

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        start, end, patch = (self.info.token_id(t) for t in (AUDIO_START, AUDIO_END, AUDIO_PATCH))
        data = out_mm_kwargs.get_data()
        per_item = torch.split(torch.as_tensor(data.get("audio_chunk_lens", [])),
                               torch.as_tensor(data.get("audio_chunks", [])).tolist())

        def replacement(item_idx: int) -> PromptUpdateDetails:
            tokens = []
            for frames in per_item[item_idx].tolist():
                tokens += [start] + [patch] * num_audio_tokens(frames) + [end]
            return PromptUpdateDetails.select_token_id(tokens, embed_token_id=patch)

        return [PromptReplacement(modality="audio", target=[patch], replacement=replacement)]
