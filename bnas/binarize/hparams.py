"""Checks shared by the schemes' :meth:`~bnas.binarize.base.Binarizer.validate` methods.

Every failure is a :class:`~bnas.errors.BnasError` with one line naming the scheme and the
hyper-parameter.
"""
from __future__ import annotations

import math
from typing import Any

from ..errors import BnasError


def log_range(low: float, high: float) -> dict[str, Any]:
    """A tuning range sampled on a log scale (``bnas tune``'s space entry)."""
    return {"type": "float", "low": low, "high": high, "log": True}


def linear_range(low: float, high: float) -> dict[str, Any]:
    """A tuning range sampled uniformly."""
    return {"type": "float", "low": low, "high": high}


#: SGD recipes of the binary-network papers use lr 0.05-0.1 and weight decay 3e-6-5e-4; the
#: default tuning ranges bracket them by about a decade either side.
SGD_SPACE: dict[str, dict[str, Any]] = {"lr": log_range(5e-3, 0.5),
                                        "weight_decay": log_range(1e-6, 1e-3)}


def invalid(scheme: str, message: str) -> BnasError:
    """The error for an impossible hyper-parameter setting of ``scheme``."""
    return BnasError(f"binarizer '{scheme}': {message}")


def number(scheme: str, key: str, value: Any) -> float:
    """``value`` as a finite float; an error for booleans, strings, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(scheme, f"{key} must be a finite number, got {value!r}")
    return float(value)


def positive_int(scheme: str, key: str, value: Any) -> int:
    """``value`` as an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(scheme, f"{key} must be a positive integer, got {value!r}")
    return value


def flag(scheme: str, key: str, value: Any) -> bool:
    """``value`` as a boolean (no truthy strings or numbers)."""
    if not isinstance(value, bool):
        raise invalid(scheme, f"{key} must be true or false, got {value!r}")
    return value
