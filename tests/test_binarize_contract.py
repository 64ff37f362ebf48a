"""What every registered binarization scheme promises, whatever its maths."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import bnas
import bnas.binarize as B
from bnas.errors import BnasError
from bnas.model.network import reduction_layers

NAMES = B.names()
LAYERS = 5
RECIPE_KEYS = {"epochs", "lr", "weight_decay", "batch_size", "optimizer", "warmup_epochs",
               "schedule"}


def small_model(name: str) -> torch.nn.Module:
    return bnas.build_model("latest_cell_zeroise", layers=LAYERS, init_channels=8, binarizer=name)


def train_step(model: torch.nn.Module, epoch: int, epochs: int, seed: int) -> None:
    """One SGD step through the scheme's hooks and optimizer, as the training engine runs it."""
    scheme = model.binarizer
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen)
    scheme.set_epoch(model, epoch, epochs)
    scheme.before_batch(model, epoch, 0)
    optimizer = scheme.optimizer(model, B.OptimizerSettings(0.05, momentum=0.9, weight_decay=1e-4))
    model.train()
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def expected_zero_gradient(name: str, param_name: str, model: torch.nn.Module) -> bool:
    """Parameters allowed an all-zero gradient on a first step (documented exceptions).

    - ``latest_cell_zeroise``'s reduction cells read their second input only through
      ``zeroise``, so those cells' ``preprocess1`` receives nothing (a property of the genotype).
    - RBNN at its initial angle ``theta = pi/2`` binarizes the detached rotated weight, so the
      latent weight's gradient is exactly zero until ``theta`` moves (see ``bnas.binarize.rbnn``).
    """
    dead = tuple(f"cells.{i}.preprocess1." for i in reduction_layers(LAYERS))
    if param_name.startswith(dead):
        return True
    owner = model.get_submodule(param_name.rpartition(".")[0])
    return name == "rbnn" and isinstance(owner, B.BinaryConv2d) and param_name.endswith(".weight")


@pytest.mark.parametrize("name", NAMES)
def test_lookup_config_round_trip_and_unknown_hparam(name):
    scheme = B.get(name)
    assert scheme.name == name and scheme.paper
    again = B.get(scheme.config())
    assert type(again) is type(scheme) and again.config() == scheme.config()
    assert B.get(scheme) is scheme
    with pytest.raises(BnasError, match="no hyper-parameter"):
        B.get(name, not_a_hyper_parameter=1)


@pytest.mark.parametrize("name", NAMES)
def test_recipes(name):
    scheme = B.get(name)
    assert set(scheme.recipes) >= {"cifar", "imagenet"}
    for family in scheme.recipes:
        recipe = scheme.recipe(family)
        assert RECIPE_KEYS <= set(recipe), (family, RECIPE_KEYS - set(recipe))
        assert recipe["optimizer"] in ("sgd", "adam")
        assert recipe["optimizer"] != "sgd" or 0 <= recipe["momentum"] < 1
        assert recipe["epochs"] > 0 and recipe["lr"] > 0 and recipe["batch_size"] > 0
        assert 0 <= recipe["warmup_epochs"] < recipe["epochs"] and recipe["weight_decay"] >= 0


@pytest.mark.parametrize("name", NAMES)
def test_binary_weights_and_inputs(name):
    layer = B.get(name).conv(6, 5, 3, padding=1)
    assert isinstance(layer, B.BinaryConv2d) and layer.weight_precision == 1
    bw = layer.binary_weight().detach()
    for row in bw.flatten(1):  # 1 bit per weight, up to one scale per out-channel
        assert len(torch.unique(row[row != 0].abs())) <= 1
    x = torch.randn(2, 6, 8, 8)
    xb = layer.binarize_input(x)
    if layer.input_precision == 1:
        assert set(torch.unique(xb).tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.isfinite(layer(x)).all()


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_learns(name):
    model = small_model(name)
    assert any(True for _ in model.binarizer.binary_convs(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(model, epoch=0, epochs=10, seed=0)
    for param_name, p in model.named_parameters():
        assert p.grad is not None, param_name
        assert torch.isfinite(p.grad).all(), param_name
        if not expected_zero_gradient(name, param_name, model):
            assert p.grad.abs().sum() > 0, param_name
            assert not torch.equal(p.detach(), before[param_name]), param_name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("family", ["cifar", "imagenet"])
def test_optimizer_trains_each_parameter_once(name, family):
    model = small_model(name)
    optimizer = model.binarizer.optimizer(model, B.OptimizerSettings(0.05, weight_decay=1e-4),
                                          B.RunSpec(1, 1, family))
    ids = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(group.get("weight_decay", 0.0) in (0.0, 1e-4) for group in optimizer.param_groups)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    torch.manual_seed(0)
    trained = small_model(name)
    train_step(trained, epoch=3, epochs=10, seed=1)
    torch.manual_seed(1)
    fresh = small_model(name)
    fresh.load_state_dict(trained.state_dict())
    for key, value in trained.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    x = torch.randn(3, 3, 32, 32)
    for mode in (False, True):
        trained.train(mode)
        fresh.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(fresh(x), trained(x), rtol=0, atol=0)


# -- data parallel ------------------------------------------------------------------------------
def scheme_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter, and every buffer of the scheme's binary convolutions (BatchNorm running
    statistics are per process unless synchronised, so they are left out)."""
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    convs = {id(m) for m in model.binarizer.binary_convs(model)}
    for prefix, module in model.named_modules():
        if id(module) in convs:
            for key, buf in module.named_buffers(recurse=False):
                state[f"{prefix}.{key}"] = buf.clone()
    return state


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str, names: list[str]) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    try:
        result = {}
        for name in names:
            torch.manual_seed(100 + rank)  # different initial draws: DDP must sync them
            model = small_model(name)
            scheme = model.binarizer
            ddp = DistributedDataParallel(model)
            optimizer = scheme.optimizer(ddp, B.OptimizerSettings(0.05, momentum=0.9,
                                                                  weight_decay=1e-4))
            gen = torch.Generator().manual_seed(rank)  # every process sees different data
            for epoch in range(2):
                scheme.set_epoch(ddp, epoch, 3)
                for batch in range(2):
                    scheme.before_batch(ddp, epoch, batch)
                    x = torch.randn(4, 3, 32, 32, generator=gen)
                    y = torch.randint(0, 10, (4,), generator=gen)
                    optimizer.zero_grad()
                    F.cross_entropy(ddp(x), y).backward()
                    optimizer.step()
            before = scheme_state(model)
            scheme.set_epoch(ddp, 2, 3)
            scheme.before_batch(ddp, 2, 0)  # e.g. RBNN's rotation update, with no forward after it
            result[name] = (before, scheme_state(model))
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_data_parallel_state_is_identical_on_every_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), NAMES), nprocs=2,
             join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in NAMES:
        (_, state0), (_, state1) = ranks[0][name], ranks[1][name]
        assert state0.keys() == state1.keys()
        for key in state0:
            assert torch.equal(state0[key], state1[key]), (name, key)
    before, after = ranks[0]["rbnn"]
    rotations = [k for k in after if k.endswith((".R1", ".R2"))]
    assert rotations and any(not torch.equal(before[k], after[k]) for k in rotations)
    for key in rotations:  # still orthogonal after the update
        r = after[key]
        torch.testing.assert_close(r.t() @ r, torch.eye(r.shape[0]), atol=1e-5, rtol=0)
    assert not math.isnan(sum(float(v.sum()) for v in after.values()))
