"""Build the default model's tokenizer.json: the Qwen2.5 BPE from GGUF metadata plus the Step tokens.

Every id keeps its GGUF meaning; the Step special tokens take over unused `[PADnnnnnn]` rows at
their official ids (spec §5.1), so no embedding resize is needed. All tokens, the unused fillers
included, live in the BPE vocabulary with explicit ids: `tokenizers` assigns ids to added tokens
that are not in the vocabulary sequentially, which could not place `<audio_start>` at 151688.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from ..text.tiny_tokenizer import QWEN2_SPLIT
from ..text.tokenizer import AUDIO_END, AUDIO_PATCH, AUDIO_START, BOT, EOT
from .gguf_reader import GGUFFile, GGUFFormatError

# Official ids (spec §5.1). <|BOT|>'s id is not published (probably 151666-151687): 151666 is OUR
# provisional choice; our code resolves every special token by name, so only interop depends on it.
STEP_TOKEN_IDS: dict[str, int] = {
    EOT: 151665, BOT: 151666, AUDIO_START: 151688, AUDIO_END: 151689, AUDIO_PATCH: 151690,
    "<tts_start>": 151693, "<tts_end>": 151694,
}
# GGUF token types (llama.cpp): 1 normal, 3 control, 4 user-defined, 5 unused.
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


def build_tokenizer(gguf: GGUFFile, step_tokens: dict[str, int] | None = None) -> Tokenizer:
    """A byte-level BPE equal to the GGUF's own tokenizer, with `step_tokens` placed on unused rows."""
    step_tokens = STEP_TOKEN_IDS if step_tokens is None else step_tokens
    md = gguf.metadata
    if md.get("tokenizer.ggml.model") != "gpt2":
        raise GGUFFormatError(f"expected a byte-level BPE (gpt2) tokenizer, got {md.get('tokenizer.ggml.model')!r}")
    tokens: list[str] = list(md["tokenizer.ggml.tokens"])
    types: list[int] = list(md["tokenizer.ggml.token_type"])
    for name, token_id in step_tokens.items():
        if not 0 <= token_id < len(tokens) or types[token_id] != _UNUSED:
            raise GGUFFormatError(f"cannot place {name!r} at id {token_id}: that row is "
                                  f"{'out of range' if token_id >= len(tokens) else repr(tokens[token_id])}")
        if name in tokens:
            raise GGUFFormatError(f"{name!r} is already in the vocabulary")
        tokens[token_id], types[token_id] = name, _CONTROL
    merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # Whole-match the control tokens (special) and user-defined ones like <tool_call> (not special).
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == _CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, kind in zip(tokens, types) if kind == _USER_DEFINED])
    for name, token_id in step_tokens.items():
        if tok.token_to_id(name) != token_id:  # guard against the library re-numbering
            raise GGUFFormatError(f"{name!r} landed at id {tok.token_to_id(name)}, not {token_id}")
    return tok
