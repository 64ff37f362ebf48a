"""Binarization schemes behind one interface (see :mod:`bnas.binarize.base`).

Each scheme is one module that registers itself; importing this package imports them all.
"""
from . import bop, plain, rbnn, recu, siman  # noqa: F401  (register the schemes)
from .base import Binarizer, BinaryConv2d, OptimizerSettings, RunSpec
from .optim import Bop, Bop2ndOrder, CaseOptimizer
from .registry import BINARIZERS, get, names, register

__all__ = ["BINARIZERS", "Binarizer", "BinaryConv2d", "Bop", "Bop2ndOrder", "CaseOptimizer",
           "OptimizerSettings", "RunSpec", "get", "names", "register"]
