"""Timing the packed engine next to the same model in float32 PyTorch (eval mode, oneDNN) and,
where ``bnas.deploy.onnx`` and onnxruntime are installed, onnxruntime.

:func:`bench` measures latency at each batch size and thread count, throughput, peak memory
and per-layer times; :func:`time_op` times one search-space operation through the engine (a
latency table for cost-aware search is built on it). Timings are medians of repeated runs after
a warm-up, under ``torch.inference_mode``.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .blocks import fused
from .layers import PackedConv2d, _BatchNormSign


def sizes(packed: nn.Module, path: str | Path | None = None) -> dict[str, int]:
    """Bytes of the packed binary weights (bits and scales), of the same weights in float32,
    and of the file at ``path`` (when given)."""
    convs = [m for m in packed.modules() if isinstance(m, PackedConv2d)]
    out = {"binary_bytes": sum(m.bits.numel() + (0 if m.alpha is None else 4 * m.alpha.numel())
                               for m in convs),
           "binary_float_bytes": sum(4 * m.out_channels * m.in_channels * m.kernel_size ** 2
                                     for m in convs)}
    if path is not None:
        out["file_bytes"] = Path(path).stat().st_size
    return out


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """torch (and so the packed kernels) on ``n`` threads inside the block."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def latency(run: Callable[[], Any], min_time: float = 0.3, min_runs: int = 5) -> float:
    """Median seconds of ``run()`` over at least ``min_runs`` runs and ``min_time`` seconds,
    after two warm-up runs."""
    with torch.inference_mode():
        run()
        run()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - start < min_time:
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def peak_memory_mb(model: nn.Module, shape: tuple[int, ...]) -> float | None:
    """How far resident memory (MB) rises above the loaded model while it runs one batch of
    ``shape``: measured in a fresh process (Linux), so that no memory earlier runs left with the
    allocator hides it; None where it cannot be measured."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        torch.save(model, path)
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        code = ("import sys; from bnas.deploy.bench import _peak_in_child; "
                "print(_peak_in_child(sys.argv[1], [int(s) for s in sys.argv[2:]]))")
        proc = subprocess.run([sys.executable, "-c", code, str(path), *map(str, shape)],
                              capture_output=True, text=True, env=env)
    try:
        return float(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    except (ValueError, IndexError):
        return None


def _peak_in_child(path: str, shape: list[int]) -> float:
    """:func:`peak_memory_mb`'s measurement, in its child process."""
    model = torch.load(path, weights_only=False)
    torch.set_num_threads(torch.get_num_threads())
    packed = [m for m in model.modules() if isinstance(m, PackedConv2d)]
    if packed:
        from .kernels import kernels

        kernels()
        for m in packed:
            m.plan()  # the kernels' weight layout is part of the model, not of the run
    x = torch.randn(shape)
    before = _status_mb("VmRSS")
    with torch.inference_mode():
        model(x)
    return max(_status_mb("VmHWM") - before, 0.0)


def model_mb(model: nn.Module) -> float:
    """MB of a model's parameters and buffers (a packed model's bits and scales)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20


def packed_unit(module: nn.Module) -> bool:
    """Whether ``module`` runs as one unit on the kernels: a packed binary operation, or a
    residual block whose convolutions and the layers after them run fused."""
    return isinstance(module, (PackedConv2d, _BatchNormSign)) or fused(module)


def _leaf(module: nn.Module) -> bool:
    """A real-valued leaf that does something (has parameters, or is not an identity)."""
    return not list(module.children()) and (
        any(True for _ in module.parameters(recurse=False))
        or not isinstance(module, (nn.Identity, nn.Dropout)))


def layer_names(packed: nn.Module) -> list[str]:
    """The layers a per-layer table lists: the packed units (:func:`packed_unit`) and the
    real-valued leaves outside them (the float model has a module of the same name for
    each)."""
    names: list[str] = []
    for name, module in packed.named_modules():
        if any(name.startswith(n + ".") for n in names):
            continue
        if packed_unit(module) or _leaf(module):
            names.append(name)
    return names


def real_layers(packed: nn.Module) -> list[str]:
    """The real-valued leaves torch runs in a packed model: those outside its packed units and
    those of the fused blocks' shortcuts (whose time is inside their block's)."""
    names: list[str] = []
    for name in layer_names(packed):
        module = packed.get_submodule(name)
        if not packed_unit(module):
            names.append(name)
        elif fused(module):
            names += [f"{name}.shortcut.{n}" if n else f"{name}.shortcut"
                      for n, m in module.shortcut.named_modules() if _leaf(m)]
    return names


def layer_times(model: nn.Module, x: torch.Tensor, names: list[str], runs: int = 5,
                clock: Callable[[], float] = time.perf_counter,
                summary: Callable[[list[float]], float] = statistics.median) -> dict[str, float]:
    """Seconds per forward of each named module of ``model`` on input ``x``, by ``clock`` (the
    wall clock, or e.g. ``time.thread_time`` on one thread): ``summary`` of its times in
    ``runs`` forwards (after one untimed), by default their median, so that one forward's
    stall (a page fault, the scheduler) does not land on whichever layer was running; a module
    called k times per forward (shared operations) counts its k calls."""
    modules = dict(model.named_modules())
    times: dict[str, list[float]] = {n: [0.0] * runs for n in names if n in modules}
    called = {n: False for n in times}
    starts: dict[str, float] = {}
    run = [-1]  # the timed forward running, -1 for the untimed one
    handles = []
    for name in times:
        def pre(module, inputs, name=name):
            starts[name] = clock()

        def post(module, inputs, output, name=name):
            if run[0] >= 0:
                times[name][run[0]] += clock() - starts[name]
                called[name] = True

        handles += [modules[name].register_forward_pre_hook(pre),
                    modules[name].register_forward_hook(post)]
    try:
        with torch.inference_mode():
            for run[0] in range(-1, runs):
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {n: summary(t) for n, t in times.items() if called[n]}


def onnx_runner(model: nn.Module, shape: tuple[int, ...], n_threads: int
                ) -> tuple[Callable[[], Any] | None, str]:
    """A function that runs ``model`` exported to ONNX in onnxruntime on ``n_threads`` threads
    (every graph optimisation on), or None and why not."""
    from .onnx import MissingExtra, export_onnx, onnx_session, require

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model, path, shape)
            session = onnx_session(path, n_threads, exact=False)
    except MissingExtra as e:
        return None, f"onnxruntime not measured ({e.name} is not installed)"
    feed = {session.get_inputs()[0].name: torch.randn(shape).numpy()}
    return (lambda: session.run(None, feed)), f"onnxruntime {require('onnxruntime').__version__}"


def bench(float_model: nn.Module, packed: nn.Module, image_size: int,
          batches: tuple[int, ...] = (1, 32), thread_counts: tuple[int, ...] | None = None,
          min_time: float = 0.3) -> dict[str, Any]:
    """Latency per engine, batch size and thread count; throughput and peak working memory at
    the largest batch on all threads, and the models' sizes; per-layer times (batch 1, all threads) of the float model and
    the packed engine, and where the packed engine's time goes."""
    from .kernels import describe

    all_threads = torch.get_num_threads()
    thread_counts = thread_counts or tuple(sorted({1, all_threads}))
    float_model.eval()
    engines: dict[str, Callable[[torch.Tensor], Any]] = {"pytorch": float_model, "packed": packed}
    result: dict[str, Any] = {"engine": describe(), "threads": list(thread_counts),
                              "batches": list(batches), "image_size": image_size,
                              "cpu": cpu_name(), "latency_ms": {}, "notes": []}
    for name, model in engines.items():
        result["latency_ms"][name] = {}
        for n in thread_counts:
            with threads(n):
                for b in batches:
                    x = torch.randn(b, 3, image_size, image_size)
                    result["latency_ms"][name][f"{b}x{n}"] = 1e3 * latency(
                        lambda: model(x), min_time)
    for n in thread_counts:
        for b in batches:
            run, note = onnx_runner(float_model, (b, 3, image_size, image_size), n)
            if run is None:
                result["notes"].append(note)
                break
            result["latency_ms"].setdefault("onnxruntime", {})[f"{b}x{n}"] = 1e3 * latency(
                run, min_time)
        else:
            continue
        break
    big = max(batches)
    x = torch.randn(big, 3, image_size, image_size)
    result["throughput"] = {name: big / (lat[f"{big}x{all_threads}"] / 1e3)
                            for name, lat in result["latency_ms"].items()
                            if f"{big}x{all_threads}" in lat}
    result["peak_memory_mb"] = {name: peak_memory_mb(model, tuple(x.shape))
                                for name, model in engines.items()}
    result["model_mb"] = {name: model_mb(model) for name, model in engines.items()}
    names = layer_names(packed)
    one = torch.randn(1, 3, image_size, image_size)
    times_float, times_packed = layer_times(float_model, one, names), layer_times(packed, one, names)
    modules = dict(packed.named_modules())
    result["layers"] = [{"name": n, "kind": type(modules[n]).__name__,
                         "pytorch_ms": 1e3 * times_float.get(n, 0.0),
                         "packed_ms": 1e3 * times_packed.get(n, 0.0)} for n in names
                        if n in times_packed]
    binary = sum(r["packed_ms"] for r in result["layers"] if packed_unit(modules[r["name"]]))
    result["packed_split_ms"] = {"binary operations": binary,
                                 "real-valued layers": sum(r["packed_ms"] for r in result["layers"]) - binary}
    return result


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def time_op(op_name: str, c: int, hw: int, stride: int = 1, n_threads: int | None = None,
            binarizer: str = "plain", min_time: float = 0.1) -> float:
    """Seconds one forward of search-space operation ``op_name`` takes through the packed
    engine on a ``1 x c x hw x hw`` input (``stride`` 2 on reducing edges), on ``n_threads``
    threads (default: torch's current number)."""
    from ..binarize import get as get_binarizer
    from ..ops import make_op
    from .convert import convert

    op = make_op(op_name, c, stride, get_binarizer(binarizer))
    packed = convert(nn.Sequential(op))
    x = torch.randn(1, c, hw, hw)
    with threads(n_threads or torch.get_num_threads()):
        return latency(lambda: packed(x), min_time)
