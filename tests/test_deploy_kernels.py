"""The packed engine's XNOR / popcount kernels, every path this CPU runs, against an
independently computed float64 convolution of the signs (and against each other), on the cases
where bit-packed convolutions go wrong: zero padding at every border class, stride, dilation,
1x1, a shifted origin (factorized reduce), input channels not a multiple of 64, output channels
not a multiple of the register block, interior zeros (sign(0) = 0), BatchNorm folded into the
packing (gamma < 0, gamma = 0) and per-sample thresholds. On the amx path every convolution
runs as tile products here (see the ``amx_everywhere`` fixture)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bnas.deploy import kernels as K
from bnas.errors import BnasError

ISAS = K.supported_isas()
#: On the amx path, every convolution here runs as tile products.
pytestmark = pytest.mark.usefixtures("amx_everywhere")


@pytest.fixture(params=K.ISAS)
def kern(request, monkeypatch):
    if request.param not in ISAS:
        pytest.skip(f"this CPU does not run the {request.param} path")
    monkeypatch.setenv("BNAS_XNOR_ISA", request.param)
    k = K.kernels()
    assert k.isa == request.param
    return k


def reference(xb: torch.Tensor, negative: torch.Tensor, alpha: torch.Tensor | None,
              geo: K.Geometry, zero: torch.Tensor | None = None) -> torch.Tensor:
    """``conv(xb, sign W) * alpha`` with ``xb`` in {-1, 0, 1} and ``sign W`` -1 where
    ``negative``, 0 where ``zero``, else +1: the sum in float64 (exact), one float32 rounding of
    the scale, the zero padding and origin applied explicitly."""
    t, l, b, r = geo.pad
    xp = F.pad(xb.double(), (l, r, t, b))[:, :, geo.origin[0]:, geo.origin[1]:]
    signs = 1.0 - 2.0 * negative.double()
    if zero is not None:
        signs = signs.masked_fill(zero, 0.0)
    y = F.conv2d(xp, signs, stride=geo.stride, dilation=geo.dilation)
    y = y.float()
    return y if alpha is None else y * alpha.view(1, -1, 1, 1)


def run(k: K.Kernels, x: torch.Tensor, negative: torch.Tensor, alpha: torch.Tensor | None,
        geo: K.Geometry, masked: bool = False, **pack) -> torch.Tensor:
    """The packed convolution, in the unmasked mode (corrections) or the masked one."""
    plan = K.BinaryConvPlan(negative, alpha, geo)
    return plan.run(k, x, k.pack(x, geo, masked=masked, **pack))


def sym(k: int, stride: int = 1, dilation: int = 1) -> K.Geometry:
    p = dilation * (k - 1) // 2
    return K.Geometry(k, k, stride, dilation, (p, p, p, p))


CASES = [  # n, c_in, c_out, h, w, geometry
    (2, 37, 13, 9, 11, sym(3)),            # tail mask, odd sizes, O % 8 != 0
    (1, 64, 64, 8, 8, sym(3, 2)),          # stride 2
    (2, 130, 20, 7, 10, sym(5, 1, 2)),     # dilation 2, 5x5 (bin_dil_conv_5x5), 3 words
    (1, 70, 9, 6, 5, sym(1, 2)),           # 1x1 stride 2
    (1, 200, 17, 13, 6, sym(3, 2, 2)),     # stride and dilation
    (1, 64, 24, 5, 17, sym(5)),            # padding wider than some outputs reach
    (1, 48, 16, 9, 9, K.Geometry(1, 1, 2, 1, (0, 0, 1, 1), (1, 1))),  # factorized reduce's shift
    (3, 3, 8, 4, 4, sym(3)),               # a handful of channels
    (1, 20, 8, 3, 75, sym(3)),             # rows of several packing segments (32, 64 pixels)
]


@pytest.mark.parametrize("masked", [False, True], ids=["corrected", "masked"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_binary_conv_equals_the_float64_reference(kern, case, masked):
    n, c, o, h, w, geo = case
    gen = torch.Generator().manual_seed(sum(case[:5]))
    x = torch.randn(n, c, h, w, generator=gen)
    x[0, 1 % c, 2 % h, 3 % w] = 0.0  # interior sign(0) = 0
    x[-1, -1, -1, -1] = -0.0
    negative = torch.rand(o, c, geo.kh, geo.kw, generator=gen) < 0.5
    alpha = torch.rand(o, generator=gen) - 0.2  # a negative scale too
    expected = reference(torch.sign(x), negative, alpha, geo)
    out = run(kern, x, negative, alpha, geo, masked)
    assert out.shape == expected.shape
    assert torch.equal(out, expected)


ZERO_GEOMETRIES = {"3x3": sym(3), "3x3-s2": sym(3, 2), "5x5-d2": sym(5, 1, 2),
                   "shifted-1x1": K.Geometry(1, 1, 2, 1, (0, 0, 1, 1), (1, 1))}


@pytest.mark.parametrize("masked", [False, True], ids=["corrected", "masked"])
@pytest.mark.parametrize("geo", ZERO_GEOMETRIES.values(), ids=ZERO_GEOMETRIES.keys())
def test_binary_weights_exactly_zero(kern, geo, masked):
    """A binary weight exactly 0 (torch.sign of a latent weight 0: the plain, RBNN and ReCU
    schemes): held as +1, what that +1 added taken back per output, exactly, on both ways to
    the kernels (packed then run, and one call). Zero weights at a corner tap (in the padding
    at the borders), the centre tap, both sides of a word boundary (channels 63, 64), a whole
    output channel, and at the taps that read sign(0) inputs."""
    gen = torch.Generator().manual_seed(7)
    n, c, o, h, w = 2, 70, 11, 7, 9
    x = torch.randn(n, c, h, w, generator=gen)
    x[0, 5, 3, 4] = 0.0
    x[1, 64, 0, 0] = 0.0
    negative = torch.rand(o, c, geo.kh, geo.kw, generator=gen) < 0.5
    zero = torch.zeros_like(negative)
    zero[0, 5] = True                 # every tap of channel 5, one reading the sign(0) above
    zero[3, :, 0, 0] = True           # a corner tap of every channel
    zero[4, 63, geo.kh // 2, geo.kw // 2] = zero[4, 64, -1, -1] = True
    zero[2, 64] = True                # reads the sign(0) at (1, 64, 0, 0)
    zero[o - 1] = True                # an output channel of zeros
    negative &= ~zero
    alpha = torch.rand(o, generator=gen) + 0.5
    expected = reference(torch.sign(x), negative, alpha, geo, zero)
    plan = K.BinaryConvPlan(negative, alpha, geo, zero=zero)
    assert torch.equal(plan.run(kern, x, kern.pack(x, geo, masked=masked)), expected)
    plan = K.BinaryConvPlan(negative, alpha, geo, zero=zero)
    plan.masked = masked
    assert torch.equal(plan(kern, x), expected)


def test_scale_free_weights_give_the_integer_sums(kern):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 100, 6, 6, generator=gen)
    negative = torch.rand(10, 100, 3, 3, generator=gen) < 0.5
    out = run(kern, x, negative, None, sym(3))
    assert torch.equal(out, reference(torch.sign(x), negative, None, sym(3)))
    assert torch.equal(out, out.round())


def test_many_interior_zeros_are_all_corrected(kern):
    """More zeros than the first packing records: it packs again with room for all; a plan
    seeing that many turns to the masked mode, for this input and the next."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 66, 8, 8, generator=gen)
    x[:, ::3] = 0.0  # whole constant channels, as a BatchNorm with beta 0 makes them
    negative = torch.rand(12, 66, 3, 3, generator=gen) < 0.5
    alpha = torch.rand(12, generator=gen)
    expected = reference(torch.sign(x), negative, alpha, sym(3))
    assert torch.equal(run(kern, x, negative, alpha, sym(3)), expected)
    plan = K.BinaryConvPlan(negative, alpha, sym(3))
    assert torch.equal(plan(kern, x), expected) and plan.masked
    y = torch.relu(torch.randn(2, 66, 8, 8, generator=gen))
    assert torch.equal(plan(kern, y), reference(torch.sign(y), negative, alpha, sym(3)))


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: "x".join(map(str, c[:5])))
def test_one_call_equals_its_steps(kern, case, relu):
    """The network's call (packing, corrections, convolution, bias, ReLU in one) equals the
    steps one at a time and the reference, with the BatchNorm in the packing, a few signs 0
    (corrected) and a bias; the packed input's buffer is reused by the next call."""
    n, c, o, h, w, geo = case
    gen = torch.Generator().manual_seed(7 + sum(case[:5]))
    x = torch.randn(n, c, h, w, generator=gen)
    x[0, 0, 1 % h, :] = 0.5  # BN(0.5) = 0 below: a row of signs 0
    scale, shift = torch.rand(c, generator=gen) + 0.5, torch.randn(c, generator=gen)
    shift[0] = -0.5 * scale[0]
    negative = torch.rand(o, c, geo.kh, geo.kw, generator=gen) < 0.5
    alpha, bias = torch.rand(o, generator=gen), torch.randn(o, generator=gen)
    plan = K.BinaryConvPlan(negative, alpha, geo, bias)
    fma = bool(kern.fma)
    z = torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1)) if fma else \
        x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    expected = reference(torch.sign(z), negative, alpha, geo) + bias.view(1, -1, 1, 1)
    steps = plan.run(kern, x, kern.pack(x, geo, scale, shift)) + bias.view(1, -1, 1, 1)
    if relu:
        expected, steps = torch.relu(expected), torch.relu(steps)
    assert torch.equal(steps, expected)
    for _ in range(2):
        assert torch.equal(plan(kern, x, scale, shift, epilogue=K.RELU if relu else None),
                           expected)
        assert not plan.masked


EPILOGUE_ACTS = {"none": torch.nn.Identity(), "relu": torch.nn.ReLU(),
                  "hardtanh": torch.nn.Hardtanh(-0.5, 0.75), "prelu": torch.nn.PReLU(13)}


@pytest.mark.parametrize("act", sorted(EPILOGUE_ACTS))
@pytest.mark.parametrize("size", [(9, 11), (4, 4), (1, 3)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_the_epilogue_is_torchs_layers(kern, act, size):
    """BatchNorm, residual addition and activation after the convolution (and its bias) in the
    same call are torch's eval layers bit for bit, including a NaN in the residual, planes
    whose size is no multiple of the vector width, and a BatchNorm with gamma < 0 and 0."""
    if kern.fma is None:
        pytest.skip("the kernels' BatchNorm arithmetic differs from this torch build's")
    h, w = size
    gen = torch.Generator().manual_seed(h * w)
    x = torch.randn(2, 37, h, w, generator=gen)
    negative = torch.rand(13, 37, 3, 3, generator=gen) < 0.5
    alpha, bias = torch.rand(13, generator=gen), torch.randn(13, generator=gen)
    bn = torch.nn.BatchNorm2d(13).eval()
    module = EPILOGUE_ACTS[act]
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(13, generator=gen))
        bn.running_var.copy_(torch.rand(13, generator=gen) + 0.1)
        bn.weight.copy_(torch.randn(13, generator=gen))
        bn.weight[:2] = torch.tensor([0.0, -1.5])
        bn.bias.copy_(torch.randn(13, generator=gen))
        if act == "prelu":
            module.weight.copy_(torch.randn(13, generator=gen))
    residual = torch.randn(2, 13, h, w, generator=gen)
    residual[1, 3, 0, 0] = float("nan")
    from bnas.deploy.blocks import ACTIVATIONS

    name, params = ACTIVATIONS.get(type(module).__name__)(module, 13)
    epilogue = K.Epilogue(*kern.bn_terms(bn), residual=residual, act=name, params=params)
    plan = K.BinaryConvPlan(negative, alpha, sym(3), bias)
    with torch.no_grad():
        conv = reference(torch.sign(x), negative, alpha, sym(3)) + bias.view(1, -1, 1, 1)
        expected = module(bn(conv) + residual)
    got = plan(kern, x, epilogue=epilogue)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got.nan_to_num(), expected.nan_to_num())


@pytest.mark.parametrize("epilogue, message", [
    (K.Epilogue(residual=torch.zeros(1, 4, 5, 4)), "residual"),
    (K.Epilogue(act="gelu"), "unknown epilogue activation"),
    (K.Epilogue(act="prelu", params=torch.ones(3)), "needs 4 contiguous"),
    (K.Epilogue(act="hardtanh"), "needs 2 contiguous"),
    (K.Epilogue(scale=torch.ones(4)), "both terms"),
], ids=["residual", "activation", "prelu", "hardtanh", "batchnorm"])
def test_an_epilogue_that_does_not_fit_is_refused(kern, epilogue, message):
    plan = K.BinaryConvPlan(torch.zeros(4, 8, 3, 3, dtype=torch.bool), None, sym(3))
    with pytest.raises(BnasError, match=message):
        plan(kern, torch.randn(1, 8, 5, 5), epilogue=epilogue)


def test_zeros_as_plus_one_when_the_scheme_says_so(kern):
    x = torch.zeros(1, 5, 4, 4)
    x[0, 0, 0, 0] = -1.0
    negative = torch.rand(3, 5, 3, 3) < 0.5
    xb = torch.where(x < 0, -1.0, 1.0)
    for masked in (False, True):
        out = run(kern, x, negative, None, sym(3), masked, zero_is_zero=False)
        assert torch.equal(out, reference(xb, negative, None, sym(3)))


@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_folded_into_the_packing_matches_torch_then_sign(kern, affine):
    """sign(BN(x)) packed from x: gamma < 0 flips the comparison, gamma = 0 gives the constant
    sign(beta) (and sign(0) = 0 for beta = 0)."""
    gen = torch.Generator().manual_seed(3)
    c = 72
    bn = torch.nn.BatchNorm2d(c, affine=affine).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen))
        bn.running_var.copy_(torch.rand(c, generator=gen) + 0.1)
        if affine:
            bn.weight.copy_(torch.randn(c, generator=gen))
            bn.weight[:4] = 0.0
            bn.bias.copy_(torch.randn(c, generator=gen))
            bn.bias[0] = 0.0
            bn.weight[4:8] = -bn.weight[4:8].abs()
    x = torch.randn(2, c, 7, 7, generator=gen) * 2
    x[0, 10, 3, 3] = float(bn.running_mean[10])  # exactly the mean: BN(x) = beta
    negative = torch.rand(16, c, 3, 3, generator=gen) < 0.5
    alpha = torch.rand(16, generator=gen)
    with torch.no_grad():
        expected = reference(torch.sign(bn(x)), negative, alpha, sym(3))
    if kern.fma is None:
        pytest.skip("the packing's BatchNorm differs from torch's here: torch normalises")
    scale, shift = kern.bn_terms(bn)
    out = run(kern, x, negative, alpha, sym(3), scale=scale, shift=shift)
    assert torch.equal(out, expected)


def test_per_sample_thresholds(kern):
    """sign(x - m) per sample (RBNN's and SiMaN's centred activations) as a comparison."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 40, 5, 5, generator=gen)
    m = x.reshape(3, -1).sum(dim=1) / x[0].numel()
    x[1, 2, 2, 2] = m[1]
    negative = torch.rand(8, 40, 3, 3, generator=gen) < 0.5
    out = run(kern, x, negative, None, sym(3), thresh=m.contiguous())
    assert torch.equal(out, reference(torch.sign(x - m.view(3, 1, 1, 1)), negative, None, sym(3)))


def test_every_path_agrees_with_every_other(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 150, 12, 12, generator=gen)
    x[0, :3] = 0.0
    negative = torch.rand(33, 150, 3, 3, generator=gen) < 0.5
    alpha = torch.rand(33, generator=gen)
    outs = []
    for isa in ISAS:
        monkeypatch.setenv("BNAS_XNOR_ISA", isa)
        outs += [run(K.kernels(), x, negative, alpha, sym(3, 2), masked) for masked in (0, 1)]
    assert all(torch.equal(o, outs[0]) for o in outs[1:])


def test_the_bn_probe_finds_torchs_arithmetic():
    k = K.kernels()
    assert k.fma is not None and K.matches_torch_bn(k.lib, k.fma)
    assert k.isa in K.describe()


def test_an_unknown_or_unsupported_path_is_refused(monkeypatch):
    monkeypatch.setenv("BNAS_XNOR_ISA", "neon")
    with pytest.raises(BnasError, match="expected one of portable, avx2, avx512"):
        K.kernels()
    missing = [isa for isa in K.ISAS if isa not in ISAS]
    if missing:
        monkeypatch.setenv("BNAS_XNOR_ISA", missing[0])
        with pytest.raises(BnasError, match="this CPU runs only"):
            K.kernels()


def test_weights_pack_64_channels_to_a_word():
    negative = torch.zeros(3, 70, 1, 1, dtype=torch.bool)
    negative[1, 0] = negative[1, 63] = negative[2, 64] = negative[2, 69] = True
    words = K.pack_weight_bits(negative).view(torch.int64)
    assert words.shape == (K.O_BLOCK, 2, 1)
    assert words[1, 0, 0] == (1 | -(1 << 63)) and words[1, 1, 0] == 0
    assert words[2, 0, 0] == 0 and words[2, 1, 0] == (1 | 1 << 5)
    assert not words[3:].any()


@pytest.mark.parametrize("k, stride, pad", [(3, 2, 1), (3, 1, 1), (2, 2, 0), (3, 2, 0), (5, 3, 2)])
@pytest.mark.parametrize("size", [(7, 9), (1, 2), (16, 16)])
def test_max_pooling_equals_torchs(k, stride, pad, size):
    """The engine's max pooling against torch's: odd sizes, windows clipped at every border,
    -inf and NaN (a NaN in a window is the output)."""
    h, w = size
    if (h + 2 * pad - k) // stride + 1 <= 0 or (w + 2 * pad - k) // stride + 1 <= 0:
        pytest.skip("no output")
    gen = torch.Generator().manual_seed(h * w + k)
    x = torch.randn(2, 5, h, w, generator=gen)
    x[0, 0] = float("-inf")
    x[0, 1, 0, 0] = float("nan")
    x[1, 2, -1, -1] = float("nan")
    x[1, 3] = x[1, 3].round()  # ties
    out = K.kernels().maxpool(x, k, stride, pad)
    assert torch.equal(out.isnan(), F.max_pool2d(x, k, stride, pad).isnan())
    expected = F.max_pool2d(x, k, stride, pad)
    assert torch.equal(out.nan_to_num(), expected.nan_to_num())


@pytest.mark.skipif("amx" not in ISAS, reason="this CPU does not run the amx path")
def test_amx_runs_as_tiles_the_convolutions_where_they_are_faster(amx_everywhere, monkeypatch):
    """By default the amx path lays out tile weights for up to 128 input channels with at least
    320 channels x taps, and runs tiles on outputs at least 14 wide with at least 10 M products;
    its popcount kernel runs the rest. Both give the float model's sums."""
    assert amx_everywhere == (2, 320, 14, 10_000_000)
    monkeypatch.setenv("BNAS_XNOR_ISA", "amx")
    k = K.kernels()
    forced = k.amx_rule(amx_everywhere)
    try:
        def tiles(c_in: int, kernel: int) -> bool:
            plan = K.BinaryConvPlan(torch.zeros(32, c_in, kernel, kernel, dtype=torch.bool), None,
                                    sym(kernel))
            return int(plan.layout(k)[0]) != 0

        assert tiles(64, 3) and tiles(128, 3) and tiles(36, 3) and tiles(36, 5)
        assert not tiles(129, 3) and not tiles(32, 3) and not tiles(64, 1)
        gen = torch.Generator().manual_seed(9)
        negative = torch.rand(160, 64, 3, 3, generator=gen) < 0.5
        for width in (20, 13):  # tiles, popcount
            x = torch.randn(1, 64, 16, width, generator=gen)
            out = run(k, x, negative, None, sym(3))
            assert torch.equal(out, reference(torch.sign(x), negative, None, sym(3)))
    finally:
        k.amx_rule(forced)
