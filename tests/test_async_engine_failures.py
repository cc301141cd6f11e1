"""AsyncEngine survives a failing engine step: the requests in flight fail, the loop and later requests go on.

A real failure, not a mock: min_tokens makes the sampler index the logits at a stop token id past the
vocabulary (the server drops such ids before they get here; the engine alone does not).
"""

from __future__ import annotations

import asyncio

import pytest

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.engine.async_engine import AsyncEngine
from stepaudio.engine.engine import EngineConfig, LLMEngine
from stepaudio.engine.sampling import SamplingParams
from stepaudio.inputs import prepare_chat
from stepaudio.model.loader import load_model
from stepaudio.text.tokenizer import StepTokenizer


def test_a_failed_step_fails_its_requests_and_frees_their_blocks(tiny_dir):  # noqa: F811
    model, tok = load_model(tiny_dir, dtype="float32"), StepTokenizer.from_dir(tiny_dir)
    prompt = prepare_chat(tok, [{"role": "user", "content": "hi"}], [])
    poison = SamplingParams(max_tokens=4, min_tokens=2, stop_token_ids=[10**6])

    async def collect(engine, rid, params):
        return [t async for out in engine.generate(rid, prompt.token_ids, prompt.mels, params)
                for d in out.deltas for t in d.token_ids]

    async def main():
        engine = AsyncEngine(LLMEngine(model, tok, EngineConfig(num_kv_blocks=64, block_size=8)))
        free = engine.engine.blocks.num_free_blocks
        with pytest.raises(IndexError):
            await collect(engine, "bad", poison)
        after = engine.engine.blocks.num_free_blocks
        ok = await collect(engine, "good", SamplingParams(max_tokens=3, ignore_eos=True))
        return free, after, ok

    free, after, ok = asyncio.run(main())
    assert after == free and len(ok) == 3
