"""What each seed project saves for a network, beyond the names of its modules.

A :class:`Source` says which bnas scheme reproduces the project's binary convolutions and how
its per-layer tensors differ from bnas's (read off the projects' ``BinarizeConv2d``):

* RBNN (Lin et al., NeurIPS 2020): ``weight``, ``alpha`` (O, 1, 1), the rotation angle
  ``rotate`` (O, 1, 1, 1; bnas's ``theta``) and the rotation matrices ``R1``, ``R2`` as buffers;
  the gradient-curve values ``k`` and ``t`` are plain attributes, never saved. Its ImageNet
  ResNets define a ``bn3`` (BatchNorm1d over the logits) that their forward never calls.
* ReCU (Xu et al., ICCV 2021): ``weight``, ``alpha`` (O, 1, 1) and the buffer ``tau``, saved with
  shape (1,) (bnas keeps a scalar).
* SiMaN (Lin et al., TPAMI 2022): ``weight``, ``alpha`` (O, 1, 1), the clip ``percent`` and the
  mask ``B``, an untrained parameter of shape (O, 1, N) in a fresh CIFAR model and (O, N) once
  trained (bnas keeps it in the weight's shape, the same entries in the same order).

* BNAS (Kim et al., ECCV 2020): plain convolutions (XNOR-style binarization applied around each
  step by a helper). The helper leaves the last ``k`` convolutions in module order real-valued
  (``k`` = the number of ``preprocess_res`` convolutions; their inputs are still binarized), so
  those become ``real_weight`` layer overrides (:mod:`bnas.model.overrides`). The module order
  is the order of the saved state dict, which ``state_dict()`` writes in registration order.

The tensors are carried exactly as saved: the rotations, masks and quantiles of a trained model
are what it was evaluated with, and re-deriving them in float32 flips signs near zero.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..registry import Registry

#: ``overrides(state, found)``: the layer overrides a checkpoint needs, from the project's state
#: dict (in saved order) and ``found`` (bnas tensor name -> the project's).
Overrides = Callable[[dict[str, torch.Tensor], dict[str, str]], dict[str, str]]


def bnas_real_leftovers(state: dict[str, torch.Tensor], found: dict[str, str]) -> dict[str, str]:
    """``{bnas convolution: "real_weight"}`` for the convolutions BNAS's binarization helper
    left real: among all convolution weights (4-D tensors) in module order, the last ``k``,
    ``k`` the number of ``preprocess_res`` convolutions (those stay real anyway)."""
    convs = [name for name, t in state.items() if name.endswith(".weight") and t.dim() == 4]
    k = sum(".preprocess_res." in name for name in convs)
    ours = {theirs: mine for mine, theirs in found.items()}
    left = [name for name in convs[len(convs) - k:] if ".preprocess_res." not in name] if k else []
    return {ours[name].rpartition(".")[0]: "real_weight" for name in left}


@dataclass(frozen=True)
class Source:
    """One project's checkpoints: the scheme, renamed / reshaped / unsaved per-layer tensors,
    and modules its networks define but never use."""

    name: str
    project: str
    binarizer: str
    #: bnas tensor name (last component) -> the project's.
    renames: dict[str, str] = field(default_factory=dict)
    #: bnas tensor names the project saves in another shape with the same entries.
    reshaped: frozenset[str] = frozenset()
    #: bnas tensor names the project never saves (bnas keeps its own values).
    unsaved: frozenset[str] = frozenset()
    #: top-level modules of the project's networks that their forward never calls (dropped).
    unused: frozenset[str] = frozenset()
    #: tensor names only this project's binary convolutions have (to recognise its files).
    signature: frozenset[str] = frozenset()
    #: the layer overrides its checkpoints need, if any.
    overrides: Overrides | None = None
    #: the image pipeline its networks were trained and evaluated with (bnas.data.recipes)
    data_recipe: str = "seeds"

    def reference_leaf(self, leaf: str) -> str:
        return self.renames.get(leaf, leaf)


SOURCES: Registry[Source] = Registry("checkpoint source")
#: Saved by PyTorch's BatchNorm since 0.4.1 only, and never used in evaluation.
ALWAYS_OPTIONAL = frozenset({"num_batches_tracked"})

for _source in (
    Source("rbnn", "RBNN (lmbxmu/RBNN)", "rbnn", renames={"theta": "rotate"},
           unsaved=frozenset({"t", "k"}), unused=frozenset({"bn3"}),
           signature=frozenset({"rotate", "R1", "R2"})),
    Source("recu", "ReCU (z-hXu/ReCU)", "recu", reshaped=frozenset({"tau"}),
           signature=frozenset({"tau"})),
    Source("siman", "SiMaN (lmbxmu/SiMaN)", "siman", reshaped=frozenset({"B"}),
           signature=frozenset({"B", "percent"})),
    Source("bnas", "BNAS (gistvision/bnas)", "plain", overrides=bnas_real_leftovers,
           data_recipe="bnas"),
):
    SOURCES.add(_source.name, _source)
