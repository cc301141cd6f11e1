"""Training examples: chat messages (spoken, typed or sound questions) paired with think-format targets."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..text.tokenizer import StepTokenizer
from .conversations import Turn, conversation_messages, random_conversation
from .questions import DRILL_WORDS, Question, arithmetic_question, question_pool, random_sentence, word_drill
from .sounds import SoundItem, random_sound_item
from .speech import augment, random_voice, speak
from .targets import Target, repeat_target, transcribe_target

_WORD_TOKEN = re.compile("\u0120[A-Za-z][a-z]{2,11}")  # byte-level BPE spells a leading space as U+0120
# Share of each kind in a training batch. "multiturn" (conversations.py) was added to continue the first
# delta, which was trained on the first four in shares 0.35 / 0.1 / 0.2 / 0.35.
MIX = {"speech": 0.3, "text": 0.1, "sound": 0.12, "transcribe": 0.33, "multiturn": 0.15}
# Text instructions that ask for the words of the clip (the held-out WER uses a phrasing not listed here).
TRANSCRIBE_PROMPTS = ("Repeat what was said.", "Write down exactly what you hear.", "What did the speaker say?")
_LISTEN_PROMPTS = ("Listen and answer.", "Answer the question in the audio.", "Please respond to the recording.",
                   "Answer the question.")
_SOUND_REPLIES = {"count": "There {verb} {a} beep{s}.", "higher": "{A} tone is higher.",
                  "louder": "{A} tone is louder.", "longer": "{A} tone is longer.", "direction": "The pitch is {a}."}


@dataclass
class Example:
    kind: str                  # a key of MIX
    messages: list[dict]       # OpenAI-shaped; audio parts are {"type": "audio"} placeholders
    audio: list[np.ndarray]    # one 16 kHz waveform per audio part
    target: str                # text after the generation prompt's "<think>\n"
    # What each audio part says, where it is speech (None for a sound): the typed twin's text.
    transcripts: tuple[str | None, ...] = ()


def typed_twin(example: Example) -> Example | None:
    """The same conversation with every spoken part replaced by its words, or None where a part is not
    speech (or there is no audio): the text the frozen decoder reads as the teacher of the audio path."""
    if not example.audio or len(example.transcripts) != len(example.audio) or None in example.transcripts:
        return None
    words = iter(example.transcripts)
    messages = []
    for message in example.messages:
        content = message["content"]
        if isinstance(content, list):
            content = [{"type": "text", "text": next(words)} if part.get("type") == "audio" else part
                       for part in content]
            if len(content) == 1:
                content = content[0]["text"]
        messages.append({**message, "content": content})
    return Example(example.kind, messages, [], example.target)


def training_questions(seed: int = 0, n_arithmetic: int = 60, open_questions: Sequence[str] = ()) -> list[Question]:
    """The fixed training question set: the training pool, seeded arithmetic and decoder-written questions."""
    rng = np.random.default_rng(seed)
    return (question_pool() + [arithmetic_question(rng) for _ in range(n_arithmetic)]
            + [Question("open", text, ()) for text in open_questions])


def sound_reply(item: SoundItem) -> str:
    a = item.answer
    return _SOUND_REPLIES[item.task].format(a=a, A=a.capitalize(), verb="is" if a == "1" else "are",
                                            s="" if a == "1" else "s")


def audio_with_text(text: str, text_first: bool) -> list[dict]:
    """An audio placeholder and a text part. The official clients and our chat CLI send the text first,
    other clients the audio first: training sees both orders."""
    parts = [{"type": "audio"}, {"type": "text", "text": text}]
    return parts[::-1] if text_first else parts


def sound_example(item: SoundItem, text_first: bool = False) -> Example:
    messages = [{"role": "user", "content": audio_with_text(item.question, text_first)}]
    return Example("sound", messages, [item.wav], sound_target(item).text())


def speech_messages(rng: np.random.Generator) -> list[dict]:
    if rng.random() < 0.35:
        content = audio_with_text(str(rng.choice(_LISTEN_PROMPTS)), bool(rng.random() < 0.6))
    else:
        content = [{"type": "audio"}]
    return [{"role": "user", "content": content}]


def common_words(tokenizer: StepTokenizer, first_ids: int = 30000) -> list[str]:
    """English-looking whole-word tokens among the tokenizer's first (most frequent) merges:
    a broad vocabulary for word drills, so the adaptor learns words beyond the question set."""
    words = set(DRILL_WORDS)
    for token_id in range(first_ids):
        token = tokenizer.tokenizer.id_to_token(token_id) or ""
        if _WORD_TOKEN.fullmatch(token):
            words.add(token[1:])
    return sorted(words)


def transcription_text(rng: np.random.Generator, question: Question, listening_drill: bool,
                       vocabulary: Sequence[str] = DRILL_WORDS, sentences: Sequence[str] = ()) -> str:
    """Mostly text that cannot be remembered: random word lists, template sentences, decoder-written
    sentences; the rest is the training question drawn for this example."""
    draw = rng.random()
    if listening_drill:
        return word_drill(rng, vocabulary) if draw < 0.8 else question.reference or question.text
    if draw < 0.25:
        return word_drill(rng, vocabulary)
    if draw < 0.4:
        return random_sentence(rng)
    if draw < 0.7 and sentences:
        return str(sentences[int(rng.integers(len(sentences)))])
    return question.reference or question.text


class ExampleSampler:
    """Draws examples from the question set (with distilled targets), voices and sound tasks."""

    def __init__(self, questions: list[Question], targets: dict[str, Target], vocabulary: Sequence[str] = DRILL_WORDS,
                 sentences: Sequence[str] = ()):
        self.vocabulary = vocabulary
        self.sentences = sentences
        self.items = [(q, targets[q.text] if q.kind != "repeat" else repeat_target(q))
                      for q in questions if q.kind == "repeat" or q.text in targets]
        if not self.items:
            raise ValueError("no question has a target; distillation kept nothing")

    def transcription_text(self, rng: np.random.Generator, listening_drill: bool = False) -> str:
        question = self.items[int(rng.integers(len(self.items)))][0]
        return transcription_text(rng, question, listening_drill, self.vocabulary, self.sentences)

    def sample(self, rng: np.random.Generator, listening_drill: bool = False) -> Example:
        """One example from `MIX`; during the listening drill, transcription only, mostly random word lists."""
        kind = "transcribe" if listening_drill else str(rng.choice(list(MIX), p=list(MIX.values())))
        if kind == "sound":
            return sound_example(random_sound_item(rng), text_first=bool(rng.random() < 0.6))
        if kind == "multiturn":
            return self.multiturn_example(rng)
        question, target = self.items[int(rng.integers(len(self.items)))]
        if kind == "transcribe":
            words = transcription_text(rng, question, listening_drill, self.vocabulary, self.sentences)
            wav = augment(speak(words, random_voice(rng)), rng)
            messages = [{"role": "user", "content": audio_with_text(str(rng.choice(TRANSCRIBE_PROMPTS)),
                                                                    bool(rng.random() < 0.5))}]
            return Example("transcribe", messages, [wav], transcribe_target(words).text(), (words,))
        if kind == "text":
            return Example("text", [{"role": "user", "content": question.text}], [], target.text())
        wav = augment(speak(question.text, random_voice(rng)), rng)
        return Example("speech", speech_messages(rng), [wav], target.text(), (question.text,))

    def multiturn_example(self, rng: np.random.Generator) -> Example:
        """A two- or three-turn conversation, each user turn spoken (60 %) or typed, the last one answered."""
        conv = random_conversation(rng, self.items, new_turn=sound_turn(random_sound_item(rng, task="count")))
        spoken = [bool(rng.random() < 0.6) for _ in conv.turns]
        messages, parts = conversation_messages(conv, spoken)
        audio = [p if not isinstance(p, str) else augment(speak(p, random_voice(rng)), rng) for p in parts]
        return Example("multiturn", messages, audio, conv.target.text(),
                       tuple(p if isinstance(p, str) else None for p in parts))


def sound_target(item: SoundItem) -> Target:
    return Target(item.question, item.reasoning, sound_reply(item))


def sound_turn(item: SoundItem) -> tuple[Turn, Target, tuple[str, ...]]:
    """A sound question as a conversation's unrelated last turn (`random_conversation`'s `new_turn`)."""
    return Turn(item.question, item.wav), sound_target(item), tuple(item.accept)
