"""Offline question answering about one audio file: load, chunk, prompt, generate, split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .audio.io import load_audio, split_chunks
from .generation import generate_tokens
from .inputs import prepare_chat
from .model.loader import load_model
from .text.reasoning import split_reasoning
from .text.tokenizer import StepTokenizer


@dataclass
class GenerationResult:
    reasoning: str
    answer: str
    token_ids: list[int]
    prompt_tokens: int
    audio_tokens: int
    finish_reason: str  # "stop" (a stop token) or "length"

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def audio_question_messages(prompt: str, num_chunks: int, system: str | None = None) -> list[dict]:
    """User turn as the official examples send it: the text, then one input_audio part per 25 s chunk."""
    content: list[dict] = [{"type": "text", "text": prompt}] if prompt else []
    content += [{"type": "input_audio", "input_audio": {"format": "wav"}}] * num_chunks
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": content}]


def answer_audio_question(model_dir: str | Path, *, audio: str | Path | None, prompt: str = "",
                          system: str | None = None, max_tokens: int = 512, temperature: float = 0.0,
                          seed: int | None = None, dtype: str | None = None, device: str = "cpu",
                          formula: str = "vllm", template: str | None = None,
                          quantization: str | None = None) -> GenerationResult:
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    chunks = split_chunks(load_audio(audio)) if audio is not None else []
    tokenizer = StepTokenizer.from_dir(model_dir)
    model = load_model(model_dir, dtype=dtype, device=device, progress=True, quantization=quantization)
    prepared = prepare_chat(tokenizer, audio_question_messages(prompt, len(chunks), system), chunks,
                            n_mels=model.config.audio.n_mels, formula=formula, template=template)
    embeds = model.encode_audio(prepared.mels, formula=formula)
    stop = set(tokenizer.eos_token_ids)
    tokens = generate_tokens(model, prepared.token_ids, audio_embeds=embeds, audio_patch_id=tokenizer.audio_patch_id,
                             max_new_tokens=max_tokens, stop_token_ids=stop, temperature=temperature, seed=seed)
    out = list(tqdm(tokens, total=max_tokens, desc="generating", unit="tok", leave=False))
    finished = bool(out) and out[-1] in stop
    text = tokenizer.decode(out[:-1] if finished else out, skip_special_tokens=False)
    reasoning, answer = split_reasoning(text)
    return GenerationResult(reasoning=reasoning, answer=answer, token_ids=out, prompt_tokens=len(prepared.token_ids),
                            audio_tokens=prepared.num_audio_tokens, finish_reason="stop" if finished else "length")
