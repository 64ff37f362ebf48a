"""The search space of ``bnas tune``: which hyper-parameters are tuned, over which ranges.

A space is a small mapping, readable as YAML (``bnas tune --print-space`` writes one)::

    lr:           {type: float, low: 0.001, high: 0.5, log: true}
    weight_decay: {type: float, low: 1.0e-6, high: 1.0e-3, log: true}
    tau_min:      {type: float, low: 0.6, high: 0.9}
    optimizer:    {type: categorical, choices: [sgd, adam]}

``type`` is ``float``, ``int`` or ``categorical``; numeric entries take ``low``, ``high`` and
optionally ``log`` (sample on a log scale) or ``step``; categorical ones take ``choices``.
``type`` may be left out: ``choices`` mean categorical, otherwise the tuned value's own type
decides between int and float (for an option without a default, the bounds' type). On the
command line ``--param name=low:high[:log]`` or ``--param name=a,b,c`` adds or replaces one
entry.

Names are checked against the *targets* of the tuning mode (see :mod:`bnas.tune.modes`): the
fields of the configuration it trains with and the binarizer's hyper-parameters.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import BnasError, unknown
from ..registry import Registry


@dataclass(frozen=True)
class Target:
    """Where a tuned value goes: ``section`` names the part of the configuration (``"config"``
    for a configuration field, ``"binarizer_hparams"`` for a binarizer hyper-parameter),
    ``default`` is its untuned value and ``number`` (``"int"``, ``"float"`` or None: the
    default's type) the kind of range an untyped entry gets."""

    section: str
    default: Any
    number: str | None = None


@dataclass(frozen=True)
class Param:
    """One tuned hyper-parameter (a range or a list of choices)."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """The value an optuna trial samples for this parameter."""
        return KINDS.get(self.type).suggest(self, trial)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form of this entry (the inverse of :func:`parse_param`)."""
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out

    def describe(self) -> str:
        if self.type == "categorical":
            return f"{self.type} {{{', '.join(map(str, self.choices))}}}"
        scale = " log" if self.log else (f" step {self.step}" if self.step is not None else "")
        return f"{self.type} [{self.low:g}, {self.high:g}]{scale}"


@dataclass(frozen=True)
class Kind:
    """A parameter type: the keys its entries take, how they are checked and sampled."""

    keys: frozenset[str]
    check: Callable[[Param], None]
    suggest: Callable[[Param, Any], Any]


KINDS: Registry[Kind] = Registry("parameter type")


def _check_range(p: Param, number: type) -> None:
    for key in ("low", "high"):
        value = getattr(p, key)
        if value is None:
            raise BnasError(f"parameter '{p.name}': {p.type} range needs '{key}'")
        if isinstance(value, bool) or not isinstance(value, number):
            what = "an integer" if number is int else "a number"
            raise BnasError(f"parameter '{p.name}': {key} must be {what}, got {value!r}")
    if not p.low < p.high:
        raise BnasError(f"parameter '{p.name}': empty range {p.low}:{p.high} (low must be below high)")
    if p.log and p.low <= 0:
        raise BnasError(f"parameter '{p.name}': a log range needs low > 0, got {p.low}")
    if p.log and p.step is not None:
        raise BnasError(f"parameter '{p.name}': give either log or step, not both")
    if p.step is not None and not (isinstance(p.step, number) and 0 < p.step <= p.high - p.low):
        raise BnasError(f"parameter '{p.name}': step must be positive and fit in the range, got {p.step!r}")


def _check_choices(p: Param) -> None:
    if not p.choices:
        raise BnasError(f"parameter '{p.name}': categorical entry needs at least one choice")
    if len(set(map(repr, p.choices))) != len(p.choices):
        raise BnasError(f"parameter '{p.name}': repeated choices in {list(p.choices)}")
    bad = [c for c in p.choices if not isinstance(c, (type(None), bool, int, float, str))]
    if bad:
        raise BnasError(f"parameter '{p.name}': choices must be numbers, strings, booleans or null, "
                        f"got {bad[0]!r}")


_NUMERIC_KEYS = frozenset({"type", "low", "high", "log", "step"})
KINDS.add("float", Kind(_NUMERIC_KEYS, lambda p: _check_range(p, (int, float)),
                        lambda p, t: t.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)))
KINDS.add("int", Kind(_NUMERIC_KEYS, lambda p: _check_range(p, int),
                      lambda p, t: t.suggest_int(p.name, p.low, p.high, log=p.log, step=p.step or 1)))
KINDS.add("categorical", Kind(frozenset({"type", "choices"}), _check_choices,
                              lambda p, t: t.suggest_categorical(p.name, list(p.choices))))


def _number(text: Any) -> Any:
    """``text`` as an int or float when it spells one (PyYAML reads ``1e-3`` as a string)."""
    if not isinstance(text, str):
        return text
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _is_integral(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numeric_kind(target: Target, low: Any, high: Any) -> str:
    """``int`` or ``float``: the target's declared or default type, else the bounds' type."""
    if target.number is not None:
        return target.number
    if isinstance(target.default, float):
        return "float"
    if _is_integral(target.default) or (target.default is None and _is_integral(low) and _is_integral(high)):
        return "int"
    return "float"


def parse_param(name: str, spec: Mapping[str, Any], targets: Mapping[str, Target]) -> Param:
    """Check one entry of a space against the tunable ``targets`` and build its :class:`Param`."""
    if name not in targets:
        raise unknown("hyper-parameter", name, targets)
    if not isinstance(spec, Mapping):
        raise BnasError(f"parameter '{name}': expected a mapping with type/low/high or choices, got {spec!r}")
    spec = dict(spec)
    low, high, step = (_number(spec.get(k)) for k in ("low", "high", "step"))
    kind_name = spec.get("type")
    if kind_name is None:
        kind_name = "categorical" if "choices" in spec else _numeric_kind(targets[name], low, high)
    kind = KINDS.get(kind_name)
    extra = sorted(set(spec) - kind.keys)
    if extra:
        raise BnasError(f"parameter '{name}': unknown key {', '.join(extra)} for a {kind_name} entry "
                        f"(it takes: {', '.join(sorted(kind.keys))})")
    choices = spec.get("choices", ())
    if not isinstance(choices, (list, tuple)):
        raise BnasError(f"parameter '{name}': choices must be a list, got {choices!r}")
    if kind_name == "float":
        low, high = (float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in (low, high))
    param = Param(name, kind_name, low, high, bool(spec.get("log", False)), step, tuple(choices))
    kind.check(param)
    return param


def parse_param_option(text: str, targets: Mapping[str, Target]) -> Param:
    """A :class:`Param` from ``name=low:high[:log]`` or ``name=a,b,c`` (the ``--param`` option)."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name or not value.strip():
        raise BnasError(f"--param '{text}': expected name=low:high[:log] or name=a,b,c")
    if ":" in value:
        parts = [v.strip() for v in value.split(":")]
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise BnasError(f"--param '{text}': expected name=low:high or name=low:high:log")
        bounds = [_number(v) for v in parts[:2]]
        return parse_param(name, {"low": bounds[0], "high": bounds[1], "log": len(parts) == 3}, targets)
    choices = [yaml.safe_load(v.strip()) for v in value.split(",") if v.strip()]
    return parse_param(name, {"type": "categorical", "choices": choices}, targets)


class SearchSpace(Mapping[str, Param]):
    """An ordered, validated set of :class:`Param` entries."""

    def __init__(self, params: Mapping[str, Param]) -> None:
        self._params = dict(params)

    @classmethod
    def parse(cls, spec: Mapping[str, Any], targets: Mapping[str, Target]) -> SearchSpace:
        if not isinstance(spec, Mapping):
            raise BnasError(f"a search space is a mapping of name -> entry, got {type(spec).__name__}")
        return cls({str(name): parse_param(str(name), entry, targets) for name, entry in spec.items()})

    def __getitem__(self, name: str) -> Param:
        return self._params[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def replace(self, params: list[Param]) -> SearchSpace:
        """This space with ``params`` added or replacing the entries of the same name."""
        return SearchSpace({**self._params, **{p.name: p for p in params}})

    def suggest(self, trial) -> dict[str, Any]:
        """Sample every parameter for one optuna trial."""
        return {name: p.suggest(trial) for name, p in self._params.items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: p.to_dict() for name, p in self._params.items()}

    def to_yaml(self) -> str:
        lines = [f"{name}: {yaml.safe_dump(entry, default_flow_style=True, sort_keys=False).strip()}"
                 for name, entry in self.to_dict().items()]
        return "\n".join(lines) + "\n"

    def table(self) -> str:
        width = max((len(n) for n in self._params), default=4)
        return "\n".join(f"  {n:<{width}}  {p.describe()}" for n, p in self._params.items())


def format_values(values: Mapping[str, Any]) -> str:
    """Sampled values as ``name=value`` pairs, floats to four significant digits."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def load_space_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML (or JSON) space file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise BnasError(f"cannot read search space {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise BnasError(f"search space {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, Mapping) or not data:
        raise BnasError(f"search space {path} must map hyper-parameter names to entries")
    return dict(data)


def build_space(default: Mapping[str, Any], targets: Mapping[str, Target], *,
                space_file: str | Path | None = None, params: list[str] = ()) -> SearchSpace:
    """The space a run tunes: ``space_file`` (or ``default``), then each ``--param`` on top."""
    base = load_space_file(space_file) if space_file else default
    space = SearchSpace.parse(base, targets)
    return space.replace([parse_param_option(text, targets) for text in params])
