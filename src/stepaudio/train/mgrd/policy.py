"""The policy being trained: the model with fresh LoRA pairs, its history of merges, and a sampler.

A stage trains LoRA pairs (and, where asked, the adaptor) on top of the weights so far; when it ends, the
pairs are merged into the weights (in fp32) and stored as one small merge file, so the run's model is the
base plus its merge files applied in order: resumable, and the LoRA starts fresh each round as the paper's
"LoRA merged back between rounds" asks. Sampling builds an engine over the current weights with the
current LoRA folded in (rollouts are on-policy). The model, its LoRA pairs, every batch and the sampling
engines live on the policy's device; the files a run writes (merges, states) hold CPU tensors.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ...default_model.assemble import Assembly
from ...engine.llm import LLM
from ...model.lora import merge_lora
from ...model.step_audio import StepAudioForCausalLM
from ...text.tokenizer import StepTokenizer
from ..align import AlignConfig, AlignModel, Batch
from ..training_state import on_cpu
from . import distributed


def apply_merge(state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], scale: float) -> None:
    """Replace the adaptor tensors and add each LoRA pair's product to its weight (in place, fp32)."""
    for key, value in tensors.items():
        if key.startswith("adapter."):
            state[key] = value.float().clone()
    lora = {k: v for k, v in tensors.items() if ".lora_" in k}
    if lora:
        merge_lora(state, lora, scale)


def merge_files(out: Path) -> list[Path]:
    return sorted((out / "merges").glob("*.pt"))


def replay_merges(assembly: Assembly, out: Path, scale: float) -> int:
    """The run's weights so far: `assembly` with every stored merge applied in order; returns how many."""
    files = merge_files(out)
    for path in files:
        apply_merge(assembly.state, torch.load(path, weights_only=True), scale)
    return len(files)


class LogprobModule(nn.Module):
    """`forward(batch)` -> per-target-token log-probs: one module for DDP to wrap (it owns the model)."""

    def __init__(self, aligner: AlignModel):
        super().__init__()
        self.model = aligner.model
        self.aligner = [aligner]  # a list: not registered as a submodule twice

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.aligner[0].target_logprobs(batch)


class Policy:
    def __init__(self, assembly: Assembly, lora_rank: int, lora_alpha: float, decoder_dtype: str,
                 lr_lora: float, lr_adapter: float, out: Path, parallel: str = "ddp",
                 device: torch.device = torch.device("cpu")):
        cfg = AlignConfig(out=out, lora_rank=lora_rank, lora_alpha=lora_alpha, decoder_dtype=decoder_dtype,
                          lr_lora=lr_lora, lr_adapter=lr_adapter, adapter_hidden=assembly.config.audio.adapter_hidden)
        self.config = assembly.config
        self.device = device
        self.tokenizer = StepTokenizer(assembly.tokenizer)
        self.aligner = AlignModel(assembly, cfg, device)
        self.scale = lora_alpha / lora_rank
        self.set_learning_rates(lr_lora, lr_adapter)
        self.module = distributed.wrap(LogprobModule(self.aligner), parallel, self.model.model.layers)

    def set_learning_rates(self, lr_lora: float, lr_adapter: float) -> None:
        """A stage's rates; the adaptor is optimised only where its rate is above zero (its parameters keep
        requires_grad throughout: DDP and FSDP fix the set of gradients they reduce when they wrap the model)."""
        self.aligner.cfg.lr_lora, self.aligner.cfg.lr_adapter = lr_lora, lr_adapter
        self.train_adapter = lr_adapter > 0

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-target-token log-probs and their rows (through DDP or FSDP when data-parallel)."""
        return self.module(batch)

    @property
    def model(self) -> StepAudioForCausalLM:
        return self.aligner.model

    def parameter_groups(self) -> list[dict]:
        groups = self.aligner.parameter_groups()
        return groups if self.train_adapter else groups[1:]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """This stage's trainable tensors, whole (a collective under FSDP: every rank calls it)."""
        keys = (".lora_",) + (("adapter.",) if self.train_adapter else ())
        return {k: v.detach().clone() for k, v in distributed.full_state(self.model, trainable_only=True).items()
                if any(s in k for s in keys)}

    def merge_tensors(self) -> dict[str, torch.Tensor]:
        """What a finished stage stores: its LoRA pairs (fp32) and, if it trained it, the adaptor."""
        return {k: v.float() for k, v in self.trainable_state().items()}

    def folded_state(self) -> dict[str, torch.Tensor]:
        """The current weights in checkpoint naming with the LoRA pairs folded in (fp32; a collective under
        FSDP: every rank calls it)."""
        full = distributed.full_state(self.model)
        state = {k.replace(".base.", "."): v.detach().float().clone() for k, v in full.items() if ".lora_" not in k}
        merge_lora(state, {k: v for k, v in full.items() if ".lora_" in k}, self.scale)
        return state

    def sampler(self, **engine_options) -> LLM:
        """An engine over the current policy (a collective under FSDP: every rank calls it)."""
        return self.engine(self.folded_state(), **engine_options)

    def engine(self, state: dict[str, torch.Tensor], **engine_options) -> LLM:
        """An engine over `folded_state()`'s weights (a separate fp32 copy: the engine prepacks its weights),
        on the policy's device."""
        with self.device:  # built there: no CPU copy of a GPU policy
            model = StepAudioForCausalLM(self.config)
        model.load_state_dict(state, strict=True)
        model.eval()
        return LLM.from_model(model, self.tokenizer, **engine_options)


def load_folder(model_dir: Path) -> Assembly:
    """A checkpoint folder as an in-memory assembly (fp32), what a run starts from."""
    from tokenizers import Tokenizer

    from ...model.loader import checkpoint_files, iter_checkpoint_tensors, load_config

    model_dir = Path(model_dir)
    config = load_config(model_dir)
    state = {name: t.float() for name, t in iter_checkpoint_tensors(model_dir, checkpoint_files(model_dir))}
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    return Assembly(config, state, Tokenizer.from_file(str(model_dir / "tokenizer.json")))


def merge_in_place(policy: Policy, path: Path) -> None:
    """End a stage: store its merge file (rank 0), add the pairs into the live weights, start the pairs afresh
    (A re-drawn from a seed, B zero). The same arithmetic as `replay_merges`, so a resumed run matches."""
    tensors = policy.merge_tensors()
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(on_cpu(tensors), tmp)
        tmp.replace(path)
    distributed.barrier()
    full = distributed.full_state(policy.model)
    names = list(policy.aligner.lora)
    state = {f"{name}.weight": full[f"{name}.base.weight"] for name in names}
    merge_lora(state, {k: v for k, v in tensors.items() if ".lora_" in k}, policy.scale)
    distributed.load_full(policy.model, {f"{name}.base.weight": state[f"{name}.weight"] for name in names})
    reset_lora(policy, len(merge_files(path.parent.parent)))


def reset_lora(policy: Policy, seed: int) -> None:
    """Fresh pairs (A uniform in +-1/sqrt(fan_in) as LoRA's kaiming init, B zero) drawn from `seed`: a
    stage starts from the same pairs whether the run went straight through or was resumed."""
    generator = torch.Generator().manual_seed(seed)
    fresh = {}
    for name, module in policy.aligner.lora.items():
        rank, fan_in = module.lora_A.shape
        bound = 1 / math.sqrt(fan_in)
        fresh[f"{name}.lora_A"] = torch.empty(rank, fan_in).uniform_(-bound, bound, generator=generator)
        fresh[f"{name}.lora_B"] = torch.zeros(module.lora_B.shape)
    distributed.load_full(policy.model, fresh)
