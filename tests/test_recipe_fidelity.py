"""The recipes as the seeds wrote them: batch sizes, image pipelines, evaluation batch, print
frequency, and epoch-measured phases scaled with --epochs."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from bnas.data import build_dataset
from bnas.data.recipes import CIFAR10_STATS, CIFAR100_STATS, IMAGENET_STATS, DATA_RECIPES
from bnas.data.transforms import imagenet_transform
from bnas.run.context import Context
from bnas.train import resolve_config, train
from bnas.train.data import LOADERS


@pytest.mark.parametrize("scheme,batch", [("rbnn", 512), ("siman", 512), ("recu", 512)])
def test_imagenet_recipes(scheme, batch):
    cfg = resolve_config(None, {"arch": "resnet18_1w1a", "binarizer": scheme,
                                "dataset": "imagenet"})
    assert (cfg.batch_size, cfg.eval_batch_size, cfg.data_recipe) == (batch, 256, "seeds")


def test_cifar_recipes():
    for scheme in ("rbnn", "recu", "siman"):
        cfg = resolve_config(None, {"arch": "resnet20_1w1a", "binarizer": scheme})
        assert (cfg.batch_size, cfg.eval_batch_size, cfg.data_recipe) == (256, 128, "seeds")
    bnas = resolve_config(None, {"config": "bnas-a"})
    assert bnas.data_recipe == "bnas" and bnas.eval_batch_size is None


def _fake_cifar(root, name: str, folder: str, files: list[str], label_key: bytes) -> np.ndarray:
    (root / folder).mkdir(parents=True)
    data = np.arange(4 * 3072, dtype=np.int64).reshape(4, 3072) % 256
    for f in files:
        with open(root / folder / f, "wb") as out:
            pickle.dump({b"data": data.astype(np.uint8), label_key: [0, 1, 2, 3]}, out)
    return data.astype(np.float64).reshape(4, 3, 32, 32) / 255.0


@pytest.mark.parametrize("recipe,dataset,stats", [
    ("bnas", "cifar10", CIFAR10_STATS), ("seeds", "cifar10", IMAGENET_STATS),
    ("seeds", "cifar100", CIFAR100_STATS), ("bnas", "cifar100", CIFAR10_STATS)])
def test_cifar_normalisation_per_recipe(tmp_path, recipe, dataset, stats):
    if dataset == "cifar10":
        pixels = _fake_cifar(tmp_path, dataset, "cifar-10-batches-py", ["test_batch"], b"labels")
    else:
        pixels = _fake_cifar(tmp_path, dataset, "cifar-100-python", ["test"], b"fine_labels")
    image, label = build_dataset(dataset, "val", root=str(tmp_path), recipe=recipe)[2]
    mean, std = (torch.tensor(v, dtype=torch.float64).view(3, 1, 1) for v in stats)
    expected = (torch.from_numpy(pixels[2]) - mean) / std
    torch.testing.assert_close(image.double(), expected, rtol=0, atol=1e-5)
    assert label == 2


def test_imagenet_augmentation_per_recipe():
    seeds = imagenet_transform(224, True, DATA_RECIPES.get("seeds")).transforms
    bnas = imagenet_transform(224, True, DATA_RECIPES.get("bnas")).transforms
    assert [type(t).__name__ for t in seeds][:3] == ["RandomResizedCrop", "RandomHorizontalFlip",
                                                    "ToTensor"]
    assert seeds[0].scale == (0.08, 1.25)
    assert "ColorJitter" in [type(t).__name__ for t in bnas] and bnas[0].scale == (0.08, 1.0)
    assert DATA_RECIPES.canonical("recu") == "seeds"


TINY = {"arch": "resnet20_1w1a", "binarizer": "rbnn", "dataset": "digits", "train_subset": 64,
        "val_subset": 40, "workers": 0, "progress": False, "device": "cpu", "batch_size": 16}


def test_eval_batch_size():
    cfg = resolve_config(None, {**TINY, "eval_batch_size": 20})
    data = LOADERS.get("torch")(cfg, Context(), True)
    assert [len(y) for _, y in data.val] == [20, 20]
    assert next(iter(data.train))[1].shape[0] == 16


def test_phases_scale_with_epochs_and_are_logged(tmp_path):
    cfg = resolve_config(None, {**TINY, "epochs": 2, "print_freq": 2, "out": str(tmp_path)})
    assert cfg.warmup_epochs == 1  # RBNN's 5 warm-up epochs of 1000, scaled to 2
    assert resolve_config(None, {**TINY, "epochs": 2, "warmup_epochs": 2}).warmup_epochs == 2
    assert resolve_config(None, {**TINY}).warmup_epochs == 5  # the recipe's own length
    train(cfg)
    log = (tmp_path / "log").read_text()
    assert "recipe phase scaled to --epochs: warmup_epochs 5 -> 1 (the recipe's 1000 epochs " \
           "scaled to 2)" in log
    assert "epoch 1 [2/4]" in log and "epoch 2 [4/4]" in log  # --print-freq 2, 4 batches


def test_schedule_and_hyperparameter_phases():
    cfg = resolve_config(None, {"config": "bnas-d", "epochs": 25})
    assert cfg.schedule_args["period"] == 5
    assert resolve_config(None, {"config": "bnas-d", "epochs": 25,
                                 "schedule_args": {"period": 7}}).schedule_args["period"] == 7
    bop = resolve_config("bop2ndOrder_testExp", {"epochs": 35})
    assert bop.schedule_args["milestones"] == [10, 20, 30]
    assert bop.binarizer_hparams["gamma"]["every"] == 10
    assert any("gamma.every 100 -> 10" in n for n in bop.phase_notes)
