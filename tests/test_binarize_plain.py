"""The plain (BNAS / XNOR-Net) scheme against the reference procedure written out by hand."""
import torch
import torch.nn.functional as F

import bnas.binarize as B
from bnas.binarize.plain import PlainConv2d


def _reference_step(w_latent, x, upstream):
    """BNAS's binarise -> forward -> backward -> restore -> rescale, step by step: the projection
    in the layer's float32, everything after it in float64."""
    w = w_latent.clone()
    w = w + (-w.mean(1, keepdim=True))          # mean-centre over input channels
    w = w.clamp(-1.0, 1.0)                      # clamp
    projected = w.clone()
    w, x, upstream = w.double(), x.double(), upstream.double()
    saved = w.clone()
    n = w[0].numel()
    alpha = w.abs().sum(dim=(1, 2, 3), keepdim=True) / n
    wb = (w.sign() * alpha).requires_grad_(True)
    xb_in = x.clone().requires_grad_(True)
    xs = xb_in.sign()
    out = F.conv2d(xs, wb, padding=1)
    grad_xs, grad_wb = torch.autograd.grad(out, (xs, wb), upstream)
    grad_x = grad_xs.clone()
    grad_x[x >= 1] = 0
    grad_x[x <= -1] = 0
    m = alpha.expand_as(saved).clone()
    m[saved < -1] = 0
    m[saved > 1] = 0
    m = m * grad_wb
    m_add = (saved.sign() * grad_wb).sum(dim=(1, 2, 3), keepdim=True) / n * saved.sign()
    grad_w = (m + m_add) * (1.0 - 1.0 / saved.shape[1]) * n
    return out.detach(), grad_x, grad_w, projected


def test_forward_and_gradients_match_the_reference_procedure():
    torch.manual_seed(3)
    conv = B.get("plain").conv(5, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight) * 0.8)  # some entries beyond [-1, 1]
    x = torch.randn(2, 5, 6, 6) * 1.5
    x[0, 0, 0, :3] = torch.tensor([1.0, -1.0, 0.0])          # the STE's boundary and sign(0)
    upstream = torch.randn(2, 4, 6, 6)
    want_out, want_gx, want_gw, projected = _reference_step(conv.weight.detach(), x, upstream)

    xr = x.clone().requires_grad_(True)
    out = conv(xr)
    out.backward(upstream)
    torch.testing.assert_close(conv.weight.detach(), projected, rtol=0, atol=0)
    torch.testing.assert_close(out.double(), want_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(xr.grad.double(), want_gx, rtol=1e-6, atol=1e-6)
    # float32 rounding of sums of terms as large as the largest entry (with cancellation)
    torch.testing.assert_close(conv.weight.grad.double(), want_gw, rtol=1e-5,
                               atol=1e-6 * float(want_gw.abs().max()))


def test_projection_happens_once_per_weight_update():
    conv = B.get("plain").conv(3, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[0.5, 2.0, -3.0], [0.1, 0.2, 0.3]]).view(2, 3, 1, 1))
    x = torch.randn(1, 3, 4, 4)
    conv(x)
    once = conv.weight.detach().clone()
    want = torch.tensor([[0.5, 2.0, -3.0], [0.1, 0.2, 0.3]]).view(2, 3, 1, 1)
    want = (want - want.mean(1, keepdim=True)).clamp(-1, 1)
    torch.testing.assert_close(once, want)
    conv(x)  # no update since: the projection is not applied again
    assert torch.equal(conv.weight.detach(), once)
    opt = torch.optim.SGD(conv.parameters(), lr=1.0)
    conv(x).sum().backward()
    opt.step()
    stepped = conv.weight.detach().clone()
    conv(x)
    torch.testing.assert_close(conv.weight.detach(), (stepped - stepped.mean(1, keepdim=True)).clamp(-1, 1))


def test_registry_and_errors():
    assert "plain" in B.names()
    assert isinstance(B.get("bnas"), B.get("plain").__class__)
    assert B.get(B.get("plain").config()).config() == {"name": "plain"}
    for bad, msg in [("plane", "did you mean plain"), ({"foo": 1}, "needs a 'name'"), (42, "cannot interpret")]:
        try:
            B.get(bad)
        except ValueError as exc:
            assert msg in str(exc)
        else:
            raise AssertionError(bad)
    try:
        B.get("plain", tau=0.5)
    except ValueError as exc:
        assert "has no hyper-parameter tau" in str(exc)
    else:
        raise AssertionError


def test_conv_is_tagged_binary():
    conv = B.get("plain").conv(4, 4, 3)
    assert isinstance(conv, PlainConv2d) and conv.weight_precision == 1 and conv.input_precision == 1
