"""`stepaudio quantize SRC DST --scheme w8a16|w4a16 [--group-size N]`, and the `--quantization` flag the
commands that load a model share. Arguments are checked before the library or any weight is loaded."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_args import positive_int, require_path
from ..extras import MissingExtra, require_extra

SCHEMES = ("w8a16", "w4a16")  # stepaudio.quant.format.SCHEMES, without importing the library here


def quantization_scheme(text: str) -> str:
    """argparse type of --quantization / --scheme: a known scheme, and the library that implements it."""
    if text not in SCHEMES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(SCHEMES)}, got {text!r}")
    try:
        require_extra("quant", "quantization")
    except MissingExtra as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_quantization_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantization", type=quantization_scheme, metavar="{w8a16,w4a16}",
                   help="quantize the decoder's Linears while loading: w8a16 (int8 per channel) or w4a16 (int4, "
                        "groups of 128); a quantized checkpoint folder is read as it is (default: none)")


def add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="int8/int4 copy of a checkpoint (compressed-tensors)",
                       description="Quantize the decoder's Linears of a checkpoint shard by shard (bounded memory) "
                                   "into the compressed-tensors format vLLM and transformers read; encoder, adaptor "
                                   "and lm_head stay as they are. See docs/QUANTIZATION.md.")
    p.add_argument("src", type=Path, help="unquantized checkpoint folder")
    p.add_argument("dst", type=Path, help="new folder to write")
    p.add_argument("--scheme", type=quantization_scheme, default="w8a16", metavar="{w8a16,w4a16}",
                   help="w8a16: int8 weights; w4a16: int4 weights")
    p.add_argument("--group-size", type=positive_int,
                   help="input columns sharing one scale (default: w8a16 one scale per output channel, w4a16 128)")
    p.set_defaults(func=run_quantize)


def check_source(src: Path, dst: Path) -> None:
    """Everything that can be refused before any tensor is read, each with one line."""
    from ..model.loader import CheckpointError, checkpoint_files, is_quantized_checkpoint

    require_path(src, "checkpoint folder", folder=True)
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src} is not a checkpoint folder: it has no config.json")
    checkpoint_files(src)  # raises when there are no weights or shards are missing
    if is_quantized_checkpoint(src):
        raise CheckpointError(f"{src} is already quantized (its config.json has a quantization_config)")
    if dst.exists() and dst.resolve() == src.resolve():
        raise FileExistsError("the output folder must differ from the source")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst} already exists and is not an empty folder; give a new folder")


def run_quantize(args: argparse.Namespace) -> None:
    check_source(args.src, args.dst)
    from .quantize import quantize_checkpoint

    out = quantize_checkpoint(args.src, args.dst, args.scheme, args.group_size)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    before = sum(f.stat().st_size for f in args.src.glob("*.safetensors"))
    print(f"wrote {args.scheme} checkpoint to {out}: {size / 1e9:.2f} GB of weights (was {before / 1e9:.2f} GB)")
