"""A search killed after its first epoch and resumed ends exactly where an uninterrupted one does
(the same final supernet, alphas, weights and BatchNorm statistics, and the same state of both
optimizers, bit for bit; the same records and genotypes)."""
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
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    genotypes = {n: json.loads((out / f"{n}.json").read_text()) for n in (name, name + "_imagenet")}
    for g in genotypes.values():
        g["provenance"] = {k: v for k, v in g["provenance"].items() if k not in ("date", "run")}
    records = (out / "alphas.jsonl").read_text()
    return saved, genotypes, records


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
    saved_a, genotypes_a, records_a = final_state(killed, "res")
    saved_b, genotypes_b, records_b = final_state(straight, "straight")
    assert saved_a["epoch"] == saved_b["epoch"] == 3
    model_a, model_b = saved_a["model"], saved_b["model"]
    assert model_a.keys() == model_b.keys() and any(k.startswith("alphas") for k in model_a)
    for name, tensor in model_a.items():
        assert torch.equal(tensor, model_b[name]), name
    for optimizer in ("weight_optimizer", "arch_optimizer"):  # SGD's momenta, Adam's moments
        state_a, state_b = saved_a[optimizer]["state"], saved_b[optimizer]["state"]
        assert state_a.keys() == state_b.keys() and state_a
        for index, entries in state_a.items():
            assert entries.keys() == state_b[index].keys()
            for key, value in entries.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b[index][key])), \
                    (optimizer, index, key)
    assert records_a == records_b
    for (_, a), (_, b) in zip(sorted(genotypes_a.items()), sorted(genotypes_b.items())):
        assert (a["normal"], a["reduce"], a["provenance"]) == (b["normal"], b["reduce"], b["provenance"])
