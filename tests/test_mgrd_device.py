"""Where MGRD (and train align's decoder stage) put the model and its batches: device resolution for auto, cpu
and cuda, with and without GPUs and under torchrun; a missing GPU refused in one line before anything loads;
the policy's weights, LoRA pairs and batches on its device (the meta device stands in for a second device on a
CPU machine); and, where there is a GPU, a tiny MGRD run on it."""

from __future__ import annotations

import json

import pytest
import torch

from mgrd_fixtures import tiny_assembly, tiny_config_for, tiny_policy
from stepaudio.cli import main
from stepaudio.train.align import AlignConfig, AlignModel, build_batch
from stepaudio.train.device import resolve_device
from stepaudio.train.examples import Example
from stepaudio.train.mgrd.config import load_config
from stepaudio.train.mgrd.objectives import sequence_logprobs
from stepaudio.train.mgrd.pipeline import run_mgrd
from stepaudio.train.mgrd.tasks import sound_items

CPU, META = torch.device("cpu"), torch.device("meta")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (MGRD's GPU path)")
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


@pytest.mark.parametrize("choice, gpus, local_rank, expected", [
    ("auto", 0, None, "cpu"), ("auto", 0, 1, "cpu"),  # torchrun on a CPU machine: every rank on the CPU (gloo)
    ("auto", 1, None, "cuda:0"), ("auto", 4, 3, "cuda:3"),  # torchrun: the GPU of each process's LOCAL_RANK
    ("cuda", 2, None, "cuda:0"), ("cuda", 2, 1, "cuda:1"),
    ("cpu", 0, None, "cpu"), ("cpu", 8, 5, "cpu"),  # the CPU when asked, GPUs or not
])
def test_device_resolution(choice, gpus, local_rank, expected):
    assert resolve_device(choice, gpus, local_rank) == torch.device(expected)


def test_device_resolution_refuses_a_missing_gpu_and_a_bad_choice():
    with pytest.raises(ValueError, match='device "cuda": torch sees no CUDA device here'):
        resolve_device("cuda", 0, None)
    for choice in ("auto", "cuda"):
        with pytest.raises(ValueError, match=r"LOCAL_RANK=2 needs a GPU of its own, but torch sees 2 here: start "
                                             r"at most 2 processes per node \(--nproc_per_node\)"):
            resolve_device(choice, 2, 2)
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda, not 'cuda:1'"):
        resolve_device("cuda:1", 2, None)


def test_config_device_setting(tmp_path):
    (tmp_path / "a.toml").write_text('out = "r"\n')
    assert load_config(tmp_path / "a.toml").device == "auto"
    (tmp_path / "b.toml").write_text('out = "r"\ndevice = "tpu"\n')
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda, not 'tpu'"):
        load_config(tmp_path / "b.toml")


@without_cuda
def test_cuda_without_a_gpu_is_refused_before_anything_loads(tmp_path, capsys):
    """`train mgrd --device cuda` and `train align --device cuda`: one line, and no run folder (nothing loaded)."""
    (tmp_path / "run.toml").write_text('out = "run"\n')
    with pytest.raises(SystemExit) as stop:
        main(["train", "mgrd", "--config", str(tmp_path / "run.toml"), "--device", "cuda", "--no-progress"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('stepaudio train mgrd: device "cuda": torch sees no CUDA device here')
    assert not (tmp_path / "run").exists()
    assert main(["train", "align", "--out", str(tmp_path / "align"), "--device", "cuda"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('stepaudio train: error: device "cuda": torch sees no CUDA device')
    assert not (tmp_path / "align").exists()


def _batch_examples() -> list[Example]:
    g = sound_items(0, ("count",), 1, False, "device")[0]
    messages, audio = g.messages(inline_audio=False)
    return [Example("count", messages, audio, f"{g.reference}\n</think>\n\n{g.reply}"),
            Example("text", [{"role": "user", "content": "What is two plus two?"}], [], "Four.")]


def test_weights_lora_pairs_and_batches_follow_the_device(tmp_path):
    """Built on the CPU, the model is moved before its LoRA pairs are attached, so every parameter and buffer
    (decoder, encoder and its LoRA pairs, adaptor) ends on the asked device; a batch moves whole."""
    cfg = AlignConfig(out=tmp_path, lora_rank=2, lora_alpha=4.0, decoder_dtype="float32", encoder_lora_blocks=1,
                      adapter_hidden=tiny_assembly().config.audio.adapter_hidden)
    aligner = AlignModel(tiny_assembly(), cfg, META)
    assert any(name.startswith("encoder.") for name in aligner.lora)
    tensors = dict(aligner.model.named_parameters()) | dict(aligner.model.named_buffers())
    assert {t.device for t in tensors.values()} == {META}
    assert all(p.device == META for group in aligner.parameter_groups() for p in group["params"])
    policy = tiny_policy(tmp_path / "cpu")  # the default stays the CPU
    assert policy.device == CPU and {p.device for p in policy.model.parameters()} == {CPU}
    batch = build_batch(policy.tokenizer, _batch_examples(), policy.config.audio.n_mels)
    assert batch.mels and all(t.device == CPU for t in (batch.input_ids, batch.labels, batch.audio_rows, *batch.mels))
    moved = batch.to(META)
    assert all(t.device == META for t in (moved.input_ids, moved.labels, moved.audio_rows, *moved.mels))
    assert moved.kinds == batch.kinds and [m.shape for m in moved.mels] == [m.shape for m in batch.mels]
    # the objectives build their tensors where the log-probs are
    logprobs, rows = torch.zeros(5, device=META), torch.zeros(5, dtype=torch.long, device=META)
    assert sequence_logprobs(logprobs, rows, 2).device == META


# ---------------------------------------------------------------- on a GPU

@needs_cuda
def test_a_tiny_policy_trains_resumes_and_samples_on_cuda(tmp_path):
    from stepaudio.engine.sampling import SamplingParams
    from stepaudio.train.mgrd.policy import merge_in_place
    from stepaudio.train.mgrd.stages import sft

    cuda = torch.device("cuda", 0)
    cfg = tiny_config_for(tmp_path / "cfg")
    policy = tiny_policy(tmp_path / "run", lr_adapter=1e-2, device=cuda)
    assert {p.device for p in policy.model.parameters()} == {cuda}
    before = policy.trainable_state()
    cfg.sft.steps = 2
    sft(policy, cfg, _batch_examples(), tmp_path / "run" / "sft", "sft", progress=False)
    policy = tiny_policy(tmp_path / "run", lr_adapter=1e-2, device=cuda)  # resumed from state.pt
    cfg.sft.steps = 3
    sft(policy, cfg, _batch_examples(), tmp_path / "run" / "sft", "sft", progress=False)
    after = policy.trainable_state()
    assert max(float((after[k] - before[k]).abs().max()) for k in after) > 1e-3
    saved = torch.load(tmp_path / "run" / "sft" / "state.pt", weights_only=True)  # no map_location: CPU tensors
    assert {t.device.type for t in saved["trainable"].values()} == {"cpu"} and saved["step"] == 3
    merge_in_place(policy, tmp_path / "run" / "merges" / "00-sft.pt")
    merged = torch.load(tmp_path / "run" / "merges" / "00-sft.pt", weights_only=True)
    assert {t.device.type for t in merged.values()} == {"cpu"}
    llm = policy.sampler(kv_cache_memory_gb=0.01)
    assert llm.model.device == cuda
    (result,) = llm.generate([llm.prepare(_batch_examples()[1].messages)], SamplingParams(max_tokens=4, seed=0))
    assert result.completions[0].token_ids


@needs_cuda
def test_every_mgrd_stage_runs_on_cuda(tmp_path):
    """device = "cuda": evaluation, distillation + SFT, GRPO rollouts and DPO on the GPU, decoder in bf16 (auto);
    a rerun redoes nothing."""
    cfg = tiny_config_for(tmp_path / "run", device="cuda", decoder_dtype="auto")
    run_mgrd(cfg, progress=False, assembly=tiny_assembly())
    out = tmp_path / "run"
    for folder in ("evaluate_before", "distill_round0", "rl_round0", "dpo", "evaluate_after"):
        assert (out / folder / "stats.json").is_file(), folder
    losses = [json.loads(line)["loss"] for line in (out / "distill_round0" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == cfg.sft.steps and all(abs(x) < 1e4 for x in losses)
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    run_mgrd(cfg, progress=False, assembly=tiny_assembly())
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())
