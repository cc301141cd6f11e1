"""Read a GGUF file (v2/v3): metadata, tensor directory, and tensors dequantised to float32.

Our own small reader, so assembly needs neither the `gguf` package nor llama.cpp; it is tested
against `gguf`'s reader and dequantiser. Packages may split the file at raw byte offsets: pass the
parts in order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .ggml_quants import BLOCK, TYPE_IDS, dequantize

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# GGUF metadata value types -> struct format (8 string, 9 array are handled apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """Not a GGUF file we can read."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order (ggml lists the fastest-varying dimension first)
    kind: str               # "F32", "Q5_0", ...
    offset: int             # absolute byte offset in the file
    nbytes: int


class _Cursor:
    def __init__(self, data: memoryview):
        self.data, self.pos = data, 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise GGUFFormatError(f"file is truncated at offset {self.pos} (wanted {n} bytes)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))
        return value

    def string(self) -> str:
        return bytes(self.take(self.unpack("Q"))).decode("utf-8")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("I"), self.unpack("Q")
            if etype in _SCALARS and etype != 7:
                fmt = np.dtype("<" + _SCALARS[etype])
                return np.frombuffer(self.take(count * fmt.itemsize), dtype=fmt).tolist()
            return [self.value(etype) for _ in range(count)]
        raise GGUFFormatError(f"unknown metadata value type {vtype} at offset {self.pos}")


class GGUFFile:
    """A parsed GGUF held in memory: `metadata`, `tensors` (name -> TensorInfo), `tensor(name)`."""

    def __init__(self, data: bytes):
        self._data = memoryview(data)
        cur = _Cursor(self._data)
        if bytes(cur.take(4)) != MAGIC:
            raise GGUFFormatError("not a GGUF file (bad magic)")
        self.version = cur.unpack("I")
        if self.version not in (2, 3):
            raise GGUFFormatError(f"GGUF version {self.version} is not supported (2 or 3)")
        n_tensors, n_kv = cur.unpack("Q"), cur.unpack("Q")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            self.metadata[key] = cur.value(cur.unpack("I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            dims = [cur.unpack("Q") for _ in range(cur.unpack("I"))]
            type_id, offset = cur.unpack("I"), cur.unpack("Q")
            if type_id not in TYPE_IDS:
                raise GGUFFormatError(f"tensor {name!r} has unsupported ggml type id {type_id}")
            infos.append((name, tuple(reversed(dims)), TYPE_IDS[type_id], offset))
        align = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        self.data_start = -(-cur.pos // align) * align
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, kind, offset in infos:
            start = self.data_start + offset
            nbytes = _nbytes(shape, kind)
            if start + nbytes > len(self._data):
                raise GGUFFormatError(f"tensor {name!r} runs past the end of the file")
            self.tensors[name] = TensorInfo(name, shape, kind, start, nbytes)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's stored bytes (uint8), without copying."""
        info = self.tensors[name]
        return np.frombuffer(self._data[info.offset:info.offset + info.nbytes], dtype=np.uint8)

    def tensor(self, name: str) -> np.ndarray:
        """Dequantised float32 array in torch order."""
        if name not in self.tensors:
            raise KeyError(f"GGUF has no tensor {name!r}")
        info = self.tensors[name]
        return dequantize(self.raw(name), info.kind).reshape(info.shape)


def _nbytes(shape: tuple[int, ...], kind: str) -> int:
    n = int(np.prod(shape, dtype=np.int64))
    if kind in ("F32", "F16"):
        return n * (4 if kind == "F32" else 2)
    per_block, block_bytes = BLOCK[kind]
    if shape[-1] % per_block:
        raise GGUFFormatError(f"row length {shape[-1]} is not a multiple of the {kind} block ({per_block})")
    return n // per_block * block_bytes


def read_gguf(parts: Path | str | list[Path] | list[str]) -> GGUFFile:
    """Read a GGUF file, or its parts in order, into memory."""
    paths = [parts] if isinstance(parts, (str, Path)) else list(parts)
    return GGUFFile(b"".join(Path(p).read_bytes() for p in paths))
