"""AsyncEngine: concurrent streams, refusals and early exits (a disconnect) that free the KV cache."""

from __future__ import annotations

import asyncio

import pytest

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.engine.async_engine import AsyncEngine
from stepaudio.engine.engine import EngineConfig, LLMEngine, RequestError
from stepaudio.engine.sampling import SamplingParams
from stepaudio.inputs import prepare_chat
from stepaudio.model.loader import load_model
from stepaudio.text.tokenizer import StepTokenizer


@pytest.fixture(scope="module")
def engine_parts(tiny_dir):
    return load_model(tiny_dir, dtype="float32"), StepTokenizer.from_dir(tiny_dir)


def make(engine_parts) -> AsyncEngine:
    model, tok = engine_parts
    return AsyncEngine(LLMEngine(model, tok, EngineConfig(num_kv_blocks=128, block_size=8)))


def prompt(tok, text: str):
    return prepare_chat(tok, [{"role": "user", "content": text}], [])


async def collect(engine, rid, p, params):
    tokens = []
    async for out in engine.generate(rid, p.token_ids, p.mels, params):
        tokens += [t for d in out.deltas for t in d.token_ids]
    return tokens


def test_concurrent_streams_match_sequential_runs(engine_parts):
    tok = engine_parts[1]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompts = [prompt(tok, "Q" * (i + 1)) for i in range(4)]

    async def main():
        engine = make(engine_parts)
        together = await asyncio.gather(*(collect(engine, f"c{i}", p, params) for i, p in enumerate(prompts)))
        alone = [await collect(engine, f"s{i}", p, params) for i, p in enumerate(prompts)]
        return together, alone

    together, alone = asyncio.run(main())
    assert together == alone and all(len(t) == 8 for t in together)


def test_leaving_a_stream_early_aborts_and_frees_blocks(engine_parts):
    tok = engine_parts[1]

    async def main():
        engine = make(engine_parts)
        free = engine.engine.blocks.num_free_blocks
        stream = engine.generate("d", prompt(tok, "hello").token_ids, [], SamplingParams(max_tokens=500,
                                                                                          ignore_eos=True))
        await stream.__anext__()
        await stream.aclose()  # what a client disconnect does to the server's iteration
        for _ in range(50):
            if not engine.engine.has_unfinished_requests():
                break
            await asyncio.sleep(0.01)
        return free, engine.engine.blocks.num_free_blocks, engine.engine.has_unfinished_requests()

    free, after, busy = asyncio.run(main())
    assert after == free and not busy


def test_refused_request_fails_only_its_own_stream(engine_parts):
    model, tok = engine_parts

    async def main():
        engine = AsyncEngine(LLMEngine(model, tok, EngineConfig(num_kv_blocks=64, block_size=8, max_model_len=16)))
        with pytest.raises(RequestError, match="maximum model length"):
            await collect(engine, "big", prompt(tok, "x " * 40), SamplingParams(max_tokens=2))
        return await collect(engine, "ok", prompt(tok, "hi"), SamplingParams(max_tokens=2, ignore_eos=True))

    assert len(asyncio.run(main())) == 2
