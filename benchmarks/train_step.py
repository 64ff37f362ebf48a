#!/usr/bin/env python
"""Training-step speed and memory of ``bnas train``'s engine, next to the reference figures.

    python benchmarks/train_step.py                 # every workload, 2 threads (slow)
    python benchmarks/train_step.py --only bnas-a --steps 8
    python benchmarks/train_step.py --only resnet20
    BNAS_FUSED=0 python benchmarks/train_step.py --only bnas-a   # without the fused kernels

Each workload runs in a fresh process (so that its peak resident memory is its own): the
engine's own :meth:`bnas.train.Trainer.train_step` (forward, backward, the scheme's gradient
rules, optimizer step) on synthetic CIFAR-shaped batches, data loading excluded, with
``torch.set_num_threads(threads)``; the median of ``--steps`` steps after two warm-up steps.
The reference figures are those of ``benchmarks.md`` (the authors' code on the same kind of
2-core machine); machines are noisy, so compare medians measured side by side.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from common import parser, peak_rss_gb, ratio, rss_gb, run


@dataclass(frozen=True)
class Workload:
    """A model, a scheme and a batch size, with the reference's step time and memory."""

    name: str
    settings: dict[str, Any]
    batch: int
    drop_path: float = 0.0
    reference_s: float | None = None
    reference_gb: float | None = None
    reference_images_per_s: float | None = None


def workloads() -> list[Workload]:
    bnas_a = {"config": "bnas-a"}
    cell36 = {"arch": "latest_cell", "layers": 20, "init_channels": 36}
    items = [
        Workload("bnas-a (latest_cell_zeroise C=36 L=20, plain)", bnas_a, 32, 0.2, 3.25, 2.7),
        Workload("latest_cell C=36 L=20 (plain)", cell36, 32, 0.2, 6.87, 3.6),
    ]
    # images/s of the reference code (RBNN / ReCU / SiMaN) at batch 128, benchmarks.md
    reference_rates = {"resnet20_1w1a": {"rbnn": 178.0, "recu": 208.0, "siman": 198.0},
                       "resnet18_1w1a": {"rbnn": 27.0, "recu": 35.0, "siman": 23.0},
                       "vgg_small_1w1a": {"rbnn": 30.0, "recu": 32.0, "siman": 25.0}}
    from bnas.binarize import names

    for scheme in names():
        rate = reference_rates["resnet20_1w1a"].get(scheme)
        items.append(Workload(f"resnet20_1w1a {scheme}", {"arch": "resnet20_1w1a", "binarizer": scheme},
                              128, reference_images_per_s=rate,
                              reference_gb=1.35 if rate is not None else None))
    for arch in ("resnet18_1w1a", "vgg_small_1w1a"):
        for scheme, rate in reference_rates[arch].items():
            items.append(Workload(f"{arch} {scheme}", {"arch": arch, "binarizer": scheme}, 128,
                                  reference_images_per_s=rate))
    return items


def measure(workload: Workload, steps: int, threads: int) -> dict[str, float]:
    """Median step time and peak RSS of ``workload`` in this process."""
    import torch

    from bnas.train import Trainer, resolve_config
    from bnas.run.context import Context

    torch.set_num_threads(threads)
    imported = rss_gb()
    with tempfile.TemporaryDirectory() as out:
        cfg = resolve_config(None, {**workload.settings, "dataset": "synthetic", "epochs": 1,
                                    "batch_size": workload.batch, "workers": 0, "progress": False,
                                    "out": out, "device": "cpu"})
        trainer = Trainer(cfg, Context())
        model = trainer.model
        model.binarizer.set_epoch(model, 0, cfg.epochs)
        if hasattr(model, "drop_path_prob"):
            model.drop_path_prob = workload.drop_path
        trainer.net.train()
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(workload.batch, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (workload.batch,), generator=gen)
        times = []
        for step in range(steps + 2):
            started = time.perf_counter()
            model.binarizer.before_batch(model, 0, step)
            trainer.scheduler.step(0, 0)
            trainer.train_step(x, y)
            times.append(time.perf_counter() - started)
        trainer.close()
    median = statistics.median(times[2:])
    return {"step_s": median, "peak_gb": peak_rss_gb(), "import_gb": imported,
            "images_per_s": workload.batch / median}


def main() -> int:
    args = parser(__doc__.split("\n\n")[0], steps=6).parse_args()
    items = workloads()

    def row(index: int, r: dict[str, float]) -> str:
        w = items[index]
        return (f"{w.name:48} {w.batch:5d} {r['step_s']:7.3f}{ratio(r['step_s'], w.reference_s):>9} "
                f"{r['images_per_s']:7.1f}{ratio(r['images_per_s'], w.reference_images_per_s):>11} "
                f"{r['peak_gb']:6.2f}{ratio(r['peak_gb'], w.reference_gb):>10} {r['import_gb']:9.2f}")

    def fused() -> list[str]:
        from bnas.ops.native import describe

        return [f"fused CPU kernels: {describe()} (BNAS_FUSED=0 turns them off)"]

    return run(__file__, args, [w.name for w in items],
               f"{'workload':48} {'batch':>5} {'step s':>16} {'img/s':>18} {'peak GB':>16} {'import GB':>9}",
               lambda index: measure(items[index], args.steps, args.threads), row,
               settings=fused)


if __name__ == "__main__":
    sys.exit(main())
