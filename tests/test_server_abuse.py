"""Hostile requests: paths out of the media folder, private addresses, decompression bombs, odd API keys
and oversized bodies on every route. Each gets a 4xx with an OpenAI-style body and the server keeps serving."""

from __future__ import annotations

import io
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import soundfile as sf

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, audio_part, reference, running_server, tone, wav_bytes  # noqa: F401

CAP = 2**20
CLIP = wav_bytes(tone(1.0))
KEY = "sk-tést"
AUTH = {b"authorization": b"Bearer " + KEY.encode()}


class Clip(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(CLIP)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def clip_host():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Clip)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media") / "allowed"
    root.mkdir()
    (root / "inside.wav").write_bytes(CLIP)
    (root.parent / "secret.wav").write_bytes(CLIP)  # a sibling of the allowed folder
    (root / "sub").mkdir()
    (root / "up").symlink_to(root.parent, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def url(reference, media):  # noqa: F811
    with running_server(reference, api_key=KEY, allowed_media_domains=["*"], allowed_local_media_path=media,
                        max_body_bytes=CAP, max_audio_seconds=60.0, media_fetch_timeout=2.0) as base:
        yield base


def ask(url: str, *parts: dict, path: str = "/v1/chat/completions", key: bytes | None = KEY.encode(),
        **kwargs) -> httpx.Response:
    headers = {b"authorization": b"Bearer " + key} if key is not None else {}
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": list(parts) or "hi"}]}
    return httpx.post(url + path, json=body, headers=headers, timeout=30, **kwargs)


def by_url(address: str) -> dict:
    return {"type": "audio_url", "audio_url": {"url": address}}


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert code is None or error["code"] == code, error
    return error


@pytest.fixture(autouse=True)
def still_serving(url):
    yield
    ok = ask(url)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("where", [
    "{root}/../secret.wav", "{root}/sub/../../secret.wav", "{root}/%2e%2e/secret.wav", "{root}/up/secret.wav",
    "{root}/up/allowed/../secret.wav", "/etc/passwd", "{root}/../allowed/../secret.wav",
])
def test_file_urls_cannot_leave_the_allowed_folder(url, media, where):
    address = "file://" + where.format(root=quote(str(media)))
    assert_error(ask(url, by_url(address)), 400, "media_not_allowed")


def test_file_urls_inside_the_folder_work_also_through_a_symlink_that_comes_back(url, media):
    assert ask(url, by_url(f"file://{media}/inside.wav")).status_code == 200
    assert ask(url, by_url(f"file://{media}/up/allowed/inside.wav")).status_code == 200
    assert_error(ask(url, by_url(f"file://{media}/sub")), 400, "invalid_audio")  # a folder, not a file


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "169.254.169.254", "10.0.0.1", "0.0.0.0"])
def test_a_wildcard_domain_list_never_reaches_private_addresses(url, clip_host, host):
    error = assert_error(ask(url, by_url(f"http://{host}:{clip_host}/clip.wav")), 400)
    assert error["code"] in ("media_not_allowed", "media_fetch_failed"), error


def test_naming_a_private_host_allows_it(reference, clip_host):  # noqa: F811
    with running_server(reference, allowed_media_domains=["*", "127.0.0.1"]) as base:
        response = httpx.post(base + "/v1/chat/completions", timeout=30, json={
            "model": MODEL, "max_tokens": 2,
            "messages": [{"role": "user", "content": [by_url(f"http://127.0.0.1:{clip_host}/clip.wav")]}]})
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("address", ["http://[::1", "http://example.com:99999/a.wav", "http:///a.wav",
                                     "https://exa mple.com/a.wav", "http://\u2603.invalid/a.wav"])
def test_malformed_http_urls_are_400(url, address):
    assert_error(ask(url, by_url(address)), 400)


def test_hours_of_silence_in_a_small_flac_are_refused_before_decoding(url):
    buf = io.BytesIO()
    sf.write(buf, np.zeros(1000 * 3600 * 4, np.int16), 1000, format="FLAC")  # 4 h at 1 kHz: about 47 KB
    data = buf.getvalue()
    assert len(data) < 100_000
    start = time.monotonic()
    error = assert_error(ask(url, audio_part(data)), 400, "audio_too_long")
    assert "14400.0 s" in error["message"]
    # Decoding all of it and resampling to 16 kHz took 17 s and 1.2 GB here: the refusal must not.
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("key", [b"sk-t\xe9st", KEY.encode() + b"x", b"a", b"\xff" * 64, "sk-tëst".encode()])
def test_wrong_api_keys_of_any_bytes_are_401(url, key):
    assert_error(ask(url, key=key), 401, "invalid_api_key")


def test_the_right_non_ascii_key_passes(url):
    assert ask(url).status_code == 200


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
def test_every_body_route_caps_the_body_even_without_a_length(url, path):
    def chunks():
        for _ in range(CAP // 2**16 + 2):
            yield b" " * 2**16  # chunked transfer: no Content-Length to refuse up front

    response = httpx.post(url + path, content=chunks(), timeout=30,
                          headers={**AUTH, b"content-type": b"application/json"})
    assert_error(response, 413, "request_too_large")


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/metrics", "/version", "/openapi.json"])
def test_a_huge_body_on_a_get_route_is_not_read(url, path):
    start = time.monotonic()
    response = httpx.request("GET", url + path, content=os.urandom(8 * CAP), timeout=30,
                             headers=AUTH)
    assert response.status_code == 200 and time.monotonic() - start < 10


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "webm", "m4a"])  # soundfile and PyAV (webm, m4a)
def test_every_decoder_stops_at_the_length_cap(encoded_speech, speech_wav, ext):
    from stepaudio.audio.io import AudioTooLong, load_audio

    path = speech_wav if ext == "wav" else encoded_speech(ext)  # about 6 s of speech
    with pytest.raises(AudioTooLong, match="s long; at most 2 s allowed"):
        load_audio(path, max_seconds=2.0)
    assert len(load_audio(path, max_seconds=60.0)) > 5 * 16000


def test_the_realtime_socket_takes_the_non_ascii_key_and_refuses_wrong_ones(url):
    import asyncio

    import websockets

    async def connect(key: str) -> int:
        """0 when the session opened (a first event came), else the close code or the refusing HTTP status."""
        address = url.replace("http://", "ws://") + "/v1/realtime"
        try:  # websockets sends header text as UTF-8, as GateMiddleware compares it
            async with websockets.connect(address, additional_headers={"Authorization": "Bearer " + key},
                                          open_timeout=10) as ws:
                await ws.recv()
        except websockets.ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else -1
        except websockets.InvalidStatus as e:
            return e.response.status_code
        return 0

    # Both were a failed handshake before (compare_digest raised on the non-ASCII str).
    assert asyncio.run(connect(KEY)) == 0
    assert asyncio.run(connect("ÿÿÿÿ")) == 401
