"""``bnas search``: search a binary cell and save its genotypes by name (see :mod:`bnas.search`)."""
from __future__ import annotations

import argparse
import os
from typing import Any

import yaml

from ..binarize import names as binarizer_names
from ..data.info import DATASET_INFO
from ..errors import BnasError
from ..ops import SPACES
from ..search.cell import CELLS
from ..search.config import DATASET_PRESETS
from ..search.cost import COST_KINDS, PENALTIES, parse_weights
from ..search.pareto import DEFAULT_COMPARE, DEFAULT_TRAIN
from ..search.strategies import STRATEGIES

EPILOG = """\
examples:
  bnas search --dataset digits --save my_arch          # about a minute on a CPU (offline data)
  bnas search --save bnas_c10                          # BNAS's CIFAR-10 search (50 epochs)
  bnas search --save c10_recu --binarizer recu         # search under another binarization scheme
  bnas search --save c10_skip --space bnas-skip --order 2
  bnas search --resume runs/search-bnas_c10-20250101-120000   # continue a stopped search
  bnas train --arch my_arch --dataset digits           # retrain what was found
  bnas search --strategy random --samples 8 --save rnd --dataset fashion-mnist \
      --band-params 100K:300K --layers 8 --init-channels 16   # the random baseline

searching for cost as well (the expected cost of the retrained network, bnas.search.cost):
  bnas search --save cheap --cost ops --cost-weight 0.1     # W * C(alpha) / C_max
  bnas search --save fits --cost bops --cost-weight 1 --cost-target 500M --cost-penalty log
  bnas search --save fast --cost latency --cost-weight 1 --cost-target 5ms   # packed engine
  bnas search --dataset digits --save front --cost ops --cost-weight 0,0.01,0.1,1   # Pareto front

many GPUs / machines (one process per GPU; --batch-size is per process):
  torchrun --nproc_per_node 4 -m bnas search --save c10 --data ~/data

The search writes NAME and NAME_imagenet (gamma down-weights zeroise) into the user genotype
directory ($BNAS_GENOTYPE_DIR, else ~/.local/share/bnas/genotypes), where bnas train, draw and
show find them by name; the run directory holds log.txt, alphas.jsonl, genotypes.jsonl,
alphas_normal.png, alphas_reduce.png and checkpoint.pt. Presets per dataset: """ + "; ".join(
    f"{name}: " + ", ".join(f"{k}={v}" for k, v in preset.items())
    for name, preset in DATASET_PRESETS.items()) + "."

#: (flags, destination, argparse settings, help) for every option.
OPTIONS: list[tuple[tuple[str, ...], str, dict[str, Any], str]] = [
    (("--save",), "save", {"metavar": "NAME"}, "name of the genotypes to write (NAME, NAME_imagenet)"),
    (("--strategy",), "strategy", {}, "search strategy: " + "; ".join(
        f"{name}: {s.description}" for name, s in STRATEGIES.items())),
    (("--samples",), "samples", {"type": int, "metavar": "N"},
     "--strategy random: how many genotypes to draw (saved as NAME_0 .. NAME_<N-1>)"),
    (("--band-params",), "band_params", {"metavar": "LO:HI"},
     "--strategy random: keep genotypes whose network (the search's --layers, --init-channels, "
     "--image-size) has LO..HI parameters (e.g. 100K:300K; either side may be empty)"),
    (("--band-ops",), "band_ops", {"metavar": "LO:HI"},
     "--strategy random: keep genotypes whose network costs LO..HI OPs (FLOPs + BOPs/64)"),
    (("--overwrite",), "overwrite", {"action": "store_true", "default": None},
     "replace existing genotypes of that name"),
    (("--dataset",), "dataset", {}, "dataset: " + ", ".join(DATASET_INFO.names()) + " (default cifar10)"),
    (("--data",), "data", {"metavar": "DIR"}, "dataset root (CIFAR download dir; train/ and val/ folders)"),
    (("--image-size",), "image_size", {"type": int}, "input resolution (default: the dataset's)"),
    (("--subset",), "subset", {"type": int, "metavar": "N"}, "search on N training images only"),
    (("--train-portion",), "train_portion", {"type": float},
     "share of the training images that train the weights; the rest train the architecture (0.5)"),
    (("--space",), "space", {}, "search space: " + ", ".join(SPACES.names()) + " (default bnas)"),
    (("--binarizer",), "binarizer", {}, "binarization scheme: " + ", ".join(binarizer_names())
     + " (default plain, as BNAS)"),
    (("--binarizer-hparam",), "binarizer_hparams", {"action": "append", "metavar": "KEY=VALUE"},
     "a hyper-parameter of the scheme (repeatable; values read as YAML)"),
    (("--layers",), "layers", {"type": int}, "cells of the supernet (8)"),
    (("--init-channels",), "init_channels", {"type": int}, "initial channels C (16)"),
    (("--steps",), "steps", {"type": int}, "intermediate nodes per cell (4)"),
    (("--epochs",), "epochs", {"type": int}, "search epochs (50)"),
    (("--batch-size",), "batch_size", {"type": int}, "batch size per process (64)"),
    (("--lr",), "lr", {"type": float}, "weight learning rate, cosine-annealed (0.025)"),
    (("--lr-min",), "lr_min", {"type": float}, "final weight learning rate (0.001)"),
    (("--momentum",), "momentum", {"type": float}, "weight SGD momentum (0.9)"),
    (("--weight-decay",), "weight_decay", {"type": float}, "weight decay of the weights (3e-4)"),
    (("--arch-lr",), "arch_lr", {"type": float}, "Adam learning rate of the alphas (3e-4)"),
    (("--arch-weight-decay",), "arch_weight_decay", {"type": float}, "weight decay of the alphas (1e-3)"),
    (("--lambda",), "lam", {"type": float}, "weight of the diversity (entropy) term (1.0)"),
    (("--tau",), "tau", {"type": float}, "annealing constant of the diversity term, epochs (7.7)"),
    (("--gamma",), "gamma", {"type": float}, "zeroise down-weighting of the ImageNet genotype (3)"),
    (("--order",), "order", {"type": int, "choices": (1, 2)},
     "1: first-order DARTS (BNAS); 2: second-order (unrolled) DARTS"),
    (("--cost",), "cost", {"metavar": "KIND"},
     "search for cost as well: " + ", ".join(COST_KINDS.names()) + " (bnas.search.cost)"),
    (("--cost-weight",), "cost_weight", {"metavar": "W[,W...]"},
     "weight of the cost term, >= 0 (0 records the cost without optimising it); several "
     "(0,0.01,0.1,1): a sweep that retrains what each finds and writes the Pareto front"),
    (("--cost-target",), "cost_target", {"metavar": "BUDGET"},
     "drive the cost toward a budget instead: 100M, 1.2G (counts), 5ms (latency)"),
    (("--cost-penalty",), "cost_penalty", {"metavar": "NAME"},
     "penalty above the budget: " + ", ".join(PENALTIES.names()) + " (default hinge)"),
    (("--cost-layers",), "cost_layers", {"type": int},
     "cells of the retrained network whose cost counts (20 for CIFAR-style data, 12 ImageNet)"),
    (("--cost-init-channels",), "cost_init_channels", {"type": int},
     "initial channels of the retrained network (36 for CIFAR-style data, 64 ImageNet)"),
    (("--cost-image-size",), "cost_image_size", {"type": int},
     "input resolution of the retrained network (the dataset's)"),
    (("--seed",), "seed", {"type": int}, "random seed (2)"),
    (("--workers",), "workers", {"type": int}, "data-loading worker processes (2)"),
    (("--impl",), "impl", {}, "supernet implementation: " + ", ".join(CELLS.names())
     + " (same maths; fast is the default)"),
    (("--device",), "device", {}, "auto, cpu, cuda or cuda:N (auto)"),
    (("--progress",), "progress", {"action": argparse.BooleanOptionalAction}, "show a progress bar"),
    (("--out",), "out", {"metavar": "DIR"}, "run directory (default runs/search-NAME-<time>)"),
    (("--genotype-dir",), "genotype_dir", {"metavar": "DIR"},
     "write the genotypes there instead of the user genotype directory"),
]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "search", help="search a binary cell (BNAS) and save its genotypes",
        description="Differentiable search of binary cells as in BNAS (Kim, Singh, Choi, ECCV "
                    "2020), with any binarization scheme, first- or second-order, on CPUs or GPUs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flags, dest, settings, help_text in OPTIONS:
        p.add_argument(*flags, dest=dest, help=help_text, **{"default": None, **settings})
    p.add_argument("--resume", metavar="RUN_DIR|CHECKPOINT",
                   help="continue a search from its run directory (its settings are used)")
    p.add_argument("--front-compare", metavar="NAMES",
                   help="a sweep's comparison architectures, comma-separated (default "
                        + ",".join(DEFAULT_COMPARE) + "; 'none' for none)")
    p.add_argument("--front-train", action="append", metavar="KEY=VALUE",
                   help="a training setting of a sweep's retrainings (repeatable; default "
                        + ", ".join(f"{k}={v}" for k, v in DEFAULT_TRAIN.items()) + ")")
    p.set_defaults(run=run)


def _hparams(pairs: list[str] | None, flag: str = "--binarizer-hparam") -> dict[str, Any] | None:
    if pairs is None:
        return None
    found: dict[str, Any] = {}
    for text in pairs:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise BnasError(f"{flag} expects KEY=VALUE, got {text!r}")
        if key.strip() in found:
            raise BnasError(f"{flag} sets '{key.strip()}' twice")
        try:
            found[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise BnasError(f"cannot read the value of {flag} {text!r}") from None
    return found


def _sweep(args: argparse.Namespace, overrides: dict[str, Any], weights: list[float]) -> int:
    """Several cost weights: the Pareto sweep (:mod:`bnas.search.pareto`)."""
    from ..search.pareto import sweep

    compare = DEFAULT_COMPARE if args.front_compare is None else tuple(
        n.strip() for n in args.front_compare.split(",") if n.strip() and n.strip() != "none")
    points, out = sweep(overrides, weights, compare=compare,
                        train_settings=_hparams(args.front_train, "--front-train"))
    front = [p.name for p in points if p.front]
    print(f"Pareto front ({len(front)} of {len(points)}): {', '.join(front)}; table and plot in "
          f"{out} (front.md, front.png)")
    return 0


#: Options gathered into the configuration's ``cost_band`` (key: cost measure).
BAND_OPTIONS = {"band_params": "params", "band_ops": "ops"}


def run(args: argparse.Namespace) -> int:
    from ..search.config import resolve
    from ..search.loop import search
    from ..search.strategies import report

    if args.resume is not None:
        given = [flags[0] for flags, dest, _, _ in OPTIONS
                 if getattr(args, dest) is not None and dest != "device"]
        given += [flag for flag, value in (("--front-compare", args.front_compare),
                                           ("--front-train", args.front_train)) if value is not None]
        if given:
            raise BnasError(f"--resume continues with the saved settings; drop {', '.join(given)}")
        message = report(search(resume=args.resume, device=args.device))
    else:
        overrides = {dest: getattr(args, dest) for _, dest, _, _ in OPTIONS
                     if dest not in BAND_OPTIONS}
        overrides["binarizer_hparams"] = _hparams(args.binarizer_hparams)
        weights = parse_weights(args.cost_weight) if args.cost_weight is not None else [None]
        if len(weights) > 1:
            return _sweep(args, overrides, weights)
        if args.front_compare is not None or args.front_train is not None:
            raise BnasError("--front-compare and --front-train set up a sweep: give several "
                            "--cost-weight values (0,0.01,0.1,1)")
        overrides["cost_weight"] = weights[0]
        band = {key: getattr(args, dest) for dest, key in BAND_OPTIONS.items()
                if getattr(args, dest) is not None}
        overrides["cost_band"] = band or None
        cfg = resolve(overrides)
        message = STRATEGIES.get(cfg.strategy).run(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(message)
    return 0
