"""Gradient-norm clipping with the plain (BNAS) scheme measures the gradient with respect to the
binary weights, before BNAS's (1 - 1/I) * n rescaling, as BNAS's ImageNet script clips."""
import pytest
import torch
import torch.nn.functional as F

from bnas.binarize import get
from bnas.binarize.plain import XnorScale, XnorSign, binary_weight_gradient
from bnas.binarize.ste import sign_clipped_ste


def _rescaled(w, g):
    """BNAS's latent-weight gradient, written out: (alpha * g + s * mean(s * g)) * (1 - 1/I) * n."""
    s = torch.sign(w)
    n, i = w[0].numel(), w.shape[1]
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    return (alpha * (w.abs() <= 1) * g + s * (s * g).mean(dim=(1, 2, 3), keepdim=True)) * (1 - 1 / i) * n


def test_binary_weight_gradient_inverts_the_rescaling():
    torch.manual_seed(0)
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64).clamp(-1, 1)
    w[0, 1, 2, 2] = 0.0  # sign 0: only the direct term reaches it
    w[3] = 0.0           # alpha 0: nothing to recover
    g = torch.randn_like(w)
    latent = w.clone().requires_grad_()
    # The layer's weight sign(W) * alpha, as its two factors (the scale is applied to the output).
    (XnorSign.apply(latent) * XnorScale.apply(latent).view(-1, 1, 1, 1)).backward(g)
    assert torch.allclose(latent.grad, _rescaled(w, g), atol=1e-12)
    recovered = binary_weight_gradient(w, latent.grad)
    assert torch.allclose(recovered[:3], g[:3], atol=1e-10) and torch.allclose(recovered[4], g[4], atol=1e-10)
    assert torch.equal(recovered[3], torch.zeros_like(g[3]))


@pytest.mark.parametrize("max_norm", [1e-3, 1e6])  # clips / leaves alone
def test_plain_clipping_acts_on_the_binary_weight_gradient(max_norm):
    torch.manual_seed(1)
    scheme = get("plain")
    conv = scheme.conv(3, 6, 3, padding=1).double()
    head = torch.nn.Linear(6 * 25, 4).double()
    model = torch.nn.ModuleDict({"conv": conv, "head": head})
    x, y = torch.randn(8, 3, 5, 5, dtype=torch.float64), torch.randint(0, 4, (8,))
    F.cross_entropy(head(conv(x).flatten(1)), y).backward()
    total = scheme.clip_grad_norm_(model, max_norm)

    # BNAS's order: gradients w.r.t. the binary weight, clip all, then rescale the conv's.
    w = conv.weight.detach()
    wb = (torch.sign(w) * w.abs().mean(dim=(1, 2, 3), keepdim=True)).requires_grad_()
    ref_head = torch.nn.Linear(6 * 25, 4).double()
    ref_head.load_state_dict(head.state_dict())
    out = F.conv2d(sign_clipped_ste(x), wb, None, 1, 1)
    F.cross_entropy(ref_head(out.flatten(1)), y).backward()
    grads = [wb.grad, ref_head.weight.grad, ref_head.bias.grad]
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    coef = min(1.0, max_norm / (norm.item() + 1e-6))
    assert total.item() == pytest.approx(norm.item(), rel=1e-10)
    assert torch.allclose(conv.weight.grad, _rescaled(conv.weight.detach(), wb.grad * coef), atol=1e-10)
    assert torch.allclose(head.weight.grad, ref_head.weight.grad * coef, atol=1e-12)
    assert torch.allclose(head.bias.grad, ref_head.bias.grad * coef, atol=1e-12)


def test_other_schemes_clip_their_own_gradients():
    torch.manual_seed(2)
    scheme = get("recu")
    model = torch.nn.Sequential(scheme.conv(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.randn(2, 3, 5, 5)).sum().backward()
    before = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None))
    assert scheme.clip_grad_norm_(model, 1e-3).item() == pytest.approx(before.item(), rel=1e-6)
    after = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None))
    assert after.item() == pytest.approx(1e-3, rel=1e-3)
