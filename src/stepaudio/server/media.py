"""Where a request's audio may come from, and fetching it: the server's media policy.

Inline audio (`input_audio` base64, `data:` URLs) is always accepted. `file://` URLs are read only
under --allowed-local-media-path (symlinks resolved first), and http(s) URLs are fetched only from
--allowed-media-domains (under "*" only public addresses), without following redirects, within a time
limit and a size cap. Every
audio part leaves here as `{"type": "audio", "audio": <encoded bytes>}`, ready for decoding.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import ParseResult, unquote, urlparse

import httpx

from ..audio.io import AudioError
from ..inputs import decode_base64, decode_data_url
from ..text.chat_template import AUDIO_PART_TYPES
from .errors import APIError, bad_request
from .settings import ServerSettings

REMOTE_SCHEMES = ("http", "https")


def parse_url(url: str) -> ParseResult:
    """The parsed URL, or a 400 for one urllib cannot take apart ("http://[::1", a port past 65535)."""
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 (validates the port)
    except ValueError as e:
        raise bad_request(f"invalid audio URL {url[:60]!r}: {e}", code="invalid_audio_url", param="audio_url") from None
    return parsed


def is_remote(part: dict[str, Any]) -> bool:
    return part.get("type") == "audio_url" and parse_url(part["audio_url"]["url"]).scheme in REMOTE_SCHEMES


def audio_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every audio part of the conversation, in prompt order."""
    return [p for m in messages if isinstance(m.get("content"), list)
            for p in m["content"] if p.get("type") in AUDIO_PART_TYPES]


def _encoded(data: bytes) -> dict[str, Any]:
    return {"type": "audio", "audio": data}


def _replace_parts(messages: list[dict[str, Any]], new: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with the parts whose id() is a key of `new` swapped for their replacement."""
    out = []
    for m in messages:
        if isinstance(m.get("content"), list):
            m = {**m, "content": [new.get(id(p), p) for p in m["content"]]}
        out.append(m)
    return out


async def fetch_remote_audio(messages: list[dict[str, Any]], settings: ServerSettings) -> list[dict[str, Any]]:
    """Download the http(s) audio parts (concurrently); other parts are left as they are."""
    remote = [p for p in audio_parts(messages) if is_remote(p)]
    if not remote:
        return messages
    data = await asyncio.gather(*(_fetch(p["audio_url"]["url"], settings) for p in remote))
    return _replace_parts(messages, {id(p): _encoded(d) for p, d in zip(remote, data)})


def inline_audio(messages: list[dict[str, Any]], settings: ServerSettings) -> list[dict[str, Any]]:
    """Decode base64 and data: parts and read allowed local files (blocking: run it off the event loop)."""
    local = [p for p in audio_parts(messages) if p.get("type") != "audio"]
    return _replace_parts(messages, {id(p): _encoded(_local_bytes(p, settings)) for p in local})


def _local_bytes(part: dict[str, Any], settings: ServerSettings) -> bytes:
    if part["type"] == "input_audio":
        data = part["input_audio"]["data"]
        return decode_data_url(data) if data.startswith("data:") else decode_base64(data)
    url = part["audio_url"]["url"]
    if url.startswith("data:"):
        return decode_data_url(url)
    if url.startswith("file:"):
        return _read_local_file(url, settings)
    raise bad_request(f"audio_url must be a data:, file:// or http(s) URL, got {url[:40]!r}",
                      code="invalid_audio_url", param="audio_url")


def _read_local_file(url: str, settings: ServerSettings) -> bytes:
    root = settings.allowed_local_media_path
    if root is None:
        raise bad_request("file:// audio URLs are disabled; start the server with --allowed-local-media-path",
                          code="media_not_allowed", param="audio_url")
    parsed = parse_url(url)
    if parsed.netloc not in ("", "localhost"):
        raise bad_request(f"file:// URL names a remote host {parsed.netloc!r}", code="media_not_allowed",
                          param="audio_url")
    path = Path(unquote(parsed.path)).resolve()
    if not path.is_relative_to(root.resolve()):
        raise bad_request(f"{path} is outside --allowed-local-media-path", code="media_not_allowed",
                          param="audio_url")
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    if path.stat().st_size > settings.max_body_bytes:
        raise _too_big(settings)
    return path.read_bytes()


def _too_big(settings: ServerSettings) -> APIError:
    return bad_request(f"audio file is larger than the {settings.max_body_bytes} byte limit",
                       code="audio_too_large", param="audio_url")


def _named_hosts(settings: ServerSettings) -> list[str]:
    return [d.lower() for d in settings.allowed_media_domains]


def _host(url: str) -> str:
    return (parse_url(url).hostname or "").lower()


async def _refuse_private_addresses(url: str) -> None:
    """Under "*", only hosts on the public internet: a client must not make the server fetch from
    loopback, the private network or a cloud metadata address (169.254.169.254). A host named in
    --allowed-media-domains is trusted whatever its address."""
    parsed = parse_url(url)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parsed.hostname, parsed.port or 443)
    except (OSError, UnicodeError):
        raise bad_request(f"could not resolve the audio host {parsed.hostname!r}", code="media_fetch_failed",
                          param="audio_url") from None
    for info in infos:
        if not ipaddress.ip_address(info[4][0].split("%", 1)[0]).is_global:
            raise bad_request(f"audio host {parsed.hostname!r} has the non-public address {info[4][0]}; name it in "
                              "--allowed-media-domains to allow it", code="media_not_allowed", param="audio_url")


async def _fetch(url: str, settings: ServerSettings) -> bytes:
    named = _host(url) in _named_hosts(settings)
    if not named and "*" not in _named_hosts(settings):
        raise bad_request("http(s) audio URLs are disabled for this host; start the server with "
                          "--allowed-media-domains", code="media_not_allowed", param="audio_url")
    if not named:
        await _refuse_private_addresses(url)
    try:
        return await asyncio.wait_for(_download(url, settings), timeout=settings.media_fetch_timeout)
    except (httpx.HTTPError, asyncio.TimeoutError) as e:
        reason = "timed out" if isinstance(e, asyncio.TimeoutError) else type(e).__name__
        raise bad_request(f"could not fetch audio from {url}: {reason}", code="media_fetch_failed",
                          param="audio_url") from None


async def _download(url: str, settings: ServerSettings) -> bytes:
    """GET without redirects (a redirect could leave the allowed domains), stopping at the size cap."""
    async with httpx.AsyncClient(follow_redirects=False, timeout=settings.media_fetch_timeout) as client:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise bad_request(f"fetching audio from {url} answered HTTP {response.status_code}",
                                  code="media_fetch_failed", param="audio_url")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > settings.max_body_bytes:
                    raise _too_big(settings)
            return bytes(data)
