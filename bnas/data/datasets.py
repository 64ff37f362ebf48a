"""Datasets for search and training, by name: ``build_dataset(name, split, root=...)``.

``split`` is ``"train"`` or ``"val"``. Every dataset yields ``(image, label)`` with images as
float tensors of shape (3, H, W), normalised. Missing files give a :class:`BnasError` that
says where to put them.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import BnasError
from .recipes import DATA_RECIPES
from .registry import DATASETS
from .transforms import cifar_transform, imagenet_transform, small_folder_transform

SPLITS = ("train", "val")


@dataclass(frozen=True)
class DatasetOptions:
    """Options shared by the dataset builders."""

    root: str | None = None
    augment: bool = True
    image_size: int | None = None
    synthetic_size: int = 512
    download: bool = True
    #: the image pipeline (:data:`bnas.data.recipes.DATA_RECIPES`)
    recipe: str = "bnas"


def build_dataset(name: str, split: str, **options) -> Dataset:
    """The ``split`` of dataset ``name``; options as in :class:`DatasetOptions`."""
    if split not in SPLITS:
        raise BnasError(f"unknown split '{split}' (expected train or val)")
    return DATASETS.get(name).builder(split, DatasetOptions(**options))


def _need_root(name: str, opts: DatasetOptions) -> Path:
    if not opts.root:
        raise BnasError(f"dataset '{name}' needs --data DIR")
    return Path(opts.root).expanduser()


# -- CIFAR --------------------------------------------------------------------------------------
class CifarBatches(Dataset):
    """CIFAR-10/100 from the python-pickle batches (``cifar-10-batches-py``/``cifar-100-python``)."""

    def __init__(self, folder: Path, files: list[str], label_key: bytes, transform) -> None:
        images, labels = [], []
        for name in files:
            with open(folder / name, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(v) for v in batch[label_key])
        self.images = torch.from_numpy(np.concatenate(images))
        self.targets = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.targets[index]


@dataclass(frozen=True)
class CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    label_key: bytes
    torchvision_class: str


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                           ("test_batch",), b"labels", "CIFAR10"),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), b"fine_labels", "CIFAR100"),
}


def cifar(split: str, opts: DatasetOptions, *, name: str) -> Dataset:
    """CIFAR-10 or CIFAR-100 (``name``) from its python batches under ``--data``, downloaded
    there by torchvision when missing (and ``opts.download``)."""
    layout = CIFAR_LAYOUTS[name]
    root = Path(opts.root or "./data").expanduser()
    folder = root / layout.folder
    files = layout.train_files if split == "train" else layout.val_files
    if not all((folder / f).is_file() for f in files) and opts.download:
        _download_cifar(name, layout, root)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise BnasError(f"{name} not found: expected {folder}/{missing[0]} (download the python "
                        f"version of {name} and unpack it under {root})")
    stats = DATA_RECIPES.get(opts.recipe).cifar_stats[name]
    transform = cifar_transform(train=split == "train" and opts.augment, stats=stats)
    return CifarBatches(folder, list(files), layout.label_key, transform)


def _download_cifar(name: str, layout: CifarLayout, root: Path) -> None:
    import torchvision

    try:
        getattr(torchvision.datasets, layout.torchvision_class)(str(root), download=True)
    except Exception:  # no network: the caller reports where the files belong
        pass



# -- image folders ------------------------------------------------------------------------------
def _image_folder(split: str, root: Path, transform) -> Dataset:
    from torchvision.datasets import ImageFolder

    folder = root / split
    if not folder.is_dir():
        raise BnasError(f"image folder not found: {folder} (expected {root}/train/<class>/*.jpg "
                        f"and {root}/val/<class>/*.jpg)")
    try:
        return ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise BnasError(f"{folder}: {exc}") from None


def imagenet(split: str, opts: DatasetOptions) -> Dataset:
    root = _need_root("imagenet", opts)
    size = opts.image_size or 224
    return _image_folder(split, root, imagenet_transform(size, train=split == "train" and opts.augment,
                                                         recipe=DATA_RECIPES.get(opts.recipe)))


def imagefolder(split: str, opts: DatasetOptions) -> Dataset:
    root = _need_root("imagefolder", opts)
    size = opts.image_size or 32
    return _image_folder(split, root, small_folder_transform(size, train=split == "train" and opts.augment))


def tiny_imagenet(split: str, opts: DatasetOptions) -> Dataset:
    """Tiny-ImageNet, arranged by ``tools/prepare_tiny_imagenet.py`` (:mod:`.tiny_imagenet`):
    64x64 images, random crop (padding 8) + flip when training, ImageNet normalisation."""
    from .tiny_imagenet import IMAGE_SIZE, build

    root = _need_root("tiny-imagenet", opts)
    size = opts.image_size or IMAGE_SIZE
    return build(split, root, small_folder_transform(size, train=split == "train" and opts.augment))


# -- offline data ---------------------------------------------------------------------------------
def idx(split: str, opts: DatasetOptions, *, name: str) -> Dataset:
    """MNIST-format idx files (``name``: ``mnist``, ``fashion-mnist``; :mod:`.idx`)."""
    from .idx import build as build_idx

    return build_idx(name, split, opts.root, opts.augment, opts.image_size)


def digits(split: str, opts: DatasetOptions) -> Dataset:
    """scikit-learn's 1,797 handwritten 8x8 digits (real data, bundled, offline), upscaled to
    32x32 RGB and normalised; every fifth sample is validation (360), the rest training (1,437)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise BnasError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    size = opts.image_size or 32
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                             align_corners=False)
    images = ((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(digits.target, dtype=torch.long)
    is_val = torch.arange(len(labels)) % 5 == 0
    keep = is_val if split == "val" else ~is_val
    return TensorDataset(images[keep], labels[keep])


def synthetic(split: str, opts: DatasetOptions) -> Dataset:
    """Seeded random images and labels: for smoke tests and benchmarks (nothing to learn)."""
    size = opts.image_size or 32
    n = opts.synthetic_size if split == "train" else max(opts.synthetic_size // 4, 1)
    gen = torch.Generator().manual_seed(0 if split == "train" else 1)
    images = torch.randn(n, 3, size, size, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return TensorDataset(images, labels)


def num_classes_of(dataset: Dataset) -> int | None:
    """The number of classes a dataset declares (image folders), or None."""
    classes = getattr(dataset, "classes", None)
    return len(classes) if classes is not None else None
