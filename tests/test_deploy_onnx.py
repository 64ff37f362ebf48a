"""The eval-mode float model exported to ONNX (standard operators only) runs in onnxruntime to
the same outputs within float rounding and the same top-1, for a fixed network and a cell
network with every operation, under every scheme; the binary layers and BatchNorms bit for bit;
the sign conventions survive the export; `bnas export --format onnx`; bad input is one clear
error."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

import bnas
from bnas.binarize.base import BinaryConv2d
from bnas.cli import main
from bnas.deploy.layers import Activation
from bnas.deploy.onnx import (ExportedBatchNorm, ExportedBinaryConv, MissingExtra, binarize,
                              compare_onnx, export_onnx, exportable, onnx_latency, onnx_session,
                              run_onnx)
from bnas.deploy.source import trained_model
from bnas.errors import BnasError
from bnas.genotype import from_json
from test_deploy_cli import weights  # noqa: F401  (a tiny trained run, a fixture)
from test_deploy_pack import EVERY_OP, calibrated

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SCHEMES = ["plain", "rbnn", "recu", "siman", "bop"]


def randomized(model: nn.Module) -> nn.Module:
    """Scales of both signs and several magnitudes (a negative scale flips a channel)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BinaryConv2d) and isinstance(getattr(m, "alpha", None), nn.Parameter):
                m.alpha.copy_(torch.randn_like(m.alpha))
    return model


def exported(model: nn.Module, x: torch.Tensor, path) -> nn.Module:
    """``model`` calibrated on ``x`` and written to ``path``; the graph that is exported
    computes, in PyTorch, exactly what the model computes (the same arithmetic in standard
    operators)."""
    calibrated(randomized(model), x)
    with torch.no_grad():
        assert torch.equal(exportable(model)(x), model(x))
    export_onnx(model, path, (1, *x.shape[1:]))
    return model


def assert_agrees(model: nn.Module, path, x: torch.Tensor) -> None:
    """Same top-1, logits within float rounding: the binary layers and BatchNorms agree bit for
    bit (tests below), onnxruntime's real-valued convolutions, poolings and classifier sum in
    other orders (measured: at most 4e-7 of the largest logit)."""
    result = compare_onnx(model, path, x)
    assert result.samples == x.shape[0]
    assert result.max_abs_diff <= 1e-5 * result.max_abs_output, result
    assert result.top1_agreement == 1.0, result


def standard_ops_only(path) -> set[str]:
    """The operator types of the file, asserting they all come from the standard domain."""
    graph = onnx.load(str(path)).graph
    assert all(node.domain in ("", "ai.onnx") for node in graph.node)
    return {node.op_type for node in graph.node}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fixed_network(scheme, tmp_path):
    torch.manual_seed(SCHEMES.index(scheme))
    model = bnas.build_model("resnet20_1w1a", binarizer=scheme, num_classes=10)
    x = torch.randn(8, 3, 16, 16)
    exported(model, x, tmp_path / "m.onnx")
    assert_agrees(model, tmp_path / "m.onnx", x)
    ops = standard_ops_only(tmp_path / "m.onnx")
    assert {"Sign", "Conv", "Mul", "Add"} <= ops
    if scheme in ("rbnn", "siman"):  # sign(x - per-sample mean)
        assert "Sub" in ops


@pytest.mark.parametrize("scheme", SCHEMES)
def test_cell_network_with_every_operation(scheme, tmp_path):
    torch.manual_seed(10 + SCHEMES.index(scheme))
    model = bnas.build_model(from_json(EVERY_OP), binarizer=scheme, layers=4, init_channels=6)
    x = torch.randn(6, 3, 16, 16)
    exported(model, x, tmp_path / "m.onnx")
    assert_agrees(model, tmp_path / "m.onnx", x)
    assert_agrees(model, tmp_path / "m.onnx", torch.randn(3, 3, 16, 16))  # another batch size


def test_binary_weights_are_written_as_signs_and_scales(tmp_path):
    torch.manual_seed(5)
    model = bnas.build_model("resnet20_1w1a", binarizer="recu", num_classes=10)
    exported(model, torch.randn(4, 3, 16, 16), tmp_path / "m.onnx")
    tensors = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(
        str(tmp_path / "m.onnx")).graph.initializer}
    binary = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    signs = [t for t in tensors.values() if t.ndim == 4 and set(np.unique(t)) <= {-1.0, 1.0}]
    assert len(signs) == len(binary)  # each binary weight as +-1, its scale apart


def test_export_leaves_the_model_as_it_was(tmp_path):
    torch.manual_seed(6)
    model = bnas.build_model("resnet20_1w1a", binarizer="plain", num_classes=10)
    x = torch.randn(4, 3, 16, 16)
    calibrated(model, x).train()
    model(x)  # projects the weights
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "sub" / "m.onnx", (1, 3, 16, 16))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["m.onnx"]  # no temporary left


@pytest.mark.parametrize("zero_is_zero", [True, False])
@pytest.mark.parametrize("centred", [False, True])
def test_sign_conventions_survive_the_export(centred, zero_is_zero, tmp_path):
    activation = Activation(centred=centred, zero_is_zero=zero_is_zero)

    class Binarize(nn.Module):
        def forward(self, x):
            return binarize(x, activation)

    x = torch.randn(4, 3, 5, 5)
    x[:, :, 0, :2] = 0.0
    if centred:  # exact zeros after centring: a row of zeros has mean 0
        x[1] = 0.0
    export_onnx(Binarize(), tmp_path / "b.onnx", tuple(x.shape))
    got = run_onnx(onnx_session(tmp_path / "b.onnx", 1), x)
    assert torch.equal(got, binarize(x, activation))
    assert (got == 0).any() == zero_is_zero


def test_latency_is_measured(tmp_path):
    torch.manual_seed(7)
    model = bnas.build_model("resnet20_1w1a", binarizer="bop", num_classes=10)
    exported(model, torch.randn(2, 3, 16, 16), tmp_path / "m.onnx")
    assert 0.0 < onnx_latency(tmp_path / "m.onnx", batch=2, threads=1, min_time=0.0, min_runs=2)


class UnknownConv2d(BinaryConv2d):
    def binarize_input(self, x):
        return torch.sign(x)

    def binary_weight(self):
        return torch.sign(self.weight)


def test_bad_input_is_one_clear_error(tmp_path, monkeypatch):
    model = bnas.build_model("resnet20_1w1a", binarizer="rbnn", num_classes=10)
    with pytest.raises(BnasError, match="four positive integers"):
        export_onnx(model, tmp_path / "m.onnx", (3, 16, 16))
    with pytest.raises(BnasError, match="no eval-mode activation binarizer"):
        export_onnx(nn.Sequential(UnknownConv2d(3, 4, 3)), tmp_path / "m.onnx", (1, 3, 8, 8))
    a32 = bnas.build_model("resnet20_1w1a", binarizer={"name": "rbnn", "a32": True})
    with pytest.raises(BnasError, match="keeps its activations real"):
        export_onnx(a32, tmp_path / "m.onnx", (1, 3, 16, 16))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(BnasError, match="not an ONNX model"):
        onnx_session(tmp_path / "junk.onnx", 1)
    with pytest.raises(BnasError, match="no ONNX file"):
        onnx_latency(tmp_path / "missing.onnx", 1, 1)
    assert not (tmp_path / "m.onnx").exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(MissingExtra, match=r"onnxruntime is not installed: pip install 'bnas\[onnx\]'"):
        onnx_session(tmp_path / "junk.onnx", 1)
    with pytest.raises(ImportError):  # what callers that only check for the package catch
        onnx_session(tmp_path / "junk.onnx", 1)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_binary_layers_agree_bit_for_bit(scheme, tmp_path):
    """One binary convolution (37 input channels, strided and dilated, zero padding) in
    onnxruntime equals the float model's: the Conv of +-1 values sums integers exactly and the
    scale is one rounding in both. The inputs are multiples of 1/8 (with exact zeros) and each
    sample has 37 * 8 * 8 values: the per-sample mean of RBNN and SiMaN is exact too."""
    torch.manual_seed(20 + SCHEMES.index(scheme))
    conv = bnas.binarize.get(scheme).conv(37, 24, 3, stride=2, padding=2, dilation=2)
    randomized(nn.Sequential(conv)).eval()
    x = torch.randint(-16, 17, (5, 37, 8, 8)).float() / 8
    export_onnx(conv, tmp_path / "c.onnx", (1, 37, 8, 8))
    with torch.no_grad():
        assert torch.equal(run_onnx(onnx_session(tmp_path / "c.onnx", 1), x), conv(x))


def test_exported_batchnorm_is_pytorchs_bit_for_bit(tmp_path):
    torch.manual_seed(9)
    bn = nn.BatchNorm2d(13).eval()
    with torch.no_grad():
        bn.running_mean.normal_(), bn.running_var.uniform_(0.01, 4), bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(4, 13, 7, 7) * 3
    x[:, :, 0] = 0.0  # a cluster of equal inputs (a ReLU's zeros)
    with torch.no_grad():
        assert torch.equal(ExportedBatchNorm(bn)(x), bn(x))
    export_onnx(bn, tmp_path / "bn.onnx", (1, 13, 7, 7))
    with torch.no_grad():
        assert torch.equal(run_onnx(onnx_session(tmp_path / "bn.onnx", 1), x), bn(x))


def test_exported_binary_conv_is_the_float_models_convolution():
    torch.manual_seed(8)
    conv = bnas.binarize.get("siman").conv(5, 7, 3, stride=2, padding=2, dilation=2).eval()
    x = torch.randn(2, 5, 9, 9)
    with torch.no_grad():
        layer = ExportedBinaryConv(conv, conv.binary_weight(), conv.weight_scale(),
                                   Activation(centred=True))
        assert torch.equal(layer(x), conv(x))


def test_bnas_export_writes_onnx(weights, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}: ") and "top-1 agreement 100%" in printed
    assert "input (N, 3, 16, 16)" in printed  # the size the weights were trained at
    model = trained_model(weights, None, {})
    assert_agrees(model, out, torch.randn(4, 3, 16, 16))
    other = tmp_path / "model.bin"
    assert main(["export", "--weights", str(weights), "--out", str(other), "--format", "onnx",
                 "--opset", "18"]) == 0
    assert onnx.load(str(other)).opset_import[0].version == 18


def test_bnas_export_onnx_errors_are_one_line(weights, tmp_path, capsys, monkeypatch):
    assert main(["export", "--weights", str(weights), "--out", str(tmp_path / "m.bnx"),
                 "--opset", "17"]) == 2
    assert capsys.readouterr().err.strip().endswith("--opset applies to --format onnx only")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the extra were not installed
    assert main(["export", "--weights", str(weights), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "onnx is not installed: pip install 'bnas[onnx]'" in err
    assert not (tmp_path / "m.onnx").exists()
