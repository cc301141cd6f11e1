"""AsyncEngine survives a failing engine step: the requests in flight fail, the loop and later requests go on.

A real failure, not a mock: a mel chunk with the wrong number of mel bins passes add_request (its token
count only depends on its length) and makes the audio encoder raise during the prefill step.
"""

from __future__ import annotations

import asyncio

import numpy as np
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
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "audio"}]}]
    prompt = prepare_chat(tok, messages, [np.zeros(16000, dtype=np.float32)])
    text_only = prepare_chat(tok, [{"role": "user", "content": "hi"}], [])

    async def collect(engine, rid, p, mels, params):
        return [t async for out in engine.generate(rid, p.token_ids, mels, params)
                for d in out.deltas for t in d.token_ids]

    async def main():
        engine = AsyncEngine(LLMEngine(model, tok, EngineConfig(num_kv_blocks=64, block_size=8)))
        free = engine.engine.blocks.num_free_blocks
        with pytest.raises(RuntimeError):
            await collect(engine, "bad", prompt, [m[:80] for m in prompt.mels], SamplingParams(max_tokens=4))
        after = engine.engine.blocks.num_free_blocks
        ok = await collect(engine, "good", text_only, [], SamplingParams(max_tokens=3, ignore_eos=True))
        return free, after, ok

    free, after, ok = asyncio.run(main())
    assert after == free and len(ok) == 3
