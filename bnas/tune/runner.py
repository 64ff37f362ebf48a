"""One ``bnas tune`` process: open (or create, or join) a study, run trials, write the report."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna

from ..errors import BnasError
from ..runio import atomic_write_text
from .modes import MODES
from .objective import Objective
from .report import summary_table, write_plots, write_preset
from .setup import TuneSetup, check_given
from .space import SearchSpace, build_space, format_values
from .study import load_setup, open_storage, open_study, storage_url

State = optuna.trial.TrialState


@dataclass(frozen=True)
class SpaceRequest:
    """The space options of the command line: ``--space FILE`` and each ``--param``."""

    file: str | None = None
    params: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.file or self.params)

    def build(self, setup: TuneSetup, base: dict[str, Any]) -> SearchSpace:
        mode = MODES.get(setup.mode)
        return build_space(base, mode.targets(setup), space_file=self.file, params=list(self.params))


def _space(setup: TuneSetup) -> SearchSpace:
    return SearchSpace.parse(setup.space, MODES.get(setup.mode).targets(setup))


def new_setup(setup: TuneSetup, space: SpaceRequest, runtime: dict[str, Any]) -> TuneSetup:
    """``setup`` (everything but the space) completed with its space, checked up front.

    The default space loses the settings that options fix; an explicit entry for one is an error.
    """
    mode = MODES.get(setup.mode)
    fixed = mode.fixed(setup)
    built = space.build(setup, {k: v for k, v in mode.default_space(setup).items() if k not in fixed})
    clash = sorted(fixed & set(built))
    if clash:
        raise BnasError(f"{', '.join(clash)} is both fixed by an option and tuned by the space; "
                        f"drop one of the two")
    if not built:
        raise BnasError("the search space is empty: give --space FILE or --param name=low:high")
    setup = replace(setup, space=built.to_dict())
    mode.check(setup, runtime)
    return setup


def check_joined(stored: TuneSetup, given: dict[str, Any], space: SpaceRequest, name: str) -> None:
    """Raise if options given to a process joining study ``name`` contradict its stored setup."""
    check_given(stored, given, name)
    if space and space.build(stored, stored.space).to_dict() != stored.space:
        raise BnasError(f"study '{name}' was created with another search space; leave out --space "
                        f"and --param to join it (bnas tune --study {name} --print-space shows it)")


@dataclass
class TuneRequest:
    """What one process is asked to do. ``setup`` holds the options for a new study and
    ``given`` those set explicitly (checked against an existing study's setup); ``runtime``
    the per-machine configuration fields (data root, device, loader workers)."""

    study: str
    out: Path
    setup: TuneSetup
    given: dict[str, Any] = field(default_factory=dict)
    space: SpaceRequest = field(default_factory=SpaceRequest)
    runtime: dict[str, Any] = field(default_factory=dict)
    storage: str | None = None
    trials: int | None = 10
    total_trials: int | None = None
    seed: int = 0
    can_create: bool = True


@dataclass
class TuneResult:
    """The study after this process's trials, its summary table, the best preset file (None
    before a trial completes) and the plots (stem -> file, or why it was skipped)."""

    study: optuna.Study
    setup: TuneSetup
    summary: str
    preset: Path | None
    plots: dict[str, str]


def print_space(request: TuneRequest, *, use_storage: bool) -> str:
    """The space ``request`` would tune, as YAML: the stored one of an existing study (looked up
    when ``use_storage``), else the one a new study would get."""
    stored = None
    if use_storage:
        stored = load_setup(open_storage(storage_url(request.storage, request.out)), request.study)
    setup = stored if stored is not None else new_setup(request.setup, request.space, request.runtime)
    return _space(setup).to_yaml()


def _trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    epochs = len(trial.intermediate_values)
    values = trial.values or []
    top1 = f"top-1 {values[0]:.2f} " if values else ""
    if len(values) > 1:
        top1 += f"cost {values[1]:.4g} {trial.user_attrs.get('cost_unit', '')} ".replace("  ", " ")
    why = "diverged, " if "diverged" in trial.user_attrs else ""
    return (f"trial {trial.number} {trial.state.name.lower()}: {why}{top1}after {epochs} "
            f"epoch{'s' * (epochs != 1)} ({format_values(trial.params)})")


def run(request: TuneRequest, print_fn: Callable[[str], None] = print) -> TuneResult:
    """Run ``request.trials`` trials of the study (fewer once it holds ``total_trials``), then
    write the summary, the best preset and the plots into ``request.out``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BnasError("bnas tune is not a torchrun program: start one bnas tune process per GPU "
                        "(--device cuda:N) on the same --study instead")
    out = request.out
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported by _trial_line
    storage = open_storage(storage_url(request.storage, out))
    stored = load_setup(storage, request.study)
    if stored is None:
        if not request.can_create:
            raise BnasError(f"no study '{request.study}' in {storage_url(request.storage, out)}; "
                            f"give --arch or --config to start it")
        setup = new_setup(request.setup, request.space, request.runtime)
    else:
        check_joined(stored, request.given, request.space, request.study)
        setup = stored
    study, setup, created = open_study(storage, request.study, setup, seed=request.seed)
    if not created and stored is None:  # another worker created it a moment ago
        check_joined(setup, request.given, request.space, request.study)
    count = len(study.get_trials(deepcopy=False))
    print_fn(f"study '{request.study}' ({'new' if created else 'joined'}, {count} trial{'s' * (count != 1)} "
             f"so far), tuning:\n{_space(setup).table()}")

    done = len(study.get_trials(deepcopy=False, states=(State.COMPLETE, State.PRUNED)))
    if request.trials != 0 and (request.total_trials is None or done < request.total_trials):
        callbacks = [lambda s, t: print_fn(_trial_line(s, t))]
        if request.total_trials is not None:
            callbacks.append(optuna.study.MaxTrialsCallback(request.total_trials,
                                                            states=(State.COMPLETE, State.PRUNED)))
        study.optimize(Objective(setup, request.runtime, out), n_trials=request.trials,
                       callbacks=callbacks, gc_after_trial=True)

    out.mkdir(parents=True, exist_ok=True)
    summary = summary_table(study)
    atomic_write_text(out / "summary.txt", summary)
    best = write_preset(study, setup, out / "best.yaml")
    return TuneResult(study, setup, summary, out / "best.yaml" if best else None, write_plots(study, out))
