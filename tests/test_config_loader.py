"""config.json layouts and checkpoint loading: sharded/single, dtypes, and clear failures."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from model_fixtures import tiny_dir, tiny_tied_dir  # noqa: F401  (fixtures)
from stepaudio.config import FORCED_EOS_TOKEN_IDS, ConfigError, load_config, parse_config
from stepaudio.model.loader import CheckpointError, load_model

NESTED = {
    "architectures": ["StepAudio2ForCausalLM"], "model_type": "step_audio_2", "torch_dtype": "bfloat16",
    "audio_encoder_config": {"n_mels": 128, "n_audio_ctx": 1500, "n_audio_state": 1280, "n_audio_head": 20,
                             "n_audio_layer": 32, "llm_dim": 3584, "kernel_size": 3, "adapter_stride": 2},
    "text_config": {"vocab_size": 158720, "hidden_size": 3584, "intermediate_size": 18944,
                    "num_hidden_layers": 28, "num_attention_heads": 28, "num_attention_groups": 4,
                    "max_position_embeddings": 16384, "rope_theta": 1000000.0, "eos_token_id": [151643]},
}


def test_nested_mini_layout():
    cfg = parse_config(NESTED)
    assert cfg.text.num_key_value_heads == 4 and cfg.text.head_dim == 128
    assert cfg.text.hidden_act == "silu" and cfg.text.rms_norm_eps == 1e-6
    assert cfg.audio.n_audio_state == 1280 and cfg.audio.adapter_hidden == 2048
    assert cfg.eos_token_ids == [151643, 151645, 151665]


def test_flat_32b_layout():
    flat = {"architectures": ["StepAudio2ForCausalLM"], "model_type": "step_audio_qwen2", "torch_dtype": "bfloat16",
            "vocab_size": 158720, "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
            "num_attention_heads": 40, "num_key_value_heads": 8, "max_position_embeddings": 65536,
            "rms_norm_eps": 1e-5, "rope_theta": 1e6, "tie_word_embeddings": False,
            "audio_encoder_config": {**NESTED["audio_encoder_config"], "llm_dim": 5120}}
    cfg = parse_config(flat)
    assert (cfg.text.hidden_size, cfg.text.num_key_value_heads, cfg.text.rms_norm_eps) == (5120, 8, 1e-5)
    assert cfg.text.hidden_act == "silu"  # the 32B config has no hidden_act
    assert set(FORCED_EOS_TOKEN_IDS) <= set(cfg.eos_token_ids)
    qwen2 = cfg.text.to_qwen2_dict()
    assert qwen2["num_key_value_heads"] == 8 and qwen2["architectures"] == ["Qwen2ForCausalLM"]


@pytest.mark.parametrize("change,message", [
    (lambda c: c["audio_encoder_config"].update(llm_dim=5120), "llm_dim"),
    (lambda c: c["text_config"].update(num_key_value_heads=8), "num_attention_groups"),
    (lambda c: c.pop("audio_encoder_config"), "audio_encoder_config"),
    (lambda c: c.update(torch_dtype="int8"), "torch_dtype"),
    (lambda c: c["text_config"].update(rope_scaling={"type": "yarn"}), "rope_scaling"),
])
def test_bad_configs_name_the_problem(change, message):
    cfg = json.loads(json.dumps(NESTED))
    change(cfg)
    with pytest.raises(ConfigError, match=message):
        parse_config(cfg)


def test_config_round_trips_through_json(tiny_dir):
    cfg = load_config(tiny_dir)
    assert parse_config(json.loads(json.dumps(cfg.to_json_dict()))) == cfg


def test_sharded_and_single_file_load_the_same_tensors(tiny_dir, tmp_path):
    sharded = load_model(tiny_dir, dtype="float32")
    single = tmp_path / "single"
    shutil.copytree(tiny_dir, single)
    merged = {}
    for f in sorted(single.glob("model-*.safetensors")):
        merged.update(load_file(f))
        f.unlink()
    (single / "model.safetensors.index.json").unlink()
    save_file(merged, single / "model.safetensors")
    one = load_model(single, dtype="float32")
    for (name, a), (_, b) in zip(sharded.state_dict().items(), one.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("dtype,expected", [(None, torch.float32), ("bfloat16", torch.bfloat16),
                                            ("float16", torch.float16)])
def test_dtype_choice(tiny_dir, dtype, expected):
    model = load_model(tiny_dir, dtype=dtype)  # None: the checkpoint's torch_dtype (float32 here)
    assert {p.dtype for p in model.parameters()} == {expected}
    assert not any(p.is_meta for p in model.parameters())


def test_tied_head_shares_the_embedding(tiny_tied_dir):
    model = load_model(tiny_tied_dir)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def _copy_with(tiny_dir, tmp_path, edit):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    shard = bad / "model-00002-of-00002.safetensors"
    tensors = load_file(shard)
    edit(tensors)
    save_file(tensors, shard)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard.name}
    index["weight_map"].update({k: shard.name for k in tensors})
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    return bad


def test_missing_and_unexpected_tensors_are_listed(tiny_dir, tmp_path):
    def edit(t):
        t.pop("lm_head.weight")
        t["model.extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"missing tensors \['lm_head.weight'\].*unexpected tensors "
                                              r"\['model.extra.weight'\]"):
        load_model(_copy_with(tiny_dir, tmp_path, edit))


def test_wrong_shape_is_named(tiny_dir, tmp_path):
    bad = _copy_with(tiny_dir, tmp_path, lambda t: t.update({"lm_head.weight": torch.zeros(3, 3)}))
    with pytest.raises(CheckpointError, match="lm_head.weight has shape"):
        load_model(bad)


def test_missing_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(NESTED))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(tmp_path)
