"""The fused CPU kernels of binary operations (bnas.ops.native): BatchNorm forward bit
for bit as torch's, masks and gradients as torch's passes compute them, the lean operation and a
network step equal on either set of passes, and a clean fallback where the kernels cannot run."""
from __future__ import annotations

import ast
import copy
import subprocess
import sys

import pytest
import torch

import bnas
from bnas.binarize import get as get_binarizer
from bnas.binarize.normalize import standardized_sign
from bnas.binarize.plain import PlainConv2d
from bnas.binarize.ste import bireal_slope_, sign_clipped_ste
from bnas.ops import BinConvOp, lean, native
from bnas.ops.lean import TorchPasses, drop_factor

KERNELS = native.kernels()
needs_kernels = pytest.mark.skipif(KERNELS is None, reason="fused kernels not built here")


def test_kernels_are_built_where_a_compiler_is():
    assert (KERNELS is not None) == (native._compiler() is not None), native.describe()
    assert native.describe().startswith("on (" if KERNELS is not None else "off (")


def test_kernels_share_torchs_openmp_runtime():
    # In a fresh process: a test worker may have loaded another library's runtime (scikit-learn
    # ships its own libgomp) before this test runs.
    script = ("import torch; from bnas.ops import native; native.kernels(); "
              "print(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libgomp' in l}))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runtimes = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert len(runtimes) <= 1, runtimes


def batch(shape, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) * 3.0 + torch.randn(1, shape[1], 1, 1, generator=gen)


@needs_kernels
@pytest.mark.parametrize("shape", [(4, 5, 7, 9), (2, 19, 8, 8), (8, 36, 16, 16), (3, 3, 2, 1)])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("momentum", [0.1, 1.0 / 3.0])
def test_forward_is_torchs_batchnorm_bit_for_bit(shape, affine, momentum):
    x = batch(shape)
    x[:, 0] = 0.7  # a constant channel: zero variance, z is a rounding error of the mean
    c = shape[1]
    gamma, bias = (torch.rand(c) + 0.5, torch.randn(c)) if affine else (None, None)
    ours = [torch.randn(c), torch.rand(c) + 0.5]
    theirs = [t.clone() for t in ours]
    z, mean, invstd = torch.ops.aten.native_batch_norm(x, gamma, bias, *theirs, True, momentum,
                                                       1e-5)
    xb, m, s = KERNELS.bn_sign_forward(x, gamma, bias, *ours, momentum, 1e-5)
    assert torch.equal(xb, torch.sign(z))
    assert torch.equal(m, mean) and torch.equal(s, invstd)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert torch.equal(KERNELS.bn_sign(x, gamma, bias, mean, invstd, to_sign=False), z)
    assert torch.equal(KERNELS.bn_sign(x, gamma, bias, mean, invstd), xb)
    assert set(xb.unique().tolist()) <= {-1.0, 0.0, 1.0}


@needs_kernels
@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (2, 3, 8, 8), (2, 2, 3, 7)])
@pytest.mark.parametrize("with_scale, with_factor", [(False, False), (True, True), (False, True)])
def test_relu_mask_and_mask_grad_match_torchs_passes(shape, with_scale, with_factor):
    y = torch.randn(shape)
    y.view(-1)[::7] = 0.0
    y.view(-1)[1::11] = -0.0
    scale = torch.rand(1, shape[1], 1, 1) + 0.5 if with_scale else None
    factor = drop_factor(shape[0], y, 0.5) if with_factor else None
    expected, got = y.clone(), y.clone()
    mask_t = TorchPasses.relu_mask_(expected, scale, factor)
    mask_k = KERNELS.relu_mask_(got, scale, factor)
    assert torch.equal(got, expected) and torch.equal(got.signbit(), expected.signbit())
    g = torch.randn(shape)
    g.view(-1)[::5] = float("inf")  # 0 * inf is nan where the mask is off, as torch gives
    torch.testing.assert_close(KERNELS.mask_grad(g, mask_k, factor),
                               TorchPasses.mask_grad(g, mask_t, factor), rtol=0, atol=0,
                               equal_nan=True)


def torch_backward(dxb, x, gamma, bias, mean, invstd, eps=1e-5):
    """The gradients of sign(BN(x)) by torch's kernels (float32)."""
    z = torch.ops.aten.native_batch_norm(x, gamma, bias, None, None, True, 0.0, eps)[0]
    dz = dxb * (z.abs() < 1)
    return torch.ops.aten.native_batch_norm_backward(dz, x, gamma, None, None, mean, invstd,
                                                     True, eps, [True, gamma is not None,
                                                                 bias is not None])


@needs_kernels
@pytest.mark.parametrize("shape", [(4, 6, 7, 9), (8, 16, 16, 16)])
@pytest.mark.parametrize("affine", [False, True])
def test_backward_matches_torchs_batchnorm_and_straight_through_gradient(shape, affine):
    x = batch(shape) * 0.3
    c = shape[1]
    gamma, bias = (torch.rand(c) + 0.5, torch.randn(c) * 0.2) if affine else (None, None)
    _, mean, invstd = KERNELS.bn_sign_forward(x, gamma, bias, None, None, 0.1, 1e-5)
    dxb = torch.randn(shape)
    dx, dgamma, dbias = KERNELS.bn_sign_backward(dxb, x, gamma, bias, mean, invstd,
                                                 (True, affine, affine))
    expected = torch_backward(dxb, x, gamma, bias, mean, invstd)
    torch.testing.assert_close(dx, expected[0], rtol=1e-4, atol=1e-5)
    if affine:
        torch.testing.assert_close(dgamma, expected[1], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(dbias, expected[2], rtol=1e-4, atol=1e-4)
    else:
        assert dgamma is None and dbias is None
    # against float64 autograd of the definition, where no element sits on |z| = 1
    xd = x.double().requires_grad_()
    z = torch.nn.functional.batch_norm(xd, None, None, None if gamma is None else gamma.double(),
                                       None if bias is None else bias.double(), True, 0.1, 1e-5)
    sign_clipped_ste(z).backward(dxb.double())
    torch.testing.assert_close(dx.double(), xd.grad, rtol=1e-3, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("affine", [False, True])
def test_scaled_bireal_backward_matches_recus_binarizer_by_autograd(affine):
    """ReCU's activations: sign(z / d) per sample, Bi-Real's gradient through the scaling."""
    shape = (4, 6, 7, 9)
    x = batch(shape) * 0.3
    c = shape[1]
    gamma, bias = (torch.rand(c) + 0.5, torch.randn(c) * 0.2) if affine else (None, None)
    _, mean, invstd = KERNELS.bn_sign_forward(x, gamma, bias, None, None, 0.1, 1e-5)
    m, d = KERNELS.sample_moments(x, gamma, bias, mean, invstd, 1e-5)
    z = torch.ops.aten.native_batch_norm(x, gamma, bias, None, None, True, 0.0, 1e-5)[0]
    rows = z.double().reshape(shape[0], -1)
    torch.testing.assert_close(m.double(), rows.mean(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d.double(), (rows.var(dim=1) + 1e-5).sqrt(), rtol=1e-5, atol=1e-6)
    dxb = torch.randn(shape)
    dx, dgamma, dbias = KERNELS.scaled_bireal_backward(dxb, x, gamma, bias, mean, invstd, m, d,
                                                       (True, affine, affine))
    xd = x.double().requires_grad_()
    params = [None if t is None else t.double().requires_grad_() for t in (gamma, bias)]
    zd = torch.nn.functional.batch_norm(xd, None, None, *params, True, 0.1, 1e-5)
    standardized_sign(zd, bireal_slope_, eps=1e-5, center=False).backward(dxb.double())
    torch.testing.assert_close(dx.double(), xd.grad, rtol=1e-4, atol=1e-5)
    if affine:
        torch.testing.assert_close(dgamma.double(), params[0].grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(dbias.double(), params[1].grad, rtol=1e-4, atol=1e-4)


def op_pair(scheme: str, affine: bool) -> tuple[BinConvOp, BinConvOp]:
    torch.manual_seed(3)
    op = BinConvOp(6, 8, 3, 1, 1, get_binarizer(scheme), affine=affine)
    if affine:
        torch.nn.init.uniform_(op.bn.weight, 0.5, 1.5)
        torch.nn.init.uniform_(op.bn.bias, -0.3, 0.3)
    op.lean = True
    return op, copy.deepcopy(op)


@needs_kernels
@pytest.mark.parametrize("scheme, kind", [("plain", lean.FusedPasses), ("bop", lean.FusedPasses),
                                          ("recu", lean.FusedScaledBirealPasses)])
@pytest.mark.parametrize("affine", [False, True])
def test_lean_op_uses_the_fused_passes_with_the_same_results(scheme, kind, affine, monkeypatch):
    fused, reference = op_pair(scheme, affine)
    assert type(lean.passes(torch.empty(2, 6, 5, 5), fused.bn, fused.conv)) is kind
    factor = drop_factor(4, torch.empty(0), 0.5)
    x = batch((4, 6, 9, 9)) * 0.5
    results = []
    for module, use_torch in ((fused, False), (reference, True)):
        if use_torch:
            monkeypatch.setattr(lean, "passes", lambda x, bn, conv: TorchPasses())
        xi = x.clone().requires_grad_()
        y = module(xi, factor)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append((y.detach(), xi.grad, module))
    (y_f, dx_f, _), (y_t, dx_t, _) = results
    assert torch.equal(y_f, y_t)
    torch.testing.assert_close(dx_f, dx_t, rtol=1e-4, atol=1e-6)
    for (name, a), b in zip(reference.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, a), b in zip(reference.named_buffers(), fused.buffers()):
        assert torch.equal(b, a), name


def test_other_schemes_and_tensors_use_torchs_passes():
    for scheme in ("rbnn", "siman"):
        op = BinConvOp(3, 4, 3, 1, 1, get_binarizer(scheme))
        assert isinstance(lean.passes(torch.empty(2, 3, 5, 5), op.bn, op.conv), TorchPasses)
    op = BinConvOp(3, 4, 3, 1, 1, get_binarizer("recu")).eval()  # ReCU's eval-mode binarizer
    assert isinstance(lean.passes(torch.empty(2, 3, 5, 5), op.bn, op.conv), TorchPasses)

    class Overriding(PlainConv2d):  # binarizes otherwise without declaring it
        def binarize_input(self, x):
            return torch.sign(x)

    assert lean.fused_input(Overriding(3, 4, 3)) is None
    assert lean.fused_input(PlainConv2d(3, 4, 3)) == "sign_clipped"
    op = BinConvOp(3, 4, 3, 1, 1, get_binarizer("plain"))
    for x in (torch.empty(2, 3, 5, 5, dtype=torch.float64), torch.empty(2, 3, 1, 1),
              torch.empty(2, 3, 5, 5).to(memory_format=torch.channels_last),
              torch.empty(2, 5, 5, 3).permute(0, 3, 1, 2)):
        assert isinstance(lean.passes(x, op.bn, op.conv), TorchPasses)
    op.bn.double()  # parameters of another dtype than the input's
    assert isinstance(lean.passes(torch.empty(2, 3, 5, 5), op.bn, op.conv), TorchPasses)


@needs_kernels
@pytest.mark.parametrize("scheme", ["plain", "recu"])
def test_bnas_training_step_is_the_same_on_either_passes(scheme, monkeypatch):
    torch.manual_seed(0)
    fused = bnas.build_model("latest_cell_zeroise", binarizer=scheme, num_classes=10, layers=5,
                             init_channels=8)
    fused.drop_path_prob = 0.2
    reference = copy.deepcopy(fused)
    x, y = batch((6, 3, 16, 16)), torch.arange(6) % 10
    outputs = []
    for model in (fused, reference):
        if model is reference:
            monkeypatch.setattr(lean, "passes", lambda x, bn, conv: TorchPasses())
        model.train()
        torch.manual_seed(1)  # the same drop-path draws
        logits = model(x)
        logits = logits[0] if isinstance(logits, tuple) else logits
        torch.nn.functional.cross_entropy(logits, y).backward()
        outputs.append(logits.detach())
    assert torch.equal(outputs[0], outputs[1])
    for (name, a), b in zip(reference.named_parameters(), fused.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """kernels() with an empty cache, restored afterwards."""
    monkeypatch.setenv("BNAS_CACHE_DIR", str(tmp_path))
    native._load.cache_clear()
    yield tmp_path
    native._load.cache_clear()


@needs_kernels
def test_a_build_that_differs_from_torch_is_not_used(fresh_build, monkeypatch):
    tried = []
    monkeypatch.setattr(native, "matches_torch", lambda k: tried.append(k) or False)
    assert native.kernels() is None and "differs" in native.describe()
    assert len(tried) == 2  # with and without fused multiply-adds
    assert len(list(fresh_build.glob("sign_bn-*.so"))) == 2


def test_without_a_working_compiler_torchs_passes_run(fresh_build, monkeypatch):
    monkeypatch.setenv("CXX", "false")  # a compiler that always fails
    monkeypatch.setattr(native, "_compiler", lambda: "false")
    assert native.kernels() is None and native.describe().startswith("off (false failed")
    assert not list(fresh_build.iterdir())  # no partial library is left behind
    monkeypatch.setattr(native, "_compiler", lambda: None)
    native._load.cache_clear()
    assert native.kernels() is None and "no C++ compiler" in native.describe()


@pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler")
def test_an_unwritable_cache_turns_the_kernels_off(fresh_build, monkeypatch):
    blocker = fresh_build / "file"
    blocker.write_text("")
    monkeypatch.setenv("BNAS_CACHE_DIR", str(blocker / "cache"))  # a directory under a file
    assert native.kernels() is None and native.describe().startswith("off ([Errno")


def test_bnas_fused_0_turns_the_kernels_off(fresh_build, monkeypatch):
    monkeypatch.setenv("BNAS_FUSED", "0")
    assert native.kernels() is None and native.describe() == "off (BNAS_FUSED=0)"
    op = BinConvOp(3, 4, 3, 1, 1, get_binarizer("plain"))
    assert isinstance(lean.passes(torch.empty(2, 3, 5, 5), op.bn, op.conv), TorchPasses)


@pytest.mark.parametrize("arch, scheme, logged", [("latest_cell_zeroise", "plain", True),
                                                  ("latest_cell_zeroise", "recu", True),
                                                  ("latest_cell_zeroise", "siman", False),
                                                  ("resnet20_1w1a", "plain", False)])
def test_training_logs_whether_the_fused_kernels_run(arch, scheme, logged, tmp_path):
    from bnas.train import Trainer, resolve_config
    from bnas.run.context import Context

    size = {"layers": 3, "init_channels": 4} if arch.startswith("latest") else {}
    cfg = resolve_config(None, {"arch": arch, "binarizer": scheme, **size, "dataset": "synthetic",
                                "epochs": 1, "batch_size": 4, "workers": 0, "progress": False,
                                "out": str(tmp_path), "device": "cpu"})
    Trainer(cfg, Context()).close()
    lines = [line.split(" ", 2)[2] for line in (tmp_path / "log").read_text().splitlines()
             if "fused CPU kernels" in line]
    assert lines == ([f"fused CPU kernels for binary operations: {native.describe()}"]
                     if logged else [])
