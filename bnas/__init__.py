"""bnas: neural architecture search for binary networks (1-bit weights, 1-bit activations).

The public functions load on first use, so that the ``bnas`` program can restart itself with a
tuned allocator (:mod:`bnas.allocator`) before torch is imported.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module defining it.
_LAZY = {"build_model": ".model", "profile": ".profiling"}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
