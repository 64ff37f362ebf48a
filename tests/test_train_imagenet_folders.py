"""tools/prepare_imagenet.py on miniature ILSVRC2012 archives, then a run on the folders."""
from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from bnas.train import resolve_config, train

TOOL = Path(__file__).resolve().parents[1] / "tools" / "prepare_imagenet.py"
WNIDS = ["n01440764", "n01443537"]


def _tool():
    spec = importlib.util.spec_from_file_location("prepare_imagenet", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _archives(folder: Path) -> None:
    """Train tar of per-class tars, flat val tar, devkit with meta.mat and ground truth."""
    from scipy.io import savemat

    with tarfile.open(folder / "ILSVRC2012_img_train.tar", "w") as train_tar:
        for c, wnid in enumerate(WNIDS):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as class_tar:
                for i in range(4):
                    _add(class_tar, f"{wnid}_{i}.JPEG", _jpeg(10 * c + i))
            _add(train_tar, f"{wnid}.tar", inner.getvalue())
    truth = [1, 2, 2]  # ILSVRC2012_ID of val images 1..3
    with tarfile.open(folder / "ILSVRC2012_img_val.tar", "w") as val_tar:
        for i in range(1, 4):
            _add(val_tar, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg(100 + i))
    synsets = np.zeros(3, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    for i, (cid, wnid, children) in enumerate([(1, WNIDS[0], 0), (2, WNIDS[1], 0), (1001, "n00001740", 5)]):
        synsets[i] = (cid, wnid, children)
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    with tarfile.open(folder / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as devkit:
        _add(devkit, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        _add(devkit, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
             "".join(f"{t}\n" for t in truth).encode())


def test_prepare_imagenet_then_train_on_the_folders(tmp_path, capsys):
    archives, out = tmp_path / "archives", tmp_path / "imagenet"
    archives.mkdir()
    _archives(archives)
    tool = _tool()
    assert tool.main(["--archives", str(archives), "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "train" / WNIDS[0]).iterdir()) == [
        f"{WNIDS[0]}_{i}.JPEG" for i in range(4)]
    assert sorted(p.name for p in (out / "val" / WNIDS[1]).iterdir()) == [
        "ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000003.JPEG"]
    assert tool.main(["--archives", str(archives), "--out", str(out)]) == 0  # repeatable
    assert "train: 0 images" in capsys.readouterr().out

    result = train(resolve_config(None, {
        "arch": "latest_cell", "layers": 3, "init_channels": 8, "dataset": "imagenet",
        "data": str(out), "image_size": 32, "epochs": 1, "batch_size": 4, "workers": 0,
        "progress": False, "out": str(tmp_path / "run")}))
    assert result["epochs"] == 1


def test_prepare_imagenet_reports_bad_input(tmp_path, capsys):
    tool = _tool()
    assert tool.main(["--archives", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ILSVRC2012_img_val.tar" in err
    labels = tmp_path / "labels.txt"
    labels.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n")
    assert tool.file_labels(labels) == {"ILSVRC2012_val_00000001.JPEG": "n01440764"}
    with pytest.raises(tool.PrepareError, match="expected '<file> <wnid>'"):
        labels.write_text("a b\nc d\n")
        tool.file_labels(labels)


def _has_dali() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(not (_has_dali() and torch.cuda.is_available()),
                    reason="needs NVIDIA DALI and a GPU")
def test_dali_loader_reads_the_folders(tmp_path):
    from bnas.data.dali import DaliLoader

    archives, out = tmp_path / "archives", tmp_path / "imagenet"
    archives.mkdir()
    _archives(archives)
    assert _tool().main(["--archives", str(archives), "--out", str(out)]) == 0
    common = {"batch_size": 2, "size": 32, "rank": 0, "world_size": 1, "workers": 1,
              "device": torch.device("cuda", 0), "seed": 0}
    x, y = next(iter(DaliLoader(out, "train", **common)))
    assert x.shape == (2, 3, 32, 32) and x.is_cuda and y.dtype == torch.int64
    val = DaliLoader(out, "val", **common)
    assert len(val) == 2 and sum(len(labels) for _, labels in val) == 3
