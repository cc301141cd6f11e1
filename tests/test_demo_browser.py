"""The web demo in headless chromium: upload and ask (thinking block, answer, picture, screenshot), multi-turn
and the hide-thinking toggle, the fake microphone reaching the model, Stop aborting on the server, server errors
and bad input shown as readable messages."""

from __future__ import annotations

from demo_fixtures import (ANSWERS, ARTIFACTS, THINKING, ask, browser, clip, demo_url, limit_thinking,  # noqa: F401
                           long_clip, page, server_url, set_number, wait_for_answers, wait_until)
from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import metric, reference  # noqa: F401


def test_upload_ask_see_thinking_and_answer(page, speech_wav, server_url):  # noqa: F811
    limit_thinking(page)
    page.locator("#system textarea").fill("You are an expert in audio analysis.")
    page.locator("#audio input[type=file]").set_input_files(str(speech_wav))
    page.locator("#picture img").wait_for()   # the picture of the clip, before sending
    audio_before = metric(server_url, "stepaudio:audio_tokens_total")
    ask(page, "What do you hear?")
    wait_for_answers(page, 1)
    assert page.locator(THINKING).count() == 1 and "Thinking" in page.locator(f"{THINKING} .title").inner_text()
    assert page.locator("#chat [data-testid=user] img").count() == 1     # waveform + spectrogram in the chat
    assert page.locator("#chat [data-testid=user]").count() == 3        # text, audio player, picture
    assert metric(server_url, "stepaudio:audio_tokens_total") > audio_before
    assert " 0.0 s used" not in page.locator("#budget-note").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)

    ask(page, "And in one word?")  # a second turn, the history re-sent
    wait_for_answers(page, 2)
    assert page.locator(THINKING).count() == 2
    page.locator("#show-thinking input").uncheck()
    wait_until(lambda: page.locator(THINKING).count() == 0, what="thinking hidden")
    assert page.locator(ANSWERS).count() == 2
    page.locator("#show-thinking input").check()
    wait_until(lambda: page.locator(THINKING).count() == 2, what="thinking shown again")


def test_microphone_recording_reaches_the_model(page, server_url):  # noqa: F811
    limit_thinking(page)
    page.locator("#audio button[aria-label='Record audio']").click()
    page.locator("#audio button.record-button").click()
    page.wait_for_timeout(1500)   # the length of the recording, not a synchronisation
    page.locator("#audio button.stop-button").first.click()
    page.locator("#picture img").wait_for()
    prompt_before = metric(server_url, "vllm:prompt_tokens_total")
    audio_before = metric(server_url, "stepaudio:audio_tokens_total")
    page.locator("#send").click()   # audio only, no text
    wait_for_answers(page, 1)
    heard = metric(server_url, "stepaudio:audio_tokens_total") - audio_before
    assert heard >= 12   # about 1.5 s at 12.5 audio tokens a second
    assert metric(server_url, "vllm:prompt_tokens_total") - prompt_before > heard
    assert " 0.0 s used" not in page.locator("#budget-note").inner_text()


def test_stop_aborts_the_request_on_the_server(page, server_url):  # noqa: F811
    set_number(page, "max-tokens", 3000)   # unlimited thinking: far more than the test waits for
    set_number(page, "temperature", 0)     # greedy: the tiny model's course is the same every run
    aborted = metric(server_url, "stepaudio:requests_aborted_total")
    finished = metric(server_url, "vllm:request_success_total")
    ask(page, "Think about this for a long time.")
    page.locator(THINKING).wait_for()
    wait_until(lambda: metric(server_url, "vllm:num_requests_running") == 1, what="generation running")
    page.locator("#stop").click()
    page.get_by_text("(stopped)").wait_for()
    wait_until(lambda: metric(server_url, "stepaudio:requests_aborted_total") == aborted + 1, what="abort counted")
    wait_until(lambda: metric(server_url, "vllm:num_requests_running") == 0
               and metric(server_url, "vllm:kv_cache_usage_perc") == 0, what="KV cache freed")
    assert metric(server_url, "vllm:request_success_total") == finished   # it did not run to its end


def test_server_error_is_a_readable_chat_message(page, long_clip):  # noqa: F811
    page.locator("#audio input[type=file]").set_input_files(str(long_clip))   # more than the server accepts
    page.locator("#picture img").wait_for()
    ask(page, "Hello")
    page.get_by_text("The server could not answer").wait_for()
    chat = page.locator("#chat").inner_text()
    assert "HTTP 400" in chat and "Traceback" not in chat
    assert "0.0 s used" in page.locator("#budget-note").inner_text()   # a refused turn costs no budget


def test_an_empty_send_is_a_notice_that_leaves_the_page_as_it_was(page):
    limit_thinking(page)
    ask(page, "Hello")
    wait_for_answers(page, 1)
    def shown() -> tuple[list[str], list[str], str]:   # the turns (the thinking block folds away by itself)
        return (page.locator("#chat [data-testid=user]").all_inner_texts(), page.locator(ANSWERS).all_inner_texts(),
                page.locator("#budget-note").inner_text())
    before = shown()
    page.locator("#send").click()   # nothing typed, no audio
    toast = page.locator(".toast-body")
    toast.wait_for()
    assert "Warning" in toast.inner_text() and "Nothing to send" in toast.inner_text()
    page.wait_for_timeout(1000)   # time for any status badge to appear (an error showed at once)
    assert page.locator(".error").count() == 0   # no red "Error" over the chat, audio, note or message box
    assert page.locator("#chat").is_visible() and shown() == before and len(before[0]) == 1


def test_the_budget_note_adds_up_before_anything_is_sent(page):
    assert page.locator("#budget-note").inner_text() == (
        "Audio budget: 0.0 s used, 60.0 s left of 60.0 s per conversation")
