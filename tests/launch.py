"""Run a test worker script in two processes under torchrun (gloo on the CPU)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def torchrun_two_processes(worker: Path, settings: dict[str, Any]) -> None:
    """``torchrun --standalone --nproc_per_node 2 worker settings.json`` (one thread each);
    skips the test when torchrun is missing, fails it with the workers' stderr."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(worker),
                           json.dumps(settings)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
