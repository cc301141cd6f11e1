"""`stepaudio train align`: train the adaptor and decoder LoRA on synthesised think-format examples.

The encoder and the decoder weights stay frozen (the decoder in bf16 where oneDNN has bf16 kernels, else
in fp32: without them a bf16 matrix product measured 6x slower than fp32); the adaptor and the LoRA pairs
train in fp32, under bf16 autocast when the decoder is bf16. The decoder stage runs on `device` (the CPU by
default, as the recipe was measured; a GPU where asked, in bf16 there under "auto"). Loss is on the target
tokens only, and logits are computed only there (the 151936-row head is the largest single matrix). State
is saved every `save_every` steps and a rerun resumes from it with the same data stream (each step's data
is seeded by the step number).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from ..default_model.assemble import ADAPTER_HIDDEN, DELTA_FORMAT, Assembly, load_base, read_delta, write_assembly
from ..inputs import PreparedPrompt, prepare_chat
from ..model.lora import attach_lora, lora_tensors
from ..model.step_audio import StepAudioForCausalLM
from ..text.tokenizer import StepTokenizer
from .ctc_warmup import ctc_warmup, make_clips
from .device import training_device
from .examples import Example, ExampleSampler, common_words, training_questions, typed_twin
from .generated import load_or_generate
from .targets import load_or_distil
from .training_state import resume_training_state, save_training_state


@dataclass
class AlignConfig:
    out: Path
    steps: int = 600
    # First steps: transcription of mostly random word lists only. A small fixed question set lets the
    # LoRA learn to guess a likely training question instead of listening; word lists cannot be guessed.
    listening_drill_steps: int = 50
    # Before all that, the adaptor alone learns to point its rows at the spoken tokens' embeddings (CTC on
    # cached encoder features; see ctc_warmup.py). 0 clips skips it.
    ctc_clips: int = 3000
    ctc_epochs: int = 8
    # Decoder-written questions (answers self-distilled) and sentences: thousands of distinct texts, so
    # no small question set can be recalled instead of listened to (see generated.py).
    generated_questions: int = 1000
    generated_sentences: int = 1200
    arithmetic_questions: int = 300
    batch_size: int = 8
    lr_adapter: float = 1e-3
    lr_lora: float = 4e-4
    warmup: int = 30
    lora_rank: int = 8
    lora_alpha: float = 16.0
    # LoRA pairs (same rank) on the top N Whisper encoder blocks too: the one lever that moved held-out
    # reading in the CTC proxy (docs/DEFAULT_MODEL.md). 0: the encoder stays frozen.
    encoder_lora_blocks: int = 0
    # Weight of a distillation term: KL from the model reading the typed twin (every spoken part replaced by
    # its words; no grad) to the model hearing the audio, at every target token of the spoken examples. The
    # teacher is the decoder with its current LoRA: its typed behaviour is what spoken input should match.
    # 0: cross-entropy on the targets only.
    kd_weight: float = 0.0
    adapter_hidden: int = ADAPTER_HIDDEN
    # Start from an earlier delta (its adaptor before the CTC warm-up, its LoRA pairs before the decoder
    # stage) instead of from scratch: a longer recipe can build on a committed model.
    init_delta: Path | None = None
    seed: int = 0
    # "auto": bf16 where the CPU has oneDNN bf16 kernels (or on a GPU with bf16), else fp32; or "bfloat16" /
    # "float32".
    decoder_dtype: str = "auto"
    # Where the decoder stage trains: "cpu" (the recipe as measured: the teacher and the CTC warm-up run on the
    # CPU too), "cuda", or "auto" (CUDA when torch sees a GPU). See train/device.py.
    device: str = "cpu"
    save_every: int = 25
    threads: int | None = None


@dataclass
class Batch:
    input_ids: torch.Tensor       # [B, T]
    labels: torch.Tensor          # [B, T], -100 off target
    audio_rows: torch.Tensor      # [B, T] bool
    mels: list[torch.Tensor]      # in row-major order of the audio rows
    kinds: list[str]
    # For distillation: the typed twins of the rows that have one (`twin_rows`, ascending), as a batch.
    twin: Batch | None = None
    twin_rows: tuple[int, ...] = ()

    def to(self, device: torch.device) -> Batch:
        """The same batch with every tensor on `device` (batches are built on the CPU; a twin moves when
        it is read)."""
        return replace(self, input_ids=self.input_ids.to(device), labels=self.labels.to(device),
                       audio_rows=self.audio_rows.to(device), mels=[m.to(device) for m in self.mels])


def build_batch(tokenizer: StepTokenizer, examples: list[Example], n_mels: int, twins: bool = False) -> Batch:
    """The examples as one batch; with `twins`, also the typed twins of those that have one."""
    prompts = [prepare_chat(tokenizer, ex.messages, ex.audio, n_mels=n_mels) for ex in examples]
    targets = [tokenizer.encode(ex.target) + [tokenizer.eot_id] for ex in examples]
    batch = batch_from_ids(tokenizer, prompts, targets, [ex.kind for ex in examples])
    twin_of = {row: twin for row, twin in enumerate(map(typed_twin, examples)) if twins and twin is not None}
    if twin_of:
        batch.twin = build_batch(tokenizer, list(twin_of.values()), n_mels)
        batch.twin_rows = tuple(twin_of)
    return batch


def batch_from_ids(tokenizer: StepTokenizer, prompts: list[PreparedPrompt], targets: list[list[int]],
                   kinds: list[str]) -> Batch:
    """Prompts and target token ids (e.g. sampled ones, exactly as sampled) as one right-padded batch."""
    rows, labels, mels = [], [], []
    for prompt, target in zip(prompts, targets):
        rows.append(prompt.token_ids + target)
        labels.append([-100] * len(prompt.token_ids) + target)
        mels += prompt.mels
    width = max(len(r) for r in rows)
    pad = tokenizer.eos_token_ids[0]
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    lab = torch.tensor([lb + [-100] * (width - len(lb)) for lb in labels])
    return Batch(ids, lab, ids == tokenizer.audio_patch_id, mels, kinds)


def decoder_dtype(choice: str, device: torch.device = torch.device("cpu")) -> torch.dtype:
    """The frozen decoder's dtype for `AlignConfig.decoder_dtype` on `device`."""
    if choice == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    if choice not in ("bfloat16", "float32"):
        raise ValueError(f"decoder_dtype must be auto, bfloat16 or float32, not {choice!r}")
    return getattr(torch, choice)


class AlignModel:
    """The model with a frozen decoder (bf16 or fp32), fp32 trainable adaptor and LoRA pairs, all on `device`."""

    def __init__(self, assembly: Assembly, cfg: AlignConfig, device: torch.device = torch.device("cpu")):
        model = StepAudioForCausalLM(assembly.config)
        model.load_state_dict(assembly.state, strict=True)
        model.requires_grad_(False)
        self.device = device
        self.dtype = decoder_dtype(cfg.decoder_dtype, device)
        model.model.to(self.dtype)
        model.lm_head.to(self.dtype)
        model.to(device)  # before the LoRA pairs: each is made on the device of the layer it wraps
        model.adapter.requires_grad_(True)
        self.lora = attach_lora(model, cfg.lora_rank, cfg.lora_alpha)
        self.lora.update(attach_encoder_lora(model, cfg))
        if cfg.init_delta is not None:
            pairs = {k: v.float() for k, v in read_delta_checked(cfg).items() if ".lora_" in k}
            unknown = model.load_state_dict(pairs, strict=False).unexpected_keys
            if unknown:
                raise ValueError(f"{cfg.init_delta} has LoRA pairs this model lacks, e.g. {unknown[0]}")
        self.model = model
        self.cfg = cfg

    def parameter_groups(self) -> list[dict]:
        lora = [p for m in self.lora.values() for p in (m.lora_A, m.lora_B)]
        return [{"params": list(self.model.adapter.parameters()), "lr": self.cfg.lr_adapter},
                {"params": lora, "lr": self.cfg.lr_lora}]

    def target_logprobs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probability of every target token [N], its row in the batch [N]): what every objective
        (SFT, policy gradient, DPO) is built from, on the model's device."""
        logits, row_of_token, targets = self.target_logits(batch)
        return -F.cross_entropy(logits, targets, reduction="none"), row_of_token

    def target_logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fp32 logits predicting every target token [N, V], its row [N], the token [N]), in row-major
        order, on the model's device. Logits are computed only at the targets."""
        model = self.model
        batch = batch.to(self.device)
        audio = None
        if batch.mels:
            # No grad context of its own: a frozen encoder builds no graph anyway, an encoder with LoRA pairs
            # needs one, and a caller's torch.no_grad() (scoring, rollouts) still holds.
            feats = [model.encode_features(m) for m in batch.mels]
            audio = torch.cat([model.adapt(f, n) for f, n in feats])
        positions = torch.arange(batch.input_ids.shape[1], device=self.device)[None].expand_as(batch.input_ids)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            hidden = model(batch.input_ids, positions, audio, batch.audio_rows if audio is not None else None)
        targets = batch.labels[:, 1:]
        mask = targets != -100
        logits = model.lm_head(hidden[:, :-1][mask].to(self.dtype)).float()
        return logits, torch.nonzero(mask)[:, 0], targets[mask]

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy on the target tokens (+ `kd_weight` x the distillation term); the mean loss per
        kind of example (and "kd") for the log."""
        logits, row_of_token, targets = self.target_logits(batch)
        per_token = F.cross_entropy(logits, targets, reduction="none")
        by_kind: dict[str, list[float]] = {}
        for row, kind in enumerate(batch.kinds):
            values = per_token[row_of_token == row]
            by_kind.setdefault(kind, []).append(float(values.detach().mean()))
        logged = {k: float(np.mean(v)) for k, v in by_kind.items()}
        loss = per_token.mean()
        if self.cfg.kd_weight > 0 and batch.twin is not None:
            kd = self.distillation(batch, logits, row_of_token)
            logged["kd"] = float(kd.detach())
            loss = loss + self.cfg.kd_weight * kd
        return loss, logged

    def distillation(self, batch: Batch, logits: torch.Tensor, row_of_token: torch.Tensor) -> torch.Tensor:
        """Mean KL(teacher || student) per target token of the rows with a typed twin: the teacher reads
        the twin (no grad), the student is `logits`. Both rows carry the same target tokens."""
        with torch.no_grad():
            teacher, _, _ = self.target_logits(batch.twin)
        student = logits[torch.isin(row_of_token, torch.tensor(batch.twin_rows, device=row_of_token.device))]
        if student.shape != teacher.shape:
            raise ValueError(f"typed twins have {teacher.shape[0]} target tokens, their spoken rows {student.shape[0]}")
        return F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True,
                        reduction="batchmean")

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a saved training state holds: the adaptor and the LoRA pairs, in fp32."""
        return {k: v for k, v in self.model.state_dict().items() if "adapter." in k or ".lora_" in k}

    def delta(self) -> dict[str, torch.Tensor]:
        """What is committed: the adaptor and the LoRA pairs, in bf16."""
        tensors = {f"adapter.{k}": v.detach() for k, v in self.model.adapter.state_dict().items()}
        tensors.update(lora_tensors(self.lora))
        return {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}

    def delta_metadata(self) -> dict[str, str]:
        return {"format": DELTA_FORMAT, "lora_rank": str(self.cfg.lora_rank), "lora_alpha": str(self.cfg.lora_alpha),
                "adapter_hidden": str(self.cfg.adapter_hidden)}


ENCODER_LORA_TARGETS = ("query", "key", "value", "out", "0", "2")  # attention, then the MLP's two linears


def attach_encoder_lora(model: StepAudioForCausalLM, cfg: AlignConfig) -> dict:
    """LoRA pairs on the top `cfg.encoder_lora_blocks` encoder blocks (fp32, like the encoder)."""
    n_blocks = len(model.encoder.blocks)
    if not 0 <= cfg.encoder_lora_blocks <= n_blocks:
        raise ValueError(f"encoder_lora_blocks must be 0..{n_blocks}, not {cfg.encoder_lora_blocks}")
    wrapped = {}
    for block in range(n_blocks - cfg.encoder_lora_blocks, n_blocks):
        wrapped.update(attach_lora(model, cfg.lora_rank, cfg.lora_alpha, ENCODER_LORA_TARGETS,
                                   under=f"encoder.blocks.{block}."))
    return wrapped


def read_delta_checked(cfg: AlignConfig) -> dict[str, torch.Tensor]:
    """`cfg.init_delta`'s tensors, refused when its LoRA rank or adaptor width differ from `cfg`'s."""
    tensors, metadata = read_delta(cfg.init_delta)
    if int(metadata["lora_rank"]) != cfg.lora_rank or int(metadata["adapter_hidden"]) != cfg.adapter_hidden:
        raise ValueError(f"{cfg.init_delta} has LoRA rank {metadata['lora_rank']} and adaptor width "
                         f"{metadata['adapter_hidden']}; this run uses {cfg.lora_rank} and {cfg.adapter_hidden}")
    return tensors


def lr_factor(step: int, cfg: AlignConfig) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))


def write_delta(aligner: AlignModel, path: Path) -> Path:
    save_file(aligner.delta(), str(path), metadata=aligner.delta_metadata())
    return path


def prepare_run(cfg: AlignConfig, progress: bool = True) -> tuple[Assembly, StepTokenizer, ExampleSampler]:
    """The base model, its tokenizer and the example sampler (distilling targets on the first run)."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "config.json").write_text(json.dumps({k: str(v) if isinstance(v, Path) else v
                                                     for k, v in asdict(cfg).items()}, indent=2) + "\n")
    assembly = load_base(progress, adapter_hidden=cfg.adapter_hidden, adapter_seed=cfg.seed)
    if cfg.init_delta is not None:
        assembly.state.update({k: v.float() for k, v in read_delta_checked(cfg).items() if k.startswith("adapter.")})
    base_dir = cfg.out / "base"
    if not (base_dir / "config.json").is_file():  # the distillation teacher: the decoder as it ships
        write_assembly(assembly, base_dir)
    teacher_llm = None

    def teacher():
        nonlocal teacher_llm
        if teacher_llm is None:
            from ..engine.llm import LLM
            # batched greedy generation is compute-bound: run it in the training dtype
            teacher_llm = LLM(base_dir, dtype=decoder_dtype(cfg.decoder_dtype))
        return teacher_llm

    tokenizer = StepTokenizer(assembly.tokenizer)
    vocabulary = common_words(tokenizer)
    texts = load_or_generate(cfg.out / "generated.json", teacher, vocabulary, cfg.generated_questions,
                             cfg.generated_sentences, cfg.seed, progress)
    questions = training_questions(cfg.seed, cfg.arithmetic_questions, texts["questions"])
    targets = load_or_distil(cfg.out / "targets.jsonl", teacher, questions, progress)
    sampler = ExampleSampler(questions, targets, vocabulary, texts["sentences"])
    if cfg.ctc_clips > 0:
        assembly.state.update(warm_adaptor(cfg, assembly, tokenizer, sampler, progress))
    return assembly, tokenizer, sampler


def warm_adaptor(cfg: AlignConfig, assembly: Assembly, tokenizer: StepTokenizer, sampler: ExampleSampler,
                 progress: bool = True) -> dict[str, torch.Tensor]:
    """The CTC-warmed adaptor (`adapter.*` tensors), computed once per run folder and cached there."""
    path = cfg.out / "ctc_adaptor.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = StepAudioForCausalLM(assembly.config)
    model.load_state_dict(assembly.state, strict=True)
    model.requires_grad_(False)
    model.adapter.requires_grad_(True)
    clips = make_clips(model, tokenizer, sampler.transcription_text, cfg.ctc_clips, cfg.seed, progress)
    history = ctc_warmup(model, clips, epochs=cfg.ctc_epochs, seed=cfg.seed, progress=progress)
    (cfg.out / "ctc_loss.json").write_text(json.dumps({"epoch_ctc_loss": history}) + "\n")
    state = {f"adapter.{k}": v.detach().clone() for k, v in model.adapter.state_dict().items()}
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)  # a run killed while saving leaves no half file to load next time
    return state


def run_steps(cfg: AlignConfig, assembly: Assembly, tokenizer: StepTokenizer, sampler, progress: bool = True) -> Path:
    """Train (or resume) up to `cfg.steps`; `sampler.sample(rng, listening_drill)` gives one Example.
    Returns the delta path."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    aligner = AlignModel(assembly, cfg, training_device(cfg.device))
    optimizer = torch.optim.AdamW(aligner.parameter_groups(), weight_decay=0.0)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    state_path, log_path = cfg.out / "state.pt", cfg.out / "loss.jsonl"
    start = resume_training_state(state_path, aligner.model, optimizer, log_path, cfg.steps)
    n_mels = aligner.model.config.audio.n_mels
    bar = tqdm(total=cfg.steps, initial=start, desc="train align", disable=not progress, file=sys.stderr)
    for step in range(start, cfg.steps):
        t0 = time.time()
        rng = np.random.default_rng([cfg.seed, step])
        drill = step < cfg.listening_drill_steps
        examples = [sampler.sample(rng, drill) for _ in range(cfg.batch_size)]
        batch = build_batch(tokenizer, examples, n_mels, twins=cfg.kd_weight > 0)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * lr_factor(step, cfg)
        loss, by_kind = aligner.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
        optimizer.step()
        record = {"step": step + 1, "loss": round(float(loss.detach()), 4),
                  **{f"loss_{k}": round(v, 4) for k, v in by_kind.items()},
                  "grad_norm": round(float(grad_norm), 3), "lr_factor": round(lr_factor(step, cfg), 4),
                  "tokens": int(batch.input_ids.numel()), "seconds": round(time.time() - t0, 2)}
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        bar.update()
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save_training_state(state_path, step + 1, aligner.trainable_state(), optimizer.state_dict())
            write_delta(aligner, cfg.out / "align_delta.safetensors")
    bar.close()
    return write_delta(aligner, cfg.out / "align_delta.safetensors")


def train_align(cfg: AlignConfig, progress: bool = True) -> Path:
    """`stepaudio train align`: prepare the run, then train or resume it."""
    assembly, tokenizer, sampler = prepare_run(cfg, progress)
    return run_steps(cfg, assembly, tokenizer, sampler, progress)
