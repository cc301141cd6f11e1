"""Encoder + adaptor time for one 25 s chunk at the real Step-Audio-R1 size (random weights).

Reference, measured in the same run: transformers' Qwen2AudioEncoder of the same size (the encoder
Step-Audio-R1 uses), which only accepts 30 s windows (3000 mel frames). We report ours on the 25 s chunk
(2502 frames, what the official client sends) and on the same 3000 frames for a like-for-like ratio.

    .venv/bin/python benchmarks/bench_encoder.py [--dtype float32|bfloat16] [--repeats 2] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import Qwen2AudioEncoderConfig
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from stepaudio.config import AudioEncoderConfig
from stepaudio.model.adaptor import Adaptor
from stepaudio.model.encoder import AudioEncoder

R1_AUDIO = AudioEncoderConfig(n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
                              llm_dim=5120, kernel_size=3, adapter_stride=2)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    encoder = AudioEncoder(R1_AUDIO).to(dtype).eval()
    adaptor = Adaptor(R1_AUDIO).to(dtype).eval()
    reference = Qwen2AudioEncoder(Qwen2AudioEncoderConfig(
        num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
        max_source_positions=1500)).to(dtype).eval()
    mel_25 = torch.randn(1, 128, 2502, dtype=dtype)
    mel_30 = torch.randn(1, 128, 3000, dtype=dtype)

    def ours(mel: torch.Tensor):
        feats, lens = encoder(mel, torch.tensor([mel.shape[-1]]))
        return adaptor(feats, lens)

    with torch.inference_mode():
        ours(mel_30[..., :200])  # warm-up
        reference(mel_30)
        t_ours_25 = best_time(lambda: ours(mel_25), args.repeats)
        t_ours_30 = best_time(lambda: ours(mel_30), args.repeats)
        t_ref_30 = best_time(lambda: reference(mel_30), args.repeats)
        tokens_25 = ours(mel_25)[0].shape[1]
    params = sum(p.numel() for p in encoder.parameters()) + sum(p.numel() for p in adaptor.parameters())
    print(f"encoder+adaptor, R1 size ({params / 1e6:.0f} M params), {args.dtype}, {args.threads} threads")
    print(f"  ours, 25 s chunk ({tokens_25} audio tokens):  {t_ours_25:.2f} s  ({25 / t_ours_25:.1f}x real time)")
    print(f"  ours, 30 s window (3000 frames):        {t_ours_30:.2f} s")
    print(f"  transformers Qwen2AudioEncoder, 30 s:    {t_ref_30:.2f} s  (encoder only, no adaptor)")
    print(f"  ratio at 30 s, reference/ours:          {t_ref_30 / t_ours_30:.2f}x")
    print(f"  ratio, official 25 s chunk vs reference's forced 30 s window: {t_ref_30 / t_ours_25:.2f}x")


if __name__ == "__main__":
    main()
