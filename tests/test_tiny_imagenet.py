"""Tiny-ImageNet: tools/prepare_tiny_imagenet.py sorts the official validation layout by class,
the dataset reads both splits with matching class indices, and wrong layouts are one line,
exit 2 (a small stand-in folder with the official layout; no download)."""
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bnas.cli import main
from bnas.data import build_dataset, dataset_info
from bnas.errors import BnasError

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "prepare_tiny_imagenet.py"
WNIDS = ["n01443537", "n01629819", "n01641577"]


def _image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (shade, 255 - shade, 3 * shade % 256)).save(path)


def official_layout(root: Path) -> dict[str, str]:
    """Two training images per class and two validation images per class, unsorted, with
    val_annotations.txt; returns validation file -> wnid."""
    (root / "wnids.txt").parent.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    labels = {}
    for c, wnid in enumerate(WNIDS):
        (root / "train" / wnid / f"{wnid}_boxes.txt").parent.mkdir(parents=True)
        for k in range(2):
            _image(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", 40 * c)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    for k in range(6):
        labels[f"val_{k}.JPEG"] = WNIDS[(k * 2) % 3]
        _image(root / "val" / "images" / f"val_{k}.JPEG", 40 * ((k * 2) % 3))
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{wnid}\t0\t0\t63\t63\n" for name, wnid in labels.items()))
    return labels


def _prepare(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), str(root)], capture_output=True, text=True)


def test_prepare_then_read_both_splits(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    labels = official_layout(root)
    with pytest.raises(BnasError, match="not sorted by class yet; run python tools/prepare_tiny"):
        build_dataset("tiny-imagenet", "train", root=str(root))
    done = _prepare(root)
    assert done.returncode == 0 and "6 validation images sorted" in done.stdout
    assert _prepare(root).returncode == 0  # a second run has nothing left to do
    for name, wnid in labels.items():
        assert (root / "val" / wnid / "images" / name).is_file()
    assert not (root / "val" / "images").exists()
    train = build_dataset("tiny-imagenet", "train", root=str(root))
    val = build_dataset("tiny-imagenet", "val", root=str(root), augment=False)
    assert train.classes == val.classes == WNIDS and len(train) == len(val) == 6
    for path, target in val.samples:
        assert WNIDS[target] == labels[Path(path).name]
    image, _ = val[0]
    assert image.shape == (3, 64, 64) and train[0][0].shape == (3, 64, 64)
    info = dataset_info("tiny-imagenet")
    assert (info.num_classes, info.image_size, info.family) == (200, 64, "cifar")


def test_cell_network_trains_one_step_on_it(tmp_path):
    root = tmp_path / "tiny"
    official_layout(root)
    _prepare(root)
    assert main(["train", "--config", "recu-tiny-imagenet", "--data", str(root), "--arch",
                 "latest_cell_zeroise", "--layers", "3", "--init-channels", "4", "--num-classes",
                 "3", "--image-size", "16", "--epochs", "1", "--batch-size", "3", "--warmup-epochs",
                 "0", "--workers", "0", "--device", "cpu", "--no-progress", "--out",
                 str(tmp_path / "run")]) == 0
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "dataset: tiny-imagenet" in config and "binarizer: recu" in config


@pytest.mark.parametrize("breakage, message", [
    (lambda root: __import__("shutil").rmtree(root / "train"), "train not found"),
    (lambda root: [p.unlink() for p in (root / "val" / WNIDS[1] / "images").iterdir()],
     f"val/{WNIDS[1]}/images holds no images"),
    (lambda root: (root / "train" / WNIDS[0] / "images").rename(root / "train" / WNIDS[0] / "x"),
     "holds no images"),
    (lambda root: __import__("shutil").rmtree(root / "val" / WNIDS[2]), "hold different classes"),
])
def test_wrong_layouts_are_one_line(tmp_path, capsys, breakage, message):
    root = tmp_path / "tiny"
    official_layout(root)
    _prepare(root)
    breakage(root)
    code = main(["train", "--arch", "resnet20_1w1a", "--dataset", "tiny-imagenet", "--data",
                 str(root), "--epochs", "1", "--device", "cpu", "--no-progress", "--out",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_prepare_refuses_bad_annotations(tmp_path):
    root = tmp_path / "tiny"
    official_layout(root)
    with open(root / "val" / "val_annotations.txt", "a") as f:
        f.write("val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    done = _prepare(root)
    assert done.returncode == 2 and "class 'n99999999' is not a folder of train/" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert (root / "val" / "images" / "val_0.JPEG").is_file()  # nothing moved
    missing = _prepare(tmp_path / "nowhere")
    assert missing.returncode == 2 and "not found" in missing.stderr
