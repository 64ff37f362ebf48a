"""Tiny-ImageNet (Stanford CS231n: 200 ImageNet classes, 64x64, 500 training and 50 validation
images per class), in the layout its archive unpacks to:

    DIR/wnids.txt
    DIR/train/<wnid>/images/<wnid>_<k>.JPEG
    DIR/val/images/val_<k>.JPEG + DIR/val/val_annotations.txt (file, wnid, box per line)

The validation images are not sorted by class in the archive; ``tools/prepare_tiny_imagenet.py
DIR`` moves each into ``DIR/val/<wnid>/images/`` as its annotation says, so that both splits
read as torchvision image folders (class index = rank of the wnid) with the same classes. The
layout is checked before anything is read: a missing folder, an unarranged validation set, a
class without images or a class set that differs between the splits is one line naming it.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from ..errors import BnasError

NUM_CLASSES = 200
IMAGE_SIZE = 64
PREPARE = "python tools/prepare_tiny_imagenet.py"
EXTENSIONS = (".jpeg", ".jpg", ".png")


def _classes(folder: Path, split: str) -> list[str]:
    """The class folders of one split, each checked to hold ``images/`` with images."""
    if not folder.is_dir():
        raise BnasError(f"Tiny-ImageNet: {folder} not found (expected the official layout: "
                        f"train/<wnid>/images/*.JPEG, val/images/ + val/val_annotations.txt)")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise BnasError(f"Tiny-ImageNet: no class folders in {folder} (expected "
                        f"{folder}/<wnid>/images/*.JPEG)")
    for wnid in classes:
        images = folder / wnid / "images"
        if not images.is_dir() or not any(p.suffix.lower() in EXTENSIONS for p in images.iterdir()):
            raise BnasError(f"Tiny-ImageNet {split}: {images} holds no images (expected "
                            f"{folder}/<wnid>/images/*.JPEG)")
    return classes


def check_layout(root: Path) -> list[str]:
    """The wnids of a prepared Tiny-ImageNet folder; :class:`BnasError` for any other layout."""
    val = root / "val"
    if (val / "images").is_dir():
        raise BnasError(f"Tiny-ImageNet: the validation images in {val}/images are not sorted "
                        f"by class yet; run {PREPARE} {root}")
    train_classes = _classes(root / "train", "train")
    val_classes = _classes(val, "val")
    if train_classes != val_classes:
        only = sorted(set(train_classes) ^ set(val_classes))
        raise BnasError(f"Tiny-ImageNet: train/ and val/ hold different classes "
                        f"({len(train_classes)} vs {len(val_classes)}; e.g. {only[0]})")
    return train_classes


def build(split: str, root: Path, transform) -> Dataset:
    """The ``split`` (``train`` or ``val``) of the Tiny-ImageNet folder ``root``."""
    from torchvision.datasets import ImageFolder

    check_layout(root)
    return ImageFolder(str(root / split), transform=transform)
