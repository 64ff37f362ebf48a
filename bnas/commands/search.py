"""``bnas search``: search a binary cell and save its genotypes by name (see :mod:`bnas.search`)."""
from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import BnasError
from ..options import add_options, given_flags, key_value, key_values, read_options
from ..search.config import DATASET_PRESETS, FIELDS, SearchConfig
from ..search.cost import parse_weights
from ..search.pareto import DEFAULT_COMPARE, DEFAULT_TRAIN
from ..search.strategies import STRATEGIES
from . import command_parser

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

many GPUs / machines (one process per GPU; --batch-size is global, split across them):
  torchrun --nproc_per_node 4 -m bnas search --save c10 --data ~/data

The search writes NAME and NAME_imagenet (gamma down-weights zeroise) into the user genotype
directory ($BNAS_GENOTYPE_DIR, else ~/.local/share/bnas/genotypes), where bnas train, draw and
show find them by name; the run directory holds log.txt, alphas.jsonl, genotypes.jsonl,
alphas_normal.png, alphas_reduce.png and checkpoint.pt. Presets per dataset: """ + "; ".join(
    f"{name}: " + ", ".join(f"{k}={v}" for k, v in preset.items())
    for name, preset in DATASET_PRESETS.items()) + "."

#: The options that fill the configuration's ``cost_band`` (flag destination: cost measure).
BAND_OPTIONS = {"band_params": "params", "band_ops": "ops"}
#: The settings with an option of their own name (``cost_band`` has the two above).
OPTION_FIELDS = [name for name in FIELDS if name != "cost_band"]


def _strategy_help(name: str) -> str | None:
    if name != "strategy":
        return None
    return "search strategy: " + "; ".join(f"{n}: {s.description}" for n, s in STRATEGIES.items())


DESCRIPTION = """\
Differentiable search of binary cells as in BNAS (Kim, Singh, Choi, ECCV 2020), with any
binarization scheme, first- or second-order, on CPUs or GPUs.
"""


def add_parser(subparsers) -> None:
    p = command_parser(
        subparsers, "search", run, help="search a binary cell (BNAS) and save its genotypes",
        description=DESCRIPTION,
        epilog=EPILOG)
    add_options(p, SearchConfig, OPTION_FIELDS, "settings", show_defaults=True,
                help_of=_strategy_help)
    band = p.add_argument_group("--strategy random: cost bands")
    band.add_argument("--band-params", metavar="LO:HI",
                      help="keep genotypes whose network (the search's --layers, --init-channels, "
                           "--image-size) has LO..HI parameters (e.g. 100K:300K; either side may "
                           "be empty)")
    band.add_argument("--band-ops", metavar="LO:HI",
                      help="keep genotypes whose network costs LO..HI OPs (FLOPs + BOPs/64)")
    p.add_argument("--resume", metavar="RUN_DIR|CHECKPOINT",
                   help="continue a search from its run directory (its settings are used)")
    p.add_argument("--front-compare", metavar="NAMES",
                   help="a sweep's comparison architectures, comma-separated (default "
                        + ",".join(DEFAULT_COMPARE) + "; 'none' for none)")
    p.add_argument("--front-train", action="append", type=key_value, metavar="KEY=VALUE",
                   help="a training setting of a sweep's retrainings (repeatable; default "
                        + ", ".join(f"{k}={v}" for k, v in DEFAULT_TRAIN.items()) + ")")


def _sweep(args: argparse.Namespace, overrides: dict[str, Any], weights: list[float]) -> int:
    """Several cost weights: the Pareto sweep (:mod:`bnas.search.pareto`)."""
    from ..search.pareto import sweep

    compare = DEFAULT_COMPARE if args.front_compare is None else tuple(
        n.strip() for n in args.front_compare.split(",") if n.strip() and n.strip() != "none")
    points, out = sweep(overrides, weights, compare=compare,
                        train_settings=(key_values(args.front_train, "--front-train")
                                        if args.front_train is not None else None))
    front = [p.name for p in points if p.front]
    print(f"Pareto front ({len(front)} of {len(points)}): {', '.join(front)}; table and plot in "
          f"{out} (front.md, front.png)")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..search.config import resolve
    from ..search.loop import search
    from ..search.strategies import report

    if args.resume is not None:
        given = given_flags(args, SearchConfig, [n for n in OPTION_FIELDS if n != "device"])
        given += [flag for flag, value in (("--front-compare", args.front_compare),
                                           ("--front-train", args.front_train),
                                           ("--band-params", args.band_params),
                                           ("--band-ops", args.band_ops)) if value is not None]
        if given:
            raise BnasError(f"--resume continues with the saved settings; drop {', '.join(given)}")
        message = report(search(resume=args.resume, device=args.device))
    else:
        overrides = read_options(args, SearchConfig, OPTION_FIELDS)
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
