"""`stepaudio quantize SRC DST`: an unquantized checkpoint -> a compressed-tensors one (w8a16 or w4a16).

Streams shard by shard: a source shard is read one tensor at a time and its output shard written before the
next is opened, so memory stays near one output shard plus one dense weight (a 67 GB checkpoint converts on
a 24 GB machine). The decoder's Linears are quantized with the library's scales and its pack-quantized
compressor; the encoder, adaptor, embeddings and lm_head are copied bit for bit. config.json gets the
library's quantization_config (what vLLM and transformers read); tokenizer, template and every other file
are copied.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from compressed_tensors.compressors import BaseCompressor, ModelCompressor
from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from ..config import load_config
from ..model.loader import INDEX_FILE, SINGLE_FILE, checkpoint_files
from ..model.step_audio import StepAudioForCausalLM
from .cli import check_source
from .format import check_group_size, ignore_list, is_decoder_linear, make_scheme, weight_scales


def quantize_checkpoint(src: str | Path, dst: str | Path, scheme_name: str, group_size: int | None = None,
                        progress: bool = True) -> Path:
    """Write the quantized copy of `src` to `dst`; returns dst."""
    src, dst = Path(src), Path(dst)
    scheme = make_scheme(scheme_name, group_size)
    check_source(src, dst)
    with torch.device("meta"):
        model = StepAudioForCausalLM(load_config(src))
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and is_decoder_linear(n)}
    check_group_size(scheme, [m.in_features for m in linears.values()])
    targets = {f"{n}.weight" for n in linears}
    compressor = BaseCompressor.get_value_from_registry(scheme.format)
    files = checkpoint_files(src)
    dst.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    total_size = 0
    bar = tqdm(total=sum(len(v) for v in files.values()), desc=f"quantizing to {scheme_name}", unit="tensor",
               disable=not progress)
    for fname, names in files.items():
        out: dict[str, torch.Tensor] = {}
        with safe_open(src / fname, framework="pt") as f:
            for name in names:
                tensor = f.get_tensor(name)
                if name in targets:
                    out.update(_compress(name, tensor, scheme, compressor))
                else:
                    out[name] = tensor
                bar.update()
        save_file(out, str(dst / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in out})
        total_size += sum(t.numel() * t.element_size() for t in out.values())
        del out
    bar.close()
    if fname != SINGLE_FILE or len(files) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
        (dst / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    _copy_other_files(src, dst, set(files))
    qconfig = QuantizationConfig(config_groups={"group_0": scheme}, format=scheme.format, ignore=ignore_list(model),
                                 quantization_status=QuantizationStatus.COMPRESSED)
    ModelCompressor(quantization_config=qconfig).update_config(str(dst))
    return dst


def _compress(name: str, weight: torch.Tensor, scheme, compressor) -> dict[str, torch.Tensor]:
    """One Linear's stored tensors, by the library's compressor (codes computed in fp32 against scales already
    rounded to the weight's dtype, which is how the scales are stored)."""
    scales = weight_scales(weight, scheme.weights, weight.dtype)
    local = compressor.compress({"weight": weight.float(), "weight_scale": scales.float()}, scheme)
    local["weight_scale"] = scales
    prefix = name.removesuffix("weight")
    return {prefix + k: v.contiguous() for k, v in local.items()}


def _copy_other_files(src: Path, dst: Path, shards: set[str]) -> None:
    """config.json, tokenizer, chat template and anything else that is not a weight shard."""
    for path in src.iterdir():
        if path.name in shards or path.name == INDEX_FILE:
            continue
        if path.is_dir():
            shutil.copytree(path, dst / path.name)
        else:
            shutil.copy2(path, dst / path.name)
