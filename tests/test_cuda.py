"""The GPU paths (marker ``cuda``; skipped without CUDA): a search step, training under AMP,
the packed engine fed from a GPU model, and DistributedDataParallel over NCCL. Run them all
with ``tools/gpu_check.sh``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from launch import torchrun_processes
from search_helpers import cross_entropy_step, supernet_pair

from bnas import build_model
from bnas.deploy import pack
from bnas.search.config import resolve
from bnas.search.loop import search
from bnas.train import checkpoint, evaluate, resolve_config, train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TINY_TRAIN = {"arch": "latest_cell_zeroise", "layers": 3, "init_channels": 8, "dataset": "digits",
              "epochs": 1, "batch_size": 32, "train_subset": 128, "val_subset": 64, "workers": 0,
              "progress": False, "device": "cuda", "binarizer": "recu", "drop_path": 0.2}
TINY_SEARCH = {"dataset": "digits", "layers": 3, "init_channels": 4, "epochs": 1, "subset": 96,
               "batch_size": 16, "image_size": 16, "device": "cuda", "progress": False,
               "workers": 0}
WORKER = Path(__file__).with_name("nccl_worker.py")


@pytest.fixture(autouse=True)
def _exact_float32():
    """No TF32: the comparisons below are against float32 (and float64) CPU arithmetic."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("binarizer, space", [("plain", "bnas"), ("recu", "bnas-skip")])
def test_search_fast_path_on_cuda_matches_reference_and_cpu(binarizer, space):
    """float64: the fast supernet on the GPU gives the reference path's logits and alpha
    gradients, and the CPU's."""
    fast, ref = supernet_pair(binarizer, space)
    cpu_fast, _ = supernet_pair(binarizer, space)
    x = torch.randn(6, 3, 12, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    fast, ref = fast.cuda(), ref.cuda()
    logits = cross_entropy_step(fast, x.cuda(), y.cuda())
    close = dict(rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(logits, cross_entropy_step(ref, x.cuda(), y.cuda()), **close)
    torch.testing.assert_close(logits.cpu(), cross_entropy_step(cpu_fast, x, y), **close)
    for a, b, c in zip(fast.arch_parameters(), ref.arch_parameters(), cpu_fast.arch_parameters()):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.grad, b.grad, **close)
        torch.testing.assert_close(a.grad.cpu(), c.grad, **close)


def test_search_run_with_cost_on_cuda(tmp_path):
    """A whole (one-epoch) search on the GPU, architecture and weight steps and the operation
    cost term, writes its genotypes."""
    result = search(resolve({**TINY_SEARCH, "save": "gpu", "cost": "ops", "cost_weight": 0.1,
                             "out": str(tmp_path / "run"), "genotype_dir": str(tmp_path / "g")}))
    assert (tmp_path / "g" / "gpu.json").is_file() and (tmp_path / "g" / "gpu_imagenet.json").is_file()
    assert all(torch.isfinite(a).all() for a in result.alphas.values())
    assert "on cuda" in (tmp_path / "run" / "log.txt").read_text()


@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_training_on_cuda_with_amp(tmp_path, amp):
    """A training epoch on the GPU (float32, bf16 autocast, fp16 autocast with GradScaler);
    its weights evaluate on the GPU to the accuracy it logged."""
    settings = {**TINY_TRAIN, "amp": amp, "channels_last": amp is not None, "grad_clip": 5.0,
                "out": str(tmp_path / "run")}
    result = train(resolve_config(None, settings))
    assert torch.isfinite(torch.tensor(result["last_loss"]))
    saved = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    assert saved["config"]["amp"] == amp
    assert ("scale" in saved["scaler"]) == (amp == "fp16")
    assert "device cuda:0" in (tmp_path / "run" / "log").read_text()
    again = evaluate(resolve_config(None, {**settings, "out": str(tmp_path / "eval")}),
                     tmp_path / "run" / "checkpoint.pt")
    assert again["top1"] == pytest.approx(result["last_top1"], abs=100 / 64 + 1e-9)


def test_packed_engine_takes_a_gpu_model():
    """``pack`` of a model on the GPU: the packed (CPU) model gives the GPU float model's
    eval-mode logits; evaluation with --packed and device auto runs on the CPU."""
    torch.manual_seed(0)
    model = build_model("latest_cell_zeroise", dataset="cifar10", layers=3, init_channels=8,
                        binarizer="recu").cuda()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    with torch.no_grad():
        model(x)  # BatchNorm statistics that are not the identity
        model.eval()
        expected = model(x).cpu()
        packed = pack(model)
        got = packed(x.cpu())
    assert all(t.device.type == "cpu" for t in [*packed.parameters(), *packed.buffers()])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert F.softmax(got, 1).argmax(1).equal(F.softmax(expected, 1).argmax(1))


def test_packed_evaluation_with_device_auto(tmp_path):
    settings = {**TINY_TRAIN, "epochs": 1, "out": str(tmp_path / "run")}
    result = train(resolve_config(None, settings))
    packed = evaluate(resolve_config(None, {**settings, "device": "auto",
                                            "out": str(tmp_path / "eval")}),
                      tmp_path / "run" / "best.pt", packed=True)
    assert packed["samples"] == 64
    assert packed["top1"] == pytest.approx(result["best_top1"], abs=2 * 100 / 64 + 1e-9)


def test_ddp_over_nccl_in_one_process(tmp_path):
    """torchrun, one process: training and search wrapped in DistributedDataParallel over an
    NCCL process group."""
    settings = {"train": {**TINY_TRAIN, "out": str(tmp_path / "train")},
                "search": {**TINY_SEARCH, "save": "nccl", "out": str(tmp_path / "search"),
                           "genotype_dir": str(tmp_path / "g")}}
    torchrun_processes(WORKER, settings, 1)
    saved = torch.load(tmp_path / "train" / "worker.pt", weights_only=True)
    assert saved["backend"] == "nccl"
    assert saved["wrapped"] == ["DistributedDataParallel"] * 2
    assert (tmp_path / "g" / "nccl.json").is_file()
    assert checkpoint.load(tmp_path / "train" / "checkpoint.pt")["epoch"] == 1
    assert json.loads((tmp_path / "search" / "genotypes.jsonl").read_text().splitlines()[-1])["epoch"] == 0


@pytest.mark.parametrize("tf32", [False, True], ids=["fp32", "tf32"])
@pytest.mark.parametrize("benchmark", [False, True], ids=["heuristic", "cudnn-benchmark"])
@pytest.mark.parametrize("scheme", ["plain", "rbnn", "recu", "siman", "bop"])
def test_binary_convolutions_on_cuda_sum_exact_integers(scheme, benchmark, tf32):
    """conv(sign(x), sign(W)) * alpha on cuDNN, whatever algorithm it picks (with benchmark
    mode it times several, some of them transform-based) and with TF32 (+-1 is exact in it):
    the output is alpha * the exact integer, rounded once, as on the CPU."""
    from test_binary_rounding import GEOMETRIES, layer_and_input, record

    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        for geometry in GEOMETRIES:
            layer, x = layer_and_input(scheme, geometry, seed=3)
            layer = layer.cuda().eval()
            used = record(layer)
            with torch.no_grad():
                y = layer(x.cuda())
            scale = layer.weight_scale()
            exact = F.conv2d(used["binarize_input"].double().cpu(),
                             used["binary_weight"].double().cpu(), None, **geometry)
            if scale is not None:
                exact = exact * scale.detach().double().cpu().view(1, -1, 1, 1)
            assert torch.equal(y.cpu(), exact.float())
    finally:
        torch.backends.cudnn.benchmark = saved
