"""The packed-model file (``.bnx``): what :func:`save` writes and :func:`load` reads.

Layout: the magic ``BNASPACK``, the format version (little-endian uint32), the header's length
(uint64), the header (UTF-8 JSON), then the tensors' bytes, each starting on a 64-byte boundary.
The header holds the model's identity (its genotype in full, dataset, classes, size and binarizer
configuration: enough to rebuild the network's structure without any other file; and, when the
model came from trained weights, the image pipeline it was trained with) and, per
tensor of the packed model's state, its name, dtype, shape, offset, length and CRC-32. Binary
weights are stored one bit per weight with their per-output-channel scales (and, only where
some are exactly 0, their flat indices); real-valued layers as they are. Files are written
atomically.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import BnasError
from ..runio import atomic_write
from .convert import convert

MAGIC = b"BNASPACK"
FORMAT = 1
ALIGN = 64
_PREFIX = struct.Struct("<8sIQ")
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "uint8": torch.uint8,
           "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


def identity(model: nn.Module) -> dict[str, Any]:
    """What rebuilds ``model``'s structure: genotype, dataset, classes, size, binarizer; and the
    image pipeline (``data``: recipe and image size) of a model from trained weights
    (:func:`bnas.deploy.source.trained_model`), which ``bnas eval --packed`` evaluates with."""
    for attr in ("genotype", "dataset", "binarizer"):
        if not hasattr(model, attr):
            raise BnasError("only models built by bnas.build_model can be packed (this one has no "
                            f"'{attr}')")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    cells = model.genotype.kind != "fixed"
    return {"genotype": model.genotype.to_json(), "dataset": model.dataset,
            "num_classes": linears[-1].out_features if linears else None,
            "layers": model.layers if cells else None,
            "init_channels": model.init_channels if cells else None,
            "binarizer": model.binarizer.config(),
            "layer_overrides": dict(getattr(model, "layer_overrides", {})),
            "data": dict(getattr(model, "data_settings", {}))}


def pack(model: nn.Module) -> nn.Module:
    """An inference-only copy of a float model (built by :func:`bnas.build_model`) whose binary
    operations run on the packed kernels, with its identity for :func:`save`."""
    ident = identity(model)
    packed = convert(model)
    packed.deploy_identity = ident
    return packed


def float_model(ident: dict[str, Any]) -> nn.Module:
    """The float model (freshly initialised) of a model identity, with the image pipeline it
    was trained with (``data_settings``)."""
    from ..genotype import from_json
    from ..model import build_model

    binarizer = dict(ident["binarizer"])
    model = build_model(from_json(ident["genotype"], "the file's genotype"),
                        dataset=ident["dataset"], num_classes=ident["num_classes"],
                        layers=ident["layers"], init_channels=ident["init_channels"],
                        layer_overrides=ident.get("layer_overrides") or None,
                        binarizer=binarizer.pop("name"), **binarizer)
    model.data_settings = dict(ident.get("data") or {})
    return model


def rebuild(ident: dict[str, Any]) -> nn.Module:
    """The packed structure (placeholder weights) of a model identity."""
    packed = convert(float_model(ident), empty=True)
    packed.deploy_identity = ident
    return packed


def save(packed: nn.Module, path: str | Path) -> Path:
    """Write a model from :func:`pack` to ``path`` (atomically); returns the path."""
    ident = getattr(packed, "deploy_identity", None)
    if ident is None:
        raise BnasError("save() takes a model from bnas.deploy.pack() or load()")
    entries, blobs, offset = [], [], 0
    for name, tensor in packed.state_dict().items():
        data = tensor.detach().contiguous().cpu().numpy().tobytes()
        offset = -(-offset // ALIGN) * ALIGN
        entries.append({"name": name, "dtype": str(tensor.dtype).removeprefix("torch."),
                        "shape": list(tensor.shape), "offset": offset, "nbytes": len(data),
                        "crc32": zlib.crc32(data)})
        blobs.append((offset, data))
        offset += len(data)
    header = json.dumps({"bnas": __version__, "model": ident, "tensors": entries}).encode()

    def write(f) -> None:
        f.write(_PREFIX.pack(MAGIC, FORMAT, len(header)))
        f.write(header)
        start = f.tell()
        for at, data in blobs:
            f.write(b"\0" * (start + at - f.tell()))
            f.write(data)

    path = Path(path)
    atomic_write(path, write)
    return path


def _read(path: Path) -> tuple[dict[str, Any], memoryview]:
    if not path.is_file():
        raise BnasError(f"packed model not found: {path}")
    raw = path.read_bytes()
    if len(raw) < _PREFIX.size or raw[:len(MAGIC)] != MAGIC:
        raise BnasError(f"{path} is not a bnas packed model (no BNASPACK signature)")
    _, version, length = _PREFIX.unpack_from(raw)
    if version != FORMAT:
        raise BnasError(f"{path} is a packed model of format {version}; this bnas reads format "
                        f"{FORMAT}")
    end = _PREFIX.size + length
    if end > len(raw):
        raise BnasError(f"{path} is truncated (its header ends past the end of the file)")
    try:
        header = json.loads(raw[_PREFIX.size:end].decode())
        header["model"], header["tensors"]  # noqa: B018 - both must exist
    except (ValueError, KeyError, TypeError):
        raise BnasError(f"{path} has a corrupt header") from None
    return header, memoryview(raw)[end:]


def _tensor(path: Path, entry: dict[str, Any], blob: memoryview) -> torch.Tensor:
    try:
        start, size = int(entry["offset"]), int(entry["nbytes"])
        dtype, shape = _DTYPES[entry["dtype"]], [int(s) for s in entry["shape"]]
    except (KeyError, TypeError, ValueError):
        raise BnasError(f"{path} has a corrupt header (tensor {entry.get('name')!r})") from None
    if start < 0 or start + size > len(blob):
        raise BnasError(f"{path} is truncated (tensor {entry['name']} ends past the end of the "
                        f"file)")
    data = bytes(blob[start:start + size])
    if zlib.crc32(data) != entry.get("crc32"):
        raise BnasError(f"{path} is corrupt (tensor {entry['name']} fails its checksum)")
    array = np.frombuffer(data, dtype=str(dtype).removeprefix("torch."))
    if array.size != int(np.prod(shape)):
        raise BnasError(f"{path} is corrupt (tensor {entry['name']} has the wrong length)")
    return torch.from_numpy(array.copy()).view(shape)


def model_identity(path: str | Path) -> dict[str, Any]:
    """The model identity in the header of the packed model at ``path`` (see :func:`identity`),
    without reading its tensors; a file that is not a packed model raises :class:`BnasError`."""
    path = Path(path).expanduser()
    ident = _read(path)[0]["model"]
    if not isinstance(ident, dict):
        raise BnasError(f"{path} has a corrupt model identity")
    return ident


def _attach_optional(packed: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give the modules the optional buffers (their ``optional_buffers``, None unless set, such
    as a convolution's binary weights exactly 0) that the file holds, shaped as there."""
    modules = dict(packed.named_modules())
    for name, tensor in state.items():
        owner, _, leaf = str(name).rpartition(".")
        module = modules.get(owner)
        if leaf in getattr(module, "optional_buffers", ()) and getattr(module, leaf) is None:
            module.register_buffer(leaf, torch.empty_like(tensor))


def load(path: str | Path) -> nn.Module:
    """The inference-only packed model saved at ``path`` (``.bnx``). A file that is not a
    packed model, a truncated or corrupt one, another format version, or tensors that do not
    fit the architecture its header names raise :class:`BnasError`."""
    path = Path(path).expanduser()
    header, blob = _read(path)
    try:
        packed = rebuild(header["model"])
    except (KeyError, TypeError, AttributeError):
        raise BnasError(f"{path} has a corrupt model identity") from None
    state = {e.get("name"): _tensor(path, e, blob) for e in header["tensors"]}
    _attach_optional(packed, state)
    mine = packed.state_dict()
    missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    shapes = [k for k in mine if k in state and tuple(mine[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        what = (f"{len(missing)} missing and {len(extra)} unexpected tensors (e.g. "
                f"{(missing or extra)[0]})" if missing or extra else
                f"tensor {shapes[0]} of shape {tuple(state[shapes[0]].shape)}, not "
                f"{tuple(mine[shapes[0]].shape)}")
        raise BnasError(f"{path} holds tensors of another architecture than its header's: {what}")
    packed.load_state_dict(state, strict=True)
    return packed
