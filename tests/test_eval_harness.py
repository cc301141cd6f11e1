"""`stepaudio eval`: manifest layouts, prompts as upstream builds them, retries, resume, a run against a
tiny-model server (and the same run in-process), and a thinking-budget sweep's report and plot."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, reference, running_server  # noqa: F401  (fixture)
from stepaudio.cli import main
from stepaudio.engine.sampling import SamplingParams
from stepaudio.evaluation.http import RequestFailed, post_json
from stepaudio.evaluation.manifest import ManifestError, read_manifest
from stepaudio.evaluation.prompts import BBA_INSTRUCTION, MCQ_INSTRUCTION, build_messages
from stepaudio.evaluation.runner import (InProcessBackend, ResultStore, Sampling, ServerBackend, parse_budgets,
                                         run_eval)
from stepaudio.evaluation.scoring import rule_correct


def _tone(path: Path, freq: float, seconds: float = 0.6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), 16000, subtype="PCM_16")
    return path


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small manifest in our layout: multiple choice, short answer and spoken-math items."""
    folder = tmp_path_factory.mktemp("bench")
    for i in range(4):
        _tone(folder / "audio" / f"t{i}.wav", 300 + 200 * i)
    return _write_jsonl(folder / "manifest.jsonl", [
        {"id": "m0", "audio": "audio/t0.wav", "question": "Which is it?", "choices": ["low", "high"],
         "answer": "low", "category": "pitch"},
        {"id": "m1", "audio": "audio/t1.wav", "question": "Which is it?", "choices": ["low", "high"],
         "answer": "B", "category": "pitch"},
        {"id": "s0", "audio": ["audio/t2.wav"], "question": "How many tones?", "answer": "1", "category": "count"},
        {"id": "x0", "audio": "audio/t3.wav", "question": "", "answer": "7", "category": "math", "task": "math"},
    ])


def test_our_layout_resolves_audio_and_letters(bench):
    items = read_manifest(bench)
    assert [i.id for i in items] == ["m0", "m1", "s0", "x0"]
    assert items[0].audio == (str((bench.parent / "audio" / "t0.wav").resolve()),)
    assert items[1].answer == "high" and items[1].style == "mcq" and items[2].style == "short"
    assert items[3].style == "math" and {i.category for i in items} == {"pitch", "count", "math"}


def test_benchmark_layouts(tmp_path):
    mmau = tmp_path / "mmau" / "mmau-test-mini.json"
    mmau.parent.mkdir()
    mmau.write_text(json.dumps([{"id": "u1", "audio_id": "./test-mini-audios/u1.wav", "question": "What plays?",
                                 "choices": ["Piano", "Guitar"], "answer": "Guitar", "dataset": "x",
                                 "task": "music", "category": "instrument", "sub-category": "id"}]))
    item = read_manifest(mmau)[0]
    assert item.audio == (str(tmp_path / "mmau" / "test-mini-audios" / "u1.wav"),)
    assert (item.style, item.category, item.answer) == ("mcq", "music", "Guitar")
    assert read_manifest(mmau, category_field="sub-category")[0].category == "id"
    mmar = tmp_path / "MMAR-meta.json"
    mmar.write_text(json.dumps([{"id": "r1", "audio_path": "audio/r1.wav", "question": "Sincere?",
                                 "choices": ["Yes", "No"], "answer": "No", "modality": "speech",
                                 "category": "Semantic"}]))
    assert (read_manifest(mmar)[0].category, read_manifest(mmar)[0].answer) == ("speech", "No")
    bba = _write_jsonl(tmp_path / "metadata.jsonl", [{"id": "b1", "category": "navigate", "official_answer": "yes",
                                                      "file_name": "data/b1.mp3"}])
    item = read_manifest(bba)[0]
    assert (item.style, item.question, item.answer, item.category) == ("bba", "", "yes", "navigate")
    mqa = _write_jsonl(tmp_path / "mqa.jsonl", [{"id": "q1", "audio_path": "wav/q1.wav",
                                                 "question": "What is two plus two?", "answer": "4",
                                                 "subset": "arithmetic"}])
    item = read_manifest(mqa, layout="spoken-mqa")[0]
    assert (item.style, item.question, item.category) == ("math", "", "arithmetic")  # the transcript is not sent
    assert item.meta["question"] == "What is two plus two?"


@pytest.mark.parametrize(("records", "message"), [
    ([{"id": "a", "audio": "a.wav", "question": "q"}], "missing field 'answer'"),
    ([{"id": "a", "audio": "a.wav", "question": "q", "answer": "1"}] * 2, "duplicate id"),
    ([{"id": "a", "audio": "a.wav", "question": "q", "choices": ["x", "y"], "answer": "z"}], "not one of its choices"),
    ([{"what": 1}], "cannot tell the layout"),
])
def test_bad_manifests_name_the_problem(tmp_path, records, message):
    with pytest.raises(ManifestError, match=message):
        read_manifest(_write_jsonl(tmp_path / "m.jsonl", records))


def test_unreadable_manifests(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "none.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n{oops\n')
    with pytest.raises(ManifestError, match="bad.jsonl:2"):
        read_manifest(tmp_path / "bad.jsonl")
    with pytest.raises(ManifestError, match="unknown layout"):
        read_manifest(tmp_path / "bad.jsonl", layout="csv")


def test_prompts_follow_the_upstream_scripts(bench):
    items = read_manifest(bench)
    user, assistant = build_messages(items[0])
    assert user["content"][0] == {"type": "text", "text": f"Which is it?\n{MCQ_INSTRUCTION}A. low\nB. high\n"}
    assert user["content"][1]["type"] == "input_audio" and len(user["content"]) == 2
    assert assistant == {"role": "assistant", "content": "<think>\n"}
    math_user = build_messages(items[3])[0]["content"]
    assert math_user[0] == {"type": "text", "text": "Solve the given math question step by step."}
    bba = read_manifest(_write_jsonl(bench.parent / "bba.jsonl", [
        {"id": "b", "category": "c", "official_answer": "no", "file_name": "audio/t0.wav"}]))[0]
    content = build_messages(bba)[0]["content"]
    assert content[0]["type"] == "input_audio" and content[1] == {"type": "text", "text": BBA_INSTRUCTION}


def test_budgets_parse():
    assert parse_budgets("0, 64,256,inf") == [0, 64, 256, None]
    for bad in ("", "5,5", "-1", "ten"):
        with pytest.raises(ValueError):
            parse_budgets(bad)


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 (Retry-After: 0) `fail` times, then 200; a body {"bad": 1} gets 400 at once."""
    fail = 2
    calls = 0

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        status = 400 if body.get("bad") else (503 if type(self).calls <= type(self).fail else 200)
        payload = {"error": {"message": "nope", "type": "invalid_request_error"}} if status >= 400 else {"ok": 1}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_retries_with_backoff_on_busy_servers_only():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
    try:
        assert post_json(url, {"x": 1}, retries=3) == {"ok": 1} and _Flaky.calls == 3
        _Flaky.calls = 0
        with pytest.raises(RequestFailed, match="HTTP 400: nope"):
            post_json(url, {"bad": 1}, retries=3)
        assert _Flaky.calls == 1
        _Flaky.calls, _Flaky.fail = 0, 10
        with pytest.raises(RequestFailed, match="failed 3 times"):
            post_json(url, {"x": 1}, retries=2, backoff=0.01)
    finally:
        server.shutdown()


def _check_records(records: list[dict], items, budgets) -> None:
    by_id = {i.id: i for i in items}
    assert sorted((r["id"], str(r["budget"])) for r in records) == sorted(
        (i.id, str("inf" if b is None else b)) for i in items for b in budgets)
    for r in records:
        assert "error" not in r, r
        if r["budget"] == 0:
            assert r["reasoning_tokens"] == 0 and r["reasoning"] == ""
        elif r["budget"] != "inf":
            assert r["reasoning_tokens"] <= r["budget"]
        if r["answer"] is None:
            assert r["correct"] is False and r["scored_by"] == "unanswered"
        else:
            assert r["correct"] is rule_correct(r["answer"], by_id[r["id"]])


def test_server_run_matches_the_in_process_run_and_resumes(bench, reference, tmp_path):  # noqa: F811
    items = read_manifest(bench)
    budgets = [0, 3, None]
    sampling = Sampling(max_tokens=12, temperature=0.0)
    with running_server(reference) as url:
        store = ResultStore(tmp_path / "server.jsonl")
        served = run_eval(items, ServerBackend(url + "/v1"), store, budgets, sampling, concurrency=3, progress=False)
        _check_records(served, items, budgets)
        lines = store.path.read_text().count("\n")
        # A rerun skips everything; an error line and a line cut by a crash are run again.
        again = run_eval(items, ServerBackend(url + "/v1", MODEL), ResultStore(store.path), budgets, sampling,
                         progress=False)
        assert store.path.read_text().count("\n") == lines and len(again) == len(served)
        with store.path.open("a") as f:
            f.write(json.dumps({"id": "s0", "budget": 3, "error": "RequestFailed: boom"}) + "\n" + '{"id": "m0", "bu')
        retried = run_eval(items, ServerBackend(url + "/v1"), ResultStore(store.path), budgets, sampling,
                           progress=False)
        assert store.path.read_text().count("\n") == lines + 3  # the error line, the cut line closed, the rerun
        _check_records(retried, items, budgets)
    local = run_eval(items, InProcessBackend(reference), ResultStore(tmp_path / "local.jsonl"), budgets, sampling,
                     concurrency=2, progress=False)
    key = {(r["id"], r["budget"]): (r["answer"], r["reasoning"], r["reasoning_tokens"]) for r in served}
    assert {(r["id"], r["budget"]): (r["answer"], r["reasoning"], r["reasoning_tokens"]) for r in local} == key


def test_unreadable_audio_fails_only_its_item(bench, reference, tmp_path):  # noqa: F811
    manifest = _write_jsonl(tmp_path / "m.jsonl", [
        {"id": "ok", "audio": str(bench.parent / "audio" / "t0.wav"), "question": "q", "answer": "1"},
        {"id": "gone", "audio": "missing.wav", "question": "q", "answer": "1"}])
    records = run_eval(read_manifest(manifest), InProcessBackend(reference), ResultStore(tmp_path / "r.jsonl"),
                       sampling=Sampling(max_tokens=4, temperature=0.0), progress=False)
    by_id = {r["id"]: r for r in records}
    assert "error" not in by_id["ok"] and "missing.wav" in by_id["gone"]["error"]


def test_budget_sweep_writes_a_plot_and_a_report(bench, reference, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "sweep"
    with running_server(reference) as url:
        code = main(["eval", str(bench), "--server", url + "/v1", "--thinking-budgets", "0,2,inf", "--out", str(out),
                     "--temperature", "0", "--max-tokens", "8", "--no-progress"])
    assert code == 0
    report = (out / "report.md").read_text()
    sweep_rows = [ln for ln in report.split("## Per category")[0].splitlines() if ln.startswith("| ") and
                  ln.split("|")[1].strip() in ("0", "2", "inf")]
    assert [ln.split("|")[1].strip() for ln in sweep_rows] == ["0", "2", "inf"]
    with Image.open(out / "accuracy_vs_reasoning_tokens.png") as png:
        assert png.format == "PNG" and png.size[0] > 300
    assert "| inf | overall | 4 |" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "none.jsonl"), "--model", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("stepaudio eval: error:") and "no such manifest" in err and "\n" not in err
    assert main(["eval", str(tmp_path / "none.jsonl"), "--thinking-budgets", "1,x"]) == 1
    assert "thinking budget" in capsys.readouterr().err


def test_sampling_fields_are_engine_fields():
    SamplingParams(**Sampling(top_p=0.9, repetition_penalty=1.07, seed=3).options())


@pytest.mark.parametrize(("text", "ok"), [
    ("CORRECT", True), ("correct.", True), ("INCORRECT", False), ("Incorrect: it says 4", False),
    ("<think>is it correct? no</think>\nINCORRECT", False), ("I cannot tell", False), ("", False),
])
def test_judge_verdicts(text, ok):
    from stepaudio.evaluation.judge import parse_verdict

    assert parse_verdict(text) is ok


def test_open_items_need_a_judge(bench, reference, tmp_path):  # noqa: F811
    from stepaudio.evaluation.judge import Judge

    manifest = _write_jsonl(tmp_path / "open.jsonl", [
        {"id": "o", "audio": str(bench.parent / "audio" / "t0.wav"), "question": "Describe the sound.",
         "answer": "a steady tone", "task": "open"}])
    items, sampling = read_manifest(manifest), Sampling(max_tokens=6, temperature=0.0)
    with pytest.raises(ValueError, match="pass --judge-url"):
        run_eval(items, InProcessBackend(reference), ResultStore(tmp_path / "a.jsonl"), sampling=sampling,
                 progress=False)
    with running_server(reference) as url:  # the tiny model as the judge: a real request, a real (random) reply
        judged = run_eval(items, InProcessBackend(reference), ResultStore(tmp_path / "b.jsonl"), sampling=sampling,
                          judge=Judge(url + "/v1", MODEL), progress=False)
    assert "error" not in judged[0] and judged[0]["scored_by"] in ("judge", "unanswered")


@pytest.mark.parametrize(("reasoning", "content", "finish", "off", "expected"), [
    ("", "hmm A or B\n</think>\n\nB", "stop", False, ("hmm A or B", "B")),       # raw content (upstream style)
    ("hmm A or B\n", "\nB", "stop", False, ("hmm A or B", "B")),                 # split by a reasoning parser
    ("hmm A or B", "", "length", False, ("hmm A or B", None)),                   # cut inside the think block
    ("", "hmm A or", "length", False, ("hmm A or", None)),
    ("", "B", "stop", True, ("", "B")),                                          # thinking off: all answer
])
def test_replies_split_into_reasoning_and_answer(reasoning, content, finish, off, expected):
    from stepaudio.evaluation.runner import reply_from_text

    assert reply_from_text(reasoning, content, finish, off) == expected
