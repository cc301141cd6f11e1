"""Run by test_train_mgrd under one process or `torchrun --nproc_per_node 2` (argv: output file, ddp or fsdp,
and optionally the device: cpu, the default, over gloo; cuda, one GPU per process, over nccl).

Three SFT steps on a global batch of four examples (two per rank under torchrun; in steps 2 and 3 one rank's
share is text only, so the adaptor goes unused there), stopped after two and resumed by a fresh policy from
the saved state, then the stage's LoRA merged into the weights. Rank 0 saves the trainable tensors before
and after, the merge file's tensors, the weights an engine is built from, and how many parameter elements
it holds itself (under FSDP: its shards), all as CPU tensors."""

import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from mgrd_fixtures import tiny_config_for, tiny_policy
from stepaudio.train.device import training_device
from stepaudio.train.examples import Example
from stepaudio.train.mgrd import distributed
from stepaudio.train.mgrd.policy import merge_in_place
from stepaudio.train.mgrd.stages import sft
from stepaudio.train.mgrd.tasks import sound_items
from stepaudio.train.training_state import on_cpu

out, parallel = Path(sys.argv[1]), sys.argv[2]
device = training_device(sys.argv[3] if len(sys.argv) > 3 else "cpu")
distributed.init_from_env(device)
run = out.parent / f"run_{out.stem}"
cfg = tiny_config_for(out.parent / f"cfg_{out.stem}")
cfg.sft.batch_size = 4
examples = []
for g in sound_items(0, ("count", "higher"), 2, False, "ddp"):
    messages, audio = g.messages(inline_audio=False)
    examples.append(Example(g.task, messages, audio, f"{g.reference}\n</think>\n\n{g.reply}"))
for question, answer in (("two plus two", "Four"), ("one plus two", "Three"), ("two minus one", "One")):
    examples.append(Example("text", [{"role": "user", "content": f"What is {question}?"}], [],
                            f"{question.capitalize()}.\n</think>\n\n{answer}."))
torch.manual_seed(0)
policy = tiny_policy(run, lr_lora=1e-2, lr_adapter=1e-2, parallel=parallel, device=device)
initial = policy.trainable_state()
cfg.sft.steps = 2
sft(policy, cfg, examples, run / "sft", "sft", progress=False)
# a new process: state.pt is all that is left
policy = tiny_policy(run, lr_lora=1e-2, lr_adapter=1e-2, parallel=parallel, device=device)
cfg.sft.steps = 3
sft(policy, cfg, examples, run / "sft", "sft", progress=False)
final = policy.trainable_state()
merge_in_place(policy, run / "merges" / "00-sft.pt")
folded = policy.folded_state()
policy.sampler(kv_cache_memory_gb=0.01)  # the rollout engine builds from the gathered weights
params = list(policy.model.parameters())
held = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)
if distributed.is_main():
    torch.save(on_cpu({"initial": initial, "final": final, "merge": torch.load(run / "merges" / "00-sft.pt"),
                       "folded": folded, "held": held, "numel": sum(p.numel() for p in params)}), out)
