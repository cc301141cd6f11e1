"""Crashes outside the server: `kill -9` in the middle of `train align` and of a `train mgrd` stage, and a full disk while the default
model's cache folder is written. The next run resumes to the same state; a failed write leaves nothing
that a later run could take for a finished folder."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from stepaudio.default_model.assemble import write_assembly
from stepaudio.model.loader import load_model
from mgrd_fixtures import tiny_policy
from stepaudio.train.mgrd.stages import sft
from test_train_align import _assembly, _config, _run
from test_train_mgrd import _examples

TESTS = Path(__file__).resolve().parent
STEPS = 6  # saved every 2 steps (_config)
CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_train_align import _config, _run
_run(_config(Path({out!r}), steps={steps}))
"""


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "loss.jsonl").read_text().splitlines()]


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]


def _past_a_save(state: Path, log: Path) -> bool:
    """A checkpoint is written and the log has gone past it (an odd step: no save there), no line cut short."""
    if not (state.is_file() and log.is_file()):
        return False
    lines = log.read_text().splitlines()
    return len(lines) >= 3 and len(lines) % 2 == 1 and lines[-1].endswith("}")


def kill_between_saves(child: subprocess.Popen, state: Path, log: Path) -> None:
    """`kill -9` the training process between two saves. A step can take only tens of ms, so the process is
    stopped, checked to have stopped between saves, and only then killed."""
    deadline = time.monotonic() + 120
    while True:
        assert child.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        if _past_a_save(state, log):
            os.kill(child.pid, signal.SIGSTOP)
            if _past_a_save(state, log):
                break
            os.kill(child.pid, signal.SIGCONT)
        time.sleep(0.002)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL


def test_kill_9_during_train_align_resumes_to_the_same_state(tmp_path):
    out = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(tests=str(TESTS), out=str(out), steps=STEPS)])
    kill_between_saves(child, out / "state.pt", out / "loss.jsonl")
    saved = torch.load(out / "state.pt", weights_only=True)["step"]
    assert saved < STEPS and len(logged_steps(out)) > saved  # steps past the checkpoint were lost

    resumed = _run(_config(out, steps=STEPS))
    straight = _run(_config(tmp_path / "straight", steps=STEPS))
    with safe_open(str(straight), "pt") as a, safe_open(str(resumed), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
    assert logged_steps(out) == list(range(1, STEPS + 1))  # each step once (the lost ones were run again)
    assert losses(out) == losses(tmp_path / "straight")


MGRD_STEPS = 9  # saved every 2 steps and at the end
MGRD_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_crash_recovery import run_mgrd_sft
run_mgrd_sft(Path({out!r}))
"""


def run_mgrd_sft(out: Path) -> dict[str, torch.Tensor]:
    """The SFT stage of `train mgrd` on the tiny policy (a fresh process builds the same start from seed 0)."""
    from mgrd_fixtures import tiny_config_for

    cfg = tiny_config_for(out, save_every=2)
    cfg.sft.steps = MGRD_STEPS
    policy = tiny_policy(out, lr_adapter=1e-2)
    sft(policy, cfg, _examples(), out / "sft", "sft", progress=False)
    return policy.trainable_state()


def mgrd_log(out: Path) -> list[dict]:
    """The stage's log without the wall-clock field, which no two runs share."""
    records = [json.loads(line) for line in (out / "sft" / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_kill_9_during_a_train_mgrd_stage_resumes_to_the_same_state(tmp_path):
    out = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", MGRD_CHILD.format(tests=str(TESTS), out=str(out))])
    kill_between_saves(child, out / "sft" / "state.pt", out / "sft" / "log.jsonl")
    saved = torch.load(out / "sft" / "state.pt", weights_only=True)["step"]
    assert saved < MGRD_STEPS and len(mgrd_log(out)) > saved  # steps past the checkpoint were lost

    resumed = run_mgrd_sft(out)
    straight = run_mgrd_sft(tmp_path / "straight")
    assert resumed.keys() == straight.keys() and resumed
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key
    assert [r["step"] for r in mgrd_log(out)] == list(range(1, MGRD_STEPS + 1))  # each step once
    assert mgrd_log(out) == mgrd_log(tmp_path / "straight")


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A real 256 KiB filesystem (tmpfs), mounted for the test: writes past it fail with ENOSPC."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_while_writing_the_model_cache_leaves_nothing_behind(tiny_filesystem, tmp_path):
    out = tiny_filesystem / "default-model-v1-test"
    with pytest.raises(OSError) as raised:
        write_assembly(_assembly(), out)
    assert raised.value.errno == errno.ENOSPC
    assert str(tiny_filesystem) in str(raised.value) and "STEPAUDIO_CACHE_DIR" in str(raised.value)
    assert list(tiny_filesystem.iterdir()) == []  # no folder, no temporary sibling
    # With room the same write gives a folder that loads.
    roomy = write_assembly(_assembly(), tmp_path / "roomy")
    assert load_model(roomy, dtype="float32").config.text.num_hidden_layers >= 1


def test_a_targets_cache_cut_short_by_a_kill_is_read_up_to_the_cut(tmp_path):
    from stepaudio.train.questions import Question
    from stepaudio.train.targets import load_or_distil

    path = tmp_path / "targets.jsonl"
    path.write_text(json.dumps({"question": "Capital of France?", "reasoning": "They ask.", "answer": "Paris."})
                    + "\n" + '{"question": "Capital of Spa')  # killed in the middle of the second record
    targets = load_or_distil(path, None, [Question("capital", "Capital of France?", ("paris",))], progress=False)
    assert targets["Capital of France?"].answer == "Paris."
