"""A search killed after its first epoch and resumed ends exactly where an uninterrupted one does
(same final alphas, bit for bit, and the same genotypes)."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

from bnas.cli import main

SETTINGS = ["--dataset", "digits", "--layers", "3", "--init-channels", "4", "--epochs", "3",
            "--subset", "256", "--batch-size", "32", "--image-size", "16", "--device", "cpu",
            "--no-progress"]


def bnas(*args, env):
    return subprocess.Popen([sys.executable, "-m", "bnas", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def final_state(out, name):
    alphas = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    genotypes = {n: json.loads((out / f"{n}.json").read_text()) for n in (name, name + "_imagenet")}
    for g in genotypes.values():
        g["provenance"] = {k: v for k, v in g["provenance"].items() if k not in ("date", "run")}
    records = (out / "alphas.jsonl").read_text()
    return {k: v for k, v in alphas.items() if k.startswith("alphas")}, genotypes, records


def test_killed_search_resumes_to_the_same_result(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the test process runs torch on one thread
    killed = tmp_path / "killed"
    proc = bnas("search", *SETTINGS, "--save", "res", "--out", str(killed), env=env)
    checkpoint = killed / "checkpoint.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert checkpoint.exists(), "the search never wrote its first checkpoint"
    assert torch.load(checkpoint, weights_only=True)["epoch"] < 3
    assert not (killed / "res.json").exists()

    resumed = bnas("search", "--resume", str(killed), env=env)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert "resumed from" in (killed / "log.txt").read_text()

    straight = tmp_path / "straight"
    assert main(["search", *SETTINGS, "--save", "straight", "--out", str(straight)]) == 0
    alphas_a, genotypes_a, records_a = final_state(killed, "res")
    alphas_b, genotypes_b, records_b = final_state(straight, "straight")
    for name, tensor in alphas_a.items():
        assert torch.equal(tensor, alphas_b[name]), name
    assert records_a == records_b
    for (_, a), (_, b) in zip(sorted(genotypes_a.items()), sorted(genotypes_b.items())):
        assert (a["normal"], a["reduce"], a["provenance"]) == (b["normal"], b["reduce"], b["provenance"])
