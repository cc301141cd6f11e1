"""Step-Audio model: audio encoder, adaptor, Qwen2 decoder, and checkpoint loading."""

from .loader import CheckpointError, load_model
from .step_audio import StepAudioForCausalLM

__all__ = ["CheckpointError", "StepAudioForCausalLM", "load_model"]
