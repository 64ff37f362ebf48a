#!/usr/bin/env python
"""Unpack the ILSVRC2012 (ImageNet-1k) archives into the folders ``bnas train`` reads.

    python tools/prepare_imagenet.py --archives DIR --out /data/imagenet

``DIR`` holds the archives as distributed on image-net.org:

- ``ILSVRC2012_img_train.tar``: one tar per class (``n01440764.tar``, ...) of JPEGs;
- ``ILSVRC2012_img_val.tar``: 50,000 JPEGs, ``ILSVRC2012_val_00000001.JPEG`` ...;
- ``ILSVRC2012_devkit_t12.tar.gz``: ``data/meta.mat`` (class id -> WordNet id) and
  ``data/ILSVRC2012_validation_ground_truth.txt`` (the class id of each validation image).

and the result is ``OUT/train/<wnid>/*.JPEG`` and ``OUT/val/<wnid>/*.JPEG``. Instead of the
devkit, ``--val-labels FILE`` may give one ``<file name> <wnid>`` pair per line (spaces or a
comma). Archives are streamed, never unpacked whole; files already in place are skipped, so an
interrupted run can be repeated. Only plain files are written, under their base names.
"""
from __future__ import annotations

import argparse
import re
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
META = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
WNID = re.compile(r"^n\d{8}$")


class PrepareError(Exception):
    """Bad input: reported as one line, exit status 2."""


def _files(archive: tarfile.TarFile) -> Iterator[tuple[str, IO[bytes]]]:
    """``(base name, stream)`` for each plain file of a streamed tar."""
    for member in archive:
        if member.isfile():
            stream = archive.extractfile(member)
            if stream is not None:
                yield Path(member.name).name, stream


def _write(stream: IO[bytes], path: Path) -> bool:
    """Copy ``stream`` to ``path`` (atomically); False when the file already exists."""
    if path.exists():
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        while chunk := stream.read(1 << 20):
            f.write(chunk)
    tmp.replace(path)
    return True


def unpack_train(archive: Path, out: Path) -> int:
    """Each class tar inside ``archive`` into ``out/<wnid>/``; returns the images written."""
    written = 0
    with tarfile.open(archive, mode="r|") as outer:
        for name, stream in _files(outer):
            wnid = Path(name).stem
            if not (name.endswith(".tar") and WNID.match(wnid)):
                raise PrepareError(f"{archive}: unexpected member {name!r} (expected nXXXXXXXX.tar)")
            folder = out / wnid
            folder.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=stream, mode="r|") as inner:
                written += sum(_write(image, folder / image_name) for image_name, image in _files(inner))
    return written


def devkit_labels(devkit: Path) -> dict[str, str]:
    """Validation file name -> WordNet id, from the devkit's meta.mat and ground truth."""
    import io

    from scipy.io import loadmat

    meta = truth = None
    with tarfile.open(devkit, mode="r:*") as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.endswith(META):
                meta = archive.extractfile(member).read()
            elif member.isfile() and member.name.endswith(GROUND_TRUTH):
                truth = archive.extractfile(member).read().decode()
    if meta is None or truth is None:
        raise PrepareError(f"{devkit} lacks {META} or {GROUND_TRUTH}")
    synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    ids = [int(line) for line in truth.split()]
    return {f"ILSVRC2012_val_{i:08d}.JPEG": wnid_of[c] for i, c in enumerate(ids, start=1)}


def file_labels(path: Path) -> dict[str, str]:
    """``<file name> <wnid>`` per line (spaces or one comma); a header line is skipped."""
    labels = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        wnids = [p for p in parts[1:] if WNID.match(p)]
        if not wnids:
            if number == 1:
                continue
            raise PrepareError(f"{path}:{number}: expected '<file> <wnid>', got {line!r}")
        name = parts[0] if parts[0].upper().endswith(".JPEG") else f"{parts[0]}.JPEG"
        labels[name] = wnids[0]
    return labels


def unpack_val(archive: Path, labels: dict[str, str], out: Path) -> int:
    """Each validation image into ``out/<wnid>/``; returns the images written."""
    written = 0
    with tarfile.open(archive, mode="r|") as tar:
        for name, stream in _files(tar):
            if name not in labels:
                raise PrepareError(f"no label for validation image {name}")
            folder = out / labels[name]
            folder.mkdir(parents=True, exist_ok=True)
            written += _write(stream, folder / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archives", type=Path, required=True, help="folder of the ILSVRC2012 archives")
    parser.add_argument("--out", type=Path, required=True, help="where train/ and val/ go")
    parser.add_argument("--val-labels", type=Path, help="validation labels instead of the devkit")
    parser.add_argument("--skip-train", action="store_true", help="only prepare val/")
    args = parser.parse_args(argv)
    try:
        needed = [VAL_TAR] + ([] if args.skip_train else [TRAIN_TAR])
        needed += [] if args.val_labels else [DEVKIT]
        missing = [n for n in needed if not (args.archives / n).is_file()]
        if missing:
            raise PrepareError(f"missing in {args.archives}: {', '.join(missing)}")
        if args.val_labels and not args.val_labels.is_file():
            raise PrepareError(f"validation labels not found: {args.val_labels}")
        labels = (file_labels(args.val_labels) if args.val_labels
                  else devkit_labels(args.archives / DEVKIT))
        if not args.skip_train:
            n = unpack_train(args.archives / TRAIN_TAR, args.out / "train")
            print(f"train: {n} images written to {args.out / 'train'}")
        n = unpack_val(args.archives / VAL_TAR, labels, args.out / "val")
        print(f"val: {n} images written to {args.out / 'val'}")
    except (PrepareError, tarfile.TarError, OSError) as exc:
        sys.stderr.write(f"prepare_imagenet: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
