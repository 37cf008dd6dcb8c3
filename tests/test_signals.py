"""Signals stop a real lock-step prune cleanly (issue 18, class 10).

``prunekit prune`` of SmolLM2-135M (Wanda, lock-step runner: one thread per chunk of windows, streamed
block by block into a staging folder) runs in a subprocess and gets SIGINT (what Ctrl-C sends) or
SIGTERM (what ``timeout``, Slurm and docker send) at several points of its run: while it starts,
once its staging folder exists (the first block's calibration, the runner's threads waiting on each
other), once the first output shard is written (mid-run), and once the last block is done (saving
the rest, the config and the tokenizer). Each time: exit code 130 or 143, exactly one line on stderr
(no "terminate called without an active exception", no traceback), and the folder that was to hold
``--out`` is left empty: no output, no staging folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunekit.core.io import TEMP_PREFIX

pytestmark = pytest.mark.slow

EXPECTED = {signal.SIGINT: (130, "prunekit prune: interrupted; nothing was written"),
            signal.SIGTERM: (143, "prunekit prune: terminated (SIGTERM); nothing was written")}


def _staging(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(TEMP_PREFIX)]


def _shards(parent: Path) -> int:
    return sum(1 for folder in _staging(parent) for f in folder.rglob("*.safetensors"))


POINTS = {  # name: (condition on the parent folder, seconds to wait after it holds)
    "starting": (lambda parent: True, 1.0),
    "staging folder made": (lambda parent: bool(_staging(parent)), 0.0),
    "first shard written": (lambda parent: _shards(parent) >= 1, 0.0),
    "blocks done": (lambda parent: _shards(parent) >= 28, 0.0),
}


def _interrupted_run(tmp_path: Path, sig: signal.Signals, point: str) -> tuple[int, str, float]:
    condition, delay = POINTS[point]
    parent = tmp_path / "parent"
    parent.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "prunekit", "prune", "--model", "smollm2-135m", "--out", str(parent / "out"),
            "--method", "wanda", "--nsamples", "16", "--seqlen", "64", "--chunk-size", "2", "--runner", "lockstep",
            "--calibration", "brown:r", "--quiet"]
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not condition(parent) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"the prune ended (exit {proc.returncode}) before '{point}': {proc.stderr.read()[-500:]}")
    time.sleep(delay)
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, time.monotonic() - sent


@pytest.mark.parametrize("point", list(POINTS))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_lockstep_prune_cleanly(sig, point, tmp_path, smollm2_path):
    code, err, took = _interrupted_run(tmp_path, sig, point)
    expected_code, expected_line = EXPECTED[sig]
    assert code == expected_code, err[-2000:]
    assert err.strip().splitlines() == [expected_line], err[-2000:]
    assert list((tmp_path / "parent").iterdir()) == [], "the parent of --out is not empty"
    assert took < 30, f"{took:.0f} s from the signal to the exit"
