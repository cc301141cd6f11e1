"""Model configuration: read the official config.json (nested or flat layout) into dataclasses.

Step-Audio-2-mini ships a nested `StepAudio2Config` (`audio_encoder_config` + `text_config`);
the 32B R1 checkpoints may use a flat layout with the text fields at the top level (spec §1.1).
Both become the same `StepAudioConfig`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The text config always forces these EOS ids (<|endoftext|>, <|im_end|>, <|EOT|>) [C, spec §1.1].
FORCED_EOS_TOKEN_IDS = (151643, 151645, 151665)

_DTYPES = ("bfloat16", "float16", "float32")


class ConfigError(ValueError):
    """config.json is missing, malformed or inconsistent."""


@dataclass
class AudioEncoderConfig:
    """Whisper-style encoder + adaptor sizes; defaults are the class defaults upstream (spec §1.1)."""

    n_mels: int = 128
    n_audio_ctx: int = 1500
    n_audio_state: int = 512
    n_audio_head: int = 8
    n_audio_layer: int = 6
    llm_dim: int = 4096
    kernel_size: int = 3
    adapter_stride: int = 2
    adapter_hidden: int = 2048  # hard-coded upstream (spec §2.2); configurable here for tiny models


@dataclass
class TextConfig:
    """Qwen2 decoder fields (the text config is converted into a plain Qwen2Config upstream)."""

    vocab_size: int = 158720
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    hidden_act: str = "silu"
    max_position_embeddings: int = 16384
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    tie_word_embeddings: bool = False
    eos_token_id: list[int] = field(default_factory=lambda: list(FORCED_EOS_TOKEN_IDS))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_qwen2_dict(self) -> dict[str, Any]:
        """The equivalent transformers `Qwen2Config` kwargs (used by parity tests and exports)."""
        d = asdict(self)
        d["rope_parameters"] = {"rope_type": "default", "rope_theta": self.rope_theta}
        d["architectures"] = ["Qwen2ForCausalLM"]
        d["model_type"] = "qwen2"
        d["use_sliding_window"] = False
        return d


@dataclass
class StepAudioConfig:
    audio: AudioEncoderConfig
    text: TextConfig
    torch_dtype: str = "bfloat16"
    model_type: str = "step_audio_2"

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self.text.eos_token_id)

    def to_json_dict(self) -> dict[str, Any]:
        """The nested StepAudio2Config layout, as written by the official checkpoints."""
        text = {k: v for k, v in asdict(self.text).items()}
        text["num_attention_groups"] = self.text.num_key_value_heads
        audio = asdict(self.audio)
        return {
            "architectures": ["StepAudio2ForCausalLM"],
            "model_type": self.model_type,
            "torch_dtype": self.torch_dtype,
            "audio_encoder_config": audio,
            "text_config": text,
            "use_sliding_window": False,
            "sliding_window": 2048,
            "tie_word_embeddings": self.text.tie_word_embeddings,
        }


def _pick(d: dict[str, Any], cls: type) -> dict[str, Any]:
    names = cls.__dataclass_fields__.keys()
    return {k: d[k] for k in names if k in d and d[k] is not None}


def _text_config(d: dict[str, Any], top: dict[str, Any]) -> TextConfig:
    fields = _pick(d, TextConfig)
    groups = d.get("num_attention_groups")
    if groups is not None:
        kv = fields.setdefault("num_key_value_heads", groups)
        if kv != groups:
            raise ConfigError(f"num_attention_groups={groups} differs from num_key_value_heads={kv}")
    if "rope_theta" not in fields and isinstance(d.get("rope_parameters"), dict):
        fields["rope_theta"] = d["rope_parameters"].get("rope_theta", 1e6)
    if d.get("rope_scaling"):
        raise ConfigError(f"rope_scaling={d['rope_scaling']!r} is not supported (Step-Audio uses none)")
    if "tie_word_embeddings" not in fields and "tie_word_embeddings" in top:
        fields["tie_word_embeddings"] = bool(top["tie_word_embeddings"])
    eos = d.get("eos_token_id", top.get("eos_token_id"))
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    fields["eos_token_id"] = eos + [i for i in FORCED_EOS_TOKEN_IDS if i not in eos]
    return TextConfig(**fields)


def parse_config(raw: dict[str, Any]) -> StepAudioConfig:
    """Build a StepAudioConfig from a config.json dict in the nested or the flat (32B) layout."""
    if "text_config" in raw:
        text_raw = raw["text_config"]
    elif "hidden_size" in raw:
        text_raw = raw  # flat layout: text fields at the top level
    else:
        raise ConfigError("config.json has neither 'text_config' nor top-level 'hidden_size'")
    audio_raw = raw.get("audio_encoder_config")
    if not isinstance(audio_raw, dict):
        raise ConfigError("config.json lacks 'audio_encoder_config'")
    audio = AudioEncoderConfig(**_pick(audio_raw, AudioEncoderConfig))
    text = _text_config(text_raw, raw)
    if audio.llm_dim != text.hidden_size:
        raise ConfigError(f"audio llm_dim={audio.llm_dim} must equal text hidden_size={text.hidden_size}")
    if text.hidden_size % text.num_attention_heads or text.num_attention_heads % text.num_key_value_heads:
        raise ConfigError("hidden_size, num_attention_heads and num_key_value_heads are inconsistent")
    dtype = raw.get("torch_dtype") or raw.get("dtype") or text_raw.get("torch_dtype") or "bfloat16"
    if dtype not in _DTYPES:
        raise ConfigError(f"torch_dtype {dtype!r} is not one of {_DTYPES}")
    return StepAudioConfig(audio=audio, text=text, torch_dtype=dtype,
                           model_type=raw.get("model_type", "step_audio_2"))


def load_config(model_dir: str | Path) -> StepAudioConfig:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path} not found: a model folder needs config.json")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e
    return parse_config(raw)
