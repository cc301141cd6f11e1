"""Map a qwen2-architecture GGUF onto our decoder: TextConfig and `model.*` / `lm_head.*` tensors.

No transposes (ggml [in, out] read row-major is torch's [out, in]) and no Q/K row permutation:
llama.cpp permutes Q/K only for llama-family models, while qwen2 uses the rotate-half RoPE we use
(docs/DEFAULT_MODEL_ASSEMBLY.md §3; checked by decoding with the real weights).
"""

from __future__ import annotations

import torch

from ..config import TextConfig
from .gguf_reader import GGUFFile, GGUFFormatError

# blk.N.<gguf part> -> model.layers.N.<our part>
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def qwen2_text_config(gguf: GGUFFile) -> TextConfig:
    """Sizes from the GGUF metadata; the vocabulary size from the embedding rows."""
    md = gguf.metadata
    if md.get("general.architecture") != "qwen2":
        raise GGUFFormatError(f"expected a qwen2 GGUF, got architecture {md.get('general.architecture')!r}")
    return TextConfig(
        vocab_size=gguf.tensors["token_embd.weight"].shape[0],
        hidden_size=int(md["qwen2.embedding_length"]),
        intermediate_size=int(md["qwen2.feed_forward_length"]),
        num_hidden_layers=int(md["qwen2.block_count"]),
        num_attention_heads=int(md["qwen2.attention.head_count"]),
        num_key_value_heads=int(md["qwen2.attention.head_count_kv"]),
        max_position_embeddings=int(md["qwen2.context_length"]),
        # Stored as float32; round so 1e-6 is written as 1e-6, not 9.99999997e-07.
        rms_norm_eps=float(f"{md['qwen2.attention.layer_norm_rms_epsilon']:.6g}"),
        rope_theta=float(md.get("qwen2.rope.freq_base", 1e6)),
        tie_word_embeddings="output.weight" not in gguf.tensors,
    )


def gguf_name_to_ours(name: str) -> str:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise GGUFFormatError(f"unexpected tensor {name!r} in a qwen2 GGUF")


def qwen2_state_dict(gguf: GGUFFile) -> dict[str, torch.Tensor]:
    """All decoder tensors, dequantised to float32, in checkpoint naming."""
    return {gguf_name_to_ours(name): torch.from_numpy(gguf.tensor(name)) for name in gguf.tensors}
