"""``import_checkpoint``: a seed project's released checkpoint -> a bnas weights file.

The file written is a ``best.pt``-style weights file (:mod:`bnas.train.checkpoint`): the
network's state dict, its identity and the settings that rebuild it, so that ``bnas eval``,
``bnas train --init-weights`` and ``bnas export`` take it like weights bnas trained, plus an
``imported`` record (project, file, the checkpoint's own epoch / accuracy / model name, the
dropped and missing tensors, and the layer overrides its weights need, which the file's
settings carry so that the builder applies them). The settings also name the image pipeline
the project evaluated with (``data_recipe``: RBNN, ReCU and SiMaN normalise CIFAR-10 with
ImageNet's statistics), so ``bnas eval`` feeds the weights what they expect. Nothing is written
unless every tensor matched.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import build_model
from ..binarize import BINARIZERS
from ..errors import BnasError
from ..genotype import names as genotype_names
from ..model.overrides import apply_overrides
from ..run import checkpoint as run_checkpoint
from ..train import checkpoint
from .convert import convert
from .reading import read_state_dict
from .sources import SOURCES


def check_saved_name(meta: dict[str, Any], scheme: str, arch: str, path: str | Path) -> None:
    """Refuse ``arch`` when the checkpoint names its network (RBNN's ``'model'`` entry) and that
    network is another bnas genotype: ResNet-20 and its Bi-Real form hold the same tensors, so
    only the name tells them apart. The project's model-zoo name maps to its own network where
    it ships one (``Binarizer.networks``)."""
    saved = meta.get("model")
    if not isinstance(saved, str):
        return
    expected = BINARIZERS.get(scheme).paper_network(saved) or saved
    if expected != arch and expected in genotype_names():
        raise BnasError(f"{path} was saved for the project's '{saved}' (bnas: --arch {expected}), "
                        f"not '{arch}'")


def import_checkpoint(source: str, path: str | Path, out: str | Path, *, arch: str | None,
                      dataset: str | None = None, num_classes: int | None = None,
                      config: str | None = None, layers: int | None = None,
                      init_channels: int | None = None) -> dict[str, Any]:
    """Convert the checkpoint ``path`` saved by project ``source`` for network ``arch`` and
    write it to ``out``; returns the ``imported`` record."""
    src = SOURCES.get(source)
    state, meta = read_state_dict(path)
    model = build_model(arch, dataset=dataset, num_classes=num_classes, layers=layers,
                        init_channels=init_channels, config=config, binarizer=src.binarizer)
    name = model.genotype.name or str(arch)
    check_saved_name(meta, src.binarizer, name, path)
    conversion = convert(state, model, src, str(path), name)
    overrides = src.overrides(state, conversion.found) if src.overrides else {}
    apply_overrides(model, overrides)
    model.load_state_dict(conversion.state, strict=True)
    record = {"from": src.name, "project": src.project, "file": str(Path(path).expanduser()),
              "checkpoint": meta, **conversion.report(), "layer_overrides": overrides}
    settings = {"arch": arch, "config": config, "layers": layers, "init_channels": init_channels,
                "num_classes": num_classes, "binarizer": src.binarizer, "binarizer_hparams": {},
                "layer_overrides": overrides, "dataset": model.dataset,
                "data_recipe": src.data_recipe}
    run_checkpoint.save("weights", {
        "model": model.state_dict(),
        "identity": checkpoint.identity(model, layers=layers, init_channels=init_channels,
                                        config=config),
        "config": settings, "imported": record}, out)
    return record
