"""Readers for evaluation manifests: our JSONL and the MMAU / MMAR, Big Bench Audio and Spoken-MQA layouts.

Every reader gives `EvalItem`s with audio paths resolved against the manifest's folder (URLs are kept),
so a benchmark folder can be moved as a whole. Layouts, as the benchmarks publish their metadata:

- `jsonl` (ours): {"id", "audio": path | [paths], "question", "choices": [...], "answer", "category",
  "task": mcq|short|math|bba|open}; `choices` and `task` optional (mcq when there are choices).
- `mmau`: a JSON list of {"id", "audio_id", "question", "choices", "answer", "task", "category",
  "sub-category", ...} (Sakshi113/MMAU mmau-test-mini.json); the category is `task` (sound/speech/music).
- `mmar`: a JSON list of {"id", "audio_path", "question", "choices", "answer", "modality", "category",
  "sub-category", ...} (ddlBoJack/MMAR MMAR-meta.json); the category is `modality`.
- `bba`: JSONL of {"id", "category", "official_answer", "file_name"} (Big Bench Audio metadata.jsonl);
  the question is the audio itself.
- `spoken-mqa`: JSON or JSONL rows with an audio path ("audio", "audio_path", "path" or "file_name"), the
  numeric "answer", and "category" (or "subset", "split", "type"; the dataset's splits are short_digit,
  long_digit, single_step_reasoning, multi_step_reasoning); [I]: it ships as parquet on the hub, so this
  reads a JSON export of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .items import EvalItem

LAYOUTS = ("auto", "jsonl", "mmau", "mmar", "bba", "spoken-mqa")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file and, where known, the line or item."""


def _records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}: not valid JSON ({e})") from None
        if not all(isinstance(r, dict) for r in data):
            raise ManifestError(f"{path}: expected a list of objects")
        return data
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ManifestError(f"{path}:{number}: expected a JSON object")
        records.append(record)
    return records


def _resolve(folder: Path, audio: str) -> str:
    if "://" in audio or audio.startswith("data:"):
        return audio
    path = Path(audio).expanduser()
    return str(path if path.is_absolute() else (folder / path).resolve())


def _option_answer(answer: str, choices: list[str]) -> str:
    """The option text for an answer given as the text itself or as its letter ("B")."""
    answer = str(answer).strip()
    texts = [str(c).strip() for c in choices]
    if answer in texts:
        return answer
    if len(answer) == 1 and answer.isalpha() and ord(answer.upper()) - 65 < len(texts):
        return texts[ord(answer.upper()) - 65]
    return answer  # EvalItem names the mismatch


def _need(record: dict[str, Any], *names: str) -> Any:
    for name in names:
        if record.get(name) not in (None, ""):
            return record[name]
    raise KeyError(" or ".join(repr(n) for n in names))


def _native(record: dict[str, Any], folder: Path) -> EvalItem:
    audio = _need(record, "audio")
    audio = [audio] if isinstance(audio, str) else list(audio)
    choices = [str(c).strip() for c in record.get("choices") or []]
    style = record.get("task") or ("mcq" if choices else "short")
    answer = _option_answer(record["answer"], choices) if choices else str(_need(record, "answer"))
    extra = {k: v for k, v in record.items() if k not in {"id", "audio", "question", "choices", "answer", "category",
                                                          "task"}}
    return EvalItem(str(_need(record, "id")), tuple(_resolve(folder, a) for a in audio), str(record.get("question", "")),
                    answer, tuple(choices), str(record.get("category") or "all"), style, extra)


def _multiple_choice(audio_key: str, category_key: str) -> Callable[[dict[str, Any], Path], EvalItem]:
    def read(record: dict[str, Any], folder: Path) -> EvalItem:
        choices = [str(c).strip() for c in _need(record, "choices")]
        return EvalItem(str(_need(record, "id")), (_resolve(folder, str(_need(record, audio_key))),),
                        str(_need(record, "question")), _option_answer(_need(record, "answer"), choices),
                        tuple(choices), str(record.get(category_key) or "all"), "mcq", dict(record))
    return read


def _bba(record: dict[str, Any], folder: Path) -> EvalItem:
    return EvalItem(str(_need(record, "id")), (_resolve(folder, str(_need(record, "file_name"))),), "",
                    str(_need(record, "official_answer")), (), str(record.get("category") or "all"), "bba",
                    dict(record))


def _spoken_mqa(record: dict[str, Any], folder: Path) -> EvalItem:
    audio = str(_need(record, "audio", "audio_path", "path", "file_name"))
    category = next((record[k] for k in ("category", "subset", "split", "type") if record.get(k)), "all")
    # The question's text is the transcript of the audio: it stays in `meta`, the prompt is the instruction.
    return EvalItem(str(record.get("id", record.get("question_id", ""))) or audio, (_resolve(folder, audio),),
                    "", str(_need(record, "answer")), (), str(category), "math", dict(record))


READERS: dict[str, Callable[[dict[str, Any], Path], EvalItem]] = {
    "jsonl": _native, "mmau": _multiple_choice("audio_id", "task"), "mmar": _multiple_choice("audio_path", "modality"),
    "bba": _bba, "spoken-mqa": _spoken_mqa}


def detect_layout(record: dict[str, Any]) -> str:
    """The layout a record's keys say it is in (Spoken-MQA exports are too plain to tell: name it)."""
    if "audio_id" in record and "choices" in record:
        return "mmau"
    if "audio_path" in record and "choices" in record:
        return "mmar"
    if "official_answer" in record and "file_name" in record:
        return "bba"
    if "audio" in record:
        return "jsonl"
    raise ManifestError(f"cannot tell the layout from the keys {sorted(record)}; pass --layout")


def read_manifest(path: str | Path, layout: str = "auto", category_field: str | None = None) -> list[EvalItem]:
    """All items of a manifest; `category_field` groups by another field of the raw records."""
    path = Path(path)
    if layout not in LAYOUTS:
        raise ManifestError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    records = _records(path)
    if not records:
        raise ManifestError(f"{path}: the manifest has no items")
    read = READERS[detect_layout(records[0]) if layout == "auto" else layout]
    items, seen = [], set()
    for index, record in enumerate(records):
        where = f"{path}: item {record.get('id', index + 1)!r}"
        try:
            item = read(record, path.parent)
        except KeyError as e:
            raise ManifestError(f"{where}: missing field {e.args[0]}") from None
        except ValueError as e:
            raise ManifestError(f"{path}: {e}") from None
        if category_field:
            if category_field not in record:
                raise ManifestError(f"{where}: no field {category_field!r} to group by")
            item = replace(item, category=str(record[category_field]))
        if item.id in seen:
            raise ManifestError(f"{where}: duplicate id (results are keyed by id)")
        seen.add(item.id)
        items.append(item)
    return items
