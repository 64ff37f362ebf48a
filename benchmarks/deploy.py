#!/usr/bin/env python
"""The bit-packed CPU engine against float32 PyTorch (and onnxruntime), batch 1, per path.

    python benchmarks/deploy.py                     # every workload on every path (minutes)
    python benchmarks/deploy.py --only "[avx512"    # one path
    python benchmarks/deploy.py --only "conv 64->64" --steps 50

Workloads, each on every kernel path this CPU runs (``BNAS_XNOR_ISA``: amx, avx512, avx2,
portable), each in a fresh process with ``torch.set_num_threads(threads)``:

* every 3x3 binary convolution shape of resnet18_1w1a's ImageNet stages: the packed
  convolution of an already packed input against ``torch.nn.functional.conv2d`` of the same
  shape in float32; ``packing ms``: the time packing the input takes inside the network's
  one-call operation (packing and convolution), as the kernels count it;
* whole networks: resnet18_1w1a (ImageNet, 224x224), BNAS-A (CIFAR, 32x32) and ResNet-20
  (CIFAR) in eval mode, the packed model (checked equal to the float model on the input) against
  the float model in PyTorch and, where ``bnas.deploy.onnx`` and onnxruntime are installed, in
  onnxruntime; where the packed engine's time goes: ``binary ms`` inside the kernels' calls for
  the binary operations (with the layers fused after them: a residual block's BatchNorms,
  shortcut additions and activations), of which ``packing ms`` packing their inputs (the
  kernels count its share of their calls' time), ``real ms`` in the real-valued layers (run by
  torch as in the float model, max pooling by the kernels) and ``other ms`` the rest (Python
  and the glue between layers: concatenations, additions), all three from the same forwards,
  timed with hooks (their sum is a little over ``packed ms``).

A path's float baselines run on that path's instruction set (``--baseline matched``, the
default): the AVX2 path is the one a CPU without AVX-512 runs, so on its workloads torch's
oneDNN convolutions and ATen kernels are held to AVX2 as well (``ONEDNN_MAX_CPU_ISA=AVX2``,
``ATEN_CPU_CAPABILITY=avx2``), and on the portable path's to SSE4.1 and unvectorized ATen
kernels, the machine each path stands for (``torch isa``: its ATen kernels'). onnxruntime has
no such setting: it runs its own best kernels on every path. ``--baseline native`` leaves torch
its own choice everywhere (the AVX2 kernels against this machine's AVX-512 torch).

Times are medians of ``--steps`` runs (``--stat min``: the fastest run), a workload's engines
taking turns every few runs (so that a noisy spell of the machine falls on all of them, not on
whichever was being timed), each turn after at least ``WARM_S`` of untimed runs (so that each
runs with warm caches and at the pace its own work sets), by the wall clock or, with
``--clock cpu`` (one thread only), by the thread's CPU time, which other processes sharing the
cores do not inflate. Machines are noisy: compare figures measured side by side (the ratios).
On a machine other jobs keep busy, two threads' wall-clock medians measure the scheduler (a
thread descheduled mid-operation stalls the other for a time slice); ``--stat min`` gives each
engine's uncontended time.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

from common import parser, run

#: resnet18_1w1a's 3x3 binary convolutions at 224x224: (c_in, c_out, input size, stride).
CONVS = [(64, 64, 56, 1), (64, 128, 56, 2), (128, 128, 28, 1), (128, 256, 28, 2),
         (256, 256, 14, 1), (256, 512, 14, 2), (512, 512, 7, 1)]
NETWORKS = {"resnet18_1w1a imagenet 224": ({"arch": "resnet18_1w1a", "dataset": "imagenet"}, 224),
            "bnas-a cifar 32": ({"config": "bnas-a"}, 32),
            "resnet20_1w1a cifar 32": ({"arch": "resnet20_1w1a"}, 32)}


def paths() -> list[str]:
    from bnas.deploy.kernels import supported_isas

    return list(reversed(supported_isas()))


def workloads() -> list[tuple[str, str, Any]]:
    items = []
    for isa in paths():
        items += [(f"conv {ci}->{co} {h}x{h} s{s} [{isa}]", isa, (ci, co, h, s))
                  for ci, co, h, s in CONVS]
        items += [(f"{name} [{isa}]", isa, name) for name in NETWORKS]
    return items


#: Environment settings that hold torch to the instruction set a CPU running the kernel path
#: has (``--baseline matched``); the fastest path needs none.
BASELINE_ISA = {"avx512": {},  # the amx path's machine: torch has no float32 AMX kernels
                "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
                "portable": {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"}}


def baseline_variables(isa: str, baseline: str) -> dict[str, str]:
    """The settings of a workload on path ``isa``: none with ``native``, none on the machine's
    fastest path, else ``BASELINE_ISA[isa]``."""
    if baseline == "native" or isa == paths()[0]:
        return {}
    return BASELINE_ISA[isa]


def torch_isa() -> str:
    """The instruction set of torch's ATen kernels in this process (``AVX512``, ``AVX2``,
    ``DEFAULT``); stops if torch ignored the ``ATEN_CPU_CAPABILITY`` it was given."""
    import torch

    wanted = os.environ.get("ATEN_CPU_CAPABILITY")
    found = torch.backends.cpu.get_cpu_capability()
    if wanted is not None and found.lower() != wanted.lower():
        raise SystemExit(f"torch runs {found} kernels, not the {wanted} asked for")
    return found


#: The clock of every measurement (``--clock``): wall time, or this thread's CPU time.
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = CLOCKS["wall"]
#: What a workload's runs are summed up by (``--stat``).
STATS = {"median": statistics.median, "min": min}
stat = STATS["median"]


#: Timed runs of one engine in a row (after untimed ones that bring it back to its own pace).
ROUND = 5
#: Untimed runs of an engine before its timed ones in each round last at least this long (and
#: are at least one). A core's pace lags the work it ran: on a Xeon with AMX (2 threads), a
#: 70 us packed convolution run just after torch's float convolutions took 141, 82, 85, 79, 76,
#: 74 us ... reaching 71 us only after about 20 runs (1.5 ms), and an 800 KB tensor fill did
#: the same (58, 12, 12, 10, 10 ... 9 us). One warm-up run would time a short engine on the
#: pace the other left behind.
WARM_S = 0.002


def time_ms(fns: dict[str, Any], steps: int) -> dict[str, float]:
    """Each function's time in ms: ``stat`` of its ``steps`` runs (at least one round), taken in
    rounds of ``ROUND`` runs after untimed ones (``WARM_S``), the functions taking turns round
    by round, so that every engine meets the machine's changing load alike (timed one after the
    other, a noisy spell falls on one engine only) and still runs warm, as it would alone."""
    import torch

    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for _ in range(max(1, -(-steps // ROUND))):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                while time.perf_counter() - start < WARM_S:
                    fn()
                for _ in range(ROUND):
                    t = clock()
                    fn()
                    times[name].append(clock() - t)
    return {name: 1e3 * stat(runs) for name, runs in times.items()}


def measure_conv(shape: tuple[int, int, int, int], steps: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from bnas.deploy.kernels import BinaryConvPlan, Geometry, kernels

    ci, co, h, s = shape
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, ci, h, h, generator=gen), torch.randn(co, ci, 3, 3, generator=gen)
    k = kernels()
    geo = Geometry(3, 3, s, 1, (1, 1, 1, 1))
    plan = BinaryConvPlan(w < 0, w.abs().mean(dim=(1, 2, 3)), geo)
    packed = k.pack(x, geo)
    result = time_ms({"pytorch_ms": lambda: F.conv2d(x, w, stride=s, padding=1),
                      "packed_ms": lambda: plan.run(k, x, packed)}, steps)
    # the packing: its time inside the network's one-call operation (packing and convolution)
    with torch.inference_mode():
        plan(k, x)
        k.count_packing(True)
        for _ in range(steps):
            plan(k, x)
        result["packing_ms"] = 1e3 * k.count_packing(False)[0] / steps
    return result


class TimedLibrary:
    """The kernels' library with each call's time (by ``clock``) added up by function name."""

    def __init__(self, lib: Any) -> None:
        self.lib, self.spent = lib, {}

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.lib, name)

        def timed(*args: Any) -> Any:
            t = clock()
            out = fn(*args)
            self.spent[name] = self.spent.get(name, 0.0) + clock() - t
            return out
        return timed


def measure_network(name: str, steps: int, threads: int) -> dict[str, Any]:
    import torch

    import bnas
    from bnas.deploy import pack
    from bnas.deploy.bench import layer_times, onnx_runner, real_layers
    from bnas.deploy.kernels import kernels

    settings, size = NETWORKS[name]
    torch.manual_seed(0)
    model = bnas.build_model(**settings).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():  # BatchNorm statistics of real-looking activations (fewer exact zeros)
        model.train()
        model(torch.randn(8, 3, size, size))
        model.eval()
    packed = pack(model)
    with torch.inference_mode():
        if not torch.equal(packed(x), model(x)):
            raise SystemExit(f"{name}: the packed model's output differs from the float model's")
    runner, note = onnx_runner(model, tuple(x.shape), threads)
    engines = {"pytorch_ms": lambda: model(x), "packed_ms": lambda: packed(x)}
    if runner is not None:
        engines["onnxruntime_ms"] = runner
    result = {"onnxruntime_ms": None, **time_ms(engines, steps), "note": note}
    # Where the packed model's time goes, all parts from the same timed forwards (hooks on the
    # real-valued layers, the kernels' calls timed): their mean time, of which the real-valued
    # layers, the binary operations (inside the kernels' calls: of which packing, the share the
    # kernels count) and the rest (Python and the glue between layers: concatenations,
    # additions).
    real = real_layers(packed)
    k = kernels()
    k.lib = timed = TimedLibrary(k.lib)
    try:
        k.count_packing(True)
        started = clock()
        # means, as the other parts' (and one untimed forward)
        layers = layer_times(packed, x, real, runs=steps, clock=clock, summary=statistics.fmean)
        forwards = steps + 1
        result["instrumented_ms"] = 1e3 * (clock() - started) / forwards
        packing, calls = k.count_packing(False)
    finally:
        k.lib = timed.lib
    result["binary_ms"] = 1e3 * timed.spent.get("bnas_xnor_binconvs", 0.0) / forwards
    result["packing_ms"] = result["binary_ms"] * packing / calls
    result["real_ms"] = 1e3 * sum(layers.values())
    result["other_ms"] = result["instrumented_ms"] - result["binary_ms"] - result["real_ms"]
    return result


def main() -> int:
    p = parser(__doc__.split("\n\n")[0], steps=20)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or the thread's CPU time (with --threads 1)")
    p.add_argument("--stat", choices=sorted(STATS), default="median",
                   help="the runs' median, or the fastest run")
    p.add_argument("--baseline", choices=("matched", "native"), default="matched",
                   help="torch held to each kernel path's instruction set, or its own choice")
    args = p.parse_args()
    if args.child is None:  # the workload processes inherit the choices
        os.environ["BNAS_BENCH_CLOCK"], os.environ["BNAS_BENCH_STAT"] = args.clock, args.stat
    args.clock = os.environ.get("BNAS_BENCH_CLOCK", args.clock)
    args.stat = os.environ.get("BNAS_BENCH_STAT", args.stat)
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu measures one thread: add --threads 1")
    global clock, stat
    clock, stat = CLOCKS[args.clock], STATS[args.stat]
    if args.child is not None:  # the path must be chosen before the kernels load
        os.environ["BNAS_XNOR_ISA"] = workloads()[args.child][1]
    items = workloads()

    def measure(index: int) -> dict[str, Any]:
        import torch

        isa = torch_isa()
        torch.set_num_threads(args.threads)
        _, _, what = items[index]
        result = (measure_conv(what, args.steps) if isinstance(what, tuple)
                  else measure_network(what, args.steps, args.threads))
        return {**result, "torch_isa": isa}

    def cell(value: float | None, width: int = 10) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:{width}.3f}"

    def row(index: int, r: dict[str, Any]) -> str:
        onnx = r.get("onnxruntime_ms")
        vs_onnx = f"{onnx / r['packed_ms']:9.2f}x" if onnx else f"{'-':>10}"
        return (f"{items[index][0]:40} {cell(r['pytorch_ms'])} {cell(onnx)} "
                f"{cell(r['packed_ms'])} {r['pytorch_ms'] / r['packed_ms']:9.2f}x {vs_onnx} "
                f"{cell(r['packing_ms'])} {cell(r.get('binary_ms'))} {cell(r.get('real_ms'))} "
                f"{cell(r.get('other_ms'))} {r['torch_isa']:>9}")

    def settings() -> list[str]:
        from bnas.deploy.bench import cpu_name
        from bnas.deploy.kernels import describe

        return [f"cpu: {cpu_name()}, {args.threads} threads, {args.clock} clock, {args.stat} "
                f"of {args.steps} runs; paths: "
                f"{', '.join(paths())}; default: {describe()}",
                f"float baselines: {args.baseline}"
                + (" (torch held to each path's instruction set)" if args.baseline == "matched"
                   else " (torch's own kernels on every path)")]

    header = (f"{'workload':40} {'pytorch ms':>10} {'onnxrt ms':>10} {'packed ms':>10} "
              f"{'vs pytorch':>10} {'vs onnxrt':>10} {'packing ms':>10} {'binary ms':>10} "
              f"{'real ms':>10} {'other ms':>10} {'torch isa':>9}")
    return run(__file__, args, [name for name, _, _ in items], header, measure, row,
               settings=settings,
               variables=lambda index: baseline_variables(items[index][1], args.baseline))


if __name__ == "__main__":
    sys.exit(main())
