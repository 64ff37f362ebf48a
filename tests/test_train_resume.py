"""``--resume`` after ``kill -9`` in the middle of an epoch reaches the same weights, bit for
bit, as a run never interrupted (CPU, one process, fixed seed)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from bnas.train import checkpoint

# A cell network with drop path (random masks) and BNAS's one-cycle schedule with momentum, at a
# rate that trains this small run (the recipe's 0.05 diverges to nan in its third epoch on some
# CPUs, and a run that stops early has nothing to resume).
ARGS = ["train", "--arch", "latest_cell_zeroise", "--layers", "3", "--init-channels", "8",
        "--dataset", "digits", "--epochs", "3", "--batch-size", "16", "--train-subset", "480",
        "--val-subset", "32", "--workers", "0", "--no-progress", "--drop-path", "0.2", "--seed", "7",
        "--lr", "0.01"]


def _bnas(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "bnas", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _saved_epoch(path: Path) -> int:
    try:
        return checkpoint.load(path)["epoch"] if path.is_file() else 0
    except Exception:  # noqa: BLE001 - never a half-written file (atomic rename), but be patient
        return 0


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err


def test_resume_after_kill_9_matches_an_uninterrupted_run(tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    uninterrupted = _bnas(*ARGS, "--out", str(whole))
    proc = _bnas(*ARGS, "--out", str(killed))
    deadline = time.monotonic() + 600
    while _saved_epoch(killed / "checkpoint.pt") < 1:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.1)  # into the second epoch (30 steps, each of tens of milliseconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint.load(killed / "checkpoint.pt")["epoch"] == 1  # died before epoch 2 ended

    _finish(_bnas("train", "--resume", str(killed)))  # with the run's own config.yaml
    _finish(uninterrupted)

    resumed, reference = (checkpoint.load(d / "checkpoint.pt") for d in (killed, whole))
    assert resumed["epoch"] == reference["epoch"] == 3
    assert resumed["model"].keys() == reference["model"].keys()
    for name, tensor in reference["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    momenta = [s["momentum_buffer"] for s in reference["optimizer"]["state"].values()]
    resumed_momenta = [s["momentum_buffer"] for s in resumed["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(resumed_momenta, momenta))
    assert resumed["best_top1"] == reference["best_top1"]
    epochs = [line for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 3
