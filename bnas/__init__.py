"""bnas: neural architecture search for binary networks (1-bit weights, 1-bit activations).

The public functions and subpackages load on first use (``import bnas; bnas.genotype.names()``
works without importing :mod:`bnas.genotype` first), so that ``import bnas`` stays light and the
``bnas`` program can restart itself with a tuned allocator (:mod:`bnas.allocator`) before torch
is imported.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module defining it.
_LAZY = {"build_model": ".model", "profile": ".profiling"}
#: The public subpackages and modules, imported on first attribute access.
_SUBMODULES = ("binarize", "data", "deploy", "errors", "genotype", "interop", "model", "ops",
               "options", "profiling", "registry", "run", "runio", "search", "train", "tune",
               "viz")

__all__ = ["__version__", *_LAZY, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
