"""The packed engine's XNOR / popcount kernels (``csrc/xnor.cpp``) on torch tensors.

:func:`kernels` builds the library on first use (:mod:`bnas.ops.cxx`) and picks the fastest
path this CPU runs: ``amx`` (the AVX-512 path, with the convolutions of few input channels
as Intel AMX int8 tile products), ``avx512`` (AVX-512 with VPOPCNTDQ), ``avx2``
(nibble-lookup popcount) or ``portable``; ``BNAS_XNOR_ISA`` forces one (a path the CPU lacks
is refused). Before the packing's BatchNorm is used, a probe checks that its
``x * scale + shift`` equals torch's eval BatchNorm bit for bit (with the multiply-add fused or
not, whichever torch's build does); where neither matches, packed operations normalise with
torch and pack the result (same values).

:class:`BinaryConvPlan` is one binary convolution: its weights packed 64 input channels to a
word; calling it packs a float input (NCHW, float32) and convolves it, giving the float model's
``conv(sign(x), sign(W)) * alpha`` exactly: the sums of +-1 products are integers (XNOR and
popcount, with the zero padding and any sign(0) corrected exactly, see ``csrc/xnor.cpp``) and
the scale is applied with one rounding.
"""
from __future__ import annotations

import ctypes
import functools
import math
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import BnasError
from ..ops.cxx import build, compiler, failure, load

SOURCE = Path(__file__).with_name("csrc") / "xnor.cpp"
ISAS = ("portable", "avx2", "avx512", "amx")  # bit i of bnas_xnor_isas()
#: Output channels are padded to a multiple of this in the weights' kernel layout.
O_BLOCK = 8
#: Words read past a packed input's end by the vector paths' last tile.
SLACK = 8
#: A convolution turns to the masked mode when more than 1 in this many inputs has sign 0.
MASKED_ABOVE = 64

_P, _I, _D, _C = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
_SIGNATURES = {
    "bnas_xnor_pack": [_P, _I, _I, _I, _I, _P, _P, _P, _C, _C, _I, _I, _I, _I, _I, _I, _P, _P,
                       _P, _I, _P, _C, _C],
    "bnas_xnor_affine": [_P, _I, _I, _I, _P, _P, _C, _P],
    "bnas_xnor_bn_terms": [_P, _P, _P, _P, _I, _D, _C, _P, _P],
    "bnas_xnor_weights": [_P, _I, _I, _I, _C, _P],
    "bnas_xnor_amx_rule": [_P],
    "bnas_xnor_conv": [_P, _P, _P, _P, _P, _P, _P, _P, _P, _C, _C],
    "bnas_xnor_zero_fix": [_P, _I, _P, _I, _I, _I, _I, _I, _P, _P, _P],
    "bnas_xnor_zero_weights": [_P, _P, _P, _I, _I, _I, _I, _I, _P, _I, _P],
    "bnas_xnor_binconvs": [_P, _I, _I, _C, _C],
    "bnas_xnor_maxpool": [_P, _I, _I, _I, _I, _I, _I, _I, _I, _P, _C],
    "bnas_xnor_timing": [_C, _P],
}
#: The fields of ``bnas_xnor_binconvs``'s record of one convolution and input size, in order
#: (from "geometry" to "zero_list": addresses of its tensors, 0 for none; then the number of
#: binary weights exactly 0).
RECORD = ("n", "c", "h", "w", "pt", "pl", "hp", "wrow", "wc", "stride", "o", "ho", "wo", "fma",
          "zero_is_zero", "masked", "geometry", "weights", "layout", "rowclass", "table", "alpha",
          "bias", "zero_bits", "zero_list", "zero_count")


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class Kernels:
    """The loaded library, the path it runs (``isa``) and whether the packing's BatchNorm
    fuses its multiply-add (``fma``; None: torch normalises)."""

    def __init__(self, lib: ctypes.CDLL, isa: str, fma: bool | None) -> None:
        self.lib, self.isa, self.fma = lib, isa, fma
        self._isa = ISAS.index(isa)

    def bn_terms(self, bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` of an eval-mode BatchNorm as torch computes them."""
        return _bn_terms(self.lib, bn, bool(self.fma))

    def pack(self, x: torch.Tensor, geo: "Geometry", scale: torch.Tensor | None = None,
             shift: torch.Tensor | None = None, thresh: torch.Tensor | None = None,
             zero_is_zero: bool = True, masked: bool = False) -> "Packed":
        """``x`` (float32 NCHW) packed for a consumer of geometry ``geo`` (see
        ``csrc/xnor.cpp``): signs, and with ``masked`` where the input is nonzero; otherwise
        the flat indices of the inputs whose sign is 0."""
        n, c, h, w = x.shape
        hp, wrow, wc = geo.padded(h, w)
        size = n * -(-c // 64) * hp * wrow + SLACK
        out = torch.zeros(size, dtype=torch.int64)
        nz = torch.zeros(size, dtype=torch.int64) if masked else None
        count = torch.zeros(1, dtype=torch.int64)
        cap = 64
        while True:
            zeros = torch.empty(cap, dtype=torch.int64)
            self.lib.bnas_xnor_pack(
                x.data_ptr(), n, c, h, w, _ptr(scale), _ptr(shift), _ptr(thresh),
                int(bool(self.fma)), int(zero_is_zero), geo.pad[0], geo.pad[1], hp, wrow, wc,
                geo.stride, out.data_ptr(), _ptr(nz), zeros.data_ptr(), cap, count.data_ptr(),
                self._isa, torch.get_num_threads())
            if masked or int(count) <= cap:
                return Packed(out, nz, zeros[:0] if masked else zeros[:int(count)])
            cap = int(count)
            out.zero_()

    def amx_rule(self, rule: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """Set which convolutions the ``amx`` path runs as tile products, the others by its
        popcount kernel: at most ``rule[0]`` input words (64 channels each) and at least
        ``rule[1]`` input channels x taps (for weights laid out from now on), outputs at least
        ``rule[2]`` wide and ``rule[3]`` products per sample. By default the shapes where the
        tiles are faster (``amx_rule`` in ``csrc/xnor.cpp``). Returns the rule it replaces."""
        values = (ctypes.c_int64 * 4)(*rule)
        self.lib.bnas_xnor_amx_rule(values)
        return values[0], values[1], values[2], values[3]

    def count_packing(self, on: bool) -> tuple[float, float]:
        """Start counting (from zero) or stop counting the seconds the network's kernel calls
        (:func:`convolve_all`) spend packing their inputs and in all, summed over calls (and over
        threads where calls run side by side; their ratio is the packing's share); returns the
        two sums counted since the last start."""
        seconds = (ctypes.c_double * 2)()
        self.lib.bnas_xnor_timing(int(on), seconds)
        return seconds[0], seconds[1]

    def maxpool(self, x: torch.Tensor, k: int, stride: int, pad: int) -> torch.Tensor:
        """torch's ``max_pool2d(x, k, stride, pad)`` (float32 NCHW, contiguous; dilation 1,
        floor mode), computed here: a maximum is exact whatever the order."""
        n, c, h, w = x.shape
        ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        out = torch.empty(n, c, ho, wo)
        self.lib.bnas_xnor_maxpool(x.data_ptr(), n * c, h, w, k, stride, pad, ho, wo,
                                   out.data_ptr(), torch.get_num_threads())
        return out


@dataclass(frozen=True)
class Packed:
    """A packed input: its sign words, its nonzero words (masked mode) or None, and the flat
    indices of its signs 0 (unmasked mode)."""

    words: torch.Tensor
    nonzero: torch.Tensor | None
    zeros: torch.Tensor


def _bn_terms(lib: ctypes.CDLL, bn: torch.nn.BatchNorm2d, fma: bool
              ) -> tuple[torch.Tensor, torch.Tensor]:
    c = bn.num_features
    scale, shift = torch.empty(c), torch.empty(c)
    gamma = bn.weight.detach().contiguous() if bn.weight is not None else None
    beta = bn.bias.detach().contiguous() if bn.bias is not None else None
    lib.bnas_xnor_bn_terms(bn.running_mean.data_ptr(), bn.running_var.data_ptr(), _ptr(gamma),
                           _ptr(beta), c, float(bn.eps), int(fma), scale.data_ptr(),
                           shift.data_ptr())
    return scale, shift


def matches_torch_bn(lib: ctypes.CDLL, fma: bool) -> bool:
    """Whether the packing's ``x * scale + shift`` equals torch's eval BatchNorm bit for bit on
    a probe (planes of several sizes, with and without affine parameters)."""
    gen = torch.Generator().manual_seed(0)
    for affine, (h, w) in ((True, (7, 9)), (False, (5, 5)), (True, (1, 1))):
        bn = torch.nn.BatchNorm2d(11, affine=affine).eval()
        with torch.no_grad():
            bn.running_mean.copy_(torch.randn(11, generator=gen))
            bn.running_var.copy_(torch.rand(11, generator=gen) * 3 + 0.01)
            if affine:
                bn.weight.copy_(torch.randn(11, generator=gen))
                bn.bias.copy_(torch.randn(11, generator=gen))
        x = torch.randn(3, 11, h, w, generator=gen) * 3.0
        scale, shift = _bn_terms(lib, bn, fma)
        ours = torch.empty_like(x)
        lib.bnas_xnor_affine(x.data_ptr(), 3, 11, h * w, scale.data_ptr(), shift.data_ptr(),
                             int(fma), ours.data_ptr())
        with torch.no_grad():
            if not torch.equal(ours, bn(x)):
                return False
    return True


@functools.cache
def _load(isa_request: str | None) -> tuple[Kernels | None, str]:
    cxx = compiler()
    if cxx is None:
        return None, "off (no C++ compiler: set CXX or install g++)"
    flags = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off"]
    try:
        path = build(SOURCE, cxx, flags)
        lib = load(path, _SIGNATURES)
    except subprocess.CalledProcessError as e:
        return None, f"off ({failure(cxx, e)})"
    except OSError as e:
        return None, f"off ({e})"
    lib.bnas_xnor_isas.restype = ctypes.c_int
    lib.bnas_xnor_weights_size.argtypes = [_I, _I, _I, _C]
    lib.bnas_xnor_weights_size.restype = ctypes.c_int64
    supported = [name for i, name in enumerate(ISAS) if lib.bnas_xnor_isas() >> i & 1]
    if isa_request is not None:
        if isa_request not in ISAS:
            raise BnasError(f"BNAS_XNOR_ISA={isa_request}: expected one of {', '.join(ISAS)}")
        if isa_request not in supported:
            raise BnasError(f"BNAS_XNOR_ISA={isa_request}: this CPU runs only "
                            f"{', '.join(supported)}")
    isa = isa_request or supported[-1]
    fma = next((f for f in (True, False) if matches_torch_bn(lib, f)), None)
    bn = ("BatchNorm fused into the packing" + (" (multiply-add fused)" if fma else "")
          if fma is not None else "BatchNorm by torch (the packing's differs here)")
    return Kernels(lib, isa, fma), f"{isa} ({bn}; {path})"


def kernels() -> Kernels:
    """The kernels on the path ``BNAS_XNOR_ISA`` asks for, else the fastest this CPU runs.
    Raises :class:`BnasError` when they cannot be built or the asked path cannot run."""
    k, line = _load(os.environ.get("BNAS_XNOR_ISA") or None)
    if k is None:
        raise BnasError(f"the packed engine's kernels are {line}")
    return k


def describe() -> str:
    """Which path the packed engine runs, or why it cannot (builds the library on first use)."""
    try:
        return _load(os.environ.get("BNAS_XNOR_ISA") or None)[1]
    except BnasError as e:
        return f"off ({e})"


def supported_isas() -> list[str]:
    """The paths this CPU runs (builds the library on first use)."""
    k = kernels()
    return [name for i, name in enumerate(ISAS) if k.lib.bnas_xnor_isas() >> i & 1]


# -- geometry ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """Where a binary convolution reads its input: kernel ``(kh, kw)``, ``stride``,
    ``dilation``, zero padding ``pad = (top, left, bottom, right)`` and the ``origin`` (in
    padded coordinates) of output (0, 0)'s first tap: output ``(i, j)`` reads padded input
    ``(origin[0] + i * stride + a * dilation, origin[1] + j * stride + b * dilation)``."""

    kh: int
    kw: int
    stride: int = 1
    dilation: int = 1
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    origin: tuple[int, int] = (0, 0)

    def padded(self, h: int, w: int) -> tuple[int, int, int]:
        """``(hp, wrow, wc)`` of a packed input of ``h x w`` (see ``csrc/xnor.cpp``)."""
        wp = w + self.pad[1] + self.pad[3]
        wc = -(-wp // self.stride)
        return h + self.pad[0] + self.pad[2], self.stride * wc, wc

    def output(self, h: int, w: int) -> tuple[int, int]:
        """The output size for an ``h x w`` input."""
        span_h, span_w = self.dilation * (self.kh - 1) + 1, self.dilation * (self.kw - 1) + 1
        ho = (h + self.pad[0] + self.pad[2] - self.origin[0] - span_h) // self.stride + 1
        wo = (w + self.pad[1] + self.pad[3] - self.origin[1] - span_w) // self.stride + 1
        return ho, wo

    def valid(self, size: int, before: int, origin: int, k: int, out: int) -> np.ndarray:
        """``(out, k)``: whether output index i's tap a falls inside the real input."""
        pos = origin + np.arange(out)[:, None] * self.stride + np.arange(k)[None, :] * self.dilation
        return (pos >= before) & (pos < before + size)


def pack_weight_bits(negative: torch.Tensor) -> torch.Tensor:
    """``(O, C, kh, kw)`` booleans (True where the binary weight is -1) in the kernels' layout:
    ``O_pad x words x taps`` 64-bit words, channel ``c`` at bit ``c % 64`` of word ``c // 64``."""
    o, c, kh, kw = negative.shape
    words = -(-c // 64)
    o_pad = -(-o // O_BLOCK) * O_BLOCK
    bits = np.zeros((o_pad, words * 64, kh * kw), dtype=np.uint8)
    bits[:o, :c] = negative.reshape(o, c, kh * kw).numpy()
    bits = bits.reshape(o_pad, words, 64, kh * kw).transpose(0, 1, 3, 2)
    packed = np.packbits(np.ascontiguousarray(bits), axis=-1, bitorder="little")
    return torch.from_numpy(packed.view("<u8").reshape(o_pad, words, kh * kw).view(np.int64).copy())


class BinaryConvPlan:
    """One binary convolution ready for the kernels: weights ``negative`` (``(O, C, kh, kw)``
    booleans, True for -1), per-output ``alpha`` (or None: no scale), its :class:`Geometry`, a
    per-output ``bias`` added by :meth:`__call__` (or None) and ``zero`` (booleans, True where
    the binary weight is exactly 0, a third value: held as +1 and corrected per output, see
    ``bnas_xnor_zero_weights``; or None). Border tables and the kernels' record of the
    convolution are computed once per input size, the weights' layout once per path."""

    def __init__(self, negative: torch.Tensor, alpha: torch.Tensor | None, geo: Geometry,
                 bias: torch.Tensor | None = None, zero: torch.Tensor | None = None) -> None:
        self.out_channels, self.in_channels = negative.shape[:2]
        self.geo = geo
        self.words = -(-self.in_channels // 64)
        if zero is not None and bool((zero & negative).any()):
            raise BnasError("a binary weight cannot be both -1 and 0")
        self.weights = pack_weight_bits(negative)
        zero = zero if zero is not None and bool(zero.any()) else None
        self.zero_bits = None if zero is None else pack_weight_bits(zero)
        self.zero_list = (None if zero is None else
                          torch.nonzero(zero.reshape(-1)).reshape(-1).contiguous())
        # per output channel and tap: the sum over input channels of the packed weights (+-1)
        self.tap_sums = (self.in_channels - 2 * negative.sum(dim=1, dtype=torch.int64)).numpy()
        self.alpha = None if alpha is None else alpha.detach().float().contiguous()
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.masked = False
        self._geometry: dict[tuple[int, int, int], torch.Tensor] = {}
        self._borders: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._records: dict[tuple, tuple[torch.Tensor, tuple[int, ...]]] = {}
        self._layouts: dict[int, torch.Tensor] = {}
        self._calls: dict[tuple[int, ...], tuple[tuple[int, ...], torch.Tensor,
                                                 tuple[int, int, int]]] = {}

    def layout(self, k: Kernels) -> torch.Tensor:
        """The weights in the layout of ``k``'s path (``bnas_xnor_weights``; cached)."""
        if k._isa not in self._layouts:
            sizes = (self.out_channels, self.in_channels, self.geo.kh * self.geo.kw, k._isa)
            out = torch.empty(k.lib.bnas_xnor_weights_size(*sizes), dtype=torch.int64)
            k.lib.bnas_xnor_weights(self.weights.data_ptr(), *sizes, out.data_ptr())
            self._layouts[k._isa] = out
        return self._layouts[k._isa]

    def borders(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rowclass, table)`` for an ``h x w`` input: each output row's border class and, per
        class, output channel and column, ``C * kh * kw - corr`` with ``corr`` the sum of the
        weights at the taps in the padding (see ``csrc/xnor.cpp``)."""
        key = (h, w)
        if key not in self._borders:
            g = self.geo
            ho, wo = g.output(h, w)
            rows = g.valid(h, g.pad[0], g.origin[0], g.kh, ho)
            cols = g.valid(w, g.pad[1], g.origin[1], g.kw, wo)
            classes, rowclass = np.unique(rows, axis=0, return_inverse=True)
            # padded[r, a, j, b]: tap (a, b) of output column j lies in the padding (class r)
            padded = ~(classes[:, :, None, None] & cols[None, None, :, :])
            psum = self.tap_sums.reshape(self.out_channels, g.kh, g.kw)
            corr = np.einsum("oab,rajb->roj", psum, padded.astype(np.int64))
            table = self.in_channels * g.kh * g.kw - corr
            self._borders[key] = (torch.from_numpy(rowclass.astype(np.int32).reshape(-1)),
                                  torch.from_numpy(np.ascontiguousarray(table, dtype=np.int32)))
        return self._borders[key]

    def geometry(self, n: int, h: int, w: int) -> torch.Tensor:
        """The kernels' geometry vector for an ``n x C x h x w`` input (cached)."""
        key = (n, h, w)
        if key not in self._geometry:
            self._geometry[key] = self._make_geometry(n, h, w)
        return self._geometry[key]

    def _make_geometry(self, n: int, h: int, w: int) -> torch.Tensor:
        g = self.geo
        hp, wrow, wc = g.padded(h, w)
        ho, wo = g.output(h, w)
        return torch.tensor([n, self.words, hp, wrow, wc, g.stride, self.out_channels, g.kh, g.kw,
                             g.dilation, g.origin[0], g.origin[1], ho, wo, g.pad[0], g.pad[1], h,
                             w], dtype=torch.int64)

    def record(self, k: Kernels, n: int, h: int, w: int, zero_is_zero: bool
               ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The kernels' record of this convolution on ``n x C x h x w`` inputs (see
        :data:`RECORD`) and the output's shape (cached)."""
        key = (n, h, w, zero_is_zero, bool(k.fma), k._isa)
        if key not in self._records:
            geo = self.geometry(n, h, w)
            ho, wo = int(geo[12]), int(geo[13])
            if ho <= 0 or wo <= 0:
                raise BnasError(f"input {h}x{w} is too small for a packed binary convolution")
            rowclass, table = self.borders(h, w)
            g = self.geo
            hp, wrow, wc = g.padded(h, w)
            values = (n, self.in_channels, h, w, g.pad[0], g.pad[1], hp, wrow, wc, g.stride,
                      self.out_channels, ho, wo, int(bool(k.fma)), int(zero_is_zero),
                      int(self.masked), geo.data_ptr(), self.weights.data_ptr(),
                      self.layout(k).data_ptr(), rowclass.data_ptr(), table.data_ptr(),
                      _ptr(self.alpha) or 0, _ptr(self.bias) or 0, _ptr(self.zero_bits) or 0,
                      _ptr(self.zero_list) or 0,
                      0 if self.zero_list is None else self.zero_list.numel())
            self._records[key] = (torch.tensor(values, dtype=torch.int64),
                                  (n, self.out_channels, ho, wo))
        return self._records[key]

    def __call__(self, k: Kernels, x: torch.Tensor, scale: torch.Tensor | None = None,
                 shift: torch.Tensor | None = None, thresh: torch.Tensor | None = None,
                 zero_is_zero: bool = True, epilogue: "Epilogue | None" = None) -> torch.Tensor:
        """``epilogue(conv(b(x), sign W) * alpha + bias)`` in one call of the kernels: the
        packing (see :meth:`Kernels.pack`), its corrections and the convolution (as
        :meth:`run`), the bias and the :class:`Epilogue`, as torch computes them
        (:func:`convolve_all`)."""
        call = ConvCall(self, x, scale, shift, thresh, zero_is_zero, epilogue or Epilogue())
        return convolve_all(k, [call])[0]

    def set_masked(self) -> None:
        """Run in the masked mode from now on, for every input size."""
        self.masked = True
        for r, _ in self._records.values():
            r[RECORD.index("masked")] = 1

    def run(self, k: Kernels, x: torch.Tensor, packed: Packed) -> torch.Tensor:
        """The convolution of the input ``x`` (only its shape is read) that :meth:`Kernels.pack`
        packed for this geometry: a new float32 NCHW tensor."""
        key = (*x.shape, k._isa)
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = self._call(k, *x.shape)
        shape, geo, args = call
        extra = None
        if packed.zeros.numel() or self.zero_list is not None:
            n, c, h, w = x.shape
            pt, pl = self.geo.pad[:2]
            extra = torch.zeros(shape, dtype=torch.int32)
            k.lib.bnas_xnor_zero_fix(packed.zeros.data_ptr(), packed.zeros.numel(),
                                     geo.data_ptr(), c, h, w, pt, pl, self.weights.data_ptr(),
                                     _ptr(self.zero_bits), extra.data_ptr())
            if self.zero_list is not None:
                k.lib.bnas_xnor_zero_weights(packed.words.data_ptr(), _ptr(packed.nonzero),
                                             geo.data_ptr(), c, h, w, pt, pl,
                                             self.zero_list.data_ptr(), self.zero_list.numel(),
                                             extra.data_ptr())
        out = torch.empty(shape)
        k.lib.bnas_xnor_conv(packed.words.data_ptr(), _ptr(packed.nonzero), geo.data_ptr(),
                             *args, _ptr(extra), _ptr(self.alpha), out.data_ptr(), k._isa,
                             torch.get_num_threads())
        return out

    def _call(self, k: Kernels, n: int, c: int, h: int, w: int
              ) -> tuple[tuple[int, ...], torch.Tensor, tuple[int, int, int]]:
        """What :meth:`run` passes the kernels for an ``n x c x h x w`` input on ``k``'s path:
        the output's shape, the geometry and the addresses of the weights' layout, border
        classes and table (kept alive by this plan)."""
        if c != self.in_channels:
            raise BnasError(f"a packed binary convolution of {self.in_channels} input channels "
                            f"got {c}")
        geo = self.geometry(n, h, w)
        ho, wo = int(geo[12]), int(geo[13])
        if ho <= 0 or wo <= 0:
            raise BnasError(f"input {h}x{w} is too small for a packed binary convolution")
        rowclass, table = self.borders(h, w)
        return ((n, self.out_channels, ho, wo), geo,
                (self.layout(k).data_ptr(), rowclass.data_ptr(), table.data_ptr()))


#: The fields of one task of ``bnas_xnor_binconvs`` (``csrc/xnor.cpp``, enum TaskField), in order.
TASK = ("record", "x", "scale", "shift", "thresh", "out", "switched", "post_scale", "post_shift",
        "residual", "act", "params")
#: The activations an :class:`Epilogue` applies, in the order of their codes (``csrc/xnor.cpp``,
#: enum Act), with the number of parameters each reads (None: one per output channel).
ACTS: dict[str, int | None] = {"none": 0, "relu": 0, "hardtanh": 2, "prelu": None}
_ACT_CODES = {name: code for code, name in enumerate(ACTS)}
_SWITCHED = TASK.index("switched")


class Epilogue(NamedTuple):
    """What follows a binary convolution and its bias in the same call of the kernels, in one
    pass over its output, as the float model's layers compute it: torch's eval BatchNorm with
    the terms ``scale`` and ``shift`` (:meth:`Kernels.bn_terms`), the addition of ``residual``
    (a float32 tensor of the output's shape), then the activation ``act`` (:data:`ACTS`) with its
    ``params`` (Hardtanh: its min and max; PReLU: one slope per output channel)."""

    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    act: str = "none"
    params: torch.Tensor | None = None


#: A ReLU after the convolution.
RELU = Epilogue(act="relu")


class ConvCall(NamedTuple):
    """One binary convolution of a network step: ``plan`` on input ``x`` (float32 NCHW,
    contiguous), packed with the BatchNorm terms ``scale`` and ``shift`` and the per-sample
    threshold ``thresh`` (each or None) and the scheme's ``zero_is_zero``, followed by
    ``epilogue``."""

    plan: BinaryConvPlan
    x: torch.Tensor
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    thresh: torch.Tensor | None = None
    zero_is_zero: bool = True
    epilogue: Epilogue = Epilogue()


def _check_epilogue(post: Epilogue, shape: tuple[int, ...]) -> None:
    """Raise :class:`BnasError` unless ``post`` fits a convolution output of ``shape``."""
    def fits(t: torch.Tensor | None, numel: int) -> bool:
        return (t is not None and t.dtype == torch.float32 and t.is_contiguous()
                and t.numel() == numel)

    if post.act not in ACTS:
        raise BnasError(f"unknown epilogue activation {post.act!r} (known: {', '.join(ACTS)})")
    wanted = ACTS[post.act]
    wanted = shape[1] if wanted is None else wanted
    if wanted and not fits(post.params, wanted):
        raise BnasError(f"the {post.act} epilogue needs {wanted} contiguous float32 parameters")
    if (post.scale is None) != (post.shift is None) or (
            post.scale is not None and not (fits(post.scale, shape[1])
                                            and fits(post.shift, shape[1]))):
        raise BnasError(f"an epilogue's BatchNorm needs both terms, {shape[1]} contiguous "
                        f"float32 values each")
    if post.residual is not None and not (fits(post.residual, math.prod(shape))
                                          and tuple(post.residual.shape) == shape):
        raise BnasError(f"a packed binary convolution's residual must be a contiguous float32 "
                        f"tensor of its output's shape {shape}, got "
                        f"{tuple(post.residual.shape)} {post.residual.dtype}")


def convolve_all(k: Kernels, calls: Sequence[ConvCall]) -> list[torch.Tensor]:
    """The outputs of independent binary convolutions (none reads another's output), in one
    call of the kernels (``bnas_xnor_binconvs``: with at least as many convolutions as threads,
    several run at once, each on one thread). A convolution whose input has many signs 0 (a
    ReLU's output, say) switches to the masked mode for good: the corrections would cost more
    than the masked popcounts."""
    fields = len(TASK)
    table = (ctypes.c_int64 * (fields * len(calls)))()
    outs = []
    for i, (plan, x, scale, shift, thresh, zero_is_zero, post) in enumerate(calls):
        n, c, h, w = x.shape
        if c != plan.in_channels:
            raise BnasError(f"a packed binary convolution of {plan.in_channels} input channels "
                            f"got {c}")
        record, shape = plan.record(k, n, h, w, zero_is_zero)
        _check_epilogue(post, shape)
        residual = post.residual
        out = torch.empty(shape)
        outs.append(out)
        table[fields * i:fields * (i + 1)] = (
            record.data_ptr(), x.data_ptr(), _ptr(scale) or 0, _ptr(shift) or 0,
            _ptr(thresh) or 0, out.data_ptr(), 0, _ptr(post.scale) or 0, _ptr(post.shift) or 0,
            _ptr(residual) or 0, _ACT_CODES[post.act], _ptr(post.params) or 0)
    k.lib.bnas_xnor_binconvs(table, len(calls), MASKED_ABOVE, k._isa, torch.get_num_threads())
    for i, call in enumerate(calls):
        if table[fields * i + _SWITCHED]:
            call.plan.set_masked()
    return outs
