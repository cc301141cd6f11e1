"""Read CTranslate2 `model.bin` files and turn a Whisper encoder into our AudioEncoder's parameters.

The Whisper-base weights we build on ship only in CTranslate2's format (docs/DEFAULT_MODEL_ASSEMBLY.md
§2), so we parse it ourselves rather than depend on ctranslate2. Format: binary version 6, all integers
little-endian; strings are a uint16 byte length (counting a trailing NUL) then the bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import AudioEncoderConfig

SUPPORTED_VERSION = 6
# CTranslate2 dtype ids; bfloat16 has no numpy dtype and is widened to float32 on read.
_DTYPES: dict[int, np.dtype] = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"),
                                3: np.dtype("<i4"), 4: np.dtype("<f2"), 5: np.dtype("<u2")}
_BFLOAT16 = 5


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 model we can read, or not the model we expected."""


@dataclass
class CT2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following aliases (e.g. a tied projection)."""
        name = self.aliases.get(name, name)
        if name not in self.variables:
            raise CT2FormatError(f"CTranslate2 model has no variable {name!r}")
        return self.variables[name]


class _Cursor:
    """Sequential little-endian reader over one buffer, with truncation reported as a format error."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise CT2FormatError(f"file is truncated: wanted {n} bytes at offset {self.pos}, "
                                 f"only {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (n,) = self.unpack("H")
        raw = bytes(self.take(n))
        return raw[:-1].decode() if raw.endswith(b"\0") else raw.decode()


def parse_ct2(data: bytes) -> CT2Model:
    """Parse the bytes of a whole model.bin (already concatenated when the package splits it)."""
    cur = _Cursor(data)
    (version,) = cur.unpack("I")
    if version != SUPPORTED_VERSION:
        raise CT2FormatError(f"CTranslate2 binary version {version} is not supported (expected {SUPPORTED_VERSION})")
    spec = cur.string()
    revision, count = cur.unpack("II")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = cur.string()
        (rank,) = cur.unpack("B")
        shape = cur.unpack(f"{rank}I") if rank else ()
        dtype_id, nbytes = cur.unpack("BI")
        if dtype_id not in _DTYPES:
            raise CT2FormatError(f"variable {name!r} has unknown dtype id {dtype_id}")
        array = np.frombuffer(cur.take(nbytes), dtype=_DTYPES[dtype_id])
        if array.size != int(np.prod(shape, dtype=np.int64)):
            raise CT2FormatError(f"variable {name!r}: {nbytes} bytes do not fit shape {shape}")
        if dtype_id == _BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array.reshape(shape)
    (n_aliases,) = cur.unpack("I")
    aliases = {}
    for _ in range(n_aliases):
        alias = cur.string()
        aliases[alias] = cur.string()
    if cur.pos != len(cur.data):
        raise CT2FormatError(f"{len(cur.data) - cur.pos} unexpected bytes after the aliases")
    return CT2Model(spec, revision, variables, aliases)


def read_ct2(parts: Path | str | list[Path] | list[str]) -> CT2Model:
    """Read a model.bin, or the parts of one in order (packages split it at raw byte offsets)."""
    paths = [parts] if isinstance(parts, (str, Path)) else list(parts)
    return parse_ct2(b"".join(Path(p).read_bytes() for p in paths))


def whisper_encoder_config(ct2: CT2Model, *, llm_dim: int, adapter_hidden: int = 2048) -> AudioEncoderConfig:
    """Encoder sizes from the tensor shapes; llm_dim and the adaptor width are ours to choose."""
    if ct2.spec != "WhisperSpec":
        raise CT2FormatError(f"expected a WhisperSpec model, got {ct2.spec!r}")
    d_model, n_mels, kernel = ct2.get("encoder/conv1/weight").shape
    n_ctx = ct2.get("encoder/position_encodings/encodings").shape[0]
    n_layers = sum(1 for n in ct2.variables if n.startswith("encoder/layer_") and n.endswith("ffn/linear_0/weight"))
    n_heads = int(ct2.get("encoder/num_heads"))
    ffn = ct2.get("encoder/layer_0/ffn/linear_0/weight").shape[0]
    if kernel != 3 or ffn != 4 * d_model:
        raise CT2FormatError(f"unexpected Whisper encoder shape (conv kernel {kernel}, ffn {ffn}, d {d_model})")
    return AudioEncoderConfig(n_mels=int(n_mels), n_audio_ctx=int(n_ctx), n_audio_state=int(d_model),
                              n_audio_head=n_heads, n_audio_layer=n_layers, llm_dim=llm_dim,
                              adapter_hidden=adapter_hidden)


# Per-layer CT2 names -> our names under encoder.blocks.{i}; the fused q/k/v projection is handled apart.
_LAYER_NAMES = {
    "self_attention/layer_norm/gamma": "attn_ln.weight", "self_attention/layer_norm/beta": "attn_ln.bias",
    "self_attention/linear_1/weight": "attn.out.weight", "self_attention/linear_1/bias": "attn.out.bias",
    "ffn/layer_norm/gamma": "mlp_ln.weight", "ffn/layer_norm/beta": "mlp_ln.bias",
    "ffn/linear_0/weight": "mlp.0.weight", "ffn/linear_0/bias": "mlp.0.bias",
    "ffn/linear_1/weight": "mlp.2.weight", "ffn/linear_1/bias": "mlp.2.bias",
}
_TOP_NAMES = {
    "encoder/conv1/weight": "encoder.conv1.weight", "encoder/conv1/bias": "encoder.conv1.bias",
    "encoder/conv2/weight": "encoder.conv2.weight", "encoder/conv2/bias": "encoder.conv2.bias",
    "encoder/position_encodings/encodings": "encoder.positional_embedding.weight",
    # Whisper's ln_post becomes the norm after the 2x pool, as Qwen2-Audio initialised it from Whisper.
    "encoder/layer_norm/gamma": "encoder.after_norm.weight", "encoder/layer_norm/beta": "encoder.after_norm.bias",
}


def whisper_encoder_state_dict(ct2: CT2Model, *, key_bias_atol: float = 0.0) -> dict[str, torch.Tensor]:
    """fp32 `encoder.*` tensors in checkpoint naming; Whisper's decoder is dropped.

    CTranslate2 fuses q, k and v into one projection with a bias for each. Our key has no bias (nor
    has Whisper's), so a non-zero key bias means the file is not what we think and is rejected.
    """
    cfg = whisper_encoder_config(ct2, llm_dim=1)
    d = cfg.n_audio_state

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(ct2.get(name), dtype=np.float32))

    out = {ours: tensor(theirs) for theirs, ours in _TOP_NAMES.items()}
    for i in range(cfg.n_audio_layer):
        src, dst = f"encoder/layer_{i}/", f"encoder.blocks.{i}."
        for theirs, ours in _LAYER_NAMES.items():
            out[dst + ours] = tensor(src + theirs)
        weight = tensor(src + "self_attention/linear_0/weight")
        bias = tensor(src + "self_attention/linear_0/bias")
        if weight.shape != (3 * d, d) or bias.shape != (3 * d,):
            raise CT2FormatError(f"layer {i}: fused qkv has shape {tuple(weight.shape)}, expected {(3 * d, d)}")
        key_bias = bias[d:2 * d].abs().max().item()
        if key_bias > key_bias_atol:
            raise CT2FormatError(f"layer {i}: key bias is not zero (max {key_bias:g}); our encoder has none")
        for j, part in enumerate(("query", "key", "value")):
            out[f"{dst}attn.{part}.weight"] = weight[j * d:(j + 1) * d].clone()
        out[f"{dst}attn.query.bias"] = bias[:d].clone()
        out[f"{dst}attn.value.bias"] = bias[2 * d:].clone()
    return out
