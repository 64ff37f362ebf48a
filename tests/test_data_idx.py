"""Fashion-MNIST (the real files of Debian's dataset-fashion-mnist) and MNIST through the idx
reader: found without --data, normalised, augmented; truncated, corrupt and missing files are
one line and exit 2."""
import gzip
import shutil
from pathlib import Path

import pytest
import torch

from bnas.cli import main
from bnas.data import build_dataset
from bnas.data.idx import FILES, SOURCES, locate
from bnas.errors import BnasError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (DEBIAN / "t10k-images-idx3-ubyte.gz").is_file(),
                                   reason="Debian's dataset-fashion-mnist is not installed")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BNAS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "bnas_cache"))


@needs_fashion
def test_fashion_mnist_found_without_data_and_normalised():
    val = build_dataset("fashion-mnist", "val", augment=False)
    assert len(val) == 10_000
    labels = torch.as_tensor(val.targets)
    assert torch.bincount(labels).tolist() == [1000] * 10  # the test set is balanced
    image, label = val[0]
    assert image.shape == (3, 28, 28) and label == 9  # the first test image is an ankle boot
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    raw = val.images[0].float() / 255
    assert torch.allclose(image[0], (raw - 0.2860) / 0.3530)
    batch = torch.stack([val[i][0][0] for i in range(0, 10_000, 10)])
    assert abs(batch.mean().item()) < 0.05 and abs(batch.std().item() - 1) < 0.05


@needs_fashion
def test_training_images_are_shifted_copies_within_two_pixels():
    train = build_dataset("fashion-mnist", "train", augment=True)
    assert len(train) == 60_000
    plain = (train.images[5].float() / 255 - 0.2860) / 0.3530
    padded = torch.nn.functional.pad(plain, (2, 2, 2, 2))
    torch.manual_seed(3)
    for _ in range(8):
        image = train[5][0][0]
        shifts = [padded[t:t + 28, s:s + 28] for t in range(5) for s in range(5)]
        assert any(torch.equal(image, c) or torch.equal(image, c.flip(-1)) for c in shifts)
    small = build_dataset("fashion-mnist", "val", augment=False, image_size=16)
    assert small[0][0].shape == (3, 16, 16)


def _copy(tmp_path: Path, split: str = "val", unpack: bool = False) -> Path:
    folder = tmp_path / "idx"
    folder.mkdir()
    for name in FILES[split]:
        if unpack:
            with gzip.open(DEBIAN / f"{name}.gz", "rb") as f:
                (folder / name).write_bytes(f.read())
        else:
            shutil.copy(DEBIAN / f"{name}.gz", folder / f"{name}.gz")
    return folder


@needs_fashion
def test_mnist_layout_read_from_data_gzipped_or_not(tmp_path):
    # MNIST's files have Fashion-MNIST's format; a copy stands in for them (no download here)
    plain = _copy(tmp_path, unpack=True)
    data = build_dataset("mnist", "val", root=str(plain), augment=False)
    assert len(data) == 10_000 and data[0][0].shape == (3, 28, 28)
    assert torch.allclose(data[0][0][0], (data.images[0].float() / 255 - 0.1307) / 0.3081)
    torchvision_layout = tmp_path / "tv" / "MNIST" / "raw"
    torchvision_layout.mkdir(parents=True)
    for name in FILES["val"]:
        shutil.copy(DEBIAN / f"{name}.gz", torchvision_layout / f"{name}.gz")
    assert locate(SOURCES["mnist"], "val", str(tmp_path / "tv"))[0].parent == torchvision_layout


@needs_fashion
def test_truncated_and_corrupt_files_are_one_line(tmp_path):
    folder = _copy(tmp_path, unpack=True)
    images = folder / FILES["val"][0]
    images.write_bytes(images.read_bytes()[:100_000])
    with pytest.raises(BnasError, match=r"truncated or corrupt idx file \(100000 bytes, its "
                                        r"header declares 7840016\)"):
        build_dataset("fashion-mnist", "val", root=str(folder))
    gz = tmp_path / "gz"
    gz.mkdir()
    for name in FILES["val"]:
        shutil.copy(DEBIAN / f"{name}.gz", gz / f"{name}.gz")
    broken = gz / f"{FILES['val'][0]}.gz"
    broken.write_bytes(broken.read_bytes()[:50_000])
    with pytest.raises(BnasError, match="truncated or corrupt gzip file"):
        build_dataset("fashion-mnist", "val", root=str(gz))
    labels = folder / FILES["val"][1]
    images.write_bytes(labels.read_bytes())
    with pytest.raises(BnasError, match="not an idx images file"):
        build_dataset("fashion-mnist", "val", root=str(folder))


def test_missing_files_say_how_to_get_them(tmp_path, capsys):
    with pytest.raises(BnasError, match=r"mnist train files .* not found in .*: give --data DIR"):
        build_dataset("mnist", "train", root=str(tmp_path))
    with pytest.raises(BnasError, match="not found on this machine: give --data DIR"):
        build_dataset("mnist", "train")
    code = main(["train", "--arch", "resnet20_1w1a", "--dataset", "fashion-mnist", "--data",
                 str(tmp_path), "--epochs", "1", "--device", "cpu", "--no-progress", "--out",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "apt-get install dataset-fashion-mnist" in err


@needs_fashion
def test_cpu_preset_trains_a_cell_network_on_a_subset(tmp_path, capsys):
    assert main(["train", "--config", "fashion-mnist-cpu", "--arch", "latest_cell_zeroise",
                 "--layers", "3", "--init-channels", "4", "--image-size", "8", "--epochs", "1",
                 "--train-subset", "96", "--val-subset", "64", "--device", "cpu",
                 "--no-progress", "--out", str(tmp_path / "run")]) == 0
    assert "after 1 epochs" in capsys.readouterr().out
    assert "dataset: fashion-mnist" in (tmp_path / "run" / "config.yaml").read_text()
