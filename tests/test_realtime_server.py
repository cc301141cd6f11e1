"""/v1/realtime on a real server with the tiny checkpoint: our client, the openai client, errors, barge-in,
disconnects and turn detection. Speech in comes from espeak-ng; speech out from piper."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, metric, reference, running_server, wait_idle  # noqa: F401  (fixtures)
from stepaudio.realtime.client import RealtimeClient, pcm16_24k, realtime_url

pytest.importorskip("piper")
pytest.importorskip("websockets")
ANSWERED = ("completed", "incomplete")   # incomplete: the answer reached max_response_tokens
KNOBS = {"temperature": 1.0, "seed": 3, "think_segment_tokens": 8, "response_segment_tokens": 6,
         "max_thinking_tokens": 40, "max_response_tokens": 40}
SILENCE = bytes(2 * 24000)   # one second of pcm16 at 24 kHz


def espeak_pcm(text: str, tmp: Path) -> bytes:
    if subprocess.run(["which", "espeak-ng"], capture_output=True).returncode:
        pytest.skip("espeak-ng is not installed")
    path = tmp / "q.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    wav, sr = sf.read(path, dtype="float32")
    return pcm16_24k(wav, sr)


@pytest.fixture(scope="module")
def question(tmp_path_factory) -> bytes:
    return espeak_pcm("What is seven plus five?", tmp_path_factory.mktemp("rt"))


@pytest.fixture(scope="module")
def server(reference):  # noqa: F811
    with running_server(reference) as url:
        yield url


def events_until(client: RealtimeClient, kind: str) -> list[dict]:
    seen = []
    while True:
        seen.append(client.recv(timeout=120))
        if seen[-1]["type"] == kind:
            return seen


def test_our_client_gets_the_spoken_answer_and_the_thinking(server: str, question: bytes) -> None:
    with RealtimeClient(realtime_url(server + "/v1", MODEL)) as client:
        assert client.recv()["type"] == "session.created"
        client.configure(schedule="speak-first", **KNOBS)
        result = client.ask(question)
    assert result.status in ANSWERED and not result.errors
    assert result.audio_seconds > 0.2 and result.transcript.strip() and result.thinking
    assert result.marks["first_audio"] <= result.marks["done"]
    order = result.event_types
    assert order[-1] == "response.done" and order.count("response.done") == 1
    assert order.index("input_audio_buffer.committed") < order.index("response.created") \
        < order.index("response.content_part.added") < order.index("response.output_audio.delta")
    assert float(result.metadata["first_audio_s"]) > 0
    assert metric(server, "stepaudio:realtime_first_audio_seconds_count") >= 1
    assert metric(server, "stepaudio:realtime_tts_realtime_factor_count") >= 1
    wait_idle(server)


def test_the_openai_realtime_client_works_unchanged(server: str, question: bytes) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="sk-test")
    audio, transcript, thinking, done = bytearray(), "", "", None
    with client.realtime.connect(model=MODEL) as conn:
        conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}},
                                     "stepaudio": {"schedule": "think-first", **KNOBS}})
        step = 4800
        for i in range(0, len(question), step):
            conn.input_audio_buffer.append(audio=base64.b64encode(question[i:i + step]).decode())
        conn.input_audio_buffer.commit()
        conn.response.create()
        for event in conn:
            if event.type == "session.updated":
                assert event.session.model_dump()["stepaudio"]["schedule"] == "think-first"
            elif event.type == "response.output_audio.delta":
                audio += base64.b64decode(event.delta)
            elif event.type == "response.output_audio_transcript.delta":
                transcript += event.delta
            elif event.type == "response.thinking.delta":   # ours: parsed leniently by the client
                thinking += event.delta
            elif event.type == "error":
                raise AssertionError(event.error.message)
            elif event.type == "response.done":
                done = event
                break
    assert done.response.status in ANSWERED
    assert len(audio) > 24000 * 2 * 0.2 and transcript.strip() and thinking


def test_bad_events_get_error_events_and_the_connection_stays_up(server: str, question: bytes) -> None:
    with RealtimeClient(realtime_url(server + "/v1", MODEL)) as client:
        client.recv()
        bad = [
            ("{not json", "invalid_json"),
            (json.dumps([1, 2]), "invalid_event"),
            (json.dumps({"type": "no.such.event", "event_id": "e1"}), "invalid_event"),
            (json.dumps({"type": "input_audio_buffer.append", "audio": "@@@"}), "invalid_audio"),
            (json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}),
             "invalid_audio"),
            (json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}),
             "unsupported_audio_format"),
            (json.dumps({"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}}),
             "unsupported_audio_format"),
            (json.dumps({"type": "session.update", "session": {"stepaudio": {"schedule": "sometimes"}}}),
             "invalid_value"),
            (json.dumps({"type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty"),
            (json.dumps({"type": "response.cancel"}), "response_cancel_not_active"),
            (json.dumps({"type": "response.create"}), "conversation_empty"),
            # 61 s of audio in one append: more than a turn may hold (60 s)
            (json.dumps({"type": "input_audio_buffer.append",
                         "audio": base64.b64encode(bytes(2 * 24000 * 61)).decode()}), "input_audio_buffer_too_large"),
        ]
        for raw, code in bad:
            client.ws.send(raw)
            event = client.recv()
            assert event["type"] == "error" and event["error"]["code"] == code, (raw[:60], event)
            assert event["error"]["message"] and event["error"]["type"]
        assert event["error"].get("param") == "audio"
        client.ws.send(b"\x00binary")
        assert client.recv()["error"]["code"] == "invalid_event"
        # the session is unchanged and still answers
        client.configure(schedule="no-think", **KNOBS)
        result = client.ask(question)
        assert result.status in ANSWERED and result.audio_seconds > 0
    assert httpx.get(server + "/health").status_code == 200


def test_an_answer_cut_by_its_token_limit_is_incomplete(server: str, question: bytes) -> None:
    """As OpenAI's: status incomplete, reason max_output_tokens, when the limit cut the answer."""
    with RealtimeClient(realtime_url(server + "/v1", MODEL)) as client:
        client.recv()
        client.configure(schedule="no-think", **{**KNOBS, "ignore_eos": True, "max_response_tokens": 10})
        cut = client.ask(question)
    assert (cut.status, cut.status_details) == ("incomplete", {"type": "incomplete", "reason": "max_output_tokens"})
    assert cut.transcript.strip() and not cut.errors


def test_disconnect_mid_answer_frees_both_streams(server: str, question: bytes) -> None:
    with RealtimeClient(realtime_url(server + "/v1", MODEL)) as client:
        client.recv()
        client.configure(schedule="speak-first", **{**KNOBS, "max_thinking_tokens": 2000,
                                                    "max_response_tokens": 2000})
        client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(question).decode()})
        client.send({"type": "input_audio_buffer.commit"})
        client.send({"type": "response.create"})
        events_until(client, "response.thinking.delta")
        assert metric(server, "vllm:num_requests_running") >= 1
    wait_idle(server)


def test_barge_in_cancels_the_answer_and_frees_kv(server: str, question: bytes) -> None:
    before = metric(server, "stepaudio:realtime_barge_ins_total")
    with RealtimeClient(realtime_url(server + "/v1", MODEL)) as client:
        client.recv()
        client.send({"type": "session.update", "session": {
            "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 400}}},
            "stepaudio": {**KNOBS, "max_thinking_tokens": 2000, "max_response_tokens": 2000}}})
        events_until(client, "session.updated")
        client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(question + SILENCE).decode()})
        events_until(client, "response.output_audio.delta")          # the answer is being spoken
        client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(question).decode()})
        seen = events_until(client, "response.done")
        kinds = [e["type"] for e in seen]
        assert "input_audio_buffer.speech_started" in kinds
        done = seen[-1]["response"]
        assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
        assert "conversation.item.truncated" in kinds
        wait_idle(server)
    assert metric(server, "stepaudio:realtime_barge_ins_total") == before + 1


def test_server_vad_splits_two_turns_separated_by_silence(server: str, question: bytes) -> None:
    with RealtimeClient(realtime_url(server + "/v1", MODEL)) as client:
        client.recv()
        client.send({"type": "session.update", "session": {"turn_detection": {
            "type": "server_vad", "silence_duration_ms": 500, "create_response": False}}})
        events_until(client, "session.updated")
        audio = SILENCE + question + SILENCE + question + SILENCE
        for i in range(0, len(audio), 4800):   # 100 ms per append, as a microphone sends it
            client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(audio[i:i + 4800]).decode()})
        kinds = []
        while kinds.count("input_audio_buffer.committed") < 2:
            kinds.append(client.recv(timeout=30)["type"])
    assert kinds.count("input_audio_buffer.speech_started") == 2
    assert kinds.count("input_audio_buffer.speech_stopped") == 2
    assert "response.created" not in kinds


def test_unknown_model_and_missing_key_are_refused(reference, tmp_path: Path, capsys) -> None:  # noqa: F811
    from stepaudio.cli import main

    websockets = pytest.importorskip("websockets")
    with running_server(reference, api_key="secret") as url:
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            RealtimeClient(realtime_url(url + "/v1", MODEL))
        assert refused.value.response.status_code == 401   # with an OpenAI error body saying why
        assert json.loads(refused.value.response.body)["error"]["code"] == "invalid_api_key"
        wav = tmp_path / "q.wav"
        sf.write(wav, np.zeros(1600, dtype=np.float32), 16000)
        assert main(["talk", "--api-base", url + "/v1", "--audio", str(wav), "--out", str(tmp_path / "r.wav"),
                     "--api-key", "wrong"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("stepaudio talk: error: the server refused") and "HTTP 401" in err
        assert "\n" not in err   # one line, no traceback
        with RealtimeClient(realtime_url(url + "/v1", "other-model"), api_key="secret") as client:
            assert client.recv()["error"]["code"] == "model_not_found"
        with RealtimeClient(realtime_url(url + "/v1", MODEL), api_key="secret") as client:
            assert client.recv()["type"] == "session.created"


def test_talk_cli_saves_the_answer_and_prints_the_timeline(server: str, question: bytes, tmp_path: Path,
                                                         capsys) -> None:
    from stepaudio.cli import main

    wav = tmp_path / "q.wav"
    sf.write(wav, np.frombuffer(question, dtype="<i2"), 24000, subtype="PCM_16")
    out = tmp_path / "reply.wav"
    options = ["--think-segment-tokens", "8", "--response-segment-tokens", "6", "--max-thinking-tokens", "40",
               "--max-response-tokens", "40", "--temperature", "1", "--seed", "3"]
    assert main(["talk", "--api-base", server + "/v1", "--audio", str(wav), "--out", str(out), *options]) == 0
    printed = capsys.readouterr().out
    reply, sr = sf.read(out)
    assert sr == 24000 and len(reply) > 0.2 * sr
    for mark in ("speech end", "first thought", "first audio", "done", "said:"):
        assert mark in printed
    assert main(["talk", "--api-base", server + "/v1", "--audio", str(wav), "--out", str(tmp_path / "r.mp3")]) == 1
    assert "--out must be a .wav file" in capsys.readouterr().err


def test_a_websocket_message_over_the_body_cap_closes_that_connection_only(reference) -> None:  # noqa: F811
    import websockets.exceptions

    with running_server(reference, max_body_bytes=64 * 1024) as url:
        with RealtimeClient(realtime_url(url + "/v1", MODEL)) as client:
            assert client.recv()["type"] == "session.created"
            client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(96 * 1024)).decode()})
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                client.recv(timeout=30)
            assert closed.value.rcvd.code == 1009  # message too big
        with RealtimeClient(realtime_url(url + "/v1", MODEL)) as client:  # the server still takes sessions
            assert client.recv()["type"] == "session.created"
        assert httpx.get(url + "/health").status_code == 200
