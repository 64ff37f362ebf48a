"""Hand-designed 1w1a networks (RBNN / ReCU / SiMaN model zoo) as fixed-genotype families."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..binarize.base import Binarizer
from ..errors import BnasError, unknown
from ..registry import Registry

FAMILIES: Registry[Callable[..., nn.Module]] = Registry("network family")


def validate_network(spec: Any, where: str) -> None:
    """Check a fixed network description: a known ``family`` and keyword arguments it accepts."""
    if not isinstance(spec, dict) or "family" not in spec:
        raise BnasError(f"{where}: expected an object with a 'family'")
    if spec["family"] not in FAMILIES:
        raise BnasError(f"{where}: {unknown('network family', spec['family'], FAMILIES.names())}")


def build_fixed(spec: dict[str, Any], num_classes: int, binarizer: Binarizer) -> nn.Module:
    """Instantiate a fixed network description."""
    kwargs = {k: v for k, v in spec.items() if k != "family"}
    return FAMILIES.get(spec["family"])(num_classes=num_classes, binarizer=binarizer, **kwargs)
