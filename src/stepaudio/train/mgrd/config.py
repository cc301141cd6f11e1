"""One MGRD run's settings, read from a TOML, YAML or JSON file (one file per run).

Values the paper leaves open ([S]/[I] in training_realtime_eval.md §1.3) are fields here, and each says
which default was chosen and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from ..device import check_device_choice
from .phrasings import PHRASINGS
from .tasks import TASKS

ESTIMATORS = ("grpo", "rloo", "mean")
PARALLEL = ("ddp", "fsdp")


def check_parallel(parallel: str) -> None:
    """Refuse a data-parallel mode other than ddp or fsdp (before any model is loaded)."""
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {', '.join(PARALLEL)}, not {parallel!r}")


@dataclass
class DataConfig:
    tasks: tuple[str, ...] = ("higher", "louder", "direction", "count", "longer")
    items_per_task: int = 16         # training items per task and self-distillation round
    text_items: int = 8              # arithmetic questions: text reasoning is kept (Eq. 5)
    heldout_per_task: int = 20       # evaluation items per task (held-out frequencies and waveforms)
    # How training items are asked: "generator" (each task's two phrasings) or "varied" (eight per comparison
    # task, `train/mgrd/phrasings.py`; the clips are the same). Held-out items keep their own phrasings.
    phrasings: str = "generator"


@dataclass
class DistillConfig:
    rounds: int = 1                  # MGRD iterations T (not reported; Fig. 2 draws two)
    chains: int = 4                  # K candidates per item (not reported)
    temperature: float = 0.8
    max_tokens: int = 96
    min_acoustic_terms: int = 2      # lexical pre-filter: acoustic words needed, with no surrogate phrase
    hz_tolerance: float = 0.25       # a stated frequency may be off by this fraction of a true one
    db_tolerance: float = 6.0
    seconds_tolerance: float = 0.35  # fraction of a true duration or time
    # Rubric judge: any OpenAI-compatible endpoint ("" skips it: lexical and quantity checks only).
    judge_url: str = ""
    judge_model: str = ""
    # What SFT learns when the model's own chains are all rejected for a task: the generator's grounded
    # reasoning (its true facts). The paper self-distils from a model whose audio CoT has emerged; at
    # chance there is little to keep, so this seeds the first round [I].
    reference_chains: bool = True


@dataclass
class SFTConfig:
    steps: int = 40
    batch_size: int = 4
    lr_lora: float = 2e-4
    lr_adapter: float = 5e-4
    warmup: int = 4


@dataclass
class RLConfig:
    rounds: int = 1                  # LoRA merged back into the weights after each round
    steps_per_round: int = 2
    prompts_per_step: int = 2
    group_size: int = 8              # rollouts per prompt (the paper: 16)
    estimator: str = "grpo"          # grpo (z-score in the group), rloo (leave-one-out mean), mean (r - mean)
    clip: float = 0.2
    kl: float = 0.0                  # the paper: no KL penalty; kept as a field, only 0 is implemented
    epochs: int = 1                  # PPO epochs over one rollout batch (1: strictly on-policy)
    correct_weight: float = 0.8      # R_audio = 0.8 correct + 0.2 reasoning present
    reasoning_weight: float = 0.2
    filter_samples: int = 8          # the difficulty filter: keep items with lo..hi of k correct
    filter_low: int = 3
    filter_high: int = 6
    filter_pool: int = 12            # items tried by the filter
    temperature: float = 1.0
    max_tokens: int = 96
    lr_lora: float = 1e-4
    lr_adapter: float = 0.0


@dataclass
class DPOConfig:
    pairs: int = 8
    steps: int = 8
    batch_size: int = 2
    beta: float = 0.1
    lr_lora: float = 1e-4
    probes: int = 16                 # probe items for the self-cognition error rate, before and after
    # Skip the updates when no probe reply denies hearing: the stage then only measures the rate. The paper's
    # model did deny hearing; on one that never does, DPO against a fixed denial has nothing to correct and
    # was measured to undo an RL lift (docs/MGRD.md, 4 Dec 2026) [I]. false: always train.
    skip_without_denials: bool = True


@dataclass
class MGRDConfig:
    out: Path
    model: str = "default"           # "default" (ensure_default_model) or a checkpoint folder
    seed: int = 0
    stages: tuple[str, ...] = ("data", "evaluate_before", "distill", "rl", "dpo", "evaluate_after")
    budgets: str = "0,32,64,128,inf"  # the thinking-budget sweep before and after
    # Also evaluate the held-out items after every training unit (each distill and RL round, DPO), in
    # `evaluate_after_<unit>/`, except the last when `evaluate_after` follows it: accuracy stage by stage.
    evaluate_each_stage: bool = False
    eval_max_tokens: int = 160
    lora_rank: int = 8
    lora_alpha: float = 16.0
    decoder_dtype: str = "auto"
    save_every: int = 5
    sampler_kv_gb: float = 0.25      # KV cache of each sampling engine (rollouts are short)
    threads: int | None = None
    # Under torchrun with more than one process: "ddp" keeps a whole copy of the model per rank (for a model
    # that fits one device), "fsdp" shards it (FSDP2, per decoder layer) for one that does not. One process
    # runs the model unwrapped either way.
    parallel: str = "ddp"
    # Where the policy, its batches and the sampling engines live: "auto" (CUDA when torch sees a GPU, else
    # the CPU), "cpu" or "cuda". Under torchrun each process takes the GPU of its LOCAL_RANK (nccl), on the
    # CPU the processes talk over gloo.
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        unknown = [t for t in self.data.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
        if self.rl.estimator not in ESTIMATORS:
            raise ValueError(f"rl.estimator must be one of {', '.join(ESTIMATORS)}, not {self.rl.estimator!r}")
        if self.data.phrasings not in PHRASINGS:
            raise ValueError(f"data.phrasings must be one of {', '.join(PHRASINGS)}, not {self.data.phrasings!r}")
        check_parallel(self.parallel)
        check_device_choice(self.device)
        if self.rl.kl != 0:
            raise ValueError("rl.kl: only 0 is implemented (the paper's setting)")
        if not 0 <= self.rl.filter_low <= self.rl.filter_high <= self.rl.filter_samples:
            raise ValueError("rl needs 0 <= filter_low <= filter_high <= filter_samples")
        known = ("data", "evaluate_before", "distill", "rl", "dpo", "evaluate_after")
        bad = [s for s in self.stages if s not in known]
        if bad:
            raise ValueError(f"unknown stage {bad[0]!r}; stages are {', '.join(known)}")

    def check_world_size(self, processes: int) -> None:
        """Every rank takes a share of each global batch, so a batch smaller than the number of processes
        would leave a rank with nothing to train on: refuse it before any model loads."""
        batches = {"distill": ("sft.batch_size", self.sft.batch_size),
                   "rl": ("rl.prompts_per_step x rl.group_size", self.rl.prompts_per_step * self.rl.group_size),
                   "dpo": ("dpo.batch_size", self.dpo.batch_size)}
        for stage, (name, size) in batches.items():
            if stage in self.stages and size < processes:
                raise ValueError(f"{name} is {size}, below the {processes} processes: each needs a share of "
                                 f"every batch")


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in values.items():
        kind = hints[key]
        if is_dataclass(kind):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{key} must be a table of settings")
            value = _build(kind, value, f"{where}.{key}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> MGRDConfig:
    """A run's config from .toml, .yaml/.yml or .json; `out` defaults to the file's folder name + "-run"."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10: the same parser, as the tomli package (the train extra)
            import tomli as tomllib

        values = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    elif path.suffix == ".json":
        values = json.loads(text)
    else:
        raise ValueError(f"{path}: a config is .toml, .yaml, .yml or .json")
    values.update(overrides or {})
    if "out" not in values:
        raise ValueError(f"{path}: set out = \"<run folder>\"")
    out = Path(values["out"])
    values["out"] = out if out.is_absolute() else path.parent / out
    return _build(MGRDConfig, values, path.name)
