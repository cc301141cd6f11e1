"""The web demo's page (Gradio Blocks) and what each control does; the model is reached only through `Backend`."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline machines: no phoning home

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from ..audio.io import load_audio  # noqa: E402
from .backend import THINKING_MODES, Backend, StopSignals, error_message, sampling_options  # noqa: E402
from .plots import audio_picture, save_audio_picture  # noqa: E402
from .session import AudioBudget, Conversation, InputProblem, UserTurn, prepare_turn, visible  # noqa: E402

TITLE = "Step-Audio-R1: listen, think, answer"
THINKING_TITLE = "Thinking"
STOPPED_NOTE = "\n\n*(stopped)*"
NO_ANSWER = "*(no answer: the model stopped, or ran out of tokens, while thinking)*"
CONCURRENT_CHATS = 16
REFRESH_SECONDS = 0.08  # how often the streaming chat is redrawn at most
CSS = "#budget-note {opacity: 0.8; font-size: 0.9em} footer {display: none !important}"


def build_demo(backend: Backend, pictures_dir: Path, audio_budget_seconds: float) -> gr.Blocks:
    """The page: chat on the left; audio, its picture, system prompt and generation controls on the right."""
    signals = StopSignals()

    def new_conversation() -> Conversation:
        return Conversation(AudioBudget(audio_budget_seconds))

    with gr.Blocks(title="Step-Audio-R1 demo") as demo:
        gr.Markdown(f"## {TITLE}\nModel **{backend.model}** at `{backend.api_base}`")
        conversation = gr.State(new_conversation)
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(elem_id="chat", height=520, label="Conversation", render_markdown=True)
                budget_note = gr.Markdown(new_conversation().budget.note(), elem_id="budget-note")
                text = gr.Textbox(placeholder="Ask about the audio, or just chat (Enter sends)", show_label=False,
                                  elem_id="message", lines=1)
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    clear = gr.Button("Clear", elem_id="clear")
            with gr.Column(scale=2):
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio (upload or record)",
                                 elem_id="audio")
                picture = gr.Image(label="Waveform and spectrogram", type="pil", interactive=False, height=180,
                                   elem_id="picture")
                system = gr.Textbox(label="System prompt", lines=2, elem_id="system",
                                    placeholder="Optional, e.g. 'You are an expert in audio analysis.'")
                show_thinking = gr.Checkbox(True, label="Show thinking", elem_id="show-thinking")
                with gr.Accordion("Generation", open=True):
                    max_tokens = gr.Slider(16, 32000, value=2048, step=16, label="Max tokens", elem_id="max-tokens")
                    temperature = gr.Slider(0.0, 1.5, value=0.7, step=0.05, label="Temperature (0 = greedy)",
                                            elem_id="temperature")
                    top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top p", elem_id="top-p")
                    thinking_mode = gr.Radio(list(THINKING_MODES), value="unlimited", label="Thinking",
                                             elem_id="thinking-mode")
                    thinking_budget = gr.Slider(1, 16000, value=512, step=1, label="Thinking budget (tokens, when "
                                                "limited)", elem_id="thinking-budget")

        def respond(text_value: str, audio_path: str | None, system_value: str, max_tokens_value: float,
                    temperature_value: float, top_p_value: float, mode: str, budget_tokens: float, show: bool,
                    conv: Conversation, request: gr.Request) -> Iterator[tuple[Any, ...]]:
            try:
                turn = prepare_turn(text_value, audio_path, conv.budget)
            except InputProblem as e:  # a notice; raising gr.Error would put error badges over every output
                gr.Warning(str(e))
                yield tuple(gr.skip() for _ in outputs)
                return
            conv.shown += shown_user_turn(text_value, audio_path, turn, pictures_dir)
            messages = conv.request_messages(system_value, turn)
            options = sampling_options(max_tokens_value, temperature_value, top_p_value, mode, budget_tokens)
            stopped = signals.fresh(request.session_hash or "")
            yield visible(conv.shown, show), conv, conv.budget.note(), "", None
            for update in stream_turn(backend, conv, turn, messages, options, stopped):
                yield visible(update, show), conv, conv.budget.note(), gr.skip(), gr.skip()

        inputs = [text, audio, system, max_tokens, temperature, top_p, thinking_mode, thinking_budget,
                  show_thinking, conversation]
        outputs = [chat, conversation, budget_note, text, audio]
        # Several tabs may chat at once: the server batches them (its --max-num-seqs defaults to 16 too).
        send.click(respond, inputs, outputs, concurrency_id="chat", concurrency_limit=CONCURRENT_CHATS)
        text.submit(respond, inputs, outputs, concurrency_id="chat", concurrency_limit=CONCURRENT_CHATS)

        def press_stop(request: gr.Request) -> None:
            signals.stop(request.session_hash or "")
        stop.click(press_stop, None, None, queue=False)

        def start_over() -> tuple[Any, ...]:
            fresh = new_conversation()
            return [], fresh, fresh.budget.note(), None
        clear.click(start_over, None, [chat, conversation, budget_note, picture])
        show_thinking.change(lambda show, conv: visible(conv.shown, show), [show_thinking, conversation], chat)
        audio.change(preview_picture, audio, picture)
    return demo


def stream_turn(backend: Backend, conv: Conversation, turn: UserTurn, messages: list[dict[str, Any]],
                options: dict[str, Any], stopped: threading.Event) -> Iterator[list[dict[str, Any]]]:
    """Stream one answer into `conv.shown`, yielding the chat at most every REFRESH_SECONDS; remember the turn
    unless the server failed it (then the chat says why and the budget is not charged)."""
    thinking: dict[str, Any] | None = None
    answer: dict[str, Any] = {"role": "assistant", "content": ""}
    answer_text, started, last_draw = "", time.monotonic(), 0.0
    conv.shown.append(answer)
    try:
        for kind, piece in backend.stream(messages, options, stopped):
            if kind == "thinking":
                if thinking is None:
                    thinking = {"role": "assistant", "content": "",
                                "metadata": {"title": THINKING_TITLE, "status": "pending"}}
                    conv.shown.insert(len(conv.shown) - 1, thinking)
                thinking["content"] += piece
            else:
                answer_text += piece
                answer["content"] = answer_text
                if thinking is not None:
                    thinking["metadata"]["status"] = "done"
            if time.monotonic() - last_draw >= REFRESH_SECONDS:
                last_draw = time.monotonic()
                yield conv.shown
    except Exception as e:  # noqa: BLE001  any failure becomes a chat message, never a traceback
        answer["content"] = error_message(e)
        if thinking is not None:
            thinking["metadata"]["status"] = "done"
        yield conv.shown
        return
    if thinking is not None:
        thinking["metadata"].update(status="done", duration=round(time.monotonic() - started, 1))
    if stopped.is_set():
        answer["content"] = answer_text + STOPPED_NOTE
    elif not answer_text:
        answer["content"] = NO_ANSWER
    conv.remember(turn, answer_text)
    yield conv.shown


def shown_user_turn(text: str, audio_path: str | None, turn: UserTurn, pictures_dir: Path) -> list[dict[str, Any]]:
    """The user's turn in the chat: the text, the audio player and the audio's picture."""
    shown: list[dict[str, Any]] = []
    if text and text.strip():
        shown.append({"role": "user", "content": text.strip()})
    if audio_path and turn.waveform is not None:
        png = save_audio_picture(turn.waveform, pictures_dir / f"{uuid.uuid4().hex}.png")
        shown += [{"role": "user", "content": {"path": audio_path}},
                  {"role": "user", "content": {"path": str(png), "mime_type": "image/png"}}]
    return shown


def preview_picture(audio_path: str | None) -> Any:
    """The picture of the audio just uploaded or recorded (none for audio that cannot be read)."""
    if not audio_path:
        return None
    try:
        wav: np.ndarray = load_audio(audio_path)
    except ValueError as e:
        gr.Warning(f"Could not read that audio: {e}")
        return None
    return audio_picture(wav)
