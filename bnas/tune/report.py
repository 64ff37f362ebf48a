"""What a study leaves behind: a summary table, the best preset, and optuna's plots as files.

* ``summary.txt``: one row per trial (state, value, epochs reached, parameters), best first;
* ``best.yaml``: the full-budget configuration with the best trial's values, loadable by
  ``bnas train --config best.yaml`` (``bnas.train.config.resolve_config``);
* ``history.png`` (optimisation history), ``intermediate.png`` (per-epoch validation curves,
  where pruning shows) and ``importance.png`` (parameter importances, from two completed trials).

A search for cost is a two-objective study (top-1 up, cost down): the summary gains the cost and
marks the trials on the Pareto front, ``best.yaml`` is the most accurate of them, history and
importance plots show top-1, and ``pareto.png`` shows the front.

Several workers may write these at once: every file is replaced atomically.
"""
from __future__ import annotations

import datetime
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml

from ..runio import atomic_write, atomic_write_text
from .modes import MODES
from .setup import TuneSetup
from .space import format_values

State = optuna.trial.TrialState


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _top1(trial: optuna.trial.FrozenTrial) -> float | None:
    """A trial's (first) value, or for an unfinished one its best reported epoch."""
    if trial.values:
        return trial.values[0]
    return max(trial.intermediate_values.values(), default=None)


def _multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def _front(study: optuna.Study) -> set[int]:
    """Numbers of the trials on the Pareto front of a two-objective study (none otherwise)."""
    return {t.number for t in study.best_trials} if _multi(study) else set()


_STATE_ORDER = {State.COMPLETE: 0, State.PRUNED: 1, State.RUNNING: 2, State.WAITING: 3, State.FAIL: 4}


def summary_table(study: optuna.Study) -> str:
    """All trials, completed ones best first (then pruned, running, failed), as aligned text."""
    trials = study.get_trials(deepcopy=False)
    names = list(dict.fromkeys(n for t in trials for n in t.params))
    ordered = sorted(trials, key=lambda t: (_STATE_ORDER.get(t.state, 5), -(_top1(t) or 0.0), t.number))
    multi, front = _multi(study), _front(study)
    header = ["trial", "state", "top1", *(["cost", "front"] if multi else []), "epochs", *names]
    rows = [[str(t.number), t.state.name.lower(), _fmt(_top1(t)),
             *([_fmt(t.values[1] if t.values else None), "yes" if t.number in front else ""]
               if multi else []),
             str(len(t.intermediate_values)), *(_fmt(t.params.get(n)) for n in names)]
            for t in ordered]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    tally = ", ".join(f"{n} {s.name.lower()}" for s in State if (n := sum(t.state == s for t in trials)))
    head = f"study '{study.study_name}': {len(trials)} trial{'s' * (len(trials) != 1)} ({tally or 'none'})"
    return "\n".join([head, *lines]) + "\n"


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed trial of the highest top-1 (in a two-objective study it is on the front)."""
    complete = study.get_trials(deepcopy=False, states=(State.COMPLETE,))
    return max(complete, key=lambda t: (t.values[0], *(-v for v in t.values[1:]))) if complete else None


def write_preset(study: optuna.Study, setup: TuneSetup, path: Path) -> optuna.trial.FrozenTrial | None:
    """Write the best trial's full-budget configuration to ``path``; None if no trial completed."""
    best = best_trial(study)
    if best is None:
        return None
    mode = MODES.get(setup.mode)
    preset = mode.preset(setup, best.params, best.user_attrs)
    budget = ", ".join(f"{k} {v}" for k, v in setup.budget.items() if v is not None) or "full"
    cost = (f", cost {best.values[1]:.4g} {best.user_attrs.get('cost_unit', '')}".rstrip()
            if _multi(study) else "")
    lines = [f"bnas tune: best of study '{study.study_name}' (trial {best.number}, top-1 "
             f"{best.values[0]:.2f}{cost} on the proxy budget: {budget})",
             *([f"Pareto front (top-1 up, cost down): trials "
                f"{', '.join(str(n) for n in sorted(_front(study)))}"] if _multi(study) else []),
             f"tuned: {format_values(best.params)}",
             *mode.notes(setup, best.params, best.user_attrs),
             f"written {datetime.datetime.now().isoformat(timespec='seconds')}"]
    header = "".join(f"# {line}\n" for line in lines)
    atomic_write_text(path, header + yaml.safe_dump(preset, sort_keys=False))
    return best


def _save_figure(ax: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip("."), dpi=100))
    finally:
        plt.close(fig)


def _complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(State.COMPLETE,)))


def _reported(study: optuna.Study) -> int:
    return sum(bool(t.intermediate_values) for t in study.get_trials(deepcopy=False))


def _plots() -> dict[str, tuple[Callable, Callable[[optuna.Study], int], int, str]]:
    """File stem -> (optuna plot function, what it needs: a count over the study, its minimum
    and how to say it)."""
    from optuna.visualization import matplotlib as vis

    return {"history": (vis.plot_optimization_history, _complete, 1, "1 completed trial"),
            "intermediate": (vis.plot_intermediate_values, _reported, 1, "1 trial with a finished epoch"),
            "importance": (vis.plot_param_importances, _complete, 2, "2 completed trials"),
            "pareto": (vis.plot_pareto_front, _complete, 1, "1 completed trial")}


def _plot_options(stem: str, study: optuna.Study) -> dict[str, Any] | None:
    """Keyword arguments of plot ``stem`` for this study; None where it does not apply (the
    front of a single-objective study). Two-objective history and importances show top-1."""
    if not _multi(study):
        return None if stem == "pareto" else {}
    if stem == "pareto":
        return {"target_names": ["top-1 (%)", "cost"]}
    if stem == "intermediate":
        return {}
    return {"target": lambda t: t.values[0], "target_name": "top-1"}


def write_plots(study: optuna.Study, out: Path) -> dict[str, str]:
    """Save optuna's plots as PNG files in ``out``; returns stem -> path, or why it was skipped."""
    import matplotlib

    matplotlib.use("Agg")
    written: dict[str, str] = {}
    for stem, (plot, count, minimum, needs) in _plots().items():
        options = _plot_options(stem, study)
        if options is None:
            continue
        if count(study) < minimum:
            written[stem] = f"skipped: needs {needs}"
            continue
        path = out / f"{stem}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _save_figure(plot(study, **options), path)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. no parameter varies yet
            written[stem] = f"skipped: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            continue
        written[stem] = str(path)
    return written
