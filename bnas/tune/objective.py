"""The optuna objective: one trial = one proxy-budget run of the study's mode.

After every epoch the run's validation top-1 is reported as the trial's intermediate value at
step = epochs trained so far (``trial.report``; the step is Hyperband's resource). When the
study's pruner judges the trial hopeless, the epoch callback raises :class:`optuna.TrialPruned`,
which the engine lets out once the epoch's checkpoint is written; a run that has used its whole
budget is never pruned. A run that diverges (the mode's ``diverged`` errors, e.g. a NaN loss)
is pruned too, with the reason in the trial's ``diverged`` attribute; any other user error
stops the study. The trial's value is the best validation top-1 of its run; in a search for
cost (:attr:`bnas.tune.setup.TuneSetup.objectives`) its values are that and the found
genotype's cost, and nothing is reported or pruned per epoch (optuna prunes single-objective
studies only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from ..errors import BnasError
from .modes import MODES
from .setup import TuneSetup
from .space import SearchSpace, format_values

#: The final metric a trial's value is read from (the engine's best validation top-1).
OBJECTIVE_METRIC = "best_top1"


class Objective:
    """Callable for :meth:`optuna.Study.optimize`; trial ``n`` runs in ``<out>/trials/<n>``."""

    def __init__(self, setup: TuneSetup, runtime: dict[str, Any], out: Path) -> None:
        self.setup = setup
        self.runtime = runtime
        self.out = out
        self.mode = MODES.get(setup.mode)
        self.space = SearchSpace.parse(setup.space, self.mode.targets(setup))
        self.epochs = int(setup.budget["epochs"])
        self.objectives = setup.objectives

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        params = self.space.suggest(trial)
        out = self.out / "trials" / str(trial.number)
        trial.set_user_attr("out", str(out))

        def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
            if len(self.objectives) > 1:
                return
            done = epoch + 1
            trial.report(float(metrics["top1"]), done)
            if done < self.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {done} (top-1 {metrics['top1']:.2f})")

        try:
            metrics = self.mode.run_trial(self.setup, self.runtime, params, out, on_epoch_end,
                                          trial.set_user_attr)
        except self.mode.diverged as exc:  # e.g. a learning rate so high that the loss is NaN
            trial.set_user_attr("diverged", str(exc))
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        except BnasError as exc:  # e.g. a sampled combination the binarizer rejects
            raise BnasError(f"trial {trial.number} ({format_values(params)}): {exc}") from None
        if len(self.objectives) > 1:
            return tuple(float(metrics[OBJECTIVE_METRIC if o == "top1" else o])
                         for o in self.objectives)
        return float(metrics[OBJECTIVE_METRIC])
