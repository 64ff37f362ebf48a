"""What a tuning trial runs (the ``--mode``): a registry of :class:`Mode` objects.

A mode knows which hyper-parameters can be tuned (its *targets*), its default space, how a
trial's sampled values become configurations, how to run one trial on the proxy budget while
reporting validation accuracy after every epoch, and what the best values look like as a
preset for ``bnas train --config``.

* ``train``: the trial trains the study's architecture (:func:`bnas.train.engine.train`); the
  space names training settings (:class:`~bnas.train.config.TrainConfig` fields) and the
  binarizer's hyper-parameters.
* ``search``: the trial searches a cell (:func:`bnas.search.loop.search`) with the sampled
  search settings (:class:`~bnas.search.config.SearchConfig` fields such as ``lam``, ``tau``,
  ``arch_lr``), then retrains the genotype it found on the proxy budget; that retraining's
  validation accuracy is what is reported, pruned on and maximised, since the supernet's own
  accuracy says little about the cell it yields.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from ..binarize import BINARIZERS, get as get_binarizer
from ..errors import BnasError
from ..options import default, fields, tunable
from ..registry import Registry
from ..run.loop import EpochCallback
from ..search.config import SearchConfig, resolve as resolve_search
from ..search.loop import search
from ..train.config import TrainConfig, config_dict, resolve_config
from ..train.engine import NonFiniteLoss, train
from . import defaults
from .setup import TuneSetup
from .space import Target, format_values

Record = Callable[[str, Any], None]

#: Training fields never tuned (marked so in :class:`TrainConfig`): what a study is *about*
#: (architecture, data, scheme), the proxy budget (epochs, subsets), where and how it runs (run
#: directory, device, precision, loader, progress bar) and the seed. ``binarizer_hparams``
#: entries are tuned by their own names.
NOT_TUNABLE = frozenset(n for n, f in fields(TrainConfig).items() if not tunable(f))

#: Search fields never tuned (marked so in :class:`SearchConfig`): the same kinds (data, scheme,
#: supernet size, budget, run).
SEARCH_NOT_TUNABLE = frozenset(n for n, f in fields(SearchConfig).items() if not tunable(f))

#: Training fields that belong to the machine a worker runs on and that the search shares
#: (``loader``, ``amp`` and ``channels_last`` concern the retraining only).
SHARED_RUNTIME = ("data", "device", "workers")

#: Fields of a resolved configuration that a preset leaves out (where a run writes, not what it does).
NOT_IN_PRESET = frozenset({"out", "resume"})


def _number_kind(field: dataclasses.Field) -> str | None:
    """``float`` or ``int`` when the field's annotation names exactly one of them."""
    words = set(str(field.type).replace("|", " ").split())
    kinds = words & {"int", "float"}
    return kinds.pop() if len(kinds) == 1 else None


def config_targets(config_class: type) -> dict[str, Target]:
    """The tunable fields of a configuration dataclass, as :class:`Target` entries."""
    return {f.name: Target("config", default(f), _number_kind(f))
            for f in dataclasses.fields(config_class) if tunable(f)}


def split_params(params: dict[str, Any], targets: dict[str, Target]) -> tuple[dict, dict]:
    """Sampled values split into (configuration fields, binarizer hyper-parameters)."""
    config = {k: v for k, v in params.items() if targets[k].section == "config"}
    return config, {k: v for k, v in params.items() if targets[k].section == "binarizer_hparams"}


def preset_dict(cfg: TrainConfig) -> dict[str, Any]:
    """A resolved configuration as plain YAML-able data, without its run-location fields."""
    return {k: v for k, v in config_dict(cfg).items() if k not in NOT_IN_PRESET}


class Mode:
    """A kind of tuning run. Subclasses fill in the methods that raise here."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    #: Errors that mean the sampled values made the run diverge: the trial is pruned, not the
    #: study stopped.
    diverged: ClassVar[tuple[type[Exception], ...]] = ()

    def targets(self, setup: TuneSetup) -> dict[str, Target]:
        """Every hyper-parameter name this mode can tune, and where its value goes."""
        raise NotImplementedError

    def fixed(self, setup: TuneSetup) -> set[str]:
        """The names the setup's options fix (left out of the default space)."""
        raise NotImplementedError

    def default_space(self, setup: TuneSetup) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, setup: TuneSetup, runtime: dict[str, Any]) -> None:
        """Raise :class:`bnas.errors.BnasError` now for a setup no trial could run."""
        raise NotImplementedError

    def run_trial(self, setup: TuneSetup, runtime: dict[str, Any], params: dict[str, Any],
                  out: Path, on_epoch_end: EpochCallback, record: Record) -> dict[str, Any]:
        """Run one trial in ``out`` on the proxy budget; return the final metrics (with
        ``best_top1``). ``record(key, value)`` keeps a fact about the trial in the study."""
        raise NotImplementedError

    def preset(self, setup: TuneSetup, params: dict[str, Any], attrs: dict[str, Any]) -> dict[str, Any]:
        """The full-budget training configuration of a trial (its values ``params`` and the
        facts it recorded, ``attrs``), as a preset for ``bnas train --config``."""
        raise NotImplementedError

    def notes(self, setup: TuneSetup, params: dict[str, Any], attrs: dict[str, Any]) -> list[str]:
        """Comment lines for the preset file, beyond the tuned values."""
        return []


MODES: Registry[Mode] = Registry("tuning mode")


class TrainMode(Mode):
    """Tune training hyper-parameters and the binarizer's through :func:`bnas.train.engine.train`."""

    name = "train"
    help = "train the architecture on the proxy budget (bnas train's engine)"
    diverged = (NonFiniteLoss,)

    def _resolve(self, setup: TuneSetup, extra: dict[str, Any]) -> TrainConfig:
        return resolve_config(setup.preset, {**setup.overrides, **extra})

    def _binarizer(self, setup: TuneSetup) -> tuple[str, dict[str, Any]]:
        base = self._resolve(setup, {})
        return BINARIZERS.canonical(base.binarizer), dict(base.binarizer_hparams or {})

    def _with_hparams(self, setup: TuneSetup, targets: dict[str, Target]) -> dict[str, Target]:
        """``targets`` and the binarizer's hyper-parameters (names must not collide)."""
        name, _ = self._binarizer(setup)
        hparams = BINARIZERS.get(name).hparams
        clash = sorted(set(hparams) & set(targets))
        if clash:
            raise BnasError(f"binarizer '{name}' hyper-parameter {', '.join(clash)} shadows a "
                            f"setting of the same name")
        return {**targets, **{k: Target("binarizer_hparams", v) for k, v in hparams.items()}}

    def _hparams(self, setup: TuneSetup, tuned: dict[str, Any]) -> dict[str, Any]:
        return {"binarizer_hparams": {**self._binarizer(setup)[1], **tuned}}

    def targets(self, setup: TuneSetup) -> dict[str, Target]:
        return self._with_hparams(setup, config_targets(TrainConfig))

    def fixed(self, setup: TuneSetup) -> set[str]:
        return set(setup.overrides) | set(setup.overrides.get("binarizer_hparams") or {})

    def default_space(self, setup: TuneSetup) -> dict[str, Any]:
        return defaults.train_space(self._binarizer(setup)[0])

    def _overrides(self, setup: TuneSetup, params: dict[str, Any]) -> dict[str, Any]:
        config, hparams = split_params(params, self.targets(setup))
        return {**config, **self._hparams(setup, hparams)}

    def check(self, setup: TuneSetup, runtime: dict[str, Any]) -> None:
        cfg = self._resolve(setup, {**setup.budget, **runtime})
        get_binarizer(cfg.binarizer, **(cfg.binarizer_hparams or {}))

    def _train(self, setup: TuneSetup, runtime: dict[str, Any], overrides: dict[str, Any],
               out: Path, on_epoch_end: EpochCallback) -> dict[str, Any]:
        cfg = self._resolve(setup, {**setup.budget, **runtime, **overrides, "out": str(out),
                                    "resume": False, "progress": False})
        return train(cfg, on_epoch_end=on_epoch_end)

    def run_trial(self, setup: TuneSetup, runtime: dict[str, Any], params: dict[str, Any],
                  out: Path, on_epoch_end: EpochCallback, record: Record) -> dict[str, Any]:
        return self._train(setup, runtime, self._overrides(setup, params), out, on_epoch_end)

    def preset(self, setup: TuneSetup, params: dict[str, Any], attrs: dict[str, Any]) -> dict[str, Any]:
        return preset_dict(self._resolve(setup, self._overrides(setup, params)))


class SearchMode(TrainMode):
    """Tune the search's settings: search on the proxy budget, then retrain what it found.

    Search settings given with ``--search-arg`` are fixed (the search's own budget among them:
    ``epochs``, ``subset``); the training options, preset and ``--epochs``/subsets set up the
    retraining as in train mode. The dataset and the binarizer (with its hyper-parameters, tuned
    or not) are shared by the search and the retraining.
    """

    name = "search"
    help = ("search a cell with the sampled search settings, then retrain its genotype on the "
            "proxy budget (bnas search, then bnas train's engine)")

    def targets(self, setup: TuneSetup) -> dict[str, Target]:
        return self._with_hparams(setup, config_targets(SearchConfig))

    def fixed(self, setup: TuneSetup) -> set[str]:
        return set(setup.search) | set(setup.overrides.get("binarizer_hparams") or {})

    def default_space(self, setup: TuneSetup) -> dict[str, Any]:
        return {**defaults.SEARCH_SPACE, **(defaults.COST_SPACE if setup.search.get("cost") else {})}

    def _search_config(self, setup: TuneSetup, runtime: dict[str, Any], hparams: dict[str, Any],
                       settings: dict[str, Any], out: Path) -> SearchConfig:
        base = self._resolve(setup, self._hparams(setup, hparams))
        shared = {k: runtime[k] for k in SHARED_RUNTIME if k in runtime}
        if setup.search.get("cost"):  # the cost counts at the size the trial retrains
            shared.update({"cost_layers": base.layers, "cost_init_channels": base.init_channels,
                           "cost_image_size": base.image_size})
        return resolve_search({"dataset": base.dataset, "binarizer": base.binarizer,
                               "binarizer_hparams": base.binarizer_hparams, **shared,
                               **setup.search, **settings, "save": f"trial_{out.name}",
                               "out": str(out / "search"), "overwrite": True, "progress": False,
                               # a trial's genotypes are trial artefacts, not library entries
                               "genotype_dir": str(out / "genotypes")})

    def check(self, setup: TuneSetup, runtime: dict[str, Any]) -> None:
        given = sorted({"arch", "config"} & set(setup.overrides))
        if given:
            raise BnasError(f"--{given[0]} has no place in search mode: each trial retrains the "
                            f"genotype its search found")
        super().check(setup, runtime)
        tuned = {}
        if setup.search.get("cost") and "cost_weight" not in setup.search:
            if "cost_weight" not in setup.space:
                raise BnasError("a search for cost needs its weight: tune it (--param "
                                "cost_weight=0.001:10:log) or fix it (--search-arg cost_weight=W)")
            tuned["cost_weight"] = 0.0  # any sampled weight >= 0 is as valid as this one
        self._search_config(setup, runtime, {}, tuned, Path("check"))

    def run_trial(self, setup: TuneSetup, runtime: dict[str, Any], params: dict[str, Any],
                  out: Path, on_epoch_end: EpochCallback, record: Record) -> dict[str, Any]:
        settings, hparams = split_params(params, self.targets(setup))
        cfg = self._search_config(setup, runtime, hparams, settings, out)
        found = search(cfg)
        genotype = found.out / f"{found.genotype.name}.json"
        record("genotype", str(genotype.resolve()))
        record("search_top1", found.best_top1)
        metrics = self._train(setup, runtime, {"arch": str(genotype.resolve()),
                                               **self._hparams(setup, hparams)},
                              out / "train", on_epoch_end)
        if cfg.cost is not None:
            metrics["cost"] = found.genotype.provenance["cost"]["genotype_cost"]
            record("cost", metrics["cost"])
            record("cost_unit", found.genotype.provenance["cost"]["unit"])
        return metrics

    def preset(self, setup: TuneSetup, params: dict[str, Any], attrs: dict[str, Any]) -> dict[str, Any]:
        hparams = split_params(params, self.targets(setup))[1]
        return preset_dict(self._resolve(setup, {"arch": attrs["genotype"], **self._hparams(setup, hparams)}))

    def notes(self, setup: TuneSetup, params: dict[str, Any], attrs: dict[str, Any]) -> list[str]:
        settings = {**setup.search, **params}
        return [f"found by bnas search with {format_values(settings)} (supernet top-1 "
                f"{attrs['search_top1']:.2f}); genotype {attrs['genotype']}"]


MODES.add(TrainMode.name, TrainMode())
MODES.add(SearchMode.name, SearchMode())
