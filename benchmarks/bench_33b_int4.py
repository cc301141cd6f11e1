"""A Step-Audio-R1-shaped decoder (the flat 32B config: 64 layers, hidden 5120, MLP 27648, 40/8 heads, vocab
158720) decoding on a CPU with every Linear in int4 (groups of 128), random weights generated directly as int4
codes and scales, never as a dense weight. Prints peak RSS and decode tok/s.

`--layers N` builds the first N of the 64 layers (same widths), for machines with less free memory than the
~17 GB the whole int4 decoder takes; the per-layer time and memory it prints project to 64 layers. The LM head
is int4 too here (R1 stores it in bf16; on a CPU without bf16 kernels a 1.6 GB bf16 head alone would dominate
a step); the embedding is bf16.

    .venv/bin/python benchmarks/bench_33b_int4.py [--layers 64] [--tokens 16]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from torch import nn

from stepaudio.config import AudioEncoderConfig, StepAudioConfig, TextConfig
from stepaudio.generation import generate_tokens
from stepaudio.model.step_audio import StepAudioForCausalLM
from stepaudio.quant.linear import Int4Linear
from bench_quant import machine

R1_TEXT = dict(vocab_size=158720, hidden_size=5120, intermediate_size=27648, num_attention_heads=40,
               num_key_value_heads=8, max_position_embeddings=65536, rope_theta=1e6)
GROUP = 128


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def random_int4(linear: nn.Linear, gen: torch.Generator) -> Int4Linear:
    """An Int4Linear of the Linear's shape from random codes in -8..7 and scales near 0.02/7."""
    n, k = linear.out_features, linear.in_features
    codes = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
    scales = (0.002 + 0.001 * torch.rand(n, k // GROUP, generator=gen)).to(torch.bfloat16)
    bias = None if linear.bias is None else torch.zeros(n, dtype=torch.bfloat16)
    return Int4Linear(codes, scales, bias, torch.bfloat16)


def build(layers: int) -> StepAudioForCausalLM:
    audio = AudioEncoderConfig(n_audio_state=64, n_audio_head=4, n_audio_layer=1, llm_dim=R1_TEXT["hidden_size"],
                               adapter_hidden=128)
    config = StepAudioConfig(audio=audio, text=TextConfig(num_hidden_layers=layers, **R1_TEXT),
                             torch_dtype="bfloat16")
    with torch.device("meta"):
        model = StepAudioForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and (name.startswith("model.layers.") or name == "lm_head"):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, random_int4(module, gen))
    hidden = config.text.hidden_size
    model.model.embed_tokens.weight = nn.Parameter(
        (0.02 * torch.randn(config.text.vocab_size, hidden, generator=gen)).to(torch.bfloat16), requires_grad=False)
    for name, module in model.model.named_modules():
        if hasattr(module, "eps"):  # RMSNorm
            module.weight = nn.Parameter(torch.ones(hidden, dtype=torch.bfloat16), requires_grad=False)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    start = time.perf_counter()
    model = build(args.layers)
    built = time.perf_counter() - start
    weights = sum(b.numel() * b.element_size() for b in model.buffers()) + model.model.embed_tokens.weight.nbytes
    rss_built = peak_rss_gb()
    times = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in generate_tokens(model, list(range(1, 33)), max_new_tokens=args.tokens):
            times.append(time.perf_counter() - t0)
    rate = (len(times) - 1) / (times[-1] - times[0])
    with torch.inference_mode():
        x = torch.randn(1, R1_TEXT["hidden_size"]).to(torch.bfloat16)
        model.lm_head(x)
        t1 = time.perf_counter()
        for _ in range(3):
            model.lm_head(x)
        head_s = (time.perf_counter() - t1) / 3
    layer_s = (1 / rate - head_s) / args.layers
    print(f"machine: {machine()}")
    print(f"R1-shaped decoder, {args.layers} of 64 layers, int4 group {GROUP} (LM head int4, embedding bf16): "
          f"{weights / 1e9:.2f} GB of weights, built in {built:.0f} s")
    print(f"  peak RSS after building {rss_built:.2f} GB, after decoding {peak_rss_gb():.2f} GB")
    print(f"  decode {rate:.3f} tok/s over {args.tokens} tokens after a 32-token prompt "
          f"(first token {times[0]:.1f} s)")
    if args.layers < 64:
        layer_gb = sum(b.numel() * b.element_size() for b in model.model.layers[0].buffers()) / 1e9
        print(f"  projected to 64 layers: {weights / 1e9 + (64 - args.layers) * layer_gb:.1f} GB of weights, "
              f"about {1 / (head_s + 64 * layer_s):.3f} tok/s (LM head {head_s:.2f} s per token, "
              f"{layer_s:.3f} s per layer, both from this run)")


if __name__ == "__main__":
    main()
