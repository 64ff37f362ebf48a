"""``bnas train``: retrain a genotype with a binarization scheme (see :mod:`bnas.train`)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..train.config import FIELDS
from ..train.options import add_config_options, overrides_from_args
from . import command_parser

EPILOG = """\
examples:
  bnas train --config bnas-a                                   # BNAS-A, the paper's CIFAR-10 recipe
  bnas train --arch latest_cell_zeroise --binarizer recu       # any genotype, any scheme
  bnas train --arch resnet20_1w1a --binarizer rbnn --dataset cifar10 --epochs 400
  bnas train --arch resnet20_1w1a --binarizer recu --dataset digits --epochs 20   # minutes on a CPU
  bnas train --config bnas-d --data /data/imagenet --amp bf16 --channels-last
  bnas train --config runs/tune/NAME/best.yaml                 # a preset file (e.g. from bnas tune)
  bnas train --resume runs/train-bnas-a-20250101-120000        # continue a stopped run

many GPUs (one process per GPU; --batch-size is global):
  torchrun --nproc_per_node 8 -m bnas train --config bnas-f --data /data/imagenet
many machines (run on each; NODE_RANK 0..N-1):
  torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
      --rdzv_id bnas-f -m bnas train --config bnas-f --data /data/imagenet --out runs/bnas-f

Settings merge in this order: defaults < the binarizer's recipe < the preset (--config) <
options. The resolved configuration is saved as config.yaml in the run directory, with log,
metrics.jsonl, checkpoint.pt (every epoch) and best.pt.
"""


DESCRIPTION = """\
Retrain any genotype (searched, named or fixed) with any binarization scheme, on one CPU or
GPU, or many GPUs and machines under torchrun.
"""


def add_parser(subparsers) -> None:
    p = command_parser(
        subparsers, "train", run, help="retrain a genotype with a binarization scheme",
        description=DESCRIPTION,
        epilog=EPILOG)
    add_config_options(p, FIELDS)


def saved_run_config(preset: str | None, overrides: dict[str, Any]) -> str | None:
    """The preset: with ``--resume`` and no ``--config``, the resumed run's own ``config.yaml``."""
    resume = overrides.get("resume")
    if preset is not None or overrides.get("config") is not None or not resume:
        return preset
    if resume is True:
        if not overrides.get("out"):
            return None  # the engine says that --resume needs --out
        run_dir = Path(overrides["out"]).expanduser()
    else:
        path = Path(resume).expanduser()
        run_dir = path if path.is_dir() else path.parent
    saved = run_dir / "config.yaml"
    return str(saved) if saved.is_file() else None


def run(args: argparse.Namespace) -> int:
    from ..genotype import load as load_genotype
    from ..train import resolve_config, train

    preset, overrides = overrides_from_args(args, FIELDS)
    cfg = resolve_config(saved_run_config(preset, overrides), overrides)
    if cfg.arch is not None:
        load_genotype(cfg.arch)  # a wrong --arch is reported before the data are looked for
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best top-1 {result['best_top1']:.2f}%  last top-1 {result['last_top1']:.2f}% "
              f"top-5 {result['last_top5']:.2f}% after {result['epochs']} epochs; "
              f"run directory {result['out']}")
    return 0
