"""`StepAudio2ForCausalLM` for stock vLLM: our encoder and adaptor, vLLM's tensor-parallel Qwen2 decoder.

The encoder and adaptor are this package's modules (replicated on every TP rank, as upstream's fork
does; they are small next to the 32B decoder). The decoder is vLLM's registered `Qwen2ForCausalLM`, so
tensor and pipeline parallelism, paged attention and weight sharding are vLLM's. Audio embeddings go
only to the `<audio_patch>` positions the processor marked.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from ..model.adaptor import Adaptor
from ..model.encoder import AudioEncoder
from ..model.step_audio import StepAudioForCausalLM
from ..text.tokenizer import AUDIO_PATCH
from .processor import StepAudioDummyInputsBuilder, StepAudioMultiModalProcessor, StepAudioProcessingInfo


@MULTIMODAL_REGISTRY.register_processor(StepAudioMultiModalProcessor, info=StepAudioProcessingInfo,
                                        dummy_inputs=StepAudioDummyInputsBuilder)
class StepAudio2ForCausalLM(nn.Module, SupportsMultiModal, SupportsPP):
    # Checkpoint names (spec §2.2): encoder.*, adapter.*, model.*, lm_head.*.
    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix={"model.": "language_model.model.",
                                                          "lm_head.": "language_model.lm_head."})

    # The audio path is our model's own code, borrowed as is (vLLM passes the full mel length L).
    encode_audio = StepAudioForCausalLM.encode_audio
    encode_features = StepAudioForCausalLM.encode_features
    adapt = StepAudioForCausalLM.adapt

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("audio"):
            return AUDIO_PATCH
        raise ValueError("Step-Audio takes audio only")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        step_config = config.step_config
        with self._mark_tower_model(vllm_config, "audio"):
            self.encoder = AudioEncoder(step_config.audio)
            self.adapter = Adaptor(step_config.audio)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"), architectures=["Qwen2ForCausalLM"])
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """One embedding tensor per audio item: its 25 s chunks encoded one by one, then joined in order."""
        mels, chunk_lens, chunks = (kwargs.get(k) for k in ("audio_mels", "audio_chunk_lens", "audio_chunks"))
        if mels is None:
            return []
        if not isinstance(mels, torch.Tensor):
            mels = torch.cat(list(mels))
        chunk_lens, chunks = (_int_list(x) for x in (chunk_lens, chunks))
        embeds = self.encode_audio([m.T for m in torch.split(mels, chunk_lens)])
        out, at = [], 0
        for n in chunks:
            out.append(torch.cat(embeds[at:at + n]))
            at += n
        return tuple(out)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)


def _int_list(values: object) -> list[int]:
    """A batched or flat vLLM field (one tensor, or a list of tensors or numbers) as a flat list of ints."""
    if isinstance(values, torch.Tensor):
        return [int(v) for v in values.flatten()]
    return [int(v) for value in values for v in torch.as_tensor(value).flatten()]
