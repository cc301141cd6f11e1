"""Quantized decode against transformers bf16 `generate`: bf16, w8a16 and w4a16 on the same weights, one run.

Model and workloads are bench_engine's (a Qwen2.5-0.5B-sized decoder with random weights, tied embeddings,
behind a Whisper-base-sized encoder). The bf16 checkpoint is written to a temporary folder and loaded three
times through `load_model`: as it is, and with `--quantization w8a16` / `w4a16` (the decoder's Linears
quantized while loading; the tied embedding / LM head stays bf16, as `stepaudio quantize` keeps it).

Cases:
- decode: batch-1 decode tok/s, each variant as a ratio to transformers bf16 generate, and as a fraction of
  the bandwidth limit for the bytes that variant reads per token (its decoder weights and scales, the LM head,
  the KV cache) over the read bandwidth measured here.
- concurrent: 16 requests (bench_engine's mix, outputs scaled by --output-scale) through the engine, each
  variant against one left-padded transformers bf16 batch of the same prompts.
- ttft: time to first token for one 25 s chunk, each variant against transformers.

    .venv/bin/python benchmarks/bench_quant.py [--activations bfloat16|float32] [--cases decode,concurrent,ttft]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
from pathlib import Path

import torch
from bench_engine import (build_models, concurrent_workload, decode_rate, hf_generate, hf_padded_batch,
                          make_prompt, read_bandwidth, run_engine)

from stepaudio.engine.engine import EngineConfig, LLMEngine
from stepaudio.model.loader import load_model
from stepaudio.model.saver import save_checkpoint
from stepaudio.quant.linear import QuantLinear

VARIANTS = (None, "w8a16", "w4a16")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if line.startswith("Model name")), platform.processor())
    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return f"{cpu}, {torch.get_num_threads()} threads, oneDNN bf16 kernels: {bf16}, torch {torch.__version__}"


def bytes_per_token(model, context: int) -> int:
    """What one decode step reads: every decoder weight (codes and scales for quantized layers), final norm,
    LM head, and the KV cache at `context` tokens."""
    total = 0
    for module in model.model.layers.modules():
        if isinstance(module, QuantLinear):
            total += module.weight_bytes()
        total += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
    total += sum(p.numel() * p.element_size() for p in model.model.norm.parameters())
    total += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    text = model.config.text
    return total + 2 * text.num_hidden_layers * context * text.num_key_value_heads * text.head_dim * 2


def engine_for(model, tokenizer) -> LLMEngine:
    return LLMEngine(model, tokenizer, EngineConfig(max_num_seqs=16, kv_cache_memory_gb=1.0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--activations", default="bfloat16", choices=["bfloat16", "float32"],
                        help="our models' dtype (transformers always runs bf16, the reference the goals name)")
    parser.add_argument("--cases", default="decode,concurrent,ttft")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--output-scale", type=float, default=0.25, help="scale bench_engine's 96-256 outputs")
    args = parser.parse_args()
    cases = args.cases.split(",")
    base, hf, tokenizer = build_models("base", torch.bfloat16)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        state = {k: v for k, v in base.state_dict().items() if k != "lm_head.weight"}  # tied to the embedding
        save_checkpoint(state, base.config, tmp, num_shards=2)
        models = {v or "bf16": load_model(Path(tmp), dtype=args.activations, quantization=v) for v in VARIANTS}
    del base
    encoder_model = models["bf16"]  # transformers' side gets its audio embeddings from our encoder, as in bench_engine
    print(f"Qwen2.5-0.5B-sized decoder, our activations {args.activations}; reference transformers bf16 generate")
    if "decode" in cases:
        n = args.decode_tokens
        prompt = make_prompt(tokenizer, 2.0, 0, seed=100)
        ref = decode_rate(hf_generate(encoder_model, hf, tokenizer.audio_patch_id, prompt, n)[1])
        bandwidth = read_bandwidth()
        print(f"batch-1 decode, {n} tokens; transformers {ref:.1f} tok/s; read bandwidth {bandwidth / 1e9:.1f} GB/s")
        for name, model in models.items():
            ours = decode_rate(run_engine(engine_for(model, tokenizer), [prompt], [n])[2]["r0"])
            per_token = bytes_per_token(model, len(prompt.token_ids) + n // 2)
            limit = bandwidth / per_token
            print(f"  {name:6s} {ours:6.1f} tok/s  {ours / ref:5.2f}x transformers  {per_token / 1e6:6.0f} MB/token  "
                  f"{100 * ours / limit:4.0f}% of the bandwidth limit ({limit:.1f} tok/s)")
    if "concurrent" in cases:
        prompts, max_tokens = concurrent_workload(tokenizer, 16)
        max_tokens = [max(8, int(t * args.output_scale)) for t in max_tokens]
        total = sum(max_tokens)
        padded_s, _ = hf_padded_batch(encoder_model, hf, tokenizer.audio_patch_id, prompts, max_tokens)
        print(f"16 concurrent, {total} output tokens; one padded transformers batch {padded_s:.1f} s "
              f"({total / padded_s:.1f} tok/s)")
        for name, model in models.items():
            seconds = run_engine(engine_for(model, tokenizer), prompts, max_tokens)[0]
            print(f"  {name:6s} {seconds:6.1f} s  {total / seconds:6.1f} tok/s  "
                  f"{padded_s / seconds:5.2f}x the padded batch")
    if "ttft" in cases:
        prompt = make_prompt(tokenizer, 25.0, 0, seed=200)
        ref = hf_generate(encoder_model, hf, tokenizer.audio_patch_id, prompt, 1)[1][0]
        print(f"time to first token, one 25 s chunk ({len(prompt.token_ids)} tokens); transformers {ref:.2f} s")
        for name, model in models.items():
            ours = run_engine(engine_for(model, tokenizer), [prompt], [1])[2]["r0"][0]
            print(f"  {name:6s} {ours:.2f} s  {ref / ours:5.2f}x transformers")


if __name__ == "__main__":
    main()
