"""Loading never needs two copies of the weights: peak memory stays near one copy plus one shard."""

from __future__ import annotations

import subprocess
import sys

from stepaudio.model.tiny import write_tiny_checkpoint

PROBE = """
import resource, sys, torch
from stepaudio.model.loader import load_model
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = load_model(sys.argv[1])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024, sum(p.numel() * p.element_size() for p in model.parameters()))
"""


def test_peak_memory_is_about_one_copy(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "mid", hidden=1024, layers=8, num_shards=4, dtype="bfloat16")
    out = subprocess.run([sys.executable, "-c", PROBE, str(ckpt)], capture_output=True, text=True, check=True)
    peak_growth, weight_bytes = map(int, out.stdout.split())
    assert weight_bytes > 150e6  # big enough for the measurement to mean something
    # One full copy plus one mapped shard (a quarter) is 1.25x; loading everything then copying would be 2x.
    assert peak_growth < 1.5 * weight_bytes, (peak_growth / 1e6, weight_bytes / 1e6)
