"""The Step-Audio tokenizer: a Qwen2 BPE `tokenizer.json` plus Step special tokens, resolved by name."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

# Names, never ids: the ids come from the checkpoint's tokenizer.json.
EOT = "<|EOT|>"
BOT = "<|BOT|>"
AUDIO_START = "<audio_start>"
AUDIO_END = "<audio_end>"
AUDIO_PATCH = "<audio_patch>"
# Tokens that end generation when present: <|endoftext|>, <|im_end|>, <|EOT|> (the forced EOS list, spec §1.1).
EOS_TOKEN_NAMES = ("<|endoftext|>", "<|im_end|>", EOT)


class TokenizerError(ValueError):
    """tokenizer.json is missing or lacks a token Step-Audio needs."""


class StepTokenizer:
    """Thin wrapper over `tokenizers.Tokenizer` that knows the Step special tokens."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.eot_id = self.token_id(EOT)
        self.bot_id = self.token_id(BOT)
        self.audio_start_id = self.token_id(AUDIO_START)
        self.audio_end_id = self.token_id(AUDIO_END)
        self.audio_patch_id = self.token_id(AUDIO_PATCH)
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.eos_token_ids = [vocab[n] for n in EOS_TOKEN_NAMES if n in vocab]

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> StepTokenizer:
        """Read tokenizer.json, and the chat template from tokenizer_config.json when the folder has one."""
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{path} not found: a model folder needs tokenizer.json")
        template = None
        config_path = model_dir / "tokenizer_config.json"
        if config_path.is_file():
            template = json.loads(config_path.read_text()).get("chat_template")
        template_file = model_dir / "chat_template.jinja"
        if template is None and template_file.is_file():
            template = template_file.read_text()
        return cls(Tokenizer.from_file(str(path)), template if isinstance(template, str) else None)

    def token_id(self, name: str) -> int:
        token_id = self.tokenizer.token_to_id(name)
        if token_id is None:
            raise TokenizerError(f"tokenizer has no {name!r} token; is this a Step-Audio tokenizer?")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered prompt; special tokens written in the text become their ids."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def expand_audio(self, ids: list[int], tokens_per_audio: list[int]) -> list[int]:
        """Replace the i-th `<audio_patch>` placeholder with <audio_start> + n_i x <audio_patch> + <audio_end>."""
        placeholders = sum(1 for i in ids if i == self.audio_patch_id)
        if placeholders != len(tokens_per_audio):
            raise ValueError(f"prompt has {placeholders} audio placeholders but {len(tokens_per_audio)} "
                             "audio chunks were given")
        out: list[int] = []
        counts = iter(tokens_per_audio)
        for token in ids:
            if token == self.audio_patch_id:
                out += [self.audio_start_id, *[self.audio_patch_id] * next(counts), self.audio_end_id]
            else:
                out.append(token)
        return out
