"""The search as a library and a command: `--genotype-dir` and the `on_epoch_end` callback."""
import torch

from bnas import genotype as G
from bnas.cli import main

TINY = ["--dataset", "digits", "--layers", "3", "--init-channels", "4", "--epochs", "1",
        "--subset", "96", "--batch-size", "32", "--device", "cpu", "--no-progress"]


def test_genotype_dir_receives_the_genotypes_and_guards_its_names(tmp_path, capsys):
    folder = tmp_path / "found"
    args = ["search", *TINY, "--save", "mine", "--genotype-dir", str(folder)]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["mine.json", "mine_imagenet.json"]
    assert not list(G.user_dir().glob("*.json"))  # the user library is untouched
    assert G.load(folder / "mine.json").provenance["dataset"] == "digits"
    before = (folder / "mine.json").read_text()

    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "b")]) == 2  # taken in that folder
    err = capsys.readouterr().err.strip()
    assert "'mine' exists" in err and str(folder) in err and "\n" not in err
    assert (folder / "mine.json").read_text() == before and not (tmp_path / "b").exists()
    assert main([*args, "--overwrite", "--out", str(tmp_path / "c")]) == 0


def test_on_epoch_end_sees_every_epoch_after_its_checkpoint(tmp_path):
    from bnas.search.config import resolve
    from bnas.search.loop import search

    seen = []

    def callback(epoch, metrics):
        saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
        seen.append((epoch, saved["epoch"], sorted(metrics)))

    cfg = resolve({"dataset": "digits", "layers": 3, "init_channels": 4, "epochs": 2, "subset": 96,
                   "batch_size": 32, "device": "cpu", "progress": False, "save": "cb",
                   "out": str(tmp_path / "run"), "genotype_dir": str(tmp_path / "g")})
    search(cfg, on_epoch_end=callback)
    keys = ["lr", "parameter_free", "seconds", "train_loss", "train_top1", "val_loss", "val_top1"]
    assert seen == [(0, 1, keys), (1, 2, keys)]
