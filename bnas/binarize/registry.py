"""The registry of binarization schemes and :func:`get`."""
from __future__ import annotations

from typing import Any

from ..errors import BnasError
from ..registry import Registry
from .base import Binarizer

BINARIZERS: Registry[type[Binarizer]] = Registry("binarizer")


def register(name: str, aliases: tuple[str, ...] = ()):
    """Class decorator adding a :class:`Binarizer` subclass to the registry."""
    return BINARIZERS.register(name, aliases)


def get(spec: str | dict | Binarizer | None = "plain", **hparams: Any) -> Binarizer:
    """A binarizer from a name (``get("recu", tau_min=0.8)``), a ``config()`` dict or an instance."""
    if spec is None:
        spec = "plain"
    if isinstance(spec, Binarizer):
        if hparams:
            raise BnasError("hyper-parameters cannot be given with a binarizer instance")
        return spec
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("name", None)
        if name is None:
            raise BnasError("binarizer config needs a 'name'")
        return BINARIZERS.get(name)(**{**spec, **hparams})
    if isinstance(spec, str):
        return BINARIZERS.get(spec)(**hparams)
    raise BnasError(f"cannot interpret binarizer spec {spec!r}")


def names() -> list[str]:
    """Registered binarizer names."""
    return BINARIZERS.names()
