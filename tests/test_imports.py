"""Importing the toolkit stays light: torchvision (about 190 MB resident) loads only when a
dataset or transform needs it."""
import subprocess
import sys


def test_library_and_cli_imports_leave_torchvision_out():
    code = ("import sys, bnas, bnas.cli, bnas.train, bnas.search, bnas.tune, bnas.data; "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
