"""``bnas.build_model``: the one entry point that builds every architecture."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..binarize import Binarizer, get as get_binarizer
from ..data.registry import dataset_info
from ..errors import BnasError
from ..genotype import Genotype, load
from .configs import CONFIGS, DEFAULT_SIZE
from .fixed import build_fixed
from .network import CellNetwork
from .overrides import apply_overrides


def _positive(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value <= 0):
        raise BnasError(f"{name} must be a positive integer, got {value!r}")


def build_model(arch: str | Genotype | None = None, *, dataset: str | None = None,
                num_classes: int | None = None, layers: int | None = None,
                init_channels: int | None = None, config: str | None = None,
                binarizer: str | Binarizer = "plain",
                layer_overrides: Mapping[str, str] | None = None,
                **binarizer_hparams: Any) -> nn.Module:
    """Build a network from a genotype (name, path or :class:`Genotype`) or a configuration.

    ``dataset`` (default: the configuration's, else ``cifar10``) picks the dataset family (the
    stem, or a fixed genotype's network) and the number of classes; ``layers`` and
    ``init_channels`` size cell-stacked networks (fixed genotypes ignore them and reject other
    values); ``config`` is a named configuration such as ``"bnas-a"`` or ``"bnas-f"`` whose
    architecture, dataset and size are the defaults.
    ``binarizer`` is a registry name or instance; extra keywords are its hyper-parameters.
    ``layer_overrides`` maps binary convolutions by name to another kind of layer
    (:mod:`bnas.model.overrides`; weights imported from BNAS's reference code need them).

    The returned module carries ``genotype``, ``binarizer``, ``dataset`` and
    ``layer_overrides`` attributes.
    """
    cfg = CONFIGS.get(config) if config is not None else None
    if arch is None:
        if cfg is None:
            raise BnasError("give an architecture or a configuration")
        arch = cfg.arch
    dataset = dataset or (cfg.dataset if cfg else "cifar10")
    info = dataset_info(dataset)
    _positive("--layers", layers)
    _positive("--init-channels", init_channels)
    _positive("--num-classes", num_classes)
    num_classes = num_classes or info.num_classes
    if num_classes <= 0:
        raise BnasError(f"dataset '{dataset}' needs an explicit number of classes")
    genotype = load(arch)
    scheme = get_binarizer(binarizer, **binarizer_hparams)
    if genotype.kind == "fixed":
        if layers is not None or init_channels is not None:
            raise BnasError(f"'{genotype.name}' is a fixed network: --layers and "
                            f"--init-channels apply to cell genotypes only")
        spec = genotype.network.get(info.family)
        if spec is None:
            raise BnasError(f"'{genotype.name}' has no {info.family}-style network "
                            f"(it has: {', '.join(genotype.network)})")
        model = build_fixed(spec, num_classes, scheme)
    else:
        default_layers, default_c = DEFAULT_SIZE[info.family]
        if cfg is not None:
            default_layers, default_c = cfg.layers, cfg.init_channels
        model = CellNetwork(genotype, init_channels or default_c, layers or default_layers,
                            num_classes, scheme, family=info.family)
    apply_overrides(model, layer_overrides or {})
    model.genotype = genotype
    model.binarizer = scheme
    model.dataset = dataset
    return model
