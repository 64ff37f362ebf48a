"""Binary networks that run as binary networks: a bit-packed CPU inference engine.

``pack(model)`` turns a float model built by :func:`bnas.build_model` into an inference-only
module whose binary convolutions run XNOR / popcount kernels on bit-packed activations
(:mod:`bnas.deploy.kernels`: AVX-512 VPOPCNTDQ, AVX2 or portable, chosen at run time), equal to
the float model's eval-mode output; ``save(packed, path)`` writes it to a versioned ``.bnx``
file (one bit per binary weight) and ``load(path)`` reads it back.
"""
from __future__ import annotations

from .fileio import load, pack, save

__all__ = ["load", "pack", "save"]
