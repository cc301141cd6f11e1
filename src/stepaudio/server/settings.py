"""What the HTTP layer needs to know beyond the engine: names, limits, media policy, parsers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MiB = 2**20


@dataclass
class ServerSettings:
    served_model_names: list[str]
    model_root: str                              # the checkpoint folder, shown as the model's root
    api_key: str | None = None                   # when set, /v1 and /tokenize need "Authorization: Bearer KEY"
    reasoning_parser: str | None = None          # "step_audio": reasoning_content apart; None: raw content
    chat_template: str | None = None             # None: the checkpoint's, else the official R1 template
    max_audio_seconds: float = 1200.0            # all audio of one request together
    max_audio_parts: int = 64                    # audio parts per request, as vLLM's --limit-mm-per-prompt
    allowed_local_media_path: Path | None = None     # file:// audio only under this folder
    allowed_media_domains: list[str] = field(default_factory=list)  # http(s) audio only from these ("*": any)
    media_fetch_timeout: float = 10.0            # seconds, vLLM's VLLM_AUDIO_FETCH_TIMEOUT default
    max_body_bytes: int = 64 * MiB               # request bodies and fetched audio files
    max_queue: int = 256                         # requests waiting beyond the running ones; more get 429
    log_requests: bool = False                   # one log line per request (vLLM's --enable-log-requests)
    shutdown_timeout: float = 30.0               # on SIGTERM, seconds in-flight requests get to finish

    @property
    def model_name(self) -> str:
        return self.served_model_names[0]
