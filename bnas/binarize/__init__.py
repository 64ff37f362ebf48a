"""Binarization schemes behind one interface (see :mod:`bnas.binarize.base`).

Each scheme is one module that registers itself; importing this package imports every module
in it, so a new scheme is one new file (plus its recipes).
"""
import importlib
import pkgutil

from .base import Binarizer, BinaryConv2d, OptimizerSettings, RunSpec
from .optim import Bop, Bop2ndOrder, CaseOptimizer
from .registry import BINARIZERS, get, names, register

__all__ = ["BINARIZERS", "Binarizer", "BinaryConv2d", "Bop", "Bop2ndOrder", "CaseOptimizer",
           "OptimizerSettings", "RunSpec", "get", "names", "register"]

for _module in pkgutil.iter_modules(__path__):  # register the schemes
    importlib.import_module(f"{__name__}.{_module.name}")
