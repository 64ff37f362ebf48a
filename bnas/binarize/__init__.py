"""Binarization schemes behind one interface (see :mod:`bnas.binarize.base`).

Each scheme is one module that registers itself; importing this package imports them all.
"""
from . import plain  # noqa: F401  (registers the scheme)
from .base import Binarizer, BinaryConv2d
from .registry import BINARIZERS, get, names, register

__all__ = ["BINARIZERS", "Binarizer", "BinaryConv2d", "get", "names", "register"]
