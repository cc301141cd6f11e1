"""Special tokens are resolved by name; placeholders expand to <audio_start> n x <audio_patch> <audio_end>."""

from __future__ import annotations

import pytest

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.text.chat_template import render_chat
from stepaudio.text.tokenizer import StepTokenizer, TokenizerError


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return StepTokenizer.from_dir(tiny_dir)


def test_special_tokens_resolved_by_name(tok):
    vocab = tok.tokenizer.get_vocab(with_added_tokens=True)
    assert tok.eot_id == vocab["<|EOT|>"] and tok.bot_id == vocab["<|BOT|>"]
    assert (tok.audio_start_id, tok.audio_end_id, tok.audio_patch_id) == (
        vocab["<audio_start>"], vocab["<audio_end>"], vocab["<audio_patch>"])
    # The tiny vocabulary puts them far from the official ids (151665, 151688-151690).
    assert tok.eot_id < 151665 and tok.audio_patch_id < 151690
    assert set(tok.eos_token_ids) == {vocab["<|endoftext|>"], vocab["<|im_end|>"], vocab["<|EOT|>"]}


def test_rendered_prompt_tokenizes_special_tokens_as_single_ids(tok):
    prompt = render_chat([{"role": "user", "content": [{"type": "text", "text": "Q"}, {"type": "input_audio"}]}])
    ids = tok.encode(prompt)
    assert ids[0] == tok.bot_id and ids.count(tok.eot_id) == 1 and ids.count(tok.audio_patch_id) == 1
    assert tok.decode(ids) == prompt
    assert "<|BOT|>" not in tok.decode(ids, skip_special_tokens=True)
    # </think> is plain text (several tokens), as upstream.
    assert len(tok.encode("</think>")) > 1


def test_expand_audio(tok):
    ids = tok.encode("<audio_patch>a<audio_patch>")
    out = tok.expand_audio(ids, [3, 1])
    s, p, e = tok.audio_start_id, tok.audio_patch_id, tok.audio_end_id
    middle = ids[1:-1]
    assert out == [s, p, p, p, e, *middle, s, p, e]
    with pytest.raises(ValueError, match="2 audio placeholders but 1"):
        tok.expand_audio(ids, [3])


def test_non_step_tokenizer_is_refused(tmp_path):
    from tokenizers import Tokenizer, models
    Tokenizer(models.BPE()).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="<|EOT|>"):
        StepTokenizer.from_dir(tmp_path)
    with pytest.raises(TokenizerError, match="tokenizer.json not found"):
        StepTokenizer.from_dir(tmp_path / "nowhere")
