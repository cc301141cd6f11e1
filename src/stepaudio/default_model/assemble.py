"""Assemble the default model from its pip packages into an official-format checkpoint, once, cached.

Parts: the Whisper-base encoder (CTranslate2), the Qwen2.5-0.5B-Instruct decoder (GGUF, dequantised), a
tokenizer with the Step tokens at their official ids, and this project's trained delta (adaptor + LoRA,
`weights/align_delta.safetensors`, produced by `stepaudio train align`). The result is a plain folder
(config.json, model.safetensors, tokenizer.json) loaded by the same code as the official checkpoints.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tokenizers import Tokenizer
from tqdm import tqdm

from ..config import AudioEncoderConfig, StepAudioConfig
from ..model.adaptor import Adaptor
from ..model.lora import merge_lora
from ..model.saver import save_checkpoint
from ..text.tokenizer import AUDIO_END, AUDIO_START, BOT, EOT
from .ct2 import read_ct2, whisper_encoder_config, whisper_encoder_state_dict
from .gguf_reader import read_gguf
from .packages import DEFAULT_MODEL_FILES, WHISPER_BASE_PARTS, PackageError, locate_all, verified_paths
from .qwen2_gguf import qwen2_state_dict, qwen2_text_config
from .tokenizer_build import build_tokenizer

# Bump when the assembly recipe changes, so caches built by an older recipe are not reused.
ASSEMBLY_VERSION = 1
DELTA_PATH = Path(__file__).parent / "weights" / "align_delta.safetensors"
DELTA_FORMAT = "stepaudio-align-delta-v1"
ADAPTER_HIDDEN = 1024
ADAPTER_OUTPUT_SCALE = 0.02
# Untrained Step rows start as the Qwen token with the same role (docs/DEFAULT_MODEL_ASSEMBLY.md §3).
SPECIAL_ROW_SOURCES = {EOT: "<|im_end|>", BOT: "<|im_start|>", AUDIO_START: "<|vision_start|>",
                       AUDIO_END: "<|vision_end|>"}
_ROW_MATRICES = ("model.embed_tokens.weight", "lm_head.weight")


@dataclass
class Assembly:
    """A default model in memory: fp32 tensors in checkpoint naming, its config and its tokenizer."""

    config: StepAudioConfig
    state: dict[str, torch.Tensor]
    tokenizer: Tokenizer


def _checked_package_paths(progress: bool) -> tuple[list[Path], list[Path]]:
    files = DEFAULT_MODEL_FILES
    locate_all(files)  # a missing package is reported before any hashing
    with tqdm(total=sum(f.size for f in files), unit="B", unit_scale=True, desc="checking weight packages",
              disable=not progress, file=sys.stderr) as bar:
        paths = verified_paths(files, bar.update)
    return paths[: len(WHISPER_BASE_PARTS)], paths[len(WHISPER_BASE_PARTS):]


def copy_special_rows(state: dict[str, torch.Tensor], tokenizer: Tokenizer) -> None:
    """Give each Step token the embedding and output rows of the Qwen token that plays its part."""
    for name, source in SPECIAL_ROW_SOURCES.items():
        dst, src = tokenizer.token_to_id(name), tokenizer.token_to_id(source)
        for key in _ROW_MATRICES:
            state[key][dst] = state[key][src]


def fresh_adaptor(audio: AudioEncoderConfig, seed: int) -> Adaptor:
    """A new adaptor whose output starts at the scale of Qwen2.5's token embeddings.

    With PyTorch's default init the audio rows come out about 50 times larger than text rows (measured on
    Whisper-base speech: 0.89 vs 0.017 RMS per dimension), and training spent its first hundred steps
    without the decoder hearing anything. Shrinking the last layer by ADAPTER_OUTPUT_SCALE fixes the start.
    """
    torch.manual_seed(seed)
    adaptor = Adaptor(audio)
    with torch.no_grad():
        adaptor.linear2.weight.mul_(ADAPTER_OUTPUT_SCALE)
        adaptor.linear2.bias.zero_()
    return adaptor


def load_base(progress: bool = True, adapter_hidden: int = ADAPTER_HIDDEN, adapter_seed: int = 0) -> Assembly:
    """The pretrained parts with a freshly initialised adaptor: what `train align` starts from."""
    whisper_parts, gguf_parts = _checked_package_paths(progress)
    steps = tqdm(total=3, desc="assembling default model", disable=not progress, file=sys.stderr)
    ct2 = read_ct2(whisper_parts)
    state = whisper_encoder_state_dict(ct2)
    steps.update()
    gguf = read_gguf(gguf_parts)
    text = qwen2_text_config(gguf)
    state.update(qwen2_state_dict(gguf))
    tokenizer = build_tokenizer(gguf)
    del gguf
    steps.update()
    audio = whisper_encoder_config(ct2, llm_dim=text.hidden_size, adapter_hidden=adapter_hidden)
    config = StepAudioConfig(audio=audio, text=text, torch_dtype="bfloat16")
    copy_special_rows(state, tokenizer)
    state.update({f"adapter.{k}": v for k, v in fresh_adaptor(audio, adapter_seed).state_dict().items()})
    steps.update()
    steps.close()
    return Assembly(config, state, tokenizer)


def read_delta(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if metadata.get("format") != DELTA_FORMAT:
        raise PackageError(f"{path} is not a {DELTA_FORMAT} file (format={metadata.get('format')!r})")
    return tensors, metadata


def apply_delta(assembly: Assembly, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Replace the adaptor and any stored rows, and merge the LoRA pairs into the weights they adapt (the
    decoder's, and the top encoder blocks' where `train align --encoder-lora-blocks` trained them)."""
    state = assembly.state
    for key, value in tensors.items():
        if key.startswith("adapter."):
            if key not in state or state[key].shape != value.shape:
                raise PackageError(f"delta tensor {key} {tuple(value.shape)} does not fit the assembled model")
            state[key] = value.float()
    lora = {k: v for k, v in tensors.items() if ".lora_" in k}
    if lora:
        merge_lora(state, lora, float(metadata["lora_alpha"]) / float(metadata["lora_rank"]))


def assemble(delta: Path | None = DELTA_PATH, progress: bool = True) -> Assembly:
    """Base parts plus the trained delta (if given): the default model, in memory, fp32."""
    if delta is None:
        return load_base(progress)
    if not delta.is_file():
        raise PackageError(f"trained delta {delta} not found; reinstall stepaudio or run `stepaudio train align`")
    tensors, metadata = read_delta(delta)
    assembly = load_base(progress, adapter_hidden=int(metadata.get("adapter_hidden", ADAPTER_HIDDEN)))
    apply_delta(assembly, tensors, metadata)
    return assembly


def _disk_full(error: BaseException) -> bool:
    """ENOSPC from Python, or from safetensors' Rust writer (a SafetensorError saying "os error 28")."""
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or f"(os error {errno.ENOSPC})" in str(error)


def write_folder_atomically(out_dir: Path, fill: Callable[[Path], None]) -> Path:
    """`fill` a temporary sibling folder, then rename it to `out_dir`: a partial folder is never left there,
    and when another process finished first, its folder is kept."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        fill(tmp)
        if out_dir.exists():
            shutil.rmtree(tmp)
        else:
            tmp.rename(out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(e):
            raise OSError(errno.ENOSPC, f"no space left in {out_dir.parent} to write {out_dir.name} (nothing was "
                                        "kept); free some space or set STEPAUDIO_CACHE_DIR to another disk") from e
        raise
    return out_dir


def write_assembly(assembly: Assembly, out_dir: Path, dtype: torch.dtype = torch.bfloat16,
                   provenance: dict | None = None) -> Path:
    """Write the checkpoint folder atomically (a partial folder is never left under `out_dir`)."""
    def fill(tmp: Path) -> None:
        state = {k: v.to(dtype) for k, v in assembly.state.items()}
        save_checkpoint(state, assembly.config, tmp)
        assembly.tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "stepaudio_assembly.json").write_text(json.dumps(provenance or {}, indent=2) + "\n")

    return write_folder_atomically(out_dir, fill)


def cache_root() -> Path:
    env = os.environ.get("STEPAUDIO_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stepaudio"


def _delta_digest(delta: Path | None) -> str:
    if delta is None:
        return "base"
    if not delta.is_file():
        raise PackageError(f"trained delta {delta} not found; reinstall stepaudio or run `stepaudio train align`")
    return hashlib.sha256(delta.read_bytes()).hexdigest()


def default_model_dir(delta: Path | None = DELTA_PATH) -> Path:
    """Where the default model is cached; the name changes with the recipe and the delta."""
    return cache_root() / f"default-model-v{ASSEMBLY_VERSION}-{_delta_digest(delta)[:12]}"


def ensure_default_model(progress: bool = True, delta: Path | None = DELTA_PATH) -> Path:
    """The cached default model folder, assembled first if it is not there yet (about half a minute).

    `delta=None` gives the untrained base (fresh adaptor, decoder as shipped), the "before" of the report.
    """
    out = default_model_dir(delta)
    if (out / "config.json").is_file():
        return out
    locate_all()  # without the default-model extra: one line saying so, before anything else
    if progress:
        print(f"stepaudio: assembling the default model into {out} (once)", file=sys.stderr)
    assembly = assemble(delta, progress)
    provenance = {"assembly_version": ASSEMBLY_VERSION, "delta_sha256": _delta_digest(delta),
                  "packages": [f.distribution for f in DEFAULT_MODEL_FILES]}
    return write_assembly(assembly, out, provenance=provenance)
