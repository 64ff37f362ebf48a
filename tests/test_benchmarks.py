"""The benchmark scripts run end to end and print one row per workload with the reference
ratios (one timed step of the smallest workloads: this checks that they work, not speed)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


NUMBER, RATIO = r"[\d.]+", r"[\d.]+ \([\d.]+x ref\)"
WORKLOADS = [
    # script, --only, settings lines, the workload's row: step s, img/s (ratio), peak GB (ratio),
    # import GB
    ("train_step.py", "resnet20_1w1a rbnn", ["fused CPU kernels: "],
     rf"resnet20_1w1a rbnn\s+128\s+{NUMBER}\s+{RATIO}\s+{RATIO}\s+{NUMBER}"),
    # step s (ratio), CPU s, peak GB (ratio), import GB, set-up GB, saved MB arch / weights
    ("search_step.py", "fast path, batch 32", [],
     rf"search step, fast path, batch 32\s+{RATIO}\s+{NUMBER}\s+{RATIO}\s+{NUMBER}\s+{NUMBER}"
     rf"\s+{NUMBER} / {NUMBER}"),
    # pytorch ms, onnxrt ms (none for a single convolution), packed ms, ratio, packing ms (the
    # binary, real-valued and other shares of a network: none), torch's instruction set (held to
    # the portable path's machine: unvectorized ATen kernels)
    ("deploy.py", "conv 512->512 7x7 s1 [portable]", ["cpu: ", "float baselines: matched"],
     rf"conv 512->512 7x7 s1 \[portable\]\s+{NUMBER}\s+-\s+{NUMBER}\s+{NUMBER}x\s+-\s+"
     rf"{NUMBER}\s+-\s+-\s+-\s+{{portable_torch}}"),
    # a network: also onnxruntime's time and its ratio, and the binary, real-valued and other
    # shares of the packed time (from the same forwards: none negative)
    ("deploy.py", "resnet20_1w1a cifar 32 [portable]", ["cpu: ", "float baselines: matched"],
     rf"resnet20_1w1a cifar 32 \[portable\]\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s+"
     rf"{NUMBER}x(\s+{NUMBER}){{4}}\s+{{portable_torch}}"),
]


def portable_torch() -> str:
    """torch's instruction set on the portable path's workloads: unvectorized (``DEFAULT``)
    where the CPU runs a faster path, else torch's own choice."""
    from bnas.deploy.kernels import supported_isas

    return "DEFAULT" if len(supported_isas()) > 1 else r"\S+"


@pytest.mark.parametrize("script, only, settings, row", WORKLOADS)
def test_benchmark_prints_its_figures_next_to_the_reference(script, only, settings, row):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--only", only,
                           "--steps", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("allocator: ")
    assert [line[:len(s)] for line, s in zip(lines[1:], settings)] == settings
    assert len(lines) == 3 + len(settings), proc.stdout
    assert lines[-2].split()[0] == "workload"
    assert re.fullmatch(row.replace("{portable_torch}", portable_torch()), lines[-1]), lines[-1]
