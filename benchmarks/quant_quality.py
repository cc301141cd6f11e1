"""How much the default model changes when its decoder is quantized: logit KL and greedy agreement vs bf16.

For each prompt (held-out: questions that appear nowhere in the training data generators, typed as text),
the bf16 model writes a greedy continuation; each variant is then run teacher-forced on prompt + that
continuation, and at every continuation position we take KL(bf16 || variant) of the next-token distributions
and whether the argmax agrees. A free-running greedy comparison adds how many of the first N tokens match.

    .venv/bin/python benchmarks/quant_quality.py [--tokens 48]
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
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    model_dir = ensure_default_model()
    tokenizer = StepTokenizer.from_dir(model_dir)
    reference = load_model(model_dir, dtype="bfloat16")
    variants = {"w8a16": load_model(model_dir, dtype="bfloat16", quantization="w8a16"),
                "w4a16": load_model(model_dir, dtype="bfloat16", quantization="w4a16")}
    stats = {name: {"kl": [], "agree": [], "free": []} for name in variants}
    for text in PROMPTS:
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
            free = list(generate_tokens(model, prompt, max_new_tokens=args.tokens))
            stats[name]["free"].append(next((i for i, (a, b) in enumerate(zip(free, continuation)) if a != b),
                                            min(len(free), len(continuation))))
    print(f"default model ({model_dir}), {len(PROMPTS)} typed held-out prompts, {args.tokens} greedy bf16 tokens each; "
          f"bf16 activations; machine: torch {torch.__version__}, oneDNN bf16 kernels "
          f"{bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}")
    for name, s in stats.items():
        n = len(PROMPTS)
        print(f"  {name}: mean KL(bf16||{name}) {sum(s['kl']) / n:.4f} nats/token; teacher-forced greedy agreement "
              f"{100 * sum(s['agree']) / n:.1f}%; free-running greedy identical for the first "
              f"{sum(s['free']) / n:.1f} tokens on average (prompts fully identical: "
              f"{sum(f >= args.tokens for f in s['free'])}/{n})")


if __name__ == "__main__":
    main()
