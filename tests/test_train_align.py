"""The align training loop on a tiny model: it learns, it resumes exactly, and its delta assembles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from stepaudio.default_model.assemble import DELTA_FORMAT, Assembly, apply_delta, read_delta
from stepaudio.model.tiny import random_state_dict, tiny_config
from stepaudio.text.tiny_tokenizer import build_tiny_tokenizer
from stepaudio.text.tokenizer import StepTokenizer
from stepaudio.train.align import AlignConfig, run_steps
from stepaudio.train.examples import Example, sound_example
from stepaudio.train.sounds import count_item


class FixedSampler:
    """Always the same two examples (one typed, one with audio), so the loss can only fall by learning them."""

    def __init__(self):
        self.examples = [Example("text", [{"role": "user", "content": "What is two plus two?"}], [],
                                 "The user asks about two plus two.\n</think>\n\nFour."),
                         sound_example(count_item(np.random.default_rng(0), n=3))]

    def sample(self, rng: np.random.Generator, listening_drill: bool = False) -> Example:
        return self.examples[int(rng.integers(2))]


def _assembly() -> Assembly:
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(-(-tokenizer.get_vocab_size(with_added_tokens=True) // 64) * 64, n_mels=80)
    state = random_state_dict(config, seed=0)
    # The random head (std 0.02) after the final RMSNorm cannot move any logit by more than ~1, so no
    # training could lower the loss much; a larger head gives the LoRA something to learn.
    state["lm_head.weight"] *= 10
    return Assembly(config, state, tokenizer)


def _config(out: Path, steps: int, **kw) -> AlignConfig:
    assembly = _assembly()
    return AlignConfig(out=out, steps=steps, batch_size=2, warmup=1, lora_rank=2, lora_alpha=4.0,
                       adapter_hidden=assembly.config.audio.adapter_hidden, save_every=2, **kw)


def _run(cfg: AlignConfig) -> Path:
    assembly = _assembly()
    return run_steps(cfg, assembly, StepTokenizer(assembly.tokenizer), FixedSampler(), progress=False)


def test_loss_falls_and_the_log_records_every_step(tmp_path):
    _run(_config(tmp_path, steps=24, lr_adapter=3e-2, lr_lora=3e-2))
    log = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 25))
    first, last = np.mean([r["loss"] for r in log[:3]]), np.mean([r["loss"] for r in log[-3:]])
    assert last < first - 1.0, (first, last)  # without learning it stays near ln(vocab)
    assert {"loss_text", "loss_sound"} <= set().union(*log)


def test_resume_continues_exactly(tmp_path):
    straight = _run(_config(tmp_path / "a", steps=4))
    _run(_config(tmp_path / "b", steps=2))
    resumed = _run(_config(tmp_path / "b", steps=4))
    with safe_open(str(straight), "pt") as a, safe_open(str(resumed), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
    assert len((tmp_path / "b" / "loss.jsonl").read_text().splitlines()) == 4


def test_delta_holds_the_adaptor_and_lora_and_assembles(tmp_path):
    delta = _run(_config(tmp_path, steps=2))
    tensors, metadata = read_delta(delta)
    assert metadata["format"] == DELTA_FORMAT and metadata["lora_rank"] == "2"
    assert any(k.startswith("adapter.") for k in tensors)
    assert sum(k.endswith(".lora_A") for k in tensors) == 7 * 2
    assembly = _assembly()
    before = {k: v.clone() for k, v in assembly.state.items()}
    apply_delta(assembly, tensors, metadata)
    assert torch.equal(assembly.state["adapter.linear1.weight"], tensors["adapter.linear1.weight"].float())
    changed = [k for k in before if not torch.equal(before[k], assembly.state[k])]
    assert any(k.endswith("q_proj.weight") for k in changed) and not any(k.startswith("encoder.") for k in changed)


def test_ctc_warmup_teaches_the_adaptor_on_cached_features():
    from stepaudio.model.step_audio import StepAudioForCausalLM
    from stepaudio.train.ctc_warmup import ctc_warmup, make_clips
    from stepaudio.train.questions import word_drill

    assembly = _assembly()
    model = StepAudioForCausalLM(assembly.config)
    model.load_state_dict(assembly.state)
    model.requires_grad_(False)
    model.adapter.requires_grad_(True)
    clips = make_clips(model, StepTokenizer(assembly.tokenizer), word_drill, n=8, seed=0, progress=False)
    assert all(c.features.shape[1] == assembly.config.audio.n_audio_state and c.tokens for c in clips)
    before = {k: v.clone() for k, v in model.adapter.state_dict().items()}
    history = ctc_warmup(model, clips, epochs=15, batch=4, lr=3e-3, progress=False)
    assert history[-1] < 0.8 * history[0], history
    assert not torch.equal(before["linear2.weight"], model.adapter.linear2.weight)
    assert torch.equal(model.model.embed_tokens.weight, torch.as_tensor(assembly.state["model.embed_tokens.weight"]))


def test_a_run_can_start_from_an_earlier_delta(tmp_path):
    import pytest

    from stepaudio.train.align import AlignModel

    earlier = _run(_config(tmp_path / "a", steps=2, lr_lora=3e-2))
    tensors, _ = read_delta(earlier)
    aligner = AlignModel(_assembly(), _config(tmp_path / "b", steps=2, init_delta=earlier))
    started = aligner.delta()
    lora_keys = [k for k in tensors if ".lora_B" in k]
    assert lora_keys and all(torch.equal(started[k], tensors[k]) for k in lora_keys)
    assert any(tensors[k].abs().sum() > 0 for k in lora_keys)  # a fresh LoRA B is zero: this one was loaded
    with pytest.raises(ValueError, match="LoRA rank 2"):
        AlignModel(_assembly(), AlignConfig(out=tmp_path / "c", lora_rank=4, init_delta=earlier,
                                            adapter_hidden=_assembly().config.audio.adapter_hidden))


def test_encoder_lora_trains_the_top_blocks_and_assembles_into_them(tmp_path):
    """With encoder_lora_blocks=1 the last encoder block gets LoRA pairs that learn (gradients flow through
    the encoder) and merge into its weights at assembly; the blocks below and a run without it stay frozen."""
    assembly = _assembly()
    top = len(_blocks(assembly)) - 1
    delta = _run(_config(tmp_path, steps=4, lr_lora=3e-2, encoder_lora_blocks=1))
    tensors, metadata = read_delta(delta)
    encoder_pairs = sorted(k for k in tensors if k.startswith("encoder.") and k.endswith(".lora_A"))
    assert encoder_pairs and all(k.startswith(f"encoder.blocks.{top}.") for k in encoder_pairs)
    assert len(encoder_pairs) == 6  # query, key, value, out and the MLP's two linears
    assert any(tensors[k.replace("lora_A", "lora_B")].abs().sum() > 0 for k in encoder_pairs)
    before = {k: v.clone() for k, v in assembly.state.items()}
    apply_delta(assembly, tensors, metadata)
    changed = {k for k in before if not torch.equal(before[k], assembly.state[k]) and k.startswith("encoder.")}
    assert changed == {k.replace("lora_A", "weight") for k in encoder_pairs}


def test_encoder_lora_blocks_out_of_range_is_refused(tmp_path):
    import pytest

    from stepaudio.train.align import AlignModel

    with pytest.raises(ValueError, match="encoder_lora_blocks must be"):
        AlignModel(_assembly(), _config(tmp_path, steps=1, encoder_lora_blocks=len(_blocks(_assembly())) + 1))


def _blocks(assembly: Assembly) -> list[str]:
    return sorted({k.split(".")[2] for k in assembly.state if k.startswith("encoder.blocks.")})


def _spoken(words: str, seed: int, instruction: str | None = None) -> Example:
    """A clip (noise: the tiny model has no hearing to speak of) labelled with the words it stands for."""
    content = [{"type": "audio"}] + ([{"type": "text", "text": instruction}] if instruction else [])
    wav = np.random.default_rng(seed).normal(0, 0.1, 16000).astype(np.float32)
    return Example("speech", [{"role": "user", "content": content}], [wav],
                   f'The user asks: "{words}"\n</think>\n\nFour.', (words,))


def test_typed_twin_puts_the_words_where_the_audio_was():
    from stepaudio.train.examples import typed_twin

    twin = typed_twin(_spoken("What is two plus two?", 0))
    assert twin.messages == [{"role": "user", "content": "What is two plus two?"}] and twin.audio == []
    twin = typed_twin(_spoken("What is two plus two?", 0, instruction="Listen and answer."))
    assert twin.messages[0]["content"] == [{"type": "text", "text": "What is two plus two?"},
                                           {"type": "text", "text": "Listen and answer."}]
    assert typed_twin(sound_example(count_item(np.random.default_rng(0), n=3))) is None  # a sound has no words


def test_distillation_is_the_kl_from_each_twin_to_its_own_spoken_row(tmp_path):
    """Rows without a twin (a sound) are skipped, and each twin is matched with its own row."""
    from stepaudio.train.align import AlignModel, build_batch

    assembly = _assembly()
    aligner = AlignModel(assembly, _config(tmp_path, steps=1, kd_weight=1.0))
    tokenizer = StepTokenizer(assembly.tokenizer)
    examples = [sound_example(count_item(np.random.default_rng(0), n=3)), _spoken("What is two plus two?", 1),
                _spoken("Name a red fruit.", 2, instruction="Answer the question.")]
    batch = build_batch(tokenizer, examples, assembly.config.audio.n_mels, twins=True)
    assert batch.twin_rows == (1, 2) and len(batch.twin.kinds) == 2
    with torch.no_grad():
        logits, rows, _ = aligner.target_logits(batch)
        kd = aligner.distillation(batch, logits, rows)
        expected = []
        for row in (1, 2):
            alone = build_batch(tokenizer, [examples[row]], assembly.config.audio.n_mels, twins=True)
            student = aligner.target_logits(alone)[0].log_softmax(-1)
            teacher = aligner.target_logits(alone.twin)[0].log_softmax(-1)
            expected.append((teacher.exp() * (teacher - student)).sum(-1))
    assert float(kd) > 0
    torch.testing.assert_close(kd, torch.cat(expected).mean(), rtol=1e-4, atol=1e-5)


def test_training_with_distillation_pulls_the_spoken_rows_towards_their_twins(tmp_path):
    """With the LoRA still (lr 0) the teacher is fixed, as in frozen-decoder alignment: the adaptor alone
    learns to make the clips read like their words."""
    class SpokenSampler:
        examples = [_spoken("What is two plus two?", 1), _spoken("Name a red fruit.", 2)]

        def sample(self, rng: np.random.Generator, listening_drill: bool = False) -> Example:
            return self.examples[int(rng.integers(2))]

    assembly = _assembly()
    cfg = _config(tmp_path, steps=16, lr_adapter=3e-2, lr_lora=0.0, kd_weight=5.0)
    run_steps(cfg, assembly, StepTokenizer(assembly.tokenizer), SpokenSampler(), progress=False)
    log = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    kd = [r["loss_kd"] for r in log]
    assert np.mean(kd[-3:]) < 0.5 * np.mean(kd[:3]), kd
