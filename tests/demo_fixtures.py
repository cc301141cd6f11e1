"""The web demo in a real browser: our server on the tiny checkpoint (reasoning parser on), the Gradio page
against it, and Debian's chromium driven by playwright with a fake microphone that plays a wav."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, free_port, reference, running_server  # noqa: F401
from stepaudio.demo.app import build_demo
from stepaudio.demo.backend import Backend

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"   # git-ignored; screenshots land here


def speech_like(seconds: float, sr: int = 16000) -> np.ndarray:
    """Syllable-like bursts of a gliding tone: something to see in the waveform and spectrogram."""
    t = np.arange(int(seconds * sr)) / sr
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 2
    return (0.4 * envelope * np.sin(2 * np.pi * (220 + 180 * np.sin(2 * np.pi * 0.7 * t)) * t)).astype(np.float32)


def wait_until(condition: Callable[[], bool], seconds: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached in {seconds} s"
        time.sleep(0.05)


def page_served(port: int) -> bool:
    """Whether a page answers on this loopback port yet."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


THINKING = "#chat .thought-group"
ANSWERS = "#chat [data-testid=bot]:not(:has(.thought-group)) .message-content"


def set_number(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def limit_thinking(page, thinking_tokens: int = 6, max_tokens: int = 24) -> None:
    """The tiny random model seldom closes </think> by itself: a thinking budget makes it answer."""
    page.get_by_test_id("limited-radio-label").click()
    set_number(page, "thinking-budget", thinking_tokens)
    set_number(page, "max-tokens", max_tokens)


def ask(page, text: str) -> None:
    page.locator("#message textarea").fill(text)
    page.locator("#send").click()


def wait_for_answers(page, n: int, seconds: float = 20.0) -> None:
    """Until the chat holds n answers, the last one written and its thinking block marked done."""
    page.locator(ANSWERS).nth(n - 1).wait_for(timeout=seconds * 1000)
    wait_until(lambda: page.locator(ANSWERS).nth(n - 1).inner_text().strip() != "", seconds, what=f"answer {n}")
    page.locator(f"{THINKING} .duration").nth(n - 1).wait_for(timeout=seconds * 1000)   # the thinking is done


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo_audio") / "clip.wav"
    sf.write(path, speech_like(3.0), 16000)
    return path


SERVER_MAX_AUDIO_SECONDS = 10.0   # below the demo's budget, so that a longer clip gets a real HTTP error


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo_audio") / "long.wav"
    sf.write(path, speech_like(SERVER_MAX_AUDIO_SECONDS + 2), 16000)
    return path


@pytest.fixture(scope="module")
def server_url(reference) -> Iterator[str]:  # noqa: F811
    with running_server(reference, reasoning_parser="step_audio", max_audio_seconds=SERVER_MAX_AUDIO_SECONDS) as url:
        yield url


@pytest.fixture(scope="module")
def demo_url(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pictures = tmp_path_factory.mktemp("demo_pictures")
    demo = build_demo(Backend(server_url + "/v1", MODEL, server_splits_reasoning=True), pictures,
                      audio_budget_seconds=60.0)
    _, url, _ = demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                    allowed_paths=[str(pictures)], quiet=True)
    yield url.rstrip("/")
    demo.close()


@pytest.fixture(scope="module")
def browser(clip: Path):
    """Headless Debian chromium; its fake microphone plays `clip`. Skips only if chromium cannot start."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (setup.sh --dev)")
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is missing (apt install chromium; setup.sh --dev does)")
    with sync_api.sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={clip}"])
        except Exception as e:  # noqa: BLE001  a broken browser install is the one reason to skip
            pytest.skip(f"chromium cannot start: {e}")
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, demo_url: str):
    """A fresh browser tab (its own Gradio session) on the loaded demo page."""
    context = browser.new_context(viewport={"width": 1280, "height": 960}, permissions=["microphone"])
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.goto(demo_url)
    tab.locator("#send").wait_for()
    yield tab
    context.close()
