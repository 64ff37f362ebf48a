"""Fashion-MNIST and MNIST: 28x28 grey images in idx files, read with torchvision's readers.

Fashion-MNIST (Xiao, Rasul, Vollgraf, 2017: 60,000 training and 10,000 test images of ten
kinds of clothing) is packaged by Debian as ``dataset-fashion-mnist``, whose gzipped idx files
lie in ``/usr/share/datasets/fashion-mnist``; it is found there (or wherever
``dpkg -L dataset-fashion-mnist`` lists it) without ``--data``. MNIST (LeCun et al., 1998) has
no such package: ``--data DIR`` names a folder holding its four idx files, gzipped or not, or
the folder torchvision downloads them into (``DIR/MNIST/raw``).

Gzipped files are unpacked once into the cache (``$BNAS_CACHE_DIR/datasets``) and read with
``torchvision.datasets.mnist.read_image_file`` / ``read_label_file``. Before that, each file's
length is checked against the sizes its idx header declares, so a truncated or corrupt file
is one line naming it, not a traceback. The ``val`` split is the official test set.

Images are normalised with the training set's mean and standard deviation and repeated to
three channels, so the CIFAR-style stems of search and retraining take them unchanged; when
training, they are randomly shifted (zero padding of 2, then a 28x28 crop) and, for
Fashion-MNIST only, flipped horizontally (a digit flipped is no longer that digit).
"""
from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import BnasError
from ..ops.cxx import cache_dir
from ..runio import atomic_write

#: (images, labels) file names of each split, as published.
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
#: idx magic numbers: unsigned bytes (type 0x08) in 3 dimensions (images) or 1 (labels).
MAGIC = {"images": 0x0803, "labels": 0x0801}
SIZE = 28
PAD = 2


@dataclass(frozen=True)
class IdxSource:
    """Where one idx dataset is found and how its images are normalised."""

    name: str
    torchvision_folder: str
    mean: float
    std: float
    flip: bool
    known_dirs: tuple[str, ...]
    package: str | None
    how_to_get: str


SOURCES = {
    "fashion-mnist": IdxSource(
        "fashion-mnist", "FashionMNIST", 0.2860, 0.3530, True,
        ("/usr/share/datasets/fashion-mnist",), "dataset-fashion-mnist",
        "install Debian's package (apt-get install dataset-fashion-mnist) or give --data DIR "
        "holding its four idx files"),
    "mnist": IdxSource(
        "mnist", "MNIST", 0.1307, 0.3081, False, (), None,
        "give --data DIR holding its four idx files (gzipped or not), e.g. the folder "
        "torchvision.datasets.MNIST(DIR, download=True) fills"),
}


def _package_dirs(package: str | None) -> list[Path]:
    """The folders ``dpkg -L package`` lists (none without dpkg or the package)."""
    if package is None or shutil.which("dpkg") is None:
        return []
    try:
        listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True,
                                 timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({Path(line).parent for line in listing.splitlines() if "idx" in line})


def _in(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def locate(source: IdxSource, split: str, root: str | None) -> tuple[Path, Path]:
    """The (images, labels) files of ``split``: in ``root`` (or its torchvision folder) when
    given, else in the known folders and those the Debian package lists."""
    if root:
        base = Path(root).expanduser()
        folders = [base, base / source.torchvision_folder / "raw", base / source.name]
    else:
        folders = [Path(d) for d in source.known_dirs]
        if not any(_in(f, FILES[split][0]) for f in folders):
            folders += _package_dirs(source.package)
    for folder in folders:
        found = [_in(folder, name) for name in FILES[split]]
        if all(found):
            return found[0], found[1]
    where = f"in {folders[0]}" if root else "on this machine"
    raise BnasError(f"{source.name} {split} files ({FILES[split][0]}[.gz]) not found {where}: "
                    f"{source.how_to_get}")


def _unpacked(path: Path) -> Path:
    """``path`` itself, or its gunzipped copy in the cache (made once, atomically)."""
    if path.suffix != ".gz":
        return path
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    target = cache_dir() / "datasets" / key[:16] / path.stem
    if target.is_file():
        return target
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise BnasError(f"{path}: truncated or corrupt gzip file ({exc})") from None
    atomic_write(target, lambda f: f.write(data))
    return target


def _check_length(path: Path, kind: str, shown: Path) -> int:
    """The number of items ``path`` declares; BnasError when its length does not match."""
    with open(path, "rb") as f:
        header = f.read(16 if kind == "images" else 8)
    magic = int.from_bytes(header[:4], "big") if len(header) >= 4 else None
    if magic != MAGIC[kind] or len(header) < (16 if kind == "images" else 8):
        raise BnasError(f"{shown}: not an idx {kind} file")
    dims = [int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(len(header) // 4 - 1)]
    expected = len(header) + int(torch.tensor(dims).prod())
    actual = path.stat().st_size
    if actual != expected:
        raise BnasError(f"{shown}: truncated or corrupt idx file ({actual} bytes, its header "
                        f"declares {expected})")
    if kind == "images" and dims[1:] != [SIZE, SIZE]:
        raise BnasError(f"{shown}: images are {dims[1]}x{dims[2]}, expected {SIZE}x{SIZE}")
    return dims[0]


def read_split(source: IdxSource, split: str, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (N, 28, 28), labels int64 (N,))`` of ``split``."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    images_file, labels_file = locate(source, split, root)
    counts = []
    files = []
    for kind, path in (("images", images_file), ("labels", labels_file)):
        raw = _unpacked(path)
        counts.append(_check_length(raw, kind, path))
        files.append(raw)
    if counts[0] != counts[1]:
        raise BnasError(f"{images_file} holds {counts[0]} images but {labels_file} "
                        f"{counts[1]} labels")
    return read_image_file(str(files[0])), read_label_file(str(files[1]))


class IdxImages(Dataset):
    """Grey idx images as normalised 3-channel float tensors (see the module docstring)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, source: IdxSource,
                 augment: bool, image_size: int | None) -> None:
        self.images, self.targets = images, labels
        self.mean, self.std, self.flip = source.mean, source.std, source.flip
        self.augment = augment
        self.size = image_size or SIZE

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = (self.images[index].float() / 255.0 - self.mean) / self.std
        if self.augment:
            padded = torch.nn.functional.pad(image, (PAD, PAD, PAD, PAD))
            top, left = torch.randint(0, 2 * PAD + 1, (2,)).tolist()
            image = padded[top:top + SIZE, left:left + SIZE]
            if self.flip and torch.rand(()) < 0.5:
                image = image.flip(-1)
        if self.size != SIZE:
            image = torch.nn.functional.interpolate(image[None, None], size=(self.size, self.size),
                                                    mode="bilinear", align_corners=False)[0, 0]
        return image.expand(3, -1, -1).contiguous(), int(self.targets[index])


def build(name: str, split: str, root: str | None, augment: bool,
          image_size: int | None) -> IdxImages:
    """The ``split`` of ``name`` (``fashion-mnist`` or ``mnist``)."""
    source = SOURCES[name]
    images, labels = read_split(source, split, root)
    return IdxImages(images, labels, source, augment and split == "train", image_size)
