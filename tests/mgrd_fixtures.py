"""A tiny assembly and MGRD config for the MGRD tests (random weights, the tiny tokenizer)."""

from __future__ import annotations

from pathlib import Path

import torch

from stepaudio.default_model.assemble import Assembly
from stepaudio.model.tiny import random_state_dict, tiny_config
from stepaudio.text.tiny_tokenizer import build_tiny_tokenizer
from stepaudio.train.mgrd.config import DataConfig, DistillConfig, DPOConfig, MGRDConfig, RLConfig, SFTConfig
from stepaudio.train.mgrd.policy import Policy, reset_lora


def tiny_assembly() -> Assembly:
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(-(-tokenizer.get_vocab_size(with_added_tokens=True) // 64) * 64, n_mels=80)
    state = random_state_dict(config, seed=0)
    state["lm_head.weight"] *= 10  # a head that LoRA can move (see test_train_align)
    return Assembly(config, state, tokenizer)


def tiny_policy(out: Path, lr_lora: float = 1e-2, lr_adapter: float = 0.0, parallel: str = "ddp",
                device: torch.device = torch.device("cpu")) -> Policy:
    """A fresh policy whose LoRA pairs are drawn from seed 0 (as a run's first stage draws them)."""
    policy = Policy(tiny_assembly(), 2, 4.0, "float32", lr_lora, lr_adapter, out, parallel, device)
    reset_lora(policy, 0)
    return policy


def tiny_config_for(out: Path, **kw) -> MGRDConfig:
    """A run small enough for a test, on the CPU unless `device` says otherwise (the CPU tests stay CPU tests
    on a machine with GPUs)."""
    settings = dict(out=out, device="cpu", budgets="0,inf", eval_max_tokens=8, lora_rank=2, lora_alpha=4.0,
                    save_every=1,
                    data=DataConfig(tasks=("higher", "count"), items_per_task=1, text_items=1, heldout_per_task=1),
                    distill=DistillConfig(chains=2, max_tokens=8),
                    sft=SFTConfig(steps=2, batch_size=2, warmup=1),
                    rl=RLConfig(steps_per_round=1, prompts_per_step=1, group_size=2, filter_samples=2, filter_low=0,
                                filter_high=2, filter_pool=2, max_tokens=8),
                    dpo=DPOConfig(pairs=1, steps=1, batch_size=1, probes=1,
                                    skip_without_denials=False))  # a random model never denies: train anyway
    settings.update(kw)
    return MGRDConfig(**settings)
