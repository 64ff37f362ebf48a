"""``bnas search`` end to end on real offline data (scikit-learn's digits), its outputs, and
one-line refusals (exit 2, nothing written) of bad input."""
import json

import pytest
import torch

import bnas
from bnas import genotype as G
from bnas.cli import main
from bnas.data.split import split_indices
from bnas.errors import BnasError
from bnas.ops import SPACES
from bnas.profiling import profile

TINY = ["--dataset", "digits", "--layers", "3", "--init-channels", "4", "--epochs", "2",
        "--subset", "160", "--batch-size", "32", "--device", "cpu", "--no-progress"]


def test_digits_search_writes_genotypes_that_build_and_train(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", *TINY, "--save", "tiny", "--out", str(out)]) == 0
    assert "genotypes 'tiny' and 'tiny_imagenet'" in capsys.readouterr().out
    for name in ("log.txt", "alphas.jsonl", "genotypes.jsonl", "alphas_normal.png",
                 "alphas_reduce.png", "checkpoint.pt", "tiny.json", "tiny_imagenet.json"):
        assert (out / name).is_file(), name
    alphas = [json.loads(line) for line in (out / "alphas.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in (out / "genotypes.jsonl").read_text().splitlines()]
    assert [a["epoch"] for a in alphas] == [r["epoch"] for r in records] == [0, 1]
    for row in alphas[-1]["normal"] + alphas[-1]["reduce"]:
        assert sum(row) == pytest.approx(1.0) and len(row) == len(SPACES.get("bnas"))
    best = max(records, key=lambda r: r["val_top1"])  # max keeps the earliest of equals

    genotype, imagenet = G.load("tiny"), G.load("tiny_imagenet")  # found by name
    assert genotype.to_json()["normal"] == best["genotype"]["normal"]
    assert imagenet.to_json()["reduce"] == best["genotype_imagenet"]["reduce"]
    prov = genotype.provenance
    assert (prov["dataset"], prov["epochs"], prov["seed"], prov["space"]) == ("digits", 2, 2, "bnas")
    assert prov["binarizer"] == {"name": "plain"} and prov["bnas_version"] == bnas.__version__
    assert prov["best_epoch"] == best["epoch"] + 1 and prov["gamma"] == 1.0
    assert imagenet.provenance["gamma"] == 3.0
    cost = prov["cost"]  # no --cost: the setting (none) and the cost at BNAS-A's size
    assert cost["kind"] is None
    assert cost["size"] == {"dataset": "digits", "layers": 20, "init_channels": 36,
                            "image_size": 32}
    counted = profile(bnas.build_model(genotype, dataset="digits"), (3, 32, 32))
    assert cost["counts"] == {"params": counted.params, "flops": counted.flops,
                              "bops": counted.bops, "ops": counted.ops}
    assert cost["counts"]["bops"] > 0 and "costs" not in capsys.readouterr().out
    final = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert torch.equal(torch.tensor(prov["alphas"]["normal"]), final["alphas_normal"])

    model = bnas.build_model("tiny", dataset="digits", layers=3, init_channels=8)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert main(["train", "--arch", "tiny_imagenet", "--dataset", "digits", "--layers", "3",
                 "--init-channels", "8", "--epochs", "1", "--train-subset", "64", "--val-subset",
                 "32", "--batch-size", "32", "--device", "cpu", "--no-progress", "--out",
                 str(tmp_path / "train")]) == 0


@pytest.mark.parametrize("options", [
    ["--order", "2", "--space", "bnas-skip", "--binarizer", "recu", "--binarizer-hparam",
     "tau_min=0.8"],
    ["--impl", "reference", "--binarizer", "siman"],
])
def test_other_settings_search_end_to_end(tmp_path, options):
    assert main(["search", *TINY, "--epochs", "1", "--subset", "96", "--save", "other",
                 "--out", str(tmp_path), *options]) == 0
    prov = G.load("other").provenance
    assert prov["binarizer"]["name"] == options[options.index("--binarizer") + 1]
    assert prov["search"]["order"] == (2 if "--order" in options else 1)


def test_existing_names_are_kept_unless_overwrite(tmp_path, capsys):
    taken = G.load("latest_cell")
    taken.name = "taken"
    path = G.save(taken, G.user_dir() / "taken.json")
    before = path.read_text()
    for name in ("taken", "latest_cell", "latest"):  # latest_imagenet is free, latest_cell is not
        if name == "latest":
            G.save(taken, G.user_dir() / "latest_imagenet.json")
        assert main(["search", *TINY, "--save", name, "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert "exists" in err and "--overwrite" in err and "\n" not in err
        assert not (tmp_path / name).exists()
    assert path.read_text() == before
    assert main(["search", *TINY, "--epochs", "1", "--save", "taken", "--overwrite",
                 "--out", str(tmp_path / "over")]) == 0
    assert G.load("taken").provenance["dataset"] == "digits"


@pytest.mark.parametrize("args, message", [
    (["--space", "darts"], "unknown search space 'darts'"),
    (["--binarizer", "xnor++"], "unknown binarizer 'xnor++'"),
    (["--dataset", "emnist"], "unknown dataset 'emnist'"),
    (["--dataset", "imagefolder", "--data", "/nonexistent/folder"], "image folder not found"),
    (["--train-portion", "1.5"], "--train-portion must be a number strictly between 0 and 1"),
    (["--train-portion", "0"], "--train-portion"),
    (["--train-portion", "0.001"], "leaves no weight images"),
    (["--binarizer-hparam", "tau=1"], "has no hyper-parameter tau"),
    (["--layers", "2"], "--layers must be at least 3"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["search", *TINY, "--save", "bad", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists() and G.find("bad") is None


def test_unwritable_genotype_dir_is_refused_before_the_search(tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the folder would be: no process can write there
    out = tmp_path / "run"
    assert main(["search", *TINY, "--save", "g", "--genotype-dir", str(blocked / "genotypes"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bnas search: error: cannot write genotypes in {blocked / 'genotypes'}")
    assert "\n" not in err and not out.exists()  # refused before the run directory is made


def test_missing_cifar_says_where_to_put_it(tmp_path, capsys, monkeypatch):
    from bnas.data import datasets

    monkeypatch.setattr(datasets, "_download_cifar", lambda *a: None)  # no network in tests
    assert main(["search", "--save", "c10", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "cifar10 not found" in err and str(tmp_path) in err


def test_resume_takes_no_other_settings(capsys):
    assert main(["search", "--resume", "somewhere", "--epochs", "3"]) == 2
    assert "--epochs" in capsys.readouterr().err


def test_split_is_a_seeded_partition():
    weights, arch = split_indices(11, 0.5, seed=4)
    assert len(weights) == 5 and sorted(weights + arch) == list(range(11))
    assert split_indices(11, 0.5, seed=4) == (weights, arch) != split_indices(11, 0.5, seed=5)
    with pytest.raises(BnasError):
        split_indices(1, 0.5)


@pytest.mark.slow
def test_default_digits_search(tmp_path):
    """The quick start: ``bnas search --dataset digits --save x`` (about a minute on a CPU)."""
    assert main(["search", "--dataset", "digits", "--save", "x", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 0
    genotype = G.load("x")
    assert genotype.provenance["epochs"] == 6 and genotype.provenance["best_val_top1"] > 80
    bnas.build_model("x", dataset="digits")(torch.randn(2, 3, 32, 32)).sum().backward()
