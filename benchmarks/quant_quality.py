"""How much the default model changes when its decoder is quantized: logit KL and greedy agreement vs bf16.

For each prompt (held-out: questions that appear nowhere in the training data generators, typed as text),
the unquantized model writes a greedy continuation; each variant is then run teacher-forced on prompt + that
continuation, and at every continuation position we take KL(reference || variant) of the next-token distributions
and whether the argmax agrees (teacher-forced greedy agreement). The reference is the unquantized model in the
same dtype as the variants (--dtype).

    .venv/bin/python benchmarks/quant_quality.py [--tokens 24] [--prompts 8] [--dtype float32]
"""

from __future__ import annotations

import argparse

import torch

from stepaudio.default_model.assemble import ensure_default_model
from stepaudio.generation import generate_tokens
from stepaudio.inputs import prepare_chat
from stepaudio.model.loader import load_model
from stepaudio.pipeline import audio_question_messages
from stepaudio.text.tokenizer import StepTokenizer

PROMPTS = [
    "Which is heavier, a kilogram of feathers or a kilogram of iron? Explain briefly.",
    "Name three rivers in South America.",
    "Write one sentence about why the sky looks blue.",
    "What is 17 plus 25?",
    "Give a synonym for the word 'rapid'.",
    "How many legs does a spider have?",
    "Translate 'good morning' into French.",
    "What do bees make?",
]


def teacher_forced_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        x = torch.tensor([ids])
        return model.compute_logits(model(x, torch.arange(len(ids))[None]))[0].float()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    model_dir = ensure_default_model()
    tokenizer = StepTokenizer.from_dir(model_dir)
    reference = load_model(model_dir, dtype=args.dtype)
    variants = {v: load_model(model_dir, dtype=args.dtype, quantization=v) for v in ("w8a16", "w4a16")}
    stats = {name: {"kl": [], "agree": []} for name in variants}
    prompts = PROMPTS[:args.prompts]
    for text in prompts:
        prompt = prepare_chat(tokenizer, audio_question_messages(text, 0), []).token_ids
        continuation = list(generate_tokens(reference, prompt, max_new_tokens=args.tokens))
        ids = prompt + continuation
        ref_logits = teacher_forced_logits(reference, ids)[len(prompt) - 1:-1]
        ref_logp = ref_logits.log_softmax(-1)
        for name, model in variants.items():
            logits = teacher_forced_logits(model, ids)[len(prompt) - 1:-1]
            logp = logits.log_softmax(-1)
            stats[name]["kl"].append((ref_logp.exp() * (ref_logp - logp)).sum(-1).mean().item())
            stats[name]["agree"].append((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item())
            print(f"  {text[:40]!r}: {name} KL {stats[name]['kl'][-1]:.4f}, agreement {stats[name]['agree'][-1]:.2f}",
                  flush=True)
    print(f"default model ({model_dir}), {len(prompts)} typed held-out prompts, {args.tokens} greedy tokens each, "
          f"{args.dtype}; torch {torch.__version__}, oneDNN bf16 kernels "
          f"{bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}")
    for name, s in stats.items():
        n = len(prompts)
        print(f"  {name}: mean KL(unquantized||{name}) {sum(s['kl']) / n:.4f} nats/token; teacher-forced greedy "
              f"agreement {100 * sum(s['agree']) / n:.1f}% (lowest prompt {100 * min(s['agree']):.0f}%)")


if __name__ == "__main__":
    main()
