"""The dual brain on the tiny checkpoint: what each articulation request is given, for every schedule."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from contextlib import aclosing
from pathlib import Path

import numpy as np
import pytest

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.engine.async_engine import AsyncEngine
from stepaudio.engine.engine import THINK_CLOSE, EngineConfig, LLMEngine
from stepaudio.engine.llm import LLM
from stepaudio.engine.sampling import SamplingParams
from stepaudio.realtime.dual_brain import DualBrain, SpeechDelta, ThinkAheadMargin, ThinkingDelta
from stepaudio.realtime.pacing import Pacing
from stepaudio.text.reasoning import THINK_END

ENGINE = {"num_kv_blocks": 512, "block_size": 16}
PARAMS = SamplingParams(temperature=1.0, seed=3)   # seed 3 keeps the random tiny model talking for a while


@pytest.fixture(scope="module")
def llm(tiny_dir: Path) -> LLM:  # noqa: F811
    return LLM(tiny_dir, dtype="float32", **ENGINE)


@pytest.fixture(scope="module")
def question(llm: LLM):
    t = np.arange(32000) / 16000
    return llm.prepare([{"role": "user", "content": [{"type": "audio", "audio": (0.3 * np.sin(2 * np.pi * 440 * t))
                                                                     .astype(np.float32)}]}])


def run_brain(llm: LLM, question, pacing: Pacing, playback_end=lambda: None, params: SamplingParams = PARAMS):
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(**ENGINE))

    async def go():
        brain = DualBrain(AsyncEngine(engine), question.token_ids, question.mels, pacing, params, playback_end)
        events = [e async for e in brain.run()]
        return brain, events

    brain, events = asyncio.run(go())
    return brain, events, engine


@pytest.mark.parametrize("schedule", ["speak-first", "think-first"])
def test_articulation_prefix_holds_exactly_the_thoughts_formed_so_far(llm: LLM, question, schedule: str) -> None:
    pacing = Pacing(schedule, think_segment_tokens=6, response_segment_tokens=5, max_thinking_tokens=24,
                    max_response_tokens=24)
    brain, events, engine = run_brain(llm, question, pacing)
    tok = llm.tokenizer
    thoughts = brain.thoughts
    assert len(thoughts) >= 3 and len(brain.launches) >= 3
    # The thoughts are the formulation's reasoning, cut in segments: the same text as the same thinking
    # request run offline (stopped at </think>, same seed and thinking budget).
    offline = llm.generate([question], SamplingParams(temperature=1.0, seed=3, stop=[THINK_END],
                                                      max_thinking_tokens=24, max_tokens=24 + 8))
    assert "".join(t.text for t in thoughts) == offline[0].completions[0].reasoning
    assert "".join(e.text for e in events if isinstance(e, ThinkingDelta)) == offline[0].completions[0].reasoning
    speech = [e for e in events if isinstance(e, SpeechDelta)]
    for launch in brain.launches:
        used = thoughts[:launch.thoughts]
        # every thought in the prefix was complete before the request started; the next one was not
        assert all(t.ready_at <= launch.at for t in used)
        assert launch.thoughts == len(thoughts) or thoughts[launch.thoughts].ready_at > launch.at
        text = "".join(t.text for t in used)
        expected = question.token_ids + (tok.encode(text) if text else []) + tok.encode(THINK_CLOSE)
        assert launch.prompt_ids[:len(expected)] == expected
        # ... followed by exactly what the earlier segments said (their text leaves out special tokens)
        said_before = "".join(e.text for e in speech if e.segment < launch.segment)
        assert tok.decode(launch.prompt_ids[len(expected):], skip_special_tokens=True) == said_before
    first = brain.launches[0]
    if schedule == "speak-first":
        assert first.thoughts == 0 and first.at < thoughts[0].ready_at   # speaking started while thinking
        assert all(launch.thoughts >= min(launch.segment, len(thoughts)) for launch in brain.launches)
    else:
        assert first.thoughts >= 1
        assert all(launch.thoughts >= min(launch.segment + 1, len(thoughts)) for launch in brain.launches)
    assert brain.result.said_text == "".join(e.text for e in speech)
    assert not engine.requests and engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_think_then_speak_waits_for_the_whole_reasoning(llm: LLM, question) -> None:
    brain, _, _ = run_brain(llm, question, Pacing("think-then-speak", 6, 5, 24, 20))
    [launch] = brain.launches
    assert launch.complete and launch.thoughts == len(brain.thoughts) >= 3
    assert launch.at >= brain.thoughts[-1].ready_at


def test_no_think_runs_one_stream_with_an_empty_think_block(llm: LLM, question) -> None:
    brain, events, _ = run_brain(llm, question, Pacing("no-think", 6, 5, 24, 20))
    [launch] = brain.launches
    assert brain.thoughts == [] and not any(isinstance(e, ThinkingDelta) for e in events)
    assert launch.prompt_ids == question.token_ids + llm.tokenizer.encode(THINK_CLOSE)


def test_ignore_eos_speaks_to_the_response_limit(llm: LLM, question) -> None:
    # seed 0 samples an end of text within the first few tokens; ignore_eos must speak on past it
    stops_early = SamplingParams(temperature=1.0, seed=0)
    pacing = Pacing("no-think", 6, 5, 24, 200)
    brain, _, _ = run_brain(llm, question, pacing, params=stops_early)
    assert brain.result.finish_reason == "stop" and len(brain.result.said_text) < 200
    brain, _, engine = run_brain(llm, question, pacing, params=replace(stops_early, ignore_eos=True))
    assert brain.result.finish_reason == "length"
    # The sampled ends of text (and audio patches) are not carried into the next request's prompt, so a
    # last request tops the answer up to the limit.
    first, last = brain.launches[0], brain.launches[-1]
    assert len(brain.launches) >= 2 and 150 < len(last.prompt_ids) - len(first.prompt_ids) < 200
    assert not engine.requests and engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_think_ahead_margin_is_measured_and_violations_logged(llm: LLM, question, caplog) -> None:
    pacing = Pacing("speak-first", 6, 5, 24, 24)
    _, ahead, _ = run_brain(llm, question, pacing, playback_end=lambda: time.perf_counter() + 60)
    margins = [e.seconds for e in ahead if isinstance(e, ThinkAheadMargin)]
    assert margins and all(m > 0 for m in margins)
    with caplog.at_level(logging.WARNING, logger="stepaudio.realtime"):
        _, late, _ = run_brain(llm, question, pacing, playback_end=lambda: 0.0)   # audio long finished
    margins = [e.seconds for e in late if isinstance(e, ThinkAheadMargin)]
    assert margins and all(m < 0 for m in margins)
    assert "think-ahead margin violated" in caplog.text


def test_leaving_early_aborts_both_streams_and_frees_their_kv(llm: LLM, question) -> None:
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(**ENGINE))
    pacing = Pacing("speak-first", 8, 6, 400, 400)

    async def go():
        brain = DualBrain(AsyncEngine(engine), question.token_ids, question.mels, pacing, PARAMS)
        seen = set()
        async with aclosing(brain.run()) as events:
            async for event in events:
                seen.add(type(event))
                if {ThinkingDelta, SpeechDelta} <= seen:
                    assert len(engine.requests) == 2   # both brains are in the engine at once
                    break
        for _ in range(500):   # the engine loop applies the aborts between its steps
            if not engine.requests:
                break
            await asyncio.sleep(0.01)

    asyncio.run(go())
    assert not engine.requests and engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_two_conversations_share_the_engines_decode_batches(llm: LLM, question) -> None:
    """Both streams of two conversations are sequences of one engine: its decode steps batch them together
    (what lets a server with several conversations keep batching), and every answer still completes."""
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(**ENGINE))
    batches: list[set[str]] = []
    decode = engine.runner.decode

    def recording_decode(work):
        batches.append({seq.request_id for seq in work.seqs})
        return decode(work)

    engine.runner.decode = recording_decode
    pacing = Pacing("speak-first", 6, 5, 24, 24)

    async def go():
        shared = AsyncEngine(engine)
        brains = [DualBrain(shared, question.token_ids, question.mels, pacing, PARAMS) for _ in range(2)]

        async def drain(brain):
            return [e async for e in brain.run()]

        await asyncio.gather(*(drain(b) for b in brains))
        return brains

    brains = asyncio.run(go())
    tags = [b._tag for b in brains]
    widest = max(batches, key=len)
    assert {rid.split("-")[1] for rid in widest} == {t.split("-")[1] for t in tags}, widest
    assert any(rid.endswith("-think") for rid in widest) and any("-say" in rid for rid in widest), widest
    assert len(widest) >= 3
    assert all(b.result.said_text for b in brains)
    assert not engine.requests and engine.blocks.num_free_blocks == engine.blocks.num_blocks
