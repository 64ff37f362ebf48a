"""The families of hand-designed networks a fixed genotype may name, and their keywords.

A fixed genotype describes its network per dataset family (``cifar``, ``imagenet``) as a
family name and the family's structural keywords, e.g. ``{"family": "resnet", "stem":
"conv3x3_act", "block": "basic", "depths": [3, 3, 3], ...}``. Each entry here names its builder
(:mod:`bnas.model.fixed`, :mod:`bnas.model.bopnets`), called as ``builder(num_classes=,
binarizer=, **keywords)`` and imported on first use, so that genotypes validate without torch.
A builder's keyword-only parameters are exactly the entry's keywords (a test checks it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import BnasError, unknown
from .registry import Lazy, Registry


@dataclass(frozen=True)
class Family:
    """A network family: its builder, the keywords a genotype must give (``required``) and
    those it may give (``optional``, defaults in the builder's signature)."""

    builder: Lazy
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    @property
    def keywords(self) -> tuple[str, ...]:
        return self.required + self.optional


FAMILIES: Registry[Family] = Registry("network family")
FAMILIES.add("resnet", Family(Lazy("bnas.model.fixed:resnet"),
                              ("stem", "block", "depths", "widths", "shortcut", "init"), ("act",)))
FAMILIES.add("vgg_small", Family(Lazy("bnas.model.fixed:vgg_small"), ("cfg", "init"), ("act",)))
FAMILIES.add("binarynet", Family(Lazy("bnas.model.bopnets:binarynet"), ("norm",),
                                 ("filters", "dense_units")))
FAMILIES.add("xnornet", Family(Lazy("bnas.model.bopnets:xnornet")))
FAMILIES.add("birealnet", Family(Lazy("bnas.model.bopnets:birealnet"), (),
                                 ("widths", "units_per_stage")))


def validate_network(spec: Any, where: str) -> Family:
    """Check a fixed network description (a known ``family`` and the keywords it takes);
    returns the family."""
    if not isinstance(spec, dict) or "family" not in spec:
        raise BnasError(f"{where}: expected an object with a 'family'")
    if spec["family"] not in FAMILIES:
        raise BnasError(f"{where}: {unknown('network family', spec['family'], FAMILIES.names())}")
    name = FAMILIES.canonical(spec["family"])
    family = FAMILIES.get(name)
    given = set(spec) - {"family"}
    extra = sorted(given - set(family.keywords))
    if extra:
        raise BnasError(f"{where}: network family '{name}' has no keyword "
                        f"{', '.join(repr(k) for k in extra)} (it takes: "
                        f"{', '.join(family.keywords)})")
    missing = [k for k in family.required if k not in given]
    if missing:
        raise BnasError(f"{where}: network family '{name}' needs {', '.join(missing)}")
    return family
