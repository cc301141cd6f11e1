"""Step-Audio as an out-of-tree vLLM plugin (the only package that imports vllm).

vLLM calls `register()` from the `vllm.general_plugins` entry point in every process it starts (API
server, engine core, each tensor-parallel worker), so it must be cheap and safe to run many times.
The model class is registered by name and imported lazily, after vLLM has set up the device.
"""

from __future__ import annotations

ARCHITECTURE = "StepAudio2ForCausalLM"
PARSER_NAME = "step_audio"


def register() -> None:
    """Register the config type, the model, and the `step_audio` reasoning and tool-call parsers."""
    import torch
    from transformers import AutoConfig
    from vllm import ModelRegistry
    from vllm.platforms import current_platform
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    from .hf_config import MODEL_TYPE, StepAudio2Config

    # bf16 on AMX CPUs dies with SIGILL in vLLM's workers unless AMX is enabled first (measured).
    init_amx = getattr(torch.cpu, "_init_amx", None)
    if init_amx is not None and current_platform.is_cpu():
        init_amx()
    AutoConfig.register(MODEL_TYPE, StepAudio2Config, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"{__name__}.model:StepAudio2ForCausalLM")
    ReasoningParserManager.register_lazy_module(PARSER_NAME, f"{__name__}.parsers", "StepAudioReasoningParser")
    ToolParserManager.register_lazy_module(PARSER_NAME, f"{__name__}.parsers", "StepAudioToolParser")
