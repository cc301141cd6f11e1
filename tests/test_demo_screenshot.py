"""The README's picture of the web demo (docs/demo.png): the default model answering the spoken question in
examples/question.flac, greedy, in headless chromium.

The picture always goes to test-artifacts/demo-default-model.png; with STEPAUDIO_UPDATE_SCREENSHOT=1 it also replaces
docs/demo.png, which is how the README's screenshot is made again after the demo or the default model changes:

    STEPAUDIO_UPDATE_SCREENSHOT=1 .venv/bin/python -m pytest -q tests/test_demo_screenshot.py
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo_fixtures import (ANSWERS, ARTIFACTS, THINKING, ask, browser, clip, free_port, set_number,  # noqa: F401
                           wait_for_answers)
from server_fixtures import running_server
from stepaudio.default_model import DEFAULT_MODEL_NAME
from stepaudio.default_model.assemble import ensure_default_model
from stepaudio.demo.app import build_demo
from stepaudio.demo.backend import Backend
from stepaudio.demo.session import DEFAULT_AUDIO_BUDGET_SECONDS
from stepaudio.engine.llm import LLM

ROOT = Path(__file__).resolve().parents[1]
QUESTION = ROOT / "examples" / "question.flac"
PROMPT = "Answer the question."   # the README's chat line asks the same
DOCS_PICTURE = ROOT / "docs" / "demo.png"


@pytest.fixture(scope="module")
def default_demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo page against our server on the default model (reasoning parser on), as `stepaudio demo` runs."""
    llm = LLM(ensure_default_model(progress=False))
    with running_server(llm, served_model_names=[DEFAULT_MODEL_NAME], reasoning_parser="step_audio") as url:
        pictures = tmp_path_factory.mktemp("demo_pictures")
        demo = build_demo(Backend(url + "/v1", DEFAULT_MODEL_NAME, server_splits_reasoning=True), pictures,
                          DEFAULT_AUDIO_BUDGET_SECONDS)
        _, page_url, _ = demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), quiet=True,
                                             prevent_thread_lock=True, allowed_paths=[str(pictures)])
        yield page_url.rstrip("/")
        demo.close()


def test_the_default_model_answers_a_spoken_question(browser, default_demo_url):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 960})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(default_demo_url)
    set_number(page, "temperature", 0)   # greedy: the same picture on every run
    page.locator("#audio input[type=file]").set_input_files(str(QUESTION))
    page.locator("#picture img").wait_for()
    ask(page, PROMPT)
    wait_for_answers(page, 1, seconds=600)
    chat = page.locator("#chat").inner_text()
    assert page.locator(THINKING).count() == 1 and page.locator(ANSWERS).first.inner_text().strip()
    assert "Traceback" not in chat and "could not answer" not in chat and page.locator(".error").count() == 0
    # The chat follows the answer down; back at the top, the question, the thinking (closed) and the answer all show.
    page.wait_for_timeout(1000)   # the last redraw, and the chat's own scrolling after it
    page.evaluate("() => document.querySelectorAll('#chat *').forEach(e => { e.scrollTop = 0; })")
    page.wait_for_timeout(300)
    ARTIFACTS.mkdir(exist_ok=True)
    picture = ARTIFACTS / "demo-default-model.png"
    page.screenshot(path=str(picture), full_page=True)
    context.close()
    if os.environ.get("STEPAUDIO_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(picture, DOCS_PICTURE)
