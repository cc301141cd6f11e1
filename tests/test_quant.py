"""Quantized checkpoints: written by the compressed-tensors library itself in each scheme, loaded into our
quantized Linears, checked against the library's own dequantisation in fp32; `stepaudio quantize` output
reloads against the same reference; the engine gives the same greedy tokens batched and alone; bad input
fails with one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("compressed_tensors")

from compressed_tensors.compressors import BaseCompressor, ModelCompressor  # noqa: E402
from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8  # noqa: E402
from compressed_tensors.quantization import (QuantizationConfig, apply_quantization_config,  # noqa: E402
                                             preset_name_to_scheme)
from compressed_tensors.quantization.lifecycle.forward import dequantize  # noqa: E402
from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam  # noqa: E402
from compressed_tensors.utils.match import match_named_modules  # noqa: E402

from stepaudio.engine.engine import EngineConfig, LLMEngine  # noqa: E402
from stepaudio.engine.sampling import SamplingParams  # noqa: E402
from stepaudio.inputs import prepare_chat  # noqa: E402
from stepaudio.model.loader import CheckpointError, checkpoint_files, load_model  # noqa: E402
from stepaudio.model.saver import save_checkpoint  # noqa: E402
from stepaudio.model.step_audio import StepAudioForCausalLM  # noqa: E402
from stepaudio.model.tiny import write_tiny_checkpoint  # noqa: E402
from stepaudio.pipeline import audio_question_messages  # noqa: E402
from stepaudio.quant.format import ignore_list, quantized_modules, read_quantization_config  # noqa: E402
from stepaudio.quant.linear import DequantLinear, Fp4Linear, Int4Linear, Int8Linear  # noqa: E402
from stepaudio.quant.quantize import quantize_checkpoint  # noqa: E402
from stepaudio.text.tokenizer import StepTokenizer  # noqa: E402

# Width 128 so that groups of 16 (NVFP4), 32 and 128 all divide every decoder Linear, and 16 | out_features.
HIDDEN = 128
# Logits are O(1); our kernels and the library's fp32 dequantisation differ only by summation order.
FP32_ATOL = 2e-4


@pytest.fixture(scope="module")
def src_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("quant_src"), hidden=HIDDEN, dtype="float32")


def _scheme(preset: str, group_size: int | None, strategy: str | None):
    scheme = preset_name_to_scheme(preset, ["Linear"])
    if strategy is not None:
        scheme.weights.strategy = strategy
        scheme.weights.group_size = group_size
    return scheme


def write_with_library(src: Path, out: Path, scheme) -> Path:
    """What llm-compressor does, with compressed-tensors alone: attach the scheme, set min-max scales (the
    library's qparams; a global scale for NVFP4), compress the model, save, and let the library write
    config.json's quantization_config."""
    model = load_model(src, dtype="float32")
    qconfig = QuantizationConfig(config_groups={"group_0": scheme}, ignore=ignore_list(model))
    apply_quantization_config(model, qconfig)
    for _, module in match_named_modules(model, scheme.targets, qconfig.ignore):
        args, w = module.quantization_scheme.weights, module.weight.data
        n, k = w.shape
        grouped = w.view(n, 1, k) if args.group_size is None or args.strategy == "channel" \
            else w.view(n, k // args.group_size, args.group_size)
        global_scale = None
        if hasattr(module, "weight_global_scale"):
            global_scale = generate_gparam(w.min(), w.max())
            module.weight_global_scale.data.copy_(global_scale)
        scale, _ = calculate_qparams(grouped.amin(-1), grouped.amax(-1), args, global_scale=global_scale)
        module.weight_scale.data.copy_(scale.view_as(module.weight_scale))
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    save_checkpoint(model.state_dict(), model.config, out, num_shards=2)
    shutil.copy(src / "tokenizer.json", out)
    compressor.update_config(str(out))
    return out


def reference_model(src: Path, qdir: Path) -> StepAudioForCausalLM:
    """The fp32 model whose quantized Linears hold the library's own dequantisation of qdir's tensors."""
    model = load_model(src, dtype="float32")
    qconfig = read_quantization_config(qdir)
    files = checkpoint_files(qdir)
    stored = {k: v for f in files for k, v in load_file(str(qdir / f)).items()}
    for name, (scheme, fmt) in quantized_modules(model, qconfig).items():
        local = {k.removeprefix(name + "."): v for k, v in stored.items() if k.startswith(name + ".")}
        if fmt == "nvfp4-pack-quantized":
            n, half = local["weight_packed"].shape
            values = unpack_fp4_from_uint8(local["weight_packed"], n, 2 * half, dtype=torch.float32)
            weight = dequantize(values, local["weight_scale"].float(), args=scheme.weights,
                                global_scale=local["weight_global_scale"], dtype=torch.float32)
        else:
            local["weight_scale"] = local["weight_scale"].float()
            weight = BaseCompressor.get_value_from_registry(fmt).decompress(local, scheme)["weight"]
        model.get_submodule(name).weight.data.copy_(weight)
    return model


def logits(model: StepAudioForCausalLM) -> torch.Tensor:
    ids = torch.tensor([[3, 17, 29, 41, 5, 8, 60, 2]])
    with torch.inference_mode():
        return model.compute_logits(model(ids, torch.arange(ids.shape[1])[None]))


CASES = {  # preset, group size / strategy override, the layer each decoder Linear must become
    "nvfp4a16": ("NVFP4A16", None, None, Fp4Linear),
    "nvfp4-w4a4-weight-only": ("NVFP4", None, None, Fp4Linear),
    "w4a16-group128": ("W4A16", 128, "group", Int4Linear),
    "w4a16-group32": ("W4A16", 32, "group", Int4Linear),
    "w4a16-channel": ("W4A16", None, "channel", Int4Linear),
    "w8a16-channel": ("W8A16", None, "channel", Int8Linear),
    "w8a16-group32": ("W8A16", 32, "group", DequantLinear),
}


@pytest.mark.parametrize("case", CASES)
def test_library_checkpoint_loads_and_matches_fp32_dequantised_reference(src_dir, tmp_path, case):
    preset, group, strategy, layer = CASES[case]
    qdir = write_with_library(src_dir, tmp_path / case, _scheme(preset, group, strategy))
    model = load_model(qdir, dtype="float32")
    kinds = {type(model.get_submodule(n)) for n in quantized_modules(reference_model(src_dir, qdir),
                                                                       read_quantization_config(qdir))}
    assert kinds == {layer}
    assert isinstance(model.lm_head, torch.nn.Linear) and isinstance(model.encoder.blocks[0].attn.query,
                                                                       torch.nn.Linear)
    torch.testing.assert_close(logits(model), logits(reference_model(src_dir, qdir)), atol=FP32_ATOL, rtol=0)


@pytest.mark.parametrize("scheme,group,layer", [("w8a16", None, Int8Linear), ("w4a16", 128, Int4Linear),
                                                ("w4a16", 32, Int4Linear)])
def test_quantize_output_reloads_against_the_library_reference(src_dir, tmp_path, scheme, group, layer):
    out = quantize_checkpoint(src_dir, tmp_path / "q", scheme, group, progress=False)
    assert (out / "tokenizer.json").is_file()
    qconfig = read_quantization_config(out)
    assert qconfig.config_groups["group_0"].weights.num_bits == (8 if scheme == "w8a16" else 4)
    assert "lm_head" in qconfig.ignore
    model = load_model(out, dtype="float32")
    assert isinstance(model.model.layers[0].mlp.down_proj, layer)
    torch.testing.assert_close(logits(model), logits(reference_model(src_dir, out)), atol=FP32_ATOL, rtol=0)
    # Quantizing at load time gives the same layers as quantizing on disk.
    if group in (None, 128):
        torch.testing.assert_close(logits(load_model(src_dir, dtype="float32", quantization=scheme)), logits(model),
                                   atol=0, rtol=0)
    # And the quantization error itself is what 8 or 4 bits allow, relative to the unquantized logits.
    full = logits(load_model(src_dir, dtype="float32"))
    error = (logits(model) - full).abs().max() / full.abs().max()
    assert error < (0.05 if scheme == "w8a16" else 0.4)


def test_quantized_model_same_greedy_tokens_batched_and_alone(src_dir):
    model = load_model(src_dir, dtype="float32", quantization="w4a16")
    tok = StepTokenizer.from_dir(src_dir)
    engine = LLMEngine(model, tok, EngineConfig(num_kv_blocks=128, block_size=8))
    prompts = [prepare_chat(tok, audio_question_messages("Q" + " more words" * i, 0), []) for i in range(3)]
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)

    def run(batch):
        for i, p in batch:
            engine.add_request(f"r{i}-{len(batch)}", p.token_ids, p.mels, params)
        out = {i: [] for i, _ in batch}
        while engine.has_unfinished_requests():
            for step in engine.step():
                out[int(step.request_id[1:].split("-")[0])] += [t for d in step.deltas for t in d.token_ids]
        return out

    together = run(list(enumerate(prompts)))
    alone = {i: run([(i, p)])[i] for i, p in enumerate(prompts)}
    assert together == alone and all(len(v) == 8 for v in together.values())


PROBE = """
import resource, sys
from stepaudio.quant.quantize import quantize_checkpoint
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
quantize_checkpoint(sys.argv[1], sys.argv[2], "w8a16", progress=False)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_quantize_memory_stays_near_one_shard(tmp_path):
    src = write_tiny_checkpoint(tmp_path / "mid", hidden=1024, layers=8, num_shards=4, dtype="bfloat16")
    total = sum((src / f).stat().st_size for f in checkpoint_files(src))
    out = subprocess.run([sys.executable, "-c", PROBE, str(src), str(tmp_path / "q")], capture_output=True,
                         text=True, check=True)
    peak_growth = int(out.stdout.split()[-1])
    assert total > 150e6
    # One source shard (a quarter) read plus its output shard plus one fp32 weight; holding the whole
    # model (dense or quantized) would be at least 0.75x.
    assert peak_growth < 0.6 * total, (peak_growth / 1e6, total / 1e6)


def test_bad_inputs_fail_with_one_clear_line(src_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown quantization scheme 'w3a16'"):
        quantize_checkpoint(src_dir, tmp_path / "a", "w3a16")
    with pytest.raises(ValueError, match="--group-size 48 does not divide"):
        quantize_checkpoint(src_dir, tmp_path / "b", "w4a16", 48)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        quantize_checkpoint(tmp_path / "empty", tmp_path / "c", "w8a16")
    out = quantize_checkpoint(src_dir, tmp_path / "q", "w4a16", progress=False)
    with pytest.raises(CheckpointError, match="already quantized"):
        load_model(out, quantization="w8a16")
    # A corrupt scale tensor: NaN, or the wrong shape.
    shard = next(iter(checkpoint_files(out)))
    tensors = load_file(str(out / shard))
    name = next(k for k in tensors if k.endswith("weight_scale"))
    for bad, message in [(torch.full_like(tensors[name], float("nan")), "non-finite"),
                         (tensors[name][:, :1].contiguous() if tensors[name].shape[1] > 1 else tensors[name][:1],
                          "has shape")]:
        broken = tmp_path / f"broken-{message}"
        shutil.copytree(out, broken)
        save_file({**tensors, name: bad}, str(broken / shard), metadata={"format": "pt"})
        with pytest.raises(CheckpointError, match=message):
            load_model(broken)
    # A quantization_config the library rejects.
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = "four"
    (tmp_path / "badcfg").mkdir()
    shutil.copytree(out, tmp_path / "badcfg" / "m")
    (tmp_path / "badcfg" / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not valid compressed-tensors"):
        load_model(tmp_path / "badcfg" / "m")


def test_quantize_command_and_its_errors(src_dir, tmp_path, capsys):
    from stepaudio.cli import main

    assert main(["quantize", str(src_dir), str(tmp_path / "q"), "--scheme", "w4a16", "--group-size", "64"]) == 0
    assert "wrote w4a16 checkpoint" in capsys.readouterr().out
    assert isinstance(load_model(tmp_path / "q").model.layers[1].self_attn.q_proj, Int4Linear)
    for argv, message in [(["--scheme", "w5a16"], "must be one of w8a16, w4a16"),
                          (["--group-size", "0"], "must be a whole number of at least 1")]:
        with pytest.raises(SystemExit) as exit_:
            main(["quantize", str(src_dir), str(tmp_path / "x")] + argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    for src, dst, message in [(tmp_path / "missing", tmp_path / "y", "does not exist"),
                              (tmp_path / "q", tmp_path / "y", "already quantized"),
                              (src_dir, tmp_path / "q", "not an empty folder"),
                              (src_dir, tmp_path / "y", "--group-size 48 does not divide")]:
        extra = ["--scheme", "w4a16", "--group-size", "48"] if "48" in message else []
        assert main(["quantize", str(src), str(dst)] + extra) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA kernels need a GPU")
@pytest.mark.parametrize("num_bits,groups", [(8, 1), (4, 4), (4, 1)])
def test_cuda_kernels_match_the_cpu_ones(num_bits, groups):
    from stepaudio.quant.linear import integer_linear

    gen = torch.Generator().manual_seed(0)
    limit = 2 ** (num_bits - 1)
    codes = torch.randint(-limit, limit, (64, 512), generator=gen, dtype=torch.int8)
    scales = torch.rand(64, groups, generator=gen) * 0.01 + 0.001
    x = torch.randn(5, 512, generator=gen).to(torch.bfloat16)
    cpu = integer_linear(codes, scales, num_bits, None, torch.bfloat16)
    cuda = integer_linear(codes.cuda(), scales.cuda(), num_bits, None, torch.bfloat16)
    assert type(cpu) is type(cuda)
    reference = x.float() @ (codes.float() * scales.repeat_interleave(512 // groups, 1)).T
    torch.testing.assert_close(cuda(x.cuda()).float().cpu(), reference, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(cpu(x).float(), reference, atol=2e-2, rtol=2e-2)
