"""A transformers config class for `model_type: step_audio_2`, which transformers does not know.

It is filled by `stepaudio.config.parse_config`, so the nested (Step-Audio-2) and the flat (32B R1)
layouts of config.json give the same `text_config` (a plain Qwen2Config for vLLM's Qwen2 decoder)
and the same audio encoder sizes.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from transformers import PretrainedConfig, Qwen2Config

from ..config import AudioEncoderConfig, StepAudioConfig, parse_config

MODEL_TYPE = "step_audio_2"


class StepAudio2Config(PretrainedConfig):
    model_type = MODEL_TYPE
    sub_configs = {"text_config": Qwen2Config}

    def __init__(self, audio_encoder_config: dict[str, Any] | None = None,
                 text_config: dict[str, Any] | Qwen2Config | None = None, **kwargs: Any):
        # dtype is vLLM's business (and transformers may hand back a torch.dtype here).
        raw = {k: v for k, v in kwargs.items() if k not in ("torch_dtype", "dtype")}
        raw["audio_encoder_config"] = audio_encoder_config or asdict(AudioEncoderConfig())
        if isinstance(text_config, Qwen2Config):
            text_config = text_config.to_dict()
        if text_config is not None:
            raw["text_config"] = text_config
        elif "hidden_size" not in raw:
            raw["text_config"] = {}  # transformers builds a default instance to diff against
        parsed = parse_config(raw)
        self.audio_encoder_config = asdict(parsed.audio)
        # parse_config adds the official EOS ids; vLLM's structured outputs refuse ids past the vocabulary
        # (small test vocabularies), and such ids could never be generated anyway.
        eos = [i for i in parsed.text.eos_token_id if i < parsed.text.vocab_size]
        self.text_config = Qwen2Config(**{**parsed.text.to_qwen2_dict(), "eos_token_id": eos})
        kwargs["eos_token_id"] = eos
        kwargs.setdefault("architectures", ["StepAudio2ForCausalLM"])
        kwargs.setdefault("tie_word_embeddings", parsed.text.tie_word_embeddings)
        super().__init__(**kwargs)

    @property
    def step_config(self) -> StepAudioConfig:
        """Our own dataclass view, for the encoder and adaptor modules."""
        return parse_config({"audio_encoder_config": self.audio_encoder_config,
                             "text_config": self.text_config.to_dict(), "model_type": MODEL_TYPE,
                             "torch_dtype": "float32"})
