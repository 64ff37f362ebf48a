"""State dicts laid out as the seed projects save them, and their networks' evaluation-mode
forward written out as plain functions over those tensors (float64), for the import tests.

The layouts and formulas follow the projects' model definitions and ``BinarizeConv2d`` classes
(RBNN, ReCU, SiMaN): module names ``conv1``, ``bn1``, ``layer{s}.{b}.conv1`` ..., per-layer
tensors ``alpha`` (O, 1, 1); RBNN ``rotate`` (O, 1, 1, 1), ``R1``, ``R2``; ReCU ``tau`` (1,);
SiMaN ``B`` (O, N) and ``percent``. Nothing here uses bnas's modules.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

DT = torch.float64


class Maker:
    """Random tensors under the projects' names."""

    def __init__(self, scheme: str, seed: int = 0) -> None:
        self.scheme = scheme
        self.gen = torch.Generator().manual_seed(seed)
        self.sd: dict[str, torch.Tensor] = {}

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen)

    def conv(self, name: str, o: int, i: int, k: int) -> None:
        self.sd[f"{name}.weight"] = self.randn(o, i, k, k) * math.sqrt(2.0 / (i * k * k))

    def bn(self, name: str, c: int) -> None:
        self.sd[f"{name}.weight"] = 0.5 + self.rand(c)
        self.sd[f"{name}.bias"] = 0.2 * self.randn(c)
        self.sd[f"{name}.running_mean"] = 0.2 * self.randn(c)
        self.sd[f"{name}.running_var"] = 0.5 + self.rand(c)
        self.sd[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    def prelu(self, name: str, c: int) -> None:
        self.sd[f"{name}.weight"] = 0.25 + 0.1 * self.randn(c)

    def linear(self, name: str, o: int, i: int) -> None:
        self.sd[f"{name}.weight"] = self.randn(o, i) / math.sqrt(i)
        self.sd[f"{name}.bias"] = 0.1 * self.randn(o)

    def block(self, p: str, c_in: int, width: int, *, prelu: bool = False,
              fresh: bool = False) -> None:
        """A residual block's two binary 3x3 convolutions, BatchNorms and PReLUs."""
        self.binary_conv(f"{p}.conv1", width, c_in, 3, fresh=fresh)
        self.bn(f"{p}.bn1", width)
        self.binary_conv(f"{p}.conv2", width, width, 3, fresh=fresh)
        self.bn(f"{p}.bn2", width)
        if prelu:
            self.prelu(f"{p}.nonlinear1", width)
            self.prelu(f"{p}.nonlinear2", width)

    def binary_conv(self, name: str, o: int, i: int, k: int, *, fresh: bool = False) -> None:
        self.conv(name, o, i, k)
        self.sd[f"{name}.alpha"] = self.rand(o, 1, 1) + 0.1
        n = i * k * k
        if self.scheme == "rbnn":
            a = next(d for d in range(math.isqrt(n), 0, -1) if n % d == 0)
            self.sd[f"{name}.rotate"] = self.rand(o, 1, 1, 1) * math.pi / 2
            self.sd[f"{name}.R1"] = torch.linalg.qr(self.randn(a, a))[0]
            self.sd[f"{name}.R2"] = torch.linalg.qr(self.randn(n // a, n // a))[0]
        elif self.scheme == "recu":
            self.sd[f"{name}.tau"] = torch.tensor([0.9])
        elif self.scheme == "siman":
            mask = (self.rand(o, n) > 0.5).float()  # a stored mask, not one derived from weight
            self.sd[f"{name}.B"] = mask.view(o, 1, n) if fresh else mask
            self.sd[f"{name}.percent"] = torch.tensor(3.0)


# -- the projects' networks as state dicts --------------------------------------------------
def cifar_resnet20(scheme: str, *, prelu: bool = False, classes: int = 10,
                   fresh: bool = False) -> dict[str, torch.Tensor]:
    m = Maker(scheme)
    m.conv("conv1", 16, 3, 3)
    m.bn("bn1", 16)
    c_in = 16
    for s, width in enumerate((16, 32, 64), start=1):
        for b in range(3):
            m.block(f"layer{s}.{b}", c_in, width, prelu=prelu, fresh=fresh)
            c_in = width
    m.bn("bn2", 64)
    m.linear("linear", classes, 64)
    return m.sd


def cifar_resnet18(scheme: str, *, conv_shortcut: bool, widths=(64, 128, 256, 512),
                   classes: int = 10) -> dict[str, torch.Tensor]:
    m = Maker(scheme)
    m.conv("conv1", widths[0], 3, 3)
    m.bn("bn1", widths[0])
    c_in = widths[0]
    for s, width in enumerate(widths, start=1):
        for b in range(2):
            p = f"layer{s}.{b}"
            m.block(p, c_in, width)
            if conv_shortcut and c_in != width:
                m.binary_conv(f"{p}.shortcut.0", width, c_in, 1)
                m.bn(f"{p}.shortcut.1", width)
            c_in = width
    m.bn("bn2", widths[-1])
    m.linear("linear", classes, widths[-1])
    return m.sd


def imagenet_resnet18(scheme: str, *, prelu: bool = False, unused_bn3: bool = False,
                      classes: int = 7) -> dict[str, torch.Tensor]:
    m = Maker(scheme)
    m.conv("conv1", 64, 3, 7)
    m.bn("bn1", 64)
    c_in = 64
    for s, width in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{s}.{b}"
            m.block(p, c_in, width, prelu=prelu)
            if c_in != width:
                m.conv(f"{p}.downsample.0", width, c_in, 1)
                m.bn(f"{p}.downsample.1", width)
            c_in = width
    m.bn("bn2", 512)
    m.linear("fc", classes, 512)
    if unused_bn3:
        m.bn("bn3", classes)
    return m.sd


def vgg_small(scheme: str, *, prelu: bool = False, classes: int = 10) -> dict[str, torch.Tensor]:
    m = Maker(scheme)
    m.conv("conv0", 128, 3, 3)
    m.bn("bn0", 128)
    widths = (128, 128, 256, 256, 512, 512)
    for k in range(1, 6):
        m.binary_conv(f"conv{k}", widths[k], widths[k - 1], 3)
        m.bn(f"bn{k}", widths[k])
    if prelu:
        for k in range(6):
            m.prelu(f"nonlinear{k}", widths[k])
    m.linear("fc", classes, 512 * 16)
    return m.sd


# -- evaluation-mode forward of the projects' layers ----------------------------------------
def _rows_standardize(x: torch.Tensor, eps: float) -> torch.Tensor:
    dims = list(range(1, x.dim()))
    c = x - x.mean(dims, keepdim=True)
    return c / torch.sqrt(c.var(dims, keepdim=True) + eps) if eps else c / c.std(dims, keepdim=True)


def binary_conv(sd, name: str, x: torch.Tensor, scheme: str, stride: int = 1,
                padding: int = 1) -> torch.Tensor:
    w = sd[f"{name}.weight"].to(DT)
    o, n = w.shape[0], w[0].numel()
    if scheme == "rbnn":
        w2 = _rows_standardize(w, 0.0)
        r1, r2 = sd[f"{name}.R1"].to(DT), sd[f"{name}.R2"].to(DT)
        rotated = (r1.t() @ w2.view(o, r1.shape[0], r2.shape[0]) @ r2).view_as(w)
        w3 = w2 + torch.abs(torch.sin(sd[f"{name}.rotate"].to(DT))) * (rotated - w2)
        bw, ba = torch.sign(w3), torch.sign(_rows_standardize(x, 0.0))
    elif scheme == "recu":
        w1 = (w - w.mean([1, 2, 3], keepdim=True)) / (
            torch.sqrt(w.var([1, 2, 3], keepdim=True) + 1e-5) / 2 / np.sqrt(2))
        q = -w1.abs().mean() * torch.log(2 - 2 * sd[f"{name}.tau"].to(DT))
        bw, ba = torch.sign(torch.clamp(w1, -q, q)), torch.sign(x)
    elif scheme == "siman":
        bw = (2 * sd[f"{name}.B"].to(DT) - 1).reshape(o, -1).view_as(w)
        ba = torch.sign(_rows_standardize(x, 1e-5))
    else:
        raise ValueError(scheme)
    assert n == bw[0].numel()
    return F.conv2d(ba, bw, None, stride, padding) * sd[f"{name}.alpha"].to(DT)


def conv(sd, name, x, stride=1, padding=1):
    return F.conv2d(x, sd[f"{name}.weight"].to(DT), None, stride, padding)


def bn(sd, name, x):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean, var = sd[f"{name}.running_mean"].to(DT), sd[f"{name}.running_var"].to(DT)
    w, b = sd[f"{name}.weight"].to(DT), sd[f"{name}.bias"].to(DT)
    return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + 1e-5) * w.view(shape) + b.view(shape)


def act(sd, name, x, kind):
    if kind == "prelu":
        a = sd[f"{name}.weight"].to(DT).view(1, -1, 1, 1)
        return torch.where(x >= 0, x, a * x)
    return torch.clamp(x, -1, 1)


def linear(sd, name, x):
    return x @ sd[f"{name}.weight"].to(DT).t() + sd[f"{name}.bias"].to(DT)


def zero_pad(x, planes, pool):
    x = F.avg_pool2d(x, 2) if pool else x[:, :, ::2, ::2]
    return F.pad(x, (0, 0, 0, 0, planes // 4, planes // 4))


def cifar_resnet20_forward(sd, x, scheme, *, block, pool_shortcut, prelu, stem_relu):
    kind = "prelu" if prelu else "hardtanh"
    out = bn(sd, "bn1", conv(sd, "conv1", x))
    out = torch.relu(out) if stem_relu else torch.clamp(out, -1, 1)
    c_in = 16
    for s, width in enumerate((16, 32, 64), start=1):
        for b in range(3):
            p, stride = f"layer{s}.{b}", 2 if s > 1 and b == 0 else 1
            short = zero_pad(out, width, pool_shortcut) if c_in != width else out
            h = bn(sd, f"{p}.bn1", binary_conv(sd, f"{p}.conv1", out, scheme, stride))
            if block == "bireal":
                h = act(sd, f"{p}.nonlinear1", h + short, kind)
                out = act(sd, f"{p}.nonlinear2", bn(sd, f"{p}.bn2",
                                                     binary_conv(sd, f"{p}.conv2", h, scheme)) + h, kind)
            else:
                h = act(sd, f"{p}.nonlinear1", h, kind)
                out = act(sd, f"{p}.nonlinear2", bn(sd, f"{p}.bn2",
                                                     binary_conv(sd, f"{p}.conv2", h, scheme)) + short, kind)
            c_in = width
    out = F.avg_pool2d(out, out.shape[3]).flatten(1)
    return linear(sd, "linear", bn(sd, "bn2", out))


def cifar_resnet18_forward(sd, x, scheme, *, conv_shortcut, widths=(64, 128, 256, 512)):
    out = bn(sd, "bn1", conv(sd, "conv1", x))
    c_in = widths[0]
    for s, width in enumerate(widths, start=1):
        for b in range(2):
            p, stride = f"layer{s}.{b}", 2 if s > 1 and b == 0 else 1
            if c_in == width:
                short = out
            elif conv_shortcut:
                short = bn(sd, f"{p}.shortcut.1",
                           binary_conv(sd, f"{p}.shortcut.0", out, scheme, stride, 0))
            else:
                short = zero_pad(out, width, True)
            h = torch.clamp(bn(sd, f"{p}.bn1", binary_conv(sd, f"{p}.conv1", out, scheme, stride)), -1, 1)
            out = torch.clamp(bn(sd, f"{p}.bn2", binary_conv(sd, f"{p}.conv2", h, scheme)) + short, -1, 1)
            c_in = width
    out = F.avg_pool2d(out, 4).flatten(1)
    return linear(sd, "linear", bn(sd, "bn2", out))


def imagenet_resnet18_forward(sd, x, scheme, *, prelu, stem_relu):
    kind = "prelu" if prelu else "hardtanh"
    out = bn(sd, "bn1", conv(sd, "conv1", x, 2, 3))
    out = torch.relu(out) if stem_relu else torch.clamp(out, -1, 1)
    out = F.max_pool2d(out, 3, 2, 1)
    c_in = 64
    for s, width in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p, stride = f"layer{s}.{b}", 2 if s > 1 and b == 0 else 1
            short = (bn(sd, f"{p}.downsample.1", conv(sd, f"{p}.downsample.0", out, stride, 0))
                     if c_in != width else out)
            h = act(sd, f"{p}.nonlinear1",
                    bn(sd, f"{p}.bn1", binary_conv(sd, f"{p}.conv1", out, scheme, stride)) + short, kind)
            out = act(sd, f"{p}.nonlinear2",
                      bn(sd, f"{p}.bn2", binary_conv(sd, f"{p}.conv2", h, scheme)) + h, kind)
            c_in = width
    out = out.mean((2, 3))
    return linear(sd, "fc", bn(sd, "bn2", out))


def vgg_small_forward(sd, x, scheme, *, prelu):
    kind = "prelu" if prelu else "hardtanh"
    out = act(sd, "nonlinear0", bn(sd, "bn0", conv(sd, "conv0", x)), kind)
    for k in range(1, 6):
        out = binary_conv(sd, f"conv{k}", out, scheme)
        if k in (1, 3, 5):
            out = F.max_pool2d(out, 2, 2)
        out = act(sd, f"nonlinear{k}", bn(sd, f"bn{k}", out), kind)
    return linear(sd, "fc", out.flatten(1))


# -- BNAS's cell networks (gistvision/bnas model.py), CIFAR form ------------------------------
#: latest_cell_zeroise (BNAS-A) as BNAS writes it: (op, input) per edge, two edges per node.
BNAS_A = {"normal": [("none", 1), ("bin_dil_conv_3x3", 0), ("bin_conv_3x3", 1), ("none", 2),
                     ("none", 2), ("none", 3), ("none", 3), ("none", 4)],
          "reduce": [("max_pool_3x3", 0), ("none", 1), ("max_pool_3x3", 0), ("none", 2),
                     ("none", 3), ("none", 2), ("none", 3), ("none", 4)]}
#: (kernel, padding, dilation) of BNAS's binary operations
BNAS_CONVS = {"bin_conv_3x3": (3, 1, 1), "bin_dil_conv_3x3": (3, 2, 2)}


def _bnas_cells(c: int, layers: int):
    """(index, reduction, reduction_prev, C_prev_prev, C_prev, C) of each cell."""
    cells, c_pp, c_p, c_cur, red_prev = [], 3 * c, 3 * c, c, False
    for i in range(layers):
        red = i in (layers // 3, 2 * layers // 3)
        c_cur *= 2 if red else 1
        cells.append((i, red, red_prev, c_pp, c_p, c_cur))
        red_prev, c_pp, c_p = red, c_p, 4 * c_cur
    return cells


def bnas_cifar(c: int, layers: int, classes: int = 10) -> dict[str, torch.Tensor]:
    """A BNAS-A-style state dict in BNAS's registration order."""
    m = Maker("bnas")

    def bn(name, ch, affine=True):
        m.bn(name, ch)
        if not affine:
            del m.sd[f"{name}.weight"], m.sd[f"{name}.bias"]

    bn("stem.bn", 3)
    m.conv("stem.op.0", 3 * c, 3, 3)
    for i, red, red_prev, c_pp, c_p, ch in _bnas_cells(c, layers):
        p = f"cells.{i}"
        bn(f"{p}.preprocess0.bn", c_pp, affine=not red_prev)
        m.conv(f"{p}.preprocess0.op.0", ch, c_pp, 3 if red_prev else 1)
        bn(f"{p}.preprocess1.bn", c_p)
        m.conv(f"{p}.preprocess1.op.0", ch, c_p, 1)
        if red:
            bn(f"{p}.preprocess_res.0", c_p)
            m.sd[f"{p}.preprocess_res.1.weight"] = m.randn(4 * ch, c_p, 2, 2) * 0.2
            m.sd[f"{p}.preprocess_res.1.bias"] = 0.1 * m.randn(4 * ch)
        for k, (op, _) in enumerate(BNAS_A["reduce" if red else "normal"]):
            if op in BNAS_CONVS:
                bn(f"{p}._ops.{k}.bn", ch)
                m.conv(f"{p}._ops.{k}.op.0", ch, ch, BNAS_CONVS[op][0])
    m.linear("classifier", classes, 4 * _bnas_cells(c, layers)[-1][5])
    return m.sd


def _bn_maybe_affine(sd, name, x):
    mean, var = sd[f"{name}.running_mean"].to(DT), sd[f"{name}.running_var"].to(DT)
    y = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
    if f"{name}.weight" in sd:
        y = y * sd[f"{name}.weight"].to(DT).view(1, -1, 1, 1) + sd[f"{name}.bias"].to(DT).view(1, -1, 1, 1)
    return y


def bnas_binop(sd, name, x, stride, padding, dilation, real):
    """BN -> sign -> conv -> ReLU with BNAS's evaluation-time weights: sign(W~) * mean|W~| of the
    centred (over input channels) and clamped weight, or the stored weight as it is."""
    w = sd[f"{name}.op.0.weight"].to(DT)
    if not real:
        w = (w - w.mean(1, keepdim=True)).clamp(-1, 1)
        w = torch.sign(w) * w.abs().mean((1, 2, 3), keepdim=True)
    xb = torch.sign(_bn_maybe_affine(sd, f"{name}.bn", x))
    return torch.relu(F.conv2d(xb, w, None, stride, padding, dilation))


def bnas_cifar_forward(sd, x, c: int, layers: int, real: set[str]):
    s = torch.relu(F.conv2d(_bn_maybe_affine(sd, "stem.bn", x), sd["stem.op.0.weight"].to(DT),
                            None, 1, 1))
    s0 = s1 = s
    for i, red, red_prev, *_ in _bnas_cells(c, layers):
        p = f"cells.{i}"
        states = [bnas_binop(sd, f"{p}.preprocess0", s0, 2 if red_prev else 1,
                             1 if red_prev else 0, 1, f"{p}.preprocess0" in real),
                  bnas_binop(sd, f"{p}.preprocess1", s1, 1, 0, 1, f"{p}.preprocess1" in real)]
        edges = BNAS_A["reduce" if red else "normal"]
        for node in range(4):
            total = 0
            for k in (2 * node, 2 * node + 1):
                op, j = edges[k]
                stride = 2 if red and j < 2 else 1
                h = states[j]
                if op == "none":
                    h = h[:, :, ::stride, ::stride] * 0.0
                elif op == "max_pool_3x3":
                    h = F.max_pool2d(h, 3, stride, 1)
                else:
                    kernel, pad, dil = BNAS_CONVS[op]
                    h = bnas_binop(sd, f"{p}._ops.{k}", h, stride, pad, dil, f"{p}._ops.{k}" in real)
                total = total + h
            states.append(total)
        out = torch.cat(states[2:], dim=1)
        if i > 0:
            out = out + (F.conv2d(_bn_maybe_affine(sd, f"{p}.preprocess_res.0", s1),
                                  sd[f"{p}.preprocess_res.1.weight"].to(DT),
                                  sd[f"{p}.preprocess_res.1.bias"].to(DT), 2) if red else s1)
        s0, s1 = s1, out
    return linear(sd, "classifier", s1.mean((2, 3)))


#: latest_cell (BNAS's ImageNet cell) as BNAS writes it.
BNAS_LATEST = {"normal": [("bin_conv_3x3", 1), ("bin_dil_conv_3x3", 0), ("bin_conv_3x3", 1),
                          ("bin_conv_3x3", 2), ("bin_conv_3x3", 2), ("bin_dil_conv_3x3", 1),
                          ("bin_dil_conv_3x3", 1), ("bin_conv_3x3", 0)],
               "reduce": [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("max_pool_3x3", 0),
                          ("bin_conv_3x3", 2), ("max_pool_3x3", 0), ("bin_dil_conv_3x3", 3),
                          ("max_pool_3x3", 0), ("bin_dil_conv_3x3", 4)]}


def bnas_imagenet(c: int, layers: int, classes: int) -> dict[str, torch.Tensor]:
    """A BNAS ImageNet network's state dict (model_imagenet.py names, registration order)."""
    m = Maker("bnas")
    m.conv("stem0.0", c // 2, 3, 3)
    m.bn("stem0.1", c // 2)
    m.conv("stem0.3", c, c // 2, 3)
    m.bn("stem0.4", c)
    m.conv("stem1.1", c, c, 3)
    m.bn("stem1.2", c)
    c_pp, c_p, c_cur, red_prev = c, c, c, True
    for i in range(layers):
        red = i in (layers // 3, 2 * layers // 3)
        c_cur *= 2 if red else 1
        p, suffix = f"cells.{i}", "_red" if red else ""
        m.bn(f"{p}.preprocess0{suffix}.bn", c_pp)
        m.conv(f"{p}.preprocess0{suffix}.op.0", c_cur, c_pp, 3 if red_prev else 1)
        m.bn(f"{p}.preprocess1{suffix}.bn", c_p)
        m.conv(f"{p}.preprocess1{suffix}.op.0", c_cur, c_p, 1)
        if red:
            m.bn(f"{p}.preprocess_res.0", c_p)
            m.sd[f"{p}.preprocess_res.1.weight"] = m.randn(4 * c_cur, c_p, 2, 2) * 0.2
            m.sd[f"{p}.preprocess_res.1.bias"] = 0.1 * m.randn(4 * c_cur)
        for k, (op, _) in enumerate(BNAS_LATEST["reduce" if red else "normal"]):
            if op in BNAS_CONVS:
                m.bn(f"{p}._ops.{k}.bn", c_cur)
                m.conv(f"{p}._ops.{k}.op.0", c_cur, c_cur, 3)
        red_prev, c_pp, c_p = red, c_p, 4 * c_cur
    m.linear("classifier", classes, c_p)
    return m.sd
