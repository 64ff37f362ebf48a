"""The model a deploy command starts from: trained float weights (``best.pt`` or
``checkpoint.pt``, with the settings they were trained with) or a packed ``.bnx`` file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .fileio import MAGIC

#: The settings that define a model (what ``bnas export`` and ``bnas bench`` take).
MODEL_FIELDS = ("arch", "config", "layers", "init_channels", "num_classes", "binarizer",
                "binarizer_hparams", "layer_overrides", "dataset")


def is_packed_file(path: str | Path) -> bool:
    """Whether ``path`` starts with the packed-model signature."""
    try:
        with open(Path(path).expanduser(), "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def trained_model(weights: str | Path, preset: str | None,
                  overrides: dict[str, Any]) -> nn.Module:
    """The float model of a weights or checkpoint file, in eval mode: architecture, size,
    binarizer and dataset default to those it was trained with (``overrides`` may name them;
    weights of another architecture are refused). Its ``data_settings`` (the image recipe and
    size it was trained with) go into a packed file's identity."""
    from ..train import checkpoint, resolve_config
    from ..run.context import Context
    from ..train.engine import build_network, model_identity, weights_settings

    cfg = resolve_config(preset, {**overrides, **weights_settings(weights, overrides)})
    saved = checkpoint.load(weights)
    model = build_network(cfg, saved["identity"]["num_classes"], Context())
    checkpoint.load_model_state(weights, saved, model, model_identity(model, cfg))
    model.data_settings = {"data_recipe": cfg.data_recipe, "image_size": cfg.image_size}
    return model.eval()


def input_size(model: nn.Module) -> int:
    """The image size ``model`` takes: the one it was trained at (its ``data_settings``, from
    trained weights or a packed file's identity), else its dataset's."""
    from ..data.registry import dataset_info

    size = getattr(model, "data_settings", {}).get("image_size")
    return size or dataset_info(model.dataset).image_size
