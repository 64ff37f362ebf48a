"""The binarizers' fused fast paths against the plain compositions they replace, in float64:
standardisation (with and without a sign), the selection-based percentile and half mask; and
the bit-packed masks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bnas.binarize import normalize
from bnas.binarize.normalize import standardize, standardized_sign
from bnas.binarize.rbnn import rbnn_slope_
from bnas.binarize.siman import half_mask, percentile
from bnas.binarize.ste import bireal_slope_, masked, pack_mask, unpack_mask
from binarize_formulas import assert_close, seeded


def reference_standardize(x: torch.Tensor, eps: float, center: bool) -> torch.Tensor:
    """The same standardisation from elementary autograd operations."""
    dims = tuple(range(1, x.dim()))
    numerator = x - x.mean(dim=dims, keepdim=True) if center else x
    return numerator / torch.sqrt(x.var(dim=dims, keepdim=True) + eps)


class _SurrogateSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, slope_):
        ctx.save_for_backward(y)
        ctx.slope_ = slope_
        return torch.sign(y)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return ctx.slope_(y.clone()) * g, None


def grads(fn, x: torch.Tensor, g: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    y.backward(g)
    return y.detach(), x.grad


SLOPES = {
    "bireal": bireal_slope_,
    "rbnn": lambda y: rbnn_slope_(y, torch.tensor(1.7, dtype=torch.float64),
                                  torch.tensor(0.6, dtype=torch.float64)),
}


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("eps", [0.0, 1e-5])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 2, 3, 3)])
def test_standardize_matches_composition(center, eps, shape):
    x = seeded(*shape, seed=1) * 0.8 + 0.3
    g = seeded(*shape, seed=2)
    y, dx = grads(lambda v: standardize(v, eps, center), x, g)
    y_ref, dx_ref = grads(lambda v: reference_standardize(v, eps, center), x, g)
    assert_close(y, y_ref)
    assert_close(dx, dx_ref)


@pytest.mark.parametrize("slope", SLOPES.keys())
@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("chunk", [1 << 18, 7])  # one product per call, or a few rows at a time
def test_standardized_sign_matches_composition(monkeypatch, slope, center, chunk):
    monkeypatch.setattr(normalize, "_CHUNK", chunk)
    x = seeded(5, 3, 4, 4, seed=3) * 0.5 + 0.1
    g = seeded(5, 3, 4, 4, seed=4)
    fn = SLOPES[slope]
    y, dx = grads(lambda v: standardized_sign(v, fn, 1e-5, center), x, g)
    y_ref, dx_ref = grads(lambda v: _SurrogateSign.apply(reference_standardize(v, 1e-5, center),
                                                         fn), x, g)
    assert torch.equal(y, y_ref)
    assert_close(dx, dx_ref)
    assert (dx != 0).any()


def test_slopes_match_their_formulas():
    y = torch.linspace(-2, 2, 81, dtype=torch.float64)
    assert_close(bireal_slope_(y.clone()), torch.clamp(2 - 2 * y.abs(), min=0))
    k, t = torch.tensor(1.7, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    assert_close(rbnn_slope_(y.clone(), k, t),
                 k * torch.clamp(math.sqrt(2) * t - t * t * y.abs(), min=0))


@pytest.mark.parametrize("q", [0.0, 3.0, 11.25, 50.0, 88.75, 100.0, 100.0 / 6])
def test_percentile_of_unsorted_values_matches_numpy(q):
    values = seeded(7, 13, seed=5).abs()  # 91 values, in no order
    got = float(percentile(values, q))
    assert got == pytest.approx(np.percentile(values.numpy(), q), rel=1e-12)


def topk_mask(x: torch.Tensor) -> torch.Tensor:
    top = torch.topk(x, x.shape[1] // 2, dim=1).indices
    return torch.zeros_like(x).scatter_(1, top, 1.0)


@pytest.mark.parametrize("n", [1, 2, 27, 54])
def test_half_mask_matches_topk(n):
    x = seeded(6, n, seed=6).abs()
    assert torch.equal(half_mask(x), topk_mask(x))


def test_half_mask_with_ties_keeps_half():
    x = seeded(4, 10, seed=7).abs()
    x[:, :6] = 1.5  # six tied values span the boundary of the top five
    mask = half_mask(x)
    assert torch.equal(mask, topk_mask(x))
    assert (mask.sum(dim=1) == 5).all()


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (3, 5, 7), (1,), (13,)])
def test_packed_masks_are_one_bit_per_element_and_unpack_exactly(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
    # bit k of byte i is element 8 i + k, in flat order (numpy's little-endian packbits)
    expected = np.packbits(mask.reshape(-1).numpy(), bitorder="little")
    assert np.array_equal(packed.numpy(), expected)
    unpacked = unpack_mask(packed, mask.shape)
    assert unpacked.dtype == torch.uint8 and unpacked.shape == mask.shape
    assert torch.equal(unpacked, mask.to(torch.uint8))
    grad = torch.randn(shape)
    assert torch.equal(masked(grad, unpacked), torch.where(mask, grad, 0.0))
