#!/usr/bin/env python
"""Sort Tiny-ImageNet's validation images by class, so that ``bnas train --dataset
tiny-imagenet --data DIR`` reads both splits as image folders.

    python tools/prepare_tiny_imagenet.py DIR

``DIR`` is the unpacked ``tiny-imagenet-200`` folder: ``train/<wnid>/images/*.JPEG`` and
``val/images/*.JPEG`` with ``val/val_annotations.txt`` (one ``file<TAB>wnid<TAB>box`` line per
image). Each validation image moves to ``val/<wnid>/images/``; the annotation file is renamed
``val/val_annotations.done.txt`` once all are moved. Files already moved are skipped, so an
interrupted run can be repeated. Only names listed in the annotations are touched, each checked
against the training classes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ANNOTATIONS = "val_annotations.txt"
DONE = "val_annotations.done.txt"


class PrepareError(Exception):
    """Bad input: reported as one line, exit status 2."""


def read_annotations(file: Path, classes: set[str]) -> dict[str, str]:
    """Image file name -> wnid, from ``val_annotations.txt``."""
    labels: dict[str, str] = {}
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or Path(fields[0]).name != fields[0] or not fields[0]:
            raise PrepareError(f"{file}:{number}: expected 'file<TAB>wnid<TAB>box', got {line!r}")
        if fields[1] not in classes:
            raise PrepareError(f"{file}:{number}: class {fields[1]!r} is not a folder of train/")
        labels[fields[0]] = fields[1]
    if not labels:
        raise PrepareError(f"{file} lists no images")
    return labels


def arrange(root: Path) -> int:
    """Move the validation images of ``root`` into class folders; returns how many moved."""
    train, val = root / "train", root / "val"
    if not train.is_dir():
        raise PrepareError(f"{train} not found: give the unpacked tiny-imagenet-200 folder")
    annotations = val / ANNOTATIONS
    if not annotations.is_file():
        if (val / DONE).is_file():
            return 0
        raise PrepareError(f"{annotations} not found: give the unpacked tiny-imagenet-200 folder")
    classes = {p.name for p in train.iterdir() if p.is_dir()}
    labels = read_annotations(annotations, classes)
    moved = 0
    for name, wnid in sorted(labels.items()):
        source, target = val / "images" / name, val / wnid / "images" / name
        if target.is_file():
            continue
        if not source.is_file():
            raise PrepareError(f"{source} is listed in {annotations} but missing")
        target.parent.mkdir(parents=True, exist_ok=True)
        source.replace(target)
        moved += 1
    annotations.replace(val / DONE)
    images = val / "images"
    if images.is_dir() and not any(images.iterdir()):
        images.rmdir()
    return moved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the unpacked tiny-imagenet-200 folder")
    args = parser.parse_args(argv)
    try:
        moved = arrange(args.root.expanduser())
    except PrepareError as exc:
        print(f"prepare_tiny_imagenet: error: {exc}", file=sys.stderr)
        return 2
    print(f"{moved} validation images sorted into {args.root}/val/<wnid>/images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
