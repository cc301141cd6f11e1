"""Engine speed against transformers `generate` on the same weights, every figure measured in the same run.

Model: a Qwen2.5-0.5B-sized decoder (24 layers, hidden 896, 14/2 heads, vocab 151936, tied embeddings) with
random weights, behind a Whisper-base-sized audio encoder (`--encoder base`) or the Step-Audio-R1 one
(`--encoder r1`, 655 M params). transformers has no Step-Audio model, so its side gets the same audio
embeddings from our encoder + adaptor (timed on both sides) and runs `Qwen2ForCausalLM.generate` on
`inputs_embeds`, greedy.

Cases:
- decode: batch-1 decode tokens/s (time from the first to the last generated token), ours vs transformers,
  and as a fraction of the memory-bandwidth limit: bytes read per token (decoder weights, LM head, KV)
  over the read bandwidth of this machine measured by summing a 1 GiB buffer.
- concurrent: 16 requests with audio of different lengths and different output lengths; aggregate output
  tokens/s of our engine vs transformers run one request after another, and vs one left-padded
  transformers batch of the same 16 prompts (which must run to the longest output; only each request's
  own tokens count).
- ttft: time to first token for one 25 s audio chunk (encoder, adaptor and prefill), ours vs transformers.

    .venv/bin/python benchmarks/bench_engine.py [--dtype bfloat16] [--encoder base|r1] [--cases decode,concurrent,ttft]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from stepaudio.config import AudioEncoderConfig, StepAudioConfig, TextConfig
from stepaudio.engine.engine import EngineConfig, LLMEngine
from stepaudio.engine.sampling import SamplingParams
from stepaudio.inputs import PreparedPrompt, prepare_chat
from stepaudio.model.step_audio import StepAudioForCausalLM
from stepaudio.model.tiny import random_state_dict
from stepaudio.pipeline import audio_question_messages
from stepaudio.text.tiny_tokenizer import build_tiny_tokenizer
from stepaudio.text.tokenizer import StepTokenizer

QWEN25_0_5B = TextConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1e6, tie_word_embeddings=True)
ENCODERS = {
    "base": AudioEncoderConfig(n_audio_state=512, n_audio_head=8, n_audio_layer=6, llm_dim=896),
    "r1": AudioEncoderConfig(n_audio_state=1280, n_audio_head=20, n_audio_layer=32, llm_dim=896),
}
SAMPLE_RATE = 16000
COMPILE_DECODE = False  # set by --compile-decode


# ---- set-up -------------------------------------------------------------------------------------

def build_models(encoder: str, dtype: torch.dtype) -> tuple[StepAudioForCausalLM, Qwen2ForCausalLM, StepTokenizer]:
    config = StepAudioConfig(audio=ENCODERS[encoder], text=QWEN25_0_5B)
    model = StepAudioForCausalLM(config)
    missing, unexpected = model.load_state_dict(random_state_dict(config, seed=0), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model = model.to(dtype).eval()
    hf = Qwen2ForCausalLM(Qwen2Config(**config.text.to_qwen2_dict())).to(dtype).eval()
    hf.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(("model.", "lm_head."))})
    hf.generation_config.eos_token_id = None  # both sides produce exactly max_tokens
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_tokenizer().save(f"{tmp}/tokenizer.json")
        tokenizer = StepTokenizer.from_dir(tmp)
    return model, hf, tokenizer


def audio_clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.2 * np.sin(2 * np.pi * (150 + 40 * seed) * t)
    return (tone + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def make_prompt(tokenizer: StepTokenizer, seconds: float, words: int, seed: int) -> PreparedPrompt:
    question = "What is happening in this recording?" + " Please listen carefully." * words
    return prepare_chat(tokenizer, audio_question_messages(question, 1), [audio_clip(seconds, seed)])


def concurrent_workload(tokenizer: StepTokenizer, count: int) -> tuple[list[PreparedPrompt], list[int]]:
    """Audio of 2..12 s, questions of different lengths, 96..256 output tokens each (a short reasoning
    and an answer: R1 usually writes more, which would only favour batching further)."""
    prompts = [make_prompt(tokenizer, 2 + (7 * i) % 11, i % 5, seed=i) for i in range(count)]
    return prompts, [96 + (37 * i) % 161 for i in range(count)]


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


def new_engine(model: StepAudioForCausalLM, tokenizer: StepTokenizer) -> LLMEngine:
    return LLMEngine(model, tokenizer, EngineConfig(max_num_seqs=16, kv_cache_memory_gb=1.0,
                                                    compile_decode=COMPILE_DECODE))


# ---- our engine ---------------------------------------------------------------------------------

def run_engine(engine: LLMEngine, prompts: list[PreparedPrompt],
               max_tokens: list[int]) -> tuple[float, dict[str, list[int]], dict[str, list[float]]]:
    """Run the prompts together; returns (seconds, tokens per request, time of each token per request)."""
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    times: dict[str, list[float]] = {rid: [] for rid in tokens}
    start = time.perf_counter()
    with torch.inference_mode():
        for i, (p, n) in enumerate(zip(prompts, max_tokens)):
            engine.add_request(f"r{i}", p.token_ids, p.mels, greedy(n))
        while engine.has_unfinished_requests():
            for out in engine.step():
                now = time.perf_counter() - start
                for d in out.deltas:
                    tokens[out.request_id] += d.token_ids
                    times[out.request_id] += [now] * len(d.token_ids)
    return time.perf_counter() - start, tokens, times


# ---- transformers -------------------------------------------------------------------------------

class TokenClock:
    """A `generate` streamer that only records when each new token arrives."""

    def __init__(self, start: float):
        self.start, self.times, self._prompt_seen = start, [], False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter() - self.start)
        self._prompt_seen = True

    def end(self) -> None:
        pass


def prompt_embeds(model: StepAudioForCausalLM, audio_patch_id: int, prompt: PreparedPrompt) -> torch.Tensor:
    """The prompt's input embeddings [1, T, H] with its audio rows filled, as our engine builds them."""
    ids = torch.tensor([prompt.token_ids])
    return model.embed(ids, torch.cat(model.encode_audio(prompt.mels)), ids == audio_patch_id)


def hf_generate(model: StepAudioForCausalLM, hf: Qwen2ForCausalLM, audio_patch_id: int, prompt: PreparedPrompt,
                n: int) -> tuple[list[int], list[float]]:
    """One request: embed (audio encoder included) and generate; returns tokens and each token's time."""
    start = time.perf_counter()
    with torch.inference_mode():
        embeds = prompt_embeds(model, audio_patch_id, prompt)
        clock = TokenClock(start)
        out = hf.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                          max_new_tokens=n, do_sample=False, pad_token_id=0, streamer=clock)
    return out[0, -n:].tolist(), clock.times


def hf_padded_batch(model: StepAudioForCausalLM, hf: Qwen2ForCausalLM, audio_patch_id: int,
                    prompts: list[PreparedPrompt], max_tokens: list[int]) -> tuple[float, list[list[int]]]:
    """All prompts in one left-padded batch, run to the longest output."""
    start = time.perf_counter()
    with torch.inference_mode():
        rows = [prompt_embeds(model, audio_patch_id, p)[0] for p in prompts]
        width = max(r.shape[0] for r in rows)
        embeds = torch.zeros(len(rows), width, rows[0].shape[1], dtype=rows[0].dtype)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            embeds[i, width - r.shape[0]:] = r
            mask[i, width - r.shape[0]:] = 1
        n = max(max_tokens)
        out = hf.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=n, do_sample=False,
                          pad_token_id=0)
    return time.perf_counter() - start, [out[i, -n:][:k].tolist() for i, k in enumerate(max_tokens)]


# ---- hardware limit -----------------------------------------------------------------------------

def read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second this machine reads from memory: the best sum over a buffer far larger than the caches
    (fp32 and bf16 buffers; the better one is nearer the hardware limit). Random contents, like weights:
    a virtual machine may share or compress identical pages, which inflates reads of a constant buffer."""
    best = 0.0
    for dtype in (torch.float32, torch.bfloat16):
        buf = torch.rand(int(gib * 2**30) // torch.finfo(dtype).bits * 8, dtype=dtype)
        best = max(best, gib * 2**30 / min(timed(buf.sum) for _ in range(repeats)))
    return best


def decode_bytes_per_token(hf: Qwen2ForCausalLM, context: int) -> int:
    """Weights one decode step reads (decoder layers, final norm, LM head) plus the KV cache at `context`.

    Counted on the transformers copy: it holds the same weights, and our engine's are prepacked (opaque).
    """
    def nbytes(module: torch.nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    config = hf.config
    head_dim = config.hidden_size // config.num_attention_heads
    kv = 2 * config.num_hidden_layers * context * config.num_key_value_heads * head_dim
    return nbytes(hf.model.layers) + nbytes(hf.model.norm) + nbytes(hf.lm_head) + kv * hf.lm_head.weight.element_size()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode_rate(times: list[float]) -> float:
    """Tokens per second after the first token (prefill excluded)."""
    return (len(times) - 1) / (times[-1] - times[0])


# ---- cases --------------------------------------------------------------------------------------

def case_decode(model, hf, tokenizer, repeats: int) -> None:
    n = 128
    prompt = make_prompt(tokenizer, 2.0, 0, seed=100)
    ours = max(decode_rate(run_engine(new_engine(model, tokenizer), [prompt], [n])[2]["r0"])
               for _ in range(repeats))
    ref = max(decode_rate(hf_generate(model, hf, tokenizer.audio_patch_id, prompt, n)[1]) for _ in range(repeats))
    bandwidth = read_bandwidth()
    per_token = decode_bytes_per_token(hf, len(prompt.token_ids) + n // 2)
    limit = bandwidth / per_token
    print(f"batch-1 decode, {n} tokens after a {len(prompt.token_ids)}-token prompt")
    print(f"  ours:                 {ours:6.1f} tok/s")
    print(f"  transformers generate:{ref:6.1f} tok/s")
    print(f"  ratio ours/transformers: {ours / ref:.2f}x")
    print(f"  memory read bandwidth (sum over 1 GiB): {bandwidth / 1e9:.1f} GB/s; {per_token / 1e6:.0f} MB read per token "
          f"-> limit {limit:.1f} tok/s")
    print(f"  ours at {100 * ours / limit:.0f}% of the bandwidth limit, transformers at {100 * ref / limit:.0f}%")


def case_concurrent(model, hf, tokenizer) -> None:
    prompts, max_tokens = concurrent_workload(tokenizer, 16)
    total = sum(max_tokens)
    patch = tokenizer.audio_patch_id
    run_engine(new_engine(model, tokenizer), prompts[:1], [4])  # warm-up
    ours_s, ours_tokens, _ = run_engine(new_engine(model, tokenizer), prompts, max_tokens)
    padded_s, padded_tokens = hf_padded_batch(model, hf, patch, prompts, max_tokens)
    sequential = [timed_generate(model, hf, patch, p, n) for p, n in zip(prompts, max_tokens)]
    seq_s = sum(s for s, _ in sequential)
    same = sum(ours_tokens[f"r{i}"] == toks for i, (_, toks) in enumerate(sequential))
    lengths = [len(p.token_ids) for p in prompts]
    print(f"16 concurrent requests: prompts {min(lengths)}-{max(lengths)} tokens (audio 2-12 s), "
          f"{min(max_tokens)}-{max(max_tokens)} output tokens, {total} in all")
    print(f"  ours (continuous batching):          {ours_s:6.1f} s  {total / ours_s:6.1f} tok/s")
    print(f"  transformers, one after another:     {seq_s:6.1f} s  {total / seq_s:6.1f} tok/s  "
          f"-> ours {seq_s / ours_s:.1f}x")
    print(f"  transformers, one padded batch:      {padded_s:6.1f} s  {total / padded_s:6.1f} tok/s  "
          f"-> ours {padded_s / ours_s:.2f}x")
    # A sanity line, not a parity test (those are fp32, in tests/): in bf16 any change of kernel or batch shape
    # rounds differently and greedy paths of a random model part at near-ties, transformers' own included.
    print(f"  greedy outputs equal to transformers' sequential ones: ours {same}/16, "
          f"transformers' padded batch {sum(a == b for a, (_, b) in zip(padded_tokens, sequential))}/16 (bf16)")


def timed_generate(model, hf, patch: int, prompt: PreparedPrompt, n: int) -> tuple[float, list[int]]:
    start = time.perf_counter()
    tokens, _ = hf_generate(model, hf, patch, prompt, n)
    return time.perf_counter() - start, tokens


def case_ttft(model, hf, tokenizer, repeats: int) -> None:
    prompt = make_prompt(tokenizer, 25.0, 0, seed=200)
    ours = min(run_engine(new_engine(model, tokenizer), [prompt], [1])[2]["r0"][0] for _ in range(repeats))
    ref = min(hf_generate(model, hf, tokenizer.audio_patch_id, prompt, 1)[1][0] for _ in range(repeats))
    with torch.inference_mode():
        encode = min(timed(lambda: model.encode_audio(prompt.mels)) for _ in range(repeats))
    print(f"time to first token, one 25 s chunk ({prompt.num_audio_tokens} audio tokens, "
          f"{len(prompt.token_ids)}-token prompt)")
    print(f"  ours: {ours:.2f} s (of which encoder + adaptor {encode:.2f} s); transformers: {ref:.2f} s "
          f"-> ratio {ref / ours:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--encoder", default="base", choices=sorted(ENCODERS))
    parser.add_argument("--cases", default="decode,concurrent,ttft")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile-decode", action="store_true", help="our engine with EngineConfig.compile_decode")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global COMPILE_DECODE
    COMPILE_DECODE = args.compile_decode
    model, hf, tokenizer = build_models(args.encoder, getattr(torch, args.dtype))
    params = sum(p.numel() for p in model.model.parameters()) / 1e6
    print(f"Qwen2.5-0.5B-sized decoder ({params:.0f} M params) + {args.encoder} encoder, {args.dtype}, "
          f"{args.threads} threads, torch {torch.__version__}, compiled decode: {args.compile_decode}")
    cases = args.cases.split(",")
    if "decode" in cases:
        case_decode(model, hf, tokenizer, args.repeats)
    if "concurrent" in cases:
        case_concurrent(model, hf, tokenizer)
    if "ttft" in cases:
        case_ttft(model, hf, tokenizer, args.repeats)


if __name__ == "__main__":
    main()
