"""Fused CPU kernels for the lean binary operation (``csrc/sign_bn.cpp``), built on first use.

Training a BNAS cell spends about as long on the bandwidth-bound passes around its binary
convolutions (BatchNorm statistics and transform, sign, its straight-through mask, the ReLU
mask) as on the convolutions themselves. When the activation binarizer is sign with the clipped
straight-through gradient (BNAS's plain scheme, Bop) or ReCU's, these kernels do each side of
``relu(conv(sign(BN(x)), W))`` in as few reads of memory as the maths allows: the statistics, the
transform and the sign in one kernel; the ReLU and its one-bit mask in another; on the way back,
the mask, the straight-through gradient and BatchNorm's input gradient.

The library is compiled with the system's C++ compiler (with OpenMP) on first use and cached
(:mod:`bnas.ops.cxx`). Before it is used, a probe checks that its BatchNorm
statistics, running statistics and transform equal torch's bit for bit (the build whose
fused-multiply-add contraction matches torch's CPU kernels is kept). Without a compiler, when
the probe fails, or with ``BNAS_FUSED=0``, :func:`kernels` returns None and the lean operation
runs on torch's own kernels: same values, more time.
"""
from __future__ import annotations

import ctypes
import functools
import os
import subprocess
from pathlib import Path

import torch

from .cxx import build, compiler as _compiler, failure, load

SOURCE = Path(__file__).with_name("csrc") / "sign_bn.cpp"

_P, _I, _D, _C = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
_SIGNATURES = {
    "bnas_bn_sign_forward": [_P, _I, _I, _I, _P, _P, _P, _P, _D, _D, _P, _P, _P, _C, _C],
    "bnas_bn_sign_apply": [_P, _I, _I, _I, _P, _P, _P, _P, _P, _C, _C],
    "bnas_relu_mask": [_P, _I, _I, _I, _P, _P, _P, _C],
    "bnas_mask_grad": [_P, _P, _I, _I, _I, _P, _P, _C],
    "bnas_bn_sign_backward": [_P, _P, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _C],
    "bnas_sample_moments": [_P, _I, _I, _I, _P, _P, _P, _P, _D, _P, _P, _C],
    "bnas_scaled_bireal_backward": [_P, _P, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _C],
}


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _planes(x: torch.Tensor) -> tuple[int, int, int]:
    n, c = x.shape[:2]
    return n, c, x[0, 0].numel()


class Kernels:
    """The loaded library's kernels on tensors (float32, contiguous NCHW, CPU; see
    :meth:`accepts`). Per-channel tensors (``gamma``, ``bias``, ``mean``, ``invstd``, a
    ``(1, C, 1, 1)`` scale) and the per-sample drop-path factor ``(N, 1, 1, 1)`` may be None
    where the C++ comments say so."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib

    @staticmethod
    def accepts(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
        """Whether ``x`` and the per-channel ``params`` (None for absent ones) are tensors these
        kernels take."""
        # A tensor that is also channels-last contiguous (1 x 1 planes, or one channel) takes
        # torch's channels-last BatchNorm kernel, whose sums run in another order.
        return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
                and x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
                and all(p is None or (p.device.type == "cpu" and p.dtype == torch.float32
                                      and p.is_contiguous() and p.numel() == x.shape[1])
                        for p in params))

    def bn_sign_forward(self, x: torch.Tensor, gamma: torch.Tensor | None,
                        bias: torch.Tensor | None, running_mean: torch.Tensor | None,
                        running_var: torch.Tensor | None, momentum: float, eps: float,
                        to_sign: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sign(BN(x)), mean, invstd)`` in training mode, updating the running statistics
        (``BN(x)`` itself with ``to_sign=False``)."""
        out = torch.empty_like(x)
        mean, invstd = x.new_empty(x.shape[1]), x.new_empty(x.shape[1])
        self.lib.bnas_bn_sign_forward(
            x.data_ptr(), *_planes(x), _ptr(gamma), _ptr(bias), _ptr(running_mean),
            _ptr(running_var), momentum, eps, mean.data_ptr(), invstd.data_ptr(),
            out.data_ptr(), int(to_sign), torch.get_num_threads())
        return out, mean, invstd

    def bn_sign(self, x: torch.Tensor, gamma: torch.Tensor | None, bias: torch.Tensor | None,
                mean: torch.Tensor, invstd: torch.Tensor, to_sign: bool = True) -> torch.Tensor:
        """``sign(BN(x))`` with the given batch statistics (``BN(x)`` with ``to_sign=False``)."""
        out = torch.empty_like(x)
        self.lib.bnas_bn_sign_apply(x.data_ptr(), *_planes(x), _ptr(gamma), _ptr(bias),
                                    mean.data_ptr(), invstd.data_ptr(), out.data_ptr(),
                                    int(to_sign), torch.get_num_threads())
        return out

    def relu_mask_(self, y: torch.Tensor, scale: torch.Tensor | None,
                   factor: torch.Tensor | None) -> torch.Tensor:
        """``y = relu(y * scale) * factor`` in place; returns where the ReLU passed, one bit per
        element (each ``(n, c)`` plane starting on a byte), for :meth:`mask_grad`."""
        n, c, hw = _planes(y)
        mask = torch.empty(n * c * ((hw + 7) // 8), dtype=torch.uint8)
        scale = None if scale is None else scale.contiguous()
        self.lib.bnas_relu_mask(y.data_ptr(), n, c, hw, _ptr(scale), _ptr(factor),
                                mask.data_ptr(), torch.get_num_threads())
        return mask

    def mask_grad(self, grad: torch.Tensor, mask: torch.Tensor,
                  factor: torch.Tensor | None) -> torch.Tensor:
        """``grad * mask * factor``: the gradient at the convolution's output (before the scale)."""
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        self.lib.bnas_mask_grad(grad.data_ptr(), mask.data_ptr(), *_planes(grad), _ptr(factor),
                                out.data_ptr(), torch.get_num_threads())
        return out

    def bn_sign_backward(self, dxb: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor | None,
                         bias: torch.Tensor | None, mean: torch.Tensor, invstd: torch.Tensor,
                         need: tuple[bool, bool, bool]
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Gradients of ``x``, ``gamma`` and ``bias`` (those ``need`` asks for) from the gradient
        ``dxb`` at ``sign(BN(x))``, through the clipped straight-through estimator."""
        dx = torch.empty_like(x) if need[0] else None
        dgamma = x.new_empty(x.shape[1]) if need[1] else None
        dbias = x.new_empty(x.shape[1]) if need[2] else None
        self.lib.bnas_bn_sign_backward(
            dxb.contiguous().data_ptr(), x.data_ptr(), *_planes(x), _ptr(gamma), _ptr(bias),
            mean.data_ptr(), invstd.data_ptr(), _ptr(dx), _ptr(dgamma), _ptr(dbias),
            torch.get_num_threads())
        return dx, dgamma, dbias


    def sample_moments(self, x: torch.Tensor, gamma: torch.Tensor | None,
                       bias: torch.Tensor | None, mean: torch.Tensor, invstd: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample of ``z = BN(x)``: its mean and ``sqrt(unbiased var + eps)``, ``(N,)`` each."""
        m, d = x.new_empty(x.shape[0]), x.new_empty(x.shape[0])
        self.lib.bnas_sample_moments(x.data_ptr(), *_planes(x), _ptr(gamma), _ptr(bias),
                                     mean.data_ptr(), invstd.data_ptr(), eps, m.data_ptr(),
                                     d.data_ptr(), torch.get_num_threads())
        return m, d

    def scaled_bireal_backward(self, dxb: torch.Tensor, x: torch.Tensor,
                               gamma: torch.Tensor | None, bias: torch.Tensor | None,
                               mean: torch.Tensor, invstd: torch.Tensor, m: torch.Tensor,
                               d: torch.Tensor, need: tuple[bool, bool, bool]
                               ) -> tuple[torch.Tensor | None, ...]:
        """As :meth:`bn_sign_backward` for ReCU's activation binarizer: sign of ``z / d`` per
        sample with Bi-Real's gradient, through the scaling (``m``, ``d`` of
        :meth:`sample_moments`)."""
        dx = torch.empty_like(x) if need[0] else None
        dgamma = x.new_empty(x.shape[1]) if need[1] else None
        dbias = x.new_empty(x.shape[1]) if need[2] else None
        self.lib.bnas_scaled_bireal_backward(
            dxb.contiguous().data_ptr(), x.data_ptr(), *_planes(x), _ptr(gamma), _ptr(bias),
            mean.data_ptr(), invstd.data_ptr(), m.data_ptr(), d.data_ptr(), _ptr(dx),
            _ptr(dgamma), _ptr(dbias), torch.get_num_threads())
        return dx, dgamma, dbias


def _build(compiler: str, fma: bool) -> Path:
    """The library built with ``fma`` contraction (cached; written atomically)."""
    flags = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off",
             f"-DBNAS_FMA={int(fma)}"]
    if torch.backends.cpu.get_cpu_capability().startswith("AVX"):
        flags += ["-mavx2", "-mfma"]
    return build(SOURCE, compiler, flags)


def matches_torch(k: Kernels) -> bool:
    """Whether ``k``'s BatchNorm equals torch's bit for bit on a probe: statistics, running
    statistics and transform, with and without affine parameters."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 11, 7, 9, generator=gen) * 3.0 + torch.randn(1, 11, 1, 1, generator=gen)
    gamma, bias = torch.rand(11, generator=gen) + 0.5, torch.randn(11, generator=gen)
    for affine in (False, True):
        g, b = (gamma, bias) if affine else (None, None)
        ours = [torch.ones(11), torch.full((11,), 2.0)]
        theirs = [t.clone() for t in ours]
        z, mean, invstd = k.bn_sign_forward(x, g, b, *ours, 0.1, 1e-5, to_sign=False)
        expected = torch.ops.aten.native_batch_norm(x, g, b, *theirs, True, 0.1, 1e-5)
        again = k.bn_sign(x, g, b, mean, invstd, to_sign=False)
        if not all(torch.equal(a, e) for a, e in zip((z, mean, invstd, *ours, again),
                                                     (*expected, *theirs, expected[0]))):
            return False
    return True


@functools.cache
def _load() -> tuple[Kernels | None, str]:
    """The kernels (or None) and a line that says which build runs, or why none does."""
    if os.environ.get("BNAS_FUSED", "1") == "0":
        return None, "off (BNAS_FUSED=0)"
    compiler = _compiler()
    if compiler is None:
        return None, "off (no C++ compiler: set CXX or install g++)"
    for fma in (True, False):
        try:
            path = _build(compiler, fma)
            k = Kernels(load(path, _SIGNATURES))
        except subprocess.CalledProcessError as e:
            return None, f"off ({failure(compiler, e)})"
        except OSError as e:  # an unwritable cache, a library that does not load
            return None, f"off ({e})"
        if matches_torch(k):
            return k, f"on ({path})"
    return None, "off (the build's BatchNorm differs from torch's here)"


def kernels() -> Kernels | None:
    """The fused kernels, or None where they cannot be used (see the module docstring)."""
    return _load()[0]


def describe() -> str:
    """Whether the fused kernels run, and which library or why not (builds it on first use)."""
    return _load()[1]
