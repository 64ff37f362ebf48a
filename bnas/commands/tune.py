"""``bnas tune``: find good hyper-parameters with optuna on a proxy budget."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import BnasError
from ..train.config import FIELDS
from ..options import key_value, key_values
from ..train.options import add_config_options, overrides_from_args
from ..tune import MODES, PRUNERS, SAMPLERS, SpaceRequest, TuneRequest, TuneSetup, run
from ..tune.runner import print_space
from . import command_parser

DEFAULT_EPOCHS = 10
DEFAULT_TRIALS = 10

#: Fields of the proxy budget (stored with the study).
BUDGET_FIELDS = ("epochs", "train_subset", "val_subset")
#: Per-machine fields: each worker sets its own; they are not stored with the study.
RUNTIME_FIELDS = ("data", "device", "workers", "loader", "amp", "channels_last")
#: Fields ``bnas tune`` sets itself for every trial.
TUNE_OWNED = ("out", "resume", "progress")
#: Every other field fixes a setting of all trials (stored with the study, left out of the
#: default space).
FIXED_FIELDS = tuple(f for f in FIELDS if f not in (*BUDGET_FIELDS, *RUNTIME_FIELDS, *TUNE_OWNED))
#: Tuning options stored with the study -> field of :class:`bnas.tune.TuneSetup`.
SETUP_OPTIONS = {"mode": "mode", "pruner": "pruner", "pruner_startup": "pruner_startup",
                 "sampler": "sampler"}

EPILOG = """\
examples:
  bnas tune --arch resnet20_1w1a --binarizer recu --dataset cifar10 --trials 20 --epochs 10
  bnas tune --arch resnet20_1w1a --binarizer rbnn --param lr=0.01:0.3:log --param Tmax=1:50:log
  bnas tune --config bnas-a --train-subset 0.2 --epochs 5 --pruner hyperband --trials 30
  bnas tune --study NAME --trials 10                   # resume, or join from another process
  bnas tune --study NAME --device cuda:1 --trials 10   # one worker per GPU, same study
  bnas tune --study NAME --storage postgresql://user@host/db --trials 10   # many machines
  bnas tune --mode search --dataset digits --search-arg epochs=3 --epochs 5 --trials 12
  bnas tune --mode search --dataset digits --search-arg cost=ops --layers 8 --epochs 5 --trials 12
  bnas train --config runs/tune/NAME/best.yaml         # train with the best values

A space file is YAML: NAME: {type: float|int|categorical, low, high, log, step, choices};
names are training settings (search mode: search settings such as lam, tau, arch_lr) or the
binarizer's hyper-parameters; --print-space shows the default. Settings given as options (or
--search-arg) are fixed for every trial and leave the default space. In search mode each trial
searches a cell, then retrains it on the proxy budget (--epochs, subsets, training options);
the search's own budget is --search-arg epochs=N subset=N. With --search-arg cost=KIND
(ops, bops, flops, latency) the study has two objectives, top-1 and the found genotype's cost at
the retraining size, and tunes the cost weight (cost_weight) too: optuna keeps the Pareto front
(summary column 'front', pareto.png); nothing is pruned.
Each process runs --trials trials; --total-trials caps the study over all its workers. The
study's setup (mode, preset, settings, budget, space, pruner) is stored with it: a process that
joins or resumes takes it, and options that contradict it are an error.
"""


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


DESCRIPTION = """\
Tune training hyper-parameters and the binarizer's with optuna: each trial is a short run of
the training engine that reports validation top-1 every epoch; hopeless trials are pruned.
Studies live in a database, so runs resume and many workers can share one study.
"""


def add_parser(subparsers) -> None:
    p = command_parser(
        subparsers, "tune", run_tune, help="tune hyper-parameters with optuna on a proxy budget",
        description=DESCRIPTION,
        epilog=EPILOG)
    p.add_argument("--mode", choices=MODES.names(), help="what a trial runs (default train): "
                   + "; ".join(f"{n}: {m.help}" for n, m in MODES.items()))
    space = p.add_argument_group("search space (stored with the study)")
    space.add_argument("--space", metavar="FILE", help="YAML search space replacing the default one")
    space.add_argument("--param", action="append", default=[], metavar="NAME=LOW:HIGH[:log]|A,B,..",
                       help="add or replace one entry of the space (repeatable)")
    space.add_argument("--print-space", action="store_true", help="print the space as YAML and exit")
    p.add_argument("--search-arg", dest="search_args", action="append", type=key_value,
                   metavar="KEY=VALUE", help="search mode: fix a search setting (a field of "
                   "bnas.search.config.SearchConfig: epochs, subset, layers, lam, ...; repeatable)")
    add_config_options(p, BUDGET_FIELDS, title=f"proxy budget of every trial (stored with the "
                                                f"study; default {DEFAULT_EPOCHS} epochs)")
    prune = p.add_argument_group("pruning and sampling (stored with the study)")
    prune.add_argument("--pruner", choices=PRUNERS.names(), help="pruner (default median)")
    prune.add_argument("--pruner-startup", type=_count(0), metavar="N",
                       help="median pruner: trials that finish before pruning starts (default 3)")
    prune.add_argument("--sampler", choices=SAMPLERS.names(), help="sampler (default tpe)")
    study = p.add_argument_group("study and workers")
    study.add_argument("--study", metavar="NAME", help="study name: resumes or joins it if it exists "
                       "(default: from the architecture and binarizer)")
    study.add_argument("--storage", metavar="URL", help="database URL or SQLite file "
                       "(default: sqlite:///OUT/tune.db)")
    study.add_argument("--out", dest="tune_out", type=Path, metavar="DIR",
                       help="directory for trial runs, summary, best preset and plots "
                            "(default runs/tune/STUDY)")
    study.add_argument("--trials", type=_count(0), help=f"trials this process runs (default "
                       f"{DEFAULT_TRIALS}, or until --total-trials; 0: only report)")
    study.add_argument("--total-trials", type=_count(1), metavar="N",
                       help="stop once the study holds N finished trials (over all its workers)")
    add_config_options(p, FIXED_FIELDS, title="settings fixed for every trial (stored with the study)")
    add_config_options(p, RUNTIME_FIELDS, title="this machine (not stored with the study)")


def _given(args: argparse.Namespace, fields: tuple[str, ...]) -> tuple[str | None, dict[str, Any]]:
    preset, values = overrides_from_args(args, fields)
    return preset, {k: v for k, v in values.items() if v is not None}


def _default_study(mode: str, preset: str | None, fixed: dict[str, Any]) -> str:
    source = fixed.get("arch") or fixed.get("config") or preset
    if mode == "search":
        source = f"search-{fixed.get('dataset', 'cifar10')}"
    if source is None:
        raise BnasError("give --study NAME to resume a study, or --arch or --config to start one")
    binarizer = fixed.get("binarizer")
    return "-".join([Path(source).stem] + ([binarizer] if binarizer else []))


def _absolute(value: str | None) -> str | None:
    """A file path made absolute (a study's other workers may start elsewhere); names unchanged."""
    if value is None or not Path(value).expanduser().is_file():
        return value
    return str(Path(value).expanduser().resolve())


def build_request(args: argparse.Namespace) -> TuneRequest:
    """The :class:`bnas.tune.TuneRequest` of the parsed command line."""
    preset, fixed = _given(args, FIXED_FIELDS)
    preset = _absolute(preset)
    if "arch" in fixed:
        fixed["arch"] = _absolute(fixed["arch"])
    budget = _given(args, BUDGET_FIELDS)[1]
    runtime = _given(args, RUNTIME_FIELDS)[1]
    given: dict[str, Any] = {f"overrides.{k}": v for k, v in fixed.items()}
    given.update({f"budget.{k}": v for k, v in budget.items()})
    given.update({field: getattr(args, opt) for opt, field in SETUP_OPTIONS.items()
                  if getattr(args, opt) is not None})
    if preset is not None:
        given["preset"] = preset
    search = key_values(args.search_args or [], "--search-arg")
    if search and args.mode != "search":
        raise BnasError("--search-arg needs --mode search")
    given.update({f"search.{k}": v for k, v in search.items()})
    mode = args.mode or "train"
    setup = TuneSetup(mode=mode, preset=preset, overrides=fixed, search=search,
                      budget={"epochs": DEFAULT_EPOCHS, **budget}, pruner=args.pruner or "median",
                      pruner_startup=3 if args.pruner_startup is None else args.pruner_startup,
                      sampler=args.sampler or "tpe")
    name = args.study or _default_study(mode, preset, fixed)
    trials = args.trials if args.trials is not None else (None if args.total_trials else DEFAULT_TRIALS)
    starts = mode == "search" or any(v is not None for v in (fixed.get("arch"), fixed.get("config"), preset))
    return TuneRequest(
        study=name, out=args.tune_out or Path("runs") / "tune" / name, setup=setup, given=given,
        space=SpaceRequest(args.space, tuple(args.param)), runtime=runtime, storage=args.storage,
        trials=trials, total_trials=args.total_trials, seed=fixed.get("seed", 0),
        can_create=starts)


def run_tune(args: argparse.Namespace) -> int:
    request = build_request(args)
    if args.print_space:
        print(print_space(request, use_storage=args.study is not None), end="")
        return 0
    result = run(request)
    print(result.summary, end="")
    print(f"best preset: {result.preset}" if result.preset else "best preset: none yet (no trial completed)")
    for stem, where in result.plots.items():
        print(f"{stem} plot: {where}")
    return 0
