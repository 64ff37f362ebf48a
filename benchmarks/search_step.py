#!/usr/bin/env python
"""Search-step speed and memory of ``bnas search``, next to the reference figures.

    python benchmarks/search_step.py                      # fast path, batch 32 and 64
    python benchmarks/search_step.py --reference-path     # also the reference path
    python benchmarks/search_step.py --only "batch 32" --steps 8
    python benchmarks/search_step.py --only "K=4"       # partial channels (PC-DARTS), batch 32

Each workload runs in a fresh process (so that its peak resident memory is its own): the
search's own :func:`bnas.search.loop.search_step` (architecture step, then weight step, with
the plain binarizer's optimizer) on the default supernet (C=16, 8 layers, BNAS space),
synthetic CIFAR-shaped batches (data loading excluded), ``torch.set_num_threads(threads)``,
the median of ``--steps`` steps after two warm-up steps (``cpu s``: the process's CPU time per
step, all threads, which other processes disturb less than the wall time). ``import GB`` is
the resident memory after importing torch and bnas, before anything is built; ``set-up GB``
after building the supernet, its weight optimizer and the architect (which imports the rest
of PyTorch's optimizer machinery, about 0.15 GB of code); the peak includes both. ``saved MB``:
what one forward pass keeps for the backward pass in the architecture step and in the weight
step (every tensor autograd saves, each storage once, the weights left out), measured after the
timed steps.

The reference figures are those of ``benchmarks.md``: BNAS's own code on the same kind of
2-core machine (14.2 s and 3.9 GB per step at batch 32; 25.9 s and 7.2 GB at batch 64).
Machines are noisy (other processes share the cores): compare medians measured side by side,
e.g. against the reference path (``--reference-path``: one module per edge and
candidate, the same maths), which also runs on this machine.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

from common import parser, peak_rss_gb, ratio, rss_gb, run


@dataclass(frozen=True)
class Workload:
    name: str
    impl: str
    batch: int
    reference_s: float | None
    reference_gb: float | None
    partial: int = 1


WORKLOADS = [
    Workload("search step, fast path, batch 32", "fast", 32, 14.2, 3.9),
    Workload("search step, fast path K=4, batch 32", "fast", 32, 14.2, 3.9,
             partial=4),
    Workload("search step, fast path, batch 64", "fast", 64, 25.9, 7.2),
    Workload("search step, reference path, batch 32", "reference", 32, 14.2, 3.9),
]


def measure(workload: Workload, steps: int, threads: int) -> dict[str, float]:
    """Median step time and peak RSS of ``workload`` in this process."""
    import torch

    from bnas.search.architect import Architect
    from bnas.search.config import SearchConfig
    from bnas.search.loop import search_step, weight_optimizer
    from bnas.search.network import SearchNetwork

    torch.set_num_threads(threads)
    imported = rss_gb()
    cfg = SearchConfig(save="benchmark", impl=workload.impl, batch_size=workload.batch)
    torch.manual_seed(cfg.seed)
    net = SearchNetwork(10, cfg.init_channels, cfg.layers, cfg.steps, cfg.space, cfg.binarizer,
                        cfg.impl, partial=workload.partial)
    optimizer = weight_optimizer(net, cfg, steps_per_epoch=1)
    architect = Architect(net, lr=cfg.arch_lr, weight_decay=cfg.arch_weight_decay, lam=cfg.lam,
                          tau=cfg.tau)
    set_up = rss_gb()
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(workload.batch, 3, 32, 32, generator=gen),
                torch.randint(0, 10, (workload.batch,), generator=gen)) for _ in range(2)]
    net.binarizer.set_epoch(net, 0, cfg.epochs)
    net.train()
    times, cpu = [], []
    for step in range(steps + 2):
        started, started_cpu = time.perf_counter(), time.process_time()
        net.binarizer.before_batch(net, 0, step)
        search_step(net, net, architect, optimizer, batches[0], batches[1], 0)
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    peak = peak_rss_gb()
    return {"step_s": statistics.median(times[2:]), "cpu_s": statistics.median(cpu[2:]),
            "import_gb": imported, "setup_gb": set_up, "peak_gb": peak,
            "saved_mb": [saved_mb(net, batches[0][0], mode) for mode in ("arch", "weights")]}


def saved_mb(net, x, mode: str) -> float:
    """MB (2**20 bytes) that a forward pass of ``net`` under ``grads_for(mode)`` saves for its
    backward pass: the storages of every tensor autograd saves, each once, weights excluded."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with net.grads_for(mode):
            net(x)
    return sum(storages.values()) / 2**20


def main() -> int:
    p = parser(__doc__.split("\n\n")[0], steps=5)
    p.add_argument("--reference-path", action="store_true",
                   help="also time the reference path (slow)")
    args = p.parse_args()

    def row(index: int, r: dict[str, float]) -> str:
        w = WORKLOADS[index]
        return (f"{w.name:48} {r['step_s']:7.2f}{ratio(r['step_s'], w.reference_s):>10} "
                f"{r['cpu_s']:6.2f} {r['peak_gb']:6.2f}{ratio(r['peak_gb'], w.reference_gb):>10} "
                f"{r['import_gb']:9.2f} {r['setup_gb']:9.2f} "
                f"{r['saved_mb'][0]:9.0f} / {r['saved_mb'][1]:.0f}")

    return run(__file__, args, [w.name for w in WORKLOADS],
               f"{'workload':48} {'step s':>17} {'cpu s':>6} {'peak GB':>16} {'import GB':>9} "
               f"{'set-up GB':>9} {'saved MB arch / weights':>23}",
               lambda index: measure(WORKLOADS[index], args.steps, args.threads), row,
               skip=lambda index: WORKLOADS[index].impl == "reference" and not args.reference_path)


if __name__ == "__main__":
    sys.exit(main())
