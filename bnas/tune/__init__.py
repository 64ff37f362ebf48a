"""``bnas tune``: hyper-parameter search with optuna over proxy-budget runs.

* :mod:`bnas.tune.space`: the search-space format and its validation;
  :mod:`bnas.tune.defaults`: the default spaces per binarizer and for the search;
* :mod:`bnas.tune.modes`: what a trial runs (training engine or architecture search);
* :mod:`bnas.tune.objective`: the optuna objective, per-epoch reports and pruning;
* :mod:`bnas.tune.study`: storage (SQLite or any database URL), pruners, samplers;
* :mod:`bnas.tune.report`: summary table, best preset, plots;
* :mod:`bnas.tune.runner`: one process's run, as ``bnas tune`` drives it.
"""
from .modes import MODES
from .runner import SpaceRequest, TuneRequest, TuneResult, run
from .setup import TuneSetup
from .space import Param, SearchSpace, build_space
from .study import PRUNERS, SAMPLERS

__all__ = ["MODES", "PRUNERS", "Param", "SAMPLERS", "SearchSpace", "SpaceRequest", "TuneRequest",
           "TuneResult", "TuneSetup", "build_space", "run"]
