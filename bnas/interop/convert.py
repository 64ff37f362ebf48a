"""Matching a seed project's state dict to a bnas network, tensor by tensor.

Every tensor of the bnas network is looked up under the project's module name
(:mod:`bnas.interop.names`) and tensor name (:mod:`bnas.interop.sources`) and must have the
network's shape (or, for the tensors a project stores in another shape, as many entries). A
tensor the project never saves keeps bnas's value and is reported as missing; a project tensor
of a module its network never uses is reported as dropped; any other tensor left over, or any
other tensor not found, means the checkpoint belongs to another network and is refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import BnasError
from .names import reference_modules
from .sources import ALWAYS_OPTIONAL, SOURCES, Source


@dataclass
class Conversion:
    """A bnas state dict built from a project's, and what did not carry over."""

    state: dict[str, torch.Tensor]
    #: project tensors left out because the project's network never uses them
    dropped: list[str] = field(default_factory=list)
    #: bnas tensors the project never saves (bnas's values kept)
    missing: list[str] = field(default_factory=list)
    #: bnas tensor name -> the project's, for every tensor found
    found: dict[str, str] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {"tensors": len(self.state) - len(self.missing), "dropped": self.dropped,
                "missing": self.missing}


def _leaf(key: str) -> str:
    return key.rpartition(".")[2]


def check_source(state: dict[str, torch.Tensor], source: Source, where: str) -> None:
    """Refuse a checkpoint whose binary convolutions carry another project's tensors."""
    leaves = {_leaf(k) for k in state}
    for other_name in SOURCES.names():
        other = SOURCES.get(other_name)
        if other is source or not other.signature or not other.signature <= leaves:
            continue
        if source.signature and source.signature <= leaves:
            continue
        example = next(k for k in state if _leaf(k) in other.signature)
        raise BnasError(f"{where} looks like a {other.name} checkpoint, not {source.name} "
                        f"(it holds {example}); use --from {other.name}")


def convert(state: dict[str, torch.Tensor], model: nn.Module, source: Source,
            where: str, arch: str) -> Conversion:
    """Map ``state`` (the project's names, ``module.`` already removed) onto ``model``."""
    check_source(state, source, where)
    names = reference_modules(model)
    result = Conversion(state={})
    used: set[str] = set()
    for key, mine in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        refs = names.get(module, ())
        candidates = [f"{ref}.{source.reference_leaf(leaf)}" for ref in refs]
        found = next((c for c in candidates if c in state), None)
        if found is None:
            if leaf in source.unsaved or leaf in ALWAYS_OPTIONAL:
                result.state[key] = mine
                result.missing.append(key)
                continue
            wanted = " or ".join(candidates) or key
            raise BnasError(f"{where} has no tensor {wanted} that '{arch}' needs (for {key}): "
                            f"a checkpoint of another network?")
        tensor = state[found]
        used.add(found)
        result.found[key] = found
        if tuple(tensor.shape) != tuple(mine.shape):
            if not (leaf in source.reshaped and tensor.numel() == mine.numel()):
                raise BnasError(f"{where}: {found} has shape {tuple(tensor.shape)}, '{arch}' needs "
                                f"{tuple(mine.shape)} ({key})")
            tensor = tensor.reshape(mine.shape)
        result.state[key] = tensor
    leftover = [k for k in state if k not in used]
    result.dropped = [k for k in leftover if k.split(".")[0] in source.unused]
    unexpected = [k for k in leftover if k not in result.dropped]
    if unexpected:
        raise BnasError(f"{where} holds {len(unexpected)} tensors that '{arch}' has no place "
                        f"for (e.g. {unexpected[0]}): a checkpoint of another network?")
    return result
