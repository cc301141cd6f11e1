"""Run by test_train_mgrd under one process or `torchrun --nproc_per_node 2`: three SFT steps on a global
batch of four examples (two per rank under torchrun); rank 0 saves the trainable tensors before and after."""

import sys
from pathlib import Path

import torch

from mgrd_fixtures import tiny_config_for, tiny_policy
from stepaudio.train.examples import Example
from stepaudio.train.mgrd import distributed
from stepaudio.train.mgrd.stages import sft
from stepaudio.train.mgrd.tasks import sound_items

distributed.init_from_env()
out = Path(sys.argv[1])
cfg = tiny_config_for(out.parent / f"cfg_{out.stem}")
cfg.sft.steps, cfg.sft.batch_size = 3, 4
examples = []
for g in sound_items(0, ("count", "higher"), 2, False, "ddp"):
    messages, audio = g.messages(inline_audio=False)
    examples.append(Example(g.task, messages, audio, f"{g.reference}\n</think>\n\n{g.reply}"))
examples.append(Example("text", [{"role": "user", "content": "What is two plus two?"}], [], "Two.\n</think>\n\nFour."))
torch.manual_seed(0)
policy = tiny_policy(out.parent / f"run_{out.stem}", lr_lora=1e-2, lr_adapter=1e-2)
initial = policy.trainable_state()
sft(policy, cfg, examples, out.parent / f"run_{out.stem}", "sft", progress=False)
if distributed.is_main():
    torch.save({"initial": initial, "final": policy.trainable_state()}, out)
