"""A small name -> object registry shared by operations, binarizers, datasets and models, and
the lazy references that let a registry name code needing torch while it loads without it."""
from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import unknown

T = TypeVar("T")


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


class Registry(Generic[T]):
    """Maps names (and aliases) to objects; a duplicate name is an error, as in torchvision."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` stores the decorated object under ``name``."""

        def deco(obj: T) -> T:
            self.add(name, obj, aliases)
            return obj

        return deco

    def add(self, name: str, obj: T, aliases: tuple[str, ...] = ()) -> None:
        for key in (name, *aliases):
            if key in self._items or key in self._aliases:
                raise ValueError(f"{self.kind} '{key}' is already registered")
        self._items[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases; BnasError when unknown."""
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise unknown(self.kind, name, self._items)

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        return sorted(self._items, key=_natural_key)

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._items[n]) for n in self.names()]


class Lazy:
    """A function named by its import path, ``"package.module:name"``, imported on its first
    call; ``bound`` keywords are added to every call. Registry entries that genotype files and
    commands read (operations, network families, datasets) name their builders this way, so
    that the registries load, and genotypes validate, without torch."""

    def __init__(self, path: str, **bound: Any) -> None:
        self.path = path
        self.bound = bound
        self._target: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        """The function itself (imported now if not yet)."""
        if self._target is None:
            module, _, name = self.path.partition(":")
            self._target = getattr(importlib.import_module(module), name)
        return self._target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **self.bound, **kwargs)

    def __repr__(self) -> str:
        bound = "".join(f", {k}={v!r}" for k, v in self.bound.items())
        return f"Lazy({self.path!r}{bound})"


def lazy_attributes(package: str, sources: dict[str, str]) -> Callable[[str], Any]:
    """A package's module ``__getattr__`` (PEP 562): attribute ``name`` is taken from the module
    ``sources[name]`` (relative to ``package``) on first access, so that importing the package
    imports only what it names eagerly."""
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(sources[name], package), name)
        setattr(module, name, value)
        return value

    return __getattr__
