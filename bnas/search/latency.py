"""Latency as a search cost: a per-operation table measured with the packed engine.

A search with ``--cost latency`` prices each edge operation by what it takes on this CPU through
the bit-packed inference engine (:mod:`bnas.deploy`): the median seconds of one forward of the
packed operation on one sample of its input shape (``bnas.deploy.bench.time_op``), as FBNet's
latency lookup table (Wu et al., CVPR 2019, Sec. 3.2) and ProxylessNAS's latency model do. The
rest of the network (stem, the cells' preprocessing and residual convolutions, classifier) is
``C_fixed``: the probe network packed and timed layer by layer
(``bnas.deploy.bench.layer_times``), every layer outside the cells' edge operations.

Entries are measured once and kept in a table per CPU model and thread count,
``$XDG_CACHE_HOME/bnas/latency/<cpu>-<N>threads.json`` (default ``~/.cache/bnas``), keyed by
operation, channels, resolution, stride and scheme; a search measures (and stores) the entries
its network needs that the table lacks. ``bnas bench --table space=bnas dataset=cifar10
layers=20 init_channels=36`` fills the table for a network size beforehand, and
``--regenerate`` measures it afresh. Timings depend on the machine's load: build tables on an
idle machine.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..binarize import Binarizer
from ..errors import BnasError
from ..ops.cxx import cache_dir
from ..profiling import Profile
from ..runio import atomic_write_text
from .cost import COST_KINDS, CostKind, RetrainSize, Shape

#: Seconds of repeated runs behind each entry's median (after warm-up runs).
MIN_TIME_S = 0.1


def engine() -> Any:
    """``bnas.deploy.bench`` with its kernels loaded; BnasError (one line) when the packed
    engine cannot run here."""
    try:
        from ..deploy import bench
        from ..deploy.kernels import kernels

        kernels()
    except (ImportError, OSError, RuntimeError, BnasError) as exc:
        raise BnasError(f"--cost latency needs the packed engine (bnas.deploy), which cannot run "
                        f"here: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                        ) from None
    if not hasattr(bench, "time_op"):
        raise BnasError("--cost latency needs the packed engine's per-operation timing "
                        "(bnas.deploy.bench.time_op), which this version lacks")
    return bench


def table_path(threads: int | None = None) -> Path:
    """The table of this CPU model at ``threads`` threads (default: torch's current number)."""
    bench = engine()
    cpu = re.sub(r"[^A-Za-z0-9]+", "-", bench.cpu_name()).strip("-").lower() or "cpu"
    return cache_dir() / "latency" / f"{cpu}-{threads or torch.get_num_threads()}threads.json"


class LatencyTable:
    """Measured seconds per operation and shape, read from and written back to ``path``."""

    def __init__(self, path: Path, threads: int) -> None:
        self.path, self.threads = path, threads
        self.entries: dict[str, float] = {}
        if path.is_file():
            try:
                self.entries = dict(json.loads(path.read_text())["entries"])
            except (ValueError, KeyError, TypeError):
                raise BnasError(f"{path} is not a latency table; delete it or pass "
                                f"--regenerate") from None

    @staticmethod
    def key(name: str, shape: Shape, stride: int, scheme: str) -> str:
        c, h, w = shape
        return f"{name} c{c} {h}x{w} s{stride} {scheme}"

    def get(self, name: str, shape: Shape, stride: int, scheme: str) -> float:
        """The entry, measured now (and stored) if the table lacks it."""
        key = self.key(name, shape, stride, scheme)
        if key not in self.entries:
            if shape[1] != shape[2]:
                raise BnasError(f"the latency table times square inputs only, not {shape}")
            self.entries[key] = float(engine().time_op(
                name, shape[0], shape[1], stride, n_threads=self.threads, binarizer=scheme,
                min_time=MIN_TIME_S))
            self.save()
        return self.entries[key]

    def save(self) -> None:
        bench = engine()
        atomic_write_text(self.path, json.dumps(
            {"cpu": bench.cpu_name(), "threads": self.threads, "engine": _describe(),
             "unit": "seconds per forward, batch 1 (median)", "entries": self.entries},
            indent=1, sort_keys=True) + "\n")


def _describe() -> str:
    from ..deploy.kernels import describe

    return describe()


class LatencyKind(CostKind):
    """Seconds through the packed engine on this CPU (see the module docstring)."""

    name, unit, time = "latency", "s", True
    description = "seconds per image through the packed engine on this CPU (measured table)"

    def __init__(self) -> None:
        self._tables: dict[tuple[Path, int], LatencyTable] = {}

    def check(self) -> None:
        engine()

    def table(self) -> LatencyTable:
        threads = torch.get_num_threads()
        path = table_path(threads)
        if (path, threads) not in self._tables:
            self._tables[(path, threads)] = LatencyTable(path, threads)
        return self._tables[(path, threads)]

    def op(self, name: str, input_size: Shape, stride: int, binarizer: Binarizer) -> float:
        return self.table().get(name, input_size, stride, binarizer.config()["name"])

    def network(self, model: nn.Module, input_size: Shape, counted: Profile) -> float:
        """The whole network packed, timed end to end (batch 1)."""
        from ..deploy import pack

        bench = engine()
        packed = pack(model)
        x = torch.randn(1, *input_size)
        return float(bench.latency(lambda: packed(x), MIN_TIME_S))

    def fixed(self, model: nn.Module, input_size: Shape, counted: Profile, edges: float) -> float:
        """The packed network's layers outside the cells' edge operations, timed in place."""
        from ..deploy import pack

        bench = engine()
        packed = pack(model)
        times = bench.layer_times(packed, torch.randn(1, *input_size), bench.layer_names(packed))
        edge = re.compile(r"^cells\.\d+\.ops\.")
        return float(sum(t for name, t in times.items() if not edge.match(name)))

    def forget(self) -> None:
        """Drop this CPU's table at the current thread count (``--regenerate``)."""
        table = self.table()
        table.entries.clear()
        table.path.unlink(missing_ok=True)


COST_KINDS.add("latency", LatencyKind())


def build_table(space: str, size: RetrainSize, *, steps: int = 4, binarizer: str = "plain",
                regenerate: bool = False) -> LatencyTable:
    """Measure (or with ``regenerate`` re-measure) every entry a search of ``space`` needs for a
    network of ``size`` on this CPU at torch's current thread count; returns the table (saved)."""
    from ..binarize import get as get_binarizer
    from ..ops import SPACES
    from .cost import CostModel

    kind = COST_KINDS.get("latency")
    if regenerate:
        kind.forget()
    CostModel.build(kind, SPACES.get(space), steps, space, size, get_binarizer(binarizer))
    return kind.table()


#: ``bnas bench --table`` settings: name -> (type, default); ``None`` defaults come from the
#: dataset (the builder's cell-network size for its family, its image size) or from torch.
TABLE_SETTINGS: dict[str, tuple[type, Any]] = {
    "space": (str, "bnas"), "dataset": (str, "cifar10"), "layers": (int, None),
    "init_channels": (int, None), "image_size": (int, None), "steps": (int, 4),
    "binarizer": (str, "plain"), "threads": (int, None)}


def table_settings(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` words of ``bnas bench --table`` (see :data:`TABLE_SETTINGS`), checked."""
    found = {k: default for k, (_, default) in TABLE_SETTINGS.items()}
    for text in pairs:
        key, sep, value = text.partition("=")
        if not sep or key not in TABLE_SETTINGS:
            raise BnasError(f"--table expects KEY=VALUE with KEY one of "
                            f"{', '.join(TABLE_SETTINGS)}, got {text!r}")
        kind = TABLE_SETTINGS[key][0]
        try:
            found[key] = kind(value)
        except ValueError:
            raise BnasError(f"--table {key}: expected {kind.__name__}, got {value!r}") from None
        if kind is int and found[key] < 1:
            raise BnasError(f"--table {key} must be at least 1, got {value}")
    return found


def table_for(pairs: list[str], regenerate: bool = False) -> tuple[LatencyTable, dict[str, Any]]:
    """Build the table ``bnas bench --table KEY=VALUE ...`` asks for; it and the settings."""
    from ..deploy.bench import threads
    from ..ops import SPACES

    settings = table_settings(pairs)
    settings["space"] = SPACES.canonical(settings["space"])
    size = RetrainSize.of(settings["dataset"], settings["layers"], settings["init_channels"],
                          settings["image_size"])
    settings.update(size.to_dict())
    engine()
    with threads(settings["threads"] or torch.get_num_threads()):
        settings["threads"] = torch.get_num_threads()
        table = build_table(settings["space"], size, steps=settings["steps"],
                            binarizer=settings["binarizer"], regenerate=regenerate)
    return table, settings
