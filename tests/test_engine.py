"""Engine behaviour on a tiny checkpoint: batching, paging, preemption, caches, aborts, thinking control."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.engine.engine import EngineConfig, LLMEngine, RequestError
from stepaudio.engine.sampling import SamplingParams
from stepaudio.generation import generate_tokens
from stepaudio.inputs import prepare_chat
from stepaudio.model.loader import load_model
from stepaudio.pipeline import audio_question_messages
from stepaudio.text.tokenizer import StepTokenizer


def tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def parts(tiny_dir):
    return load_model(tiny_dir, dtype="float32"), StepTokenizer.from_dir(tiny_dir)


def make_engine(parts, **options) -> LLMEngine:
    model, tok = parts
    return LLMEngine(model, tok, EngineConfig(**{"num_kv_blocks": 256, "block_size": 8, **options}))


def prompts(tok, count: int):
    """Prompts with mixed audio and text lengths."""
    out = []
    for i in range(count):
        audio = [tone(0.4 + 0.37 * i, 200.0 + 90 * i)] if i % 3 else []
        out.append(prepare_chat(tok, audio_question_messages("Q" + " and more words" * (i % 4), len(audio)), audio))
    return out


def run(engine: LLMEngine, reqs, params: SamplingParams) -> dict[str, list[int]]:
    for i, p in enumerate(reqs):
        engine.add_request(f"r{i}", p.token_ids, p.mels, params)
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(len(reqs))}
    while engine.has_unfinished_requests():
        for out in engine.step():
            for d in out.deltas:
                tokens[out.request_id] += d.token_ids
    return tokens


def single(parts, prompt, n: int) -> list[int]:
    model, tok = parts
    embeds = model.encode_audio(prompt.mels)
    return list(generate_tokens(model, prompt.token_ids, audio_embeds=embeds, audio_patch_id=tok.audio_patch_id,
                                max_new_tokens=n))


GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def test_batched_greedy_equals_single_requests(parts):
    reqs = prompts(parts[1], 6)
    batched = run(make_engine(parts, max_num_seqs=4), reqs, GREEDY)
    for i, p in enumerate(reqs):
        assert batched[f"r{i}"] == single(parts, p, 12), i


def test_compiled_decode_step_gives_the_eager_tokens(parts, tiny_dir):
    # Batch sizes 1..4 and growing contexts: one dynamic graph must serve them all with the same results.
    reqs = prompts(parts[1], 5)
    eager = run(make_engine(parts, max_num_seqs=4), reqs, GREEDY)
    fresh = (load_model(tiny_dir, dtype="float32"), parts[1])
    assert run(make_engine(fresh, max_num_seqs=4, compile_decode=True), reqs, GREEDY) == eager


def test_preemption_under_a_tiny_kv_budget_keeps_greedy_tokens(parts):
    reqs = prompts(parts[1], 6)
    engine = make_engine(parts, num_kv_blocks=24, block_size=4, enable_prefix_caching=False)
    out = run(engine, reqs, GREEDY)
    assert engine.scheduler.num_preemptions > 0
    for i, p in enumerate(reqs):
        assert out[f"r{i}"] == single(parts, p, 12), i
    assert engine.blocks.num_free_blocks == 24


def test_chunked_prefill_matches(parts):
    reqs = prompts(parts[1], 3)
    out = run(make_engine(parts, max_num_batched_tokens=7), reqs, GREEDY)
    for i, p in enumerate(reqs):
        assert out[f"r{i}"] == single(parts, p, 12)


def test_abort_frees_every_block(parts):
    engine = make_engine(parts)
    free = engine.blocks.num_free_blocks
    p = prompts(parts[1], 3)[2]
    engine.add_request("a", p.token_ids, p.mels, SamplingParams(max_tokens=50, ignore_eos=True))
    for _ in range(4):
        engine.step()
    assert engine.blocks.num_free_blocks < free
    engine.abort("a")
    assert engine.blocks.num_free_blocks == free and not engine.has_unfinished_requests()


def test_repeated_audio_hits_the_encoder_cache(parts):
    engine = make_engine(parts)
    p = prompts(parts[1], 3)[1]
    run(engine, [p, p, p], SamplingParams(max_tokens=2))
    assert engine.encoder_cache.num_encoded == 1


def test_prefix_cache_reuses_blocks_and_keeps_tokens(parts):
    engine = make_engine(parts)
    p = prompts(parts[1], 3)[2]
    first = run(engine, [p], GREEDY)["r0"]
    assert engine.blocks.prefix_hit_tokens == 0
    again = run(engine, [p], GREEDY)["r0"]
    # Every full block but the one holding the last prompt token is shared.
    assert engine.blocks.prefix_hit_tokens == (len(p.token_ids) - 1) // 8 * 8 > 0
    assert again == first  # shared blocks hold the same keys and values as recomputed ones


def test_seeded_sampling_is_reproducible_whatever_the_batch(parts):
    reqs = prompts(parts[1], 4)
    params = SamplingParams(temperature=1.0, seed=123, max_tokens=10, ignore_eos=True)
    alone = run(make_engine(parts), reqs[:1], params)["r0"]
    crowd = run(make_engine(parts), reqs, params)["r0"]
    assert alone == crowd


def test_stop_ids_max_tokens_and_n(parts):
    tok = parts[1]
    p = prompts(tok, 1)[0]
    greedy = single(parts, p, 12)
    stop_id = greedy[5]
    engine = make_engine(parts)
    engine.add_request("s", p.token_ids, p.mels, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                                                 stop_token_ids=[stop_id]))
    engine.add_request("n", p.token_ids, p.mels, SamplingParams(temperature=1.0, n=3, max_tokens=5, seed=1,
                                                                 ignore_eos=True))
    finals, counts = {}, {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            for d in out.deltas:
                counts[(out.request_id, d.index)] = counts.get((out.request_id, d.index), 0) + len(d.token_ids)
                if d.finish_reason:
                    finals[(out.request_id, d.index)] = (d.finish_reason, d.stop_reason)
    assert finals[("s", 0)] == ("stop", stop_id) and counts[("s", 0)] == greedy.index(stop_id) + 1
    assert all(finals[("n", i)] == ("length", None) and counts[("n", i)] == 5 for i in range(3))


def test_thinking_budget_then_answer(parts):
    engine = make_engine(parts)
    p = prompts(parts[1], 1)[0]
    engine.add_request("t", p.token_ids, p.mels, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                                                                 max_thinking_tokens=4))
    seq = engine.requests["t"].seqs[0]
    reasoning = content = ""
    while engine.has_unfinished_requests():
        for out in engine.step():
            reasoning += "".join(d.reasoning for d in out.deltas)
            content += "".join(d.content for d in out.deltas)
    assert seq.num_reasoning_tokens == 4
    assert parts[1].decode(seq.output_ids[4:4 + len(engine._think_close_ids)]) == "\n</think>\n"
    assert content and len(seq.output_ids) == 30  # the model went on to answer after the forced close


def test_thinking_off_prefills_the_closed_block(parts):
    engine = make_engine(parts)
    p = prompts(parts[1], 1)[0]
    engine.add_request("off", p.token_ids, p.mels, SamplingParams(max_tokens=2, thinking="off"))
    seq = engine.requests["off"].seqs[0]
    assert parts[1].decode(seq.prompt_ids).endswith("<|BOT|>assistant\n<think>\n\n</think>\n")
    assert engine.apply_thinking_mode(seq.prompt_ids, "off") == seq.prompt_ids  # applying it twice changes nothing


@pytest.mark.parametrize("prefill, in_reasoning", [("<think>\nLet me listen.", True),
                                                   ("<think>\nShort.\n</think>\n", False)])
def test_an_assistant_prefill_decides_where_output_starts(parts, prefill, in_reasoning):
    model, tok = parts
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": prefill}]
    p = prepare_chat(tok, messages, [], add_generation_prompt=False, continue_final_message=True)
    assert tok.decode(p.token_ids).rstrip("\n").endswith(prefill.rstrip("\n"))
    engine = make_engine(parts)
    engine.add_request("p", p.token_ids, p.mels, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert engine.requests["p"].texts[next(iter(engine.requests["p"].texts))].in_reasoning is in_reasoning
    reasoning = content = ""
    while engine.has_unfinished_requests():
        for out in engine.step():
            reasoning += "".join(d.reasoning for d in out.deltas)
            content += "".join(d.content for d in out.deltas)
    # The random model never closes a think block: all reasoning when open, all answer once closed.
    assert (reasoning != "", content != "") == (in_reasoning, not in_reasoning)


def test_requests_too_long_are_refused_before_taking_memory(parts):
    engine = make_engine(parts, max_model_len=40)
    p = prompts(parts[1], 3)[2]
    free = engine.blocks.num_free_blocks
    with pytest.raises(RequestError, match="maximum model length is 40"):
        engine.add_request("long", p.token_ids, p.mels, SamplingParams())
    assert engine.blocks.num_free_blocks == free and not engine.has_unfinished_requests()
