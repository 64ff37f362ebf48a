"""Run a test worker script under torchrun: two processes (gloo on the CPU), or one on a GPU."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def torchrun_processes(worker: Path, settings: dict[str, Any], nproc: int) -> None:
    """``torchrun --standalone --nproc_per_node NPROC worker settings.json`` (one thread each);
    skips the test when torchrun is missing, fails it with the workers' stderr."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", str(nproc), str(worker),
                           json.dumps(settings)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def torchrun_two_processes(worker: Path, settings: dict[str, Any]) -> None:
    """:func:`torchrun_processes` with two processes."""
    torchrun_processes(worker, settings, 2)
