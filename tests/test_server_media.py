"""Audio by URL: http(s) only from allowed hosts, without redirects, within a time and size limit;
file:// only under the allowed folder, symlinks included."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, audio_part, reference, running_server, tone, wav_bytes  # noqa: F401

CLIP = wav_bytes(tone(2.0, 600))
CAP = 2**20


class Files(BaseHTTPRequestHandler):
    """/clip.wav, /big.wav (over the cap), /slow.wav (past the timeout), /moved (a redirect), else 404."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/clip.wav")
            self.end_headers()
            return
        if self.path == "/slow.wav":
            time.sleep(2)
        body = {"/clip.wav": CLIP, "/slow.wav": CLIP, "/big.wav": b"\0" * (CAP + 1)}.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def files():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def url(reference, tmp_path_factory):  # noqa: F811
    media = tmp_path_factory.mktemp("media")
    with running_server(reference, allowed_media_domains=["127.0.0.1"], media_fetch_timeout=0.5,
                        max_body_bytes=CAP, allowed_local_media_path=media) as base:
        yield base, media


def ask(url: str, part: dict) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=30, json={
        "model": MODEL, "temperature": 0, "max_tokens": 5, "messages": [{"role": "user", "content": [part]}]})


def by_url(address: str) -> dict:
    return {"type": "audio_url", "audio_url": {"url": address}}


def test_an_allowed_host_serves_the_same_audio(url, files):
    fetched = ask(url[0], by_url(files + "/clip.wav"))
    inline = ask(url[0], audio_part(CLIP))
    assert fetched.status_code == 200
    assert fetched.json()["choices"] == inline.json()["choices"]
    assert fetched.json()["usage"]["prompt_tokens_details"]["audio_tokens"] == 25


@pytest.mark.parametrize(("path", "code", "words"), [
    ("/big.wav", "audio_too_large", "byte limit"),
    ("/slow.wav", "media_fetch_failed", "timed out"),
    ("/moved", "media_fetch_failed", "HTTP 302"),
    ("/missing.wav", "media_fetch_failed", "HTTP 404"),
])
def test_fetch_failures_are_400(url, files, path, code, words):
    response = ask(url[0], by_url(files + path))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"]


def test_other_hosts_are_refused(url, files):
    response = ask(url[0], by_url(files.replace("127.0.0.1", "localhost") + "/clip.wav"))
    assert response.status_code == 400 and response.json()["error"]["code"] == "media_not_allowed"


def test_a_symlink_out_of_the_allowed_folder_is_refused(url, tmp_path):
    outside = tmp_path / "outside.wav"
    outside.write_bytes(CLIP)
    link = url[1] / "link.wav"
    link.symlink_to(outside)
    response = ask(url[0], by_url(f"file://{link}"))
    assert response.status_code == 400 and response.json()["error"]["code"] == "media_not_allowed"
    (url[1] / "inside.wav").write_bytes(CLIP)
    assert ask(url[0], by_url(f"file://{url[1] / 'inside.wav'}")).status_code == 200
