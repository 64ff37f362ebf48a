"""The cell-network builder: exact parameter counts, structure, forward/backward."""
import pytest
import torch

import bnas
from bnas.binarize.base import BinaryConv2d
from bnas.errors import BnasError
from bnas.model.cell import EvalCell


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("config, count", [
    ("bnas-a", 5_578_252),    # BNAS reference README: param size = 5.578252MB
    ("bnas-f", 39_781_442),   # BNAS reference ImageNet log
    ("bnas-d", 28_407_560), ("bnas-e", 31_997_890), ("bnas-g", 37_343_287),
])
def test_configuration_parameter_counts(config, count):
    assert n_params(bnas.build_model(config=config)) == count


def test_bnas_a_structure():
    model = bnas.build_model(config="bnas-a")
    cells = list(model.cells)
    assert [c.reduction for c in cells].count(True) == 2
    assert cells[6].reduction and cells[13].reduction          # L//3, 2L//3 for L = 20
    assert cells[0].residual is None                            # the first cell has none
    assert isinstance(cells[1].residual, torch.nn.Identity)
    res = cells[6].residual
    assert isinstance(res[1], torch.nn.Conv2d) and res[1].kernel_size == (2, 2) and res[1].bias is not None
    # after a reduction, c_{k-2} is preprocessed by a 3x3/2 binary conv (BN without affine on CIFAR)
    pre = cells[7].preprocess0
    assert isinstance(pre.conv, BinaryConv2d) and pre.conv.stride == (2, 2) and not pre.bn.affine
    # binary convs: 2 preprocessing per cell + bin_dil_conv_3x3 and bin_conv_3x3 in the 18 normal cells
    assert sum(isinstance(m, BinaryConv2d) for m in model.modules()) == 20 * 2 + 18 * 2
    real = [m for m in model.modules() if type(m) is torch.nn.Conv2d]
    assert len(real) == 1 + 2                                   # stem + two residual downsamples


def test_zeroise_nodes_leave_only_the_residual():
    model = bnas.build_model("latest_cell_zeroise", layers=5, init_channels=4).eval()
    cell = model.cells[2]                      # reductions at 5 // 3 = 1 and 10 // 3 = 3
    assert isinstance(cell, EvalCell) and not cell.reduction
    s0, s1 = torch.randn(2, 16, 16, 16), torch.randn(2, 32, 8, 8)
    out = cell(s0, s1)
    # nodes 4 and 5 are zeroise(.) + zeroise(.): their channels equal the identity residual
    torch.testing.assert_close(out[:, 16:], s1[:, 16:], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["latest_cell_zeroise", "latest_cell"])
@pytest.mark.parametrize("dataset, size", [("cifar10", 32), ("imagenet", 224)])
def test_forward_backward(arch, dataset, size):
    model = bnas.build_model(arch, dataset=dataset, layers=4, init_channels=8, num_classes=7)
    model.drop_path_prob = 0.2
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("kwargs, message", [
    (dict(arch="latest_cell", layers=-3), "--layers must be a positive integer"),
    (dict(arch="latest_cell", init_channels=0), "--init-channels must be a positive integer"),
    (dict(config="bnas-z"), "unknown configuration 'bnas-z'"),
    (dict(arch="latest", dataset="cifar10"), "unknown architecture 'latest'"),
    (dict(arch="latest_cell", dataset="emnist"), "unknown dataset 'emnist'"),
    (dict(arch="latest_cell", binarizer="nope"), "unknown binarizer 'nope'"),
])
def test_bad_input(kwargs, message):
    arch = kwargs.pop("arch", None)
    with pytest.raises(BnasError, match=message):
        bnas.build_model(arch, **kwargs)


def test_model_carries_its_genotype_and_binarizer():
    model = bnas.build_model(config="bnas-a", init_channels=8, layers=3)
    assert model.genotype.name == "latest_cell_zeroise" and model.binarizer.name == "plain"
    assert model.dataset == "cifar10"
