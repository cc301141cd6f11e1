"""Dequantise the ggml block formats present in the default model's GGUF: Q8_0, Q5_0, Q4_K, Q6_K.

Vectorised numpy over whole tensors (all blocks at once); the result is exact in float32, because
each weight is a small integer times fp16 scales. Layouts follow ggml's block structs
(docs/DEFAULT_MODEL_ASSEMBLY.md §3).
"""

from __future__ import annotations

import numpy as np

# type id -> (weights per block, bytes per block), as ggml numbers them.
BLOCK = {"Q8_0": (32, 34), "Q5_0": (32, 22), "Q4_K": (256, 144), "Q6_K": (256, 210)}
TYPE_IDS = {0: "F32", 1: "F16", 6: "Q5_0", 8: "Q8_0", 12: "Q4_K", 14: "Q6_K"}


def _blocks(raw: np.ndarray, kind: str) -> np.ndarray:
    """View the bytes as [n_blocks, bytes_per_block] uint8."""
    size = BLOCK[kind][1]
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    if raw.size % size:
        raise ValueError(f"{raw.size} bytes is not a whole number of {kind} blocks of {size} bytes")
    return raw.reshape(-1, size)


def _f16(b: np.ndarray) -> np.ndarray:
    """[n, 2] uint8 little-endian halves -> [n, 1] float32."""
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def dequant_q8_0(raw: np.ndarray) -> np.ndarray:
    b = _blocks(raw, "Q8_0")
    return (_f16(b[:, :2]) * b[:, 2:].view(np.int8).astype(np.float32)).reshape(-1)


def dequant_q5_0(raw: np.ndarray) -> np.ndarray:
    """32 weights: fp16 d, 32 high bits (uint32), 16 bytes of low nibbles; w = d * (q - 16)."""
    b = _blocks(raw, "Q5_0")
    d = _f16(b[:, :2])
    high = np.ascontiguousarray(b[:, 2:6]).view("<u4")  # [n, 1]
    bits = (high >> np.arange(32, dtype=np.uint32)) & 1   # bit j is the 5th bit of weight j
    qs = b[:, 6:]
    low = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.uint32)  # weights 0..15, then 16..31
    q = (low | (bits << 4)).astype(np.float32) - 16.0
    return (d * q).reshape(-1)


def _k4_scales_mins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's 12 bytes -> eight 6-bit scales and eight 6-bit mins per block ([n, 8] each)."""
    s = s.astype(np.uint8)
    sc = np.empty((s.shape[0], 8), np.uint8)
    mn = np.empty((s.shape[0], 8), np.uint8)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc.astype(np.float32), mn.astype(np.float32)


def dequant_q4_k(raw: np.ndarray) -> np.ndarray:
    """256 weights in 8 sub-blocks of 32: w = d * scale_j * q - dmin * min_j, q a 4-bit nibble.

    Each 32 bytes of qs hold two sub-blocks: low nibbles first, then high nibbles.
    """
    b = _blocks(raw, "Q4_K")
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k4_scales_mins(b[:, 4:16])
    qs = b[:, 16:].reshape(-1, 4, 32)
    q = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32).astype(np.float32)
    return (d[:, :, None] * sc[:, :, None] * q - dmin[:, :, None] * mn[:, :, None]).reshape(-1)


def dequant_q6_k(raw: np.ndarray) -> np.ndarray:
    """256 weights: 128 bytes low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, fp16 d (last).

    Each half of 128 weights uses 64 low-nibble bytes and 32 high bytes; the four 32-weight groups of
    a half take (low nibble of ql[0:32], ql[32:64], high nibble of ql[0:32], ql[32:64]) and the
    2-bit fields 0..3 of qh[0:32]. Sixteen weights share a scale; w = d * scale * (q - 32).
    """
    b = _blocks(raw, "Q6_K")
    ql, qh = b[:, :128].reshape(-1, 2, 64), b[:, 128:192].reshape(-1, 2, 32)
    scales = b[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(b[:, 208:210])
    low = np.stack([ql[:, :, :32] & 0x0F, ql[:, :, 32:] & 0x0F, ql[:, :, :32] >> 4, ql[:, :, 32:] >> 4], axis=2)
    high = np.stack([(qh >> shift) & 3 for shift in (0, 2, 4, 6)], axis=2)
    q = (low | (high << 4)).astype(np.float32) - 32.0          # [n, 2 halves, 4 groups, 32]
    q = q.reshape(-1, 16, 16)                                   # 16 runs of 16 weights, in order
    return (d * (scales[:, :, None] * q).reshape(-1, 256)).reshape(-1)


def dequantize(raw: np.ndarray, kind: str) -> np.ndarray:
    """Flat float32 weights of one tensor's raw bytes (F32/F16 are just reinterpreted)."""
    if kind == "F32":
        return np.ascontiguousarray(raw).view("<f4").reshape(-1).astype(np.float32)
    if kind == "F16":
        return np.ascontiguousarray(raw).view("<f2").reshape(-1).astype(np.float32)
    funcs = {"Q8_0": dequant_q8_0, "Q5_0": dequant_q5_0, "Q4_K": dequant_q4_k, "Q6_K": dequant_q6_k}
    if kind not in funcs:
        raise ValueError(f"ggml type {kind} is not supported (supported: F32, F16, {', '.join(funcs)})")
    return funcs[kind](raw)
