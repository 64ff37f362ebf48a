"""``bnas import``: the seed projects' checkpoints in every layout they save, mapped onto bnas
networks whose float64 outputs equal the projects' own forward computed from the same tensors."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

import interop_helpers as ref
from bnas import build_model
from bnas.cli import main
from bnas.errors import BnasError
from bnas.interop.importer import import_checkpoint
from bnas.train import checkpoint

SMALL_R18 = {"family": "resnet", "stem": "conv3x3", "block": "basic", "depths": [2, 2, 2, 2],
             "widths": [8, 16, 32, 64], "init": "default"}


def _genotype(tmp_path, name: str, shortcut: str) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"format": 1, "name": name, "kind": "fixed",
                                "network": {"cifar": {**SMALL_R18, "shortcut": shortcut}}}))
    return str(path)


def _bnas_logits(weights, x: torch.Tensor) -> torch.Tensor:
    saved = checkpoint.load(weights)
    cfg = saved["config"]
    model = build_model(cfg["arch"], dataset=cfg["dataset"], num_classes=cfg["num_classes"],
                        binarizer=cfg["binarizer"])
    model.load_state_dict(saved["model"])
    model.double().eval()
    with torch.no_grad():
        return model(x)


def _check(tmp_path, source, sd, arch, forward, *, dataset="cifar10", size=32, classes=None,
           layout=lambda sd: sd):
    path, out = tmp_path / "ref.pth.tar", tmp_path / "imported.pt"
    torch.save(layout(sd), path)
    record = import_checkpoint(source, path, out, arch=arch, dataset=dataset, num_classes=classes)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = forward(sd, x)
    torch.testing.assert_close(_bnas_logits(out, x), expected, rtol=1e-9, atol=1e-9)
    return record


CIFAR_CASES = {
    "rbnn-resnet20": ("rbnn", lambda: ref.cifar_resnet20("rbnn"), "resnet20_1w1a",
                      lambda sd, x: ref.cifar_resnet20_forward(
                          sd, x, "rbnn", block="basic", pool_shortcut=False, prelu=False,
                          stem_relu=False)),
    "rbnn-resnet20-bireal": ("rbnn", lambda: ref.cifar_resnet20("rbnn"), "resnet20_bireal_1w1a",
                             lambda sd, x: ref.cifar_resnet20_forward(
                                 sd, x, "rbnn", block="bireal", pool_shortcut=False,
                                 prelu=False, stem_relu=False)),
    "recu-resnet20": ("recu", lambda: ref.cifar_resnet20("recu"), "recu_resnet20_1w1a",
                      lambda sd, x: ref.cifar_resnet20_forward(
                          sd, x, "recu", block="bireal", pool_shortcut=True, prelu=False,
                          stem_relu=False)),
    "siman-resnet20": ("siman", lambda: ref.cifar_resnet20("siman", prelu=True),
                       "siman_resnet20_1w1a",
                       lambda sd, x: ref.cifar_resnet20_forward(
                           sd, x, "siman", block="bireal", pool_shortcut=False, prelu=True,
                           stem_relu=True)),
    "siman-resnet20-fresh-mask": ("siman", lambda: ref.cifar_resnet20("siman", prelu=True,
                                                                      fresh=True),
                                  "siman_resnet20_1w1a",
                                  lambda sd, x: ref.cifar_resnet20_forward(
                                      sd, x, "siman", block="bireal", pool_shortcut=False,
                                      prelu=True, stem_relu=True)),
    "recu-vgg": ("recu", lambda: ref.vgg_small("recu"), "vgg_small_1w1a",
                 lambda sd, x: ref.vgg_small_forward(sd, x, "recu", prelu=False)),
    "siman-vgg": ("siman", lambda: ref.vgg_small("siman", prelu=True), "siman_vgg_small_1w1a",
                  lambda sd, x: ref.vgg_small_forward(sd, x, "siman", prelu=True)),
}


@pytest.mark.parametrize("case", list(CIFAR_CASES))
def test_cifar_networks_match_the_reference_forward(tmp_path, case):
    source, make, arch, forward = CIFAR_CASES[case]
    record = _check(tmp_path, source, make(), arch, forward)
    assert record["dropped"] == []
    missing = {k.rpartition(".")[2] for k in record["missing"]}
    assert missing == ({"t", "k"} if source == "rbnn" else set())


@pytest.mark.parametrize("source,conv_shortcut,shortcut", [
    ("rbnn", True, "binary_conv"), ("recu", False, "avgpool_zero_pad"),
    ("siman", True, "binary_conv")])
def test_cifar_resnet18_shortcuts(tmp_path, source, conv_shortcut, shortcut):
    widths = tuple(SMALL_R18["widths"])
    sd = ref.cifar_resnet18(source, conv_shortcut=conv_shortcut, widths=widths)
    _check(tmp_path, source, sd, _genotype(tmp_path, f"r18_{shortcut}", shortcut),
           lambda sd, x: ref.cifar_resnet18_forward(sd, x, source, conv_shortcut=conv_shortcut,
                                                    widths=widths))


def test_rbnn_imagenet_resnet18_drops_the_unused_bn3(tmp_path):
    sd = ref.imagenet_resnet18("rbnn", unused_bn3=True)
    record = _check(tmp_path, "rbnn", sd, "resnet18_1w1a",
                    lambda sd, x: ref.imagenet_resnet18_forward(sd, x, "rbnn", prelu=False,
                                                                stem_relu=False),
                    dataset="imagenet", size=64, classes=7)
    assert sorted(record["dropped"]) == sorted(k for k in sd if k.startswith("bn3."))


def test_siman_imagenet_resnet18(tmp_path):
    sd = ref.imagenet_resnet18("siman", prelu=True)
    _check(tmp_path, "siman", sd, "siman_resnet18_1w1a",
           lambda sd, x: ref.imagenet_resnet18_forward(sd, x, "siman", prelu=True, stem_relu=True),
           dataset="imagenet", size=64, classes=7)


LAYOUTS = {
    "bare": lambda sd: sd,
    "state_dict": lambda sd: {"epoch": 400, "best_prec1": 87.4, "model": "resnet20_1w1a",
                              "state_dict": sd},
    "dataparallel": lambda sd: {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()},
                                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
    # RBNN's main.py also saves the parameters as a list, and its accuracy may be a tensor
    "parameter-list": lambda sd: {"epoch": 600, "state_dict": sd, "best_prec1": torch.tensor(87.5),
                                  "parameters": [torch.nn.Parameter(v) for k, v in sd.items()
                                                 if k.endswith("alpha")]},
}


@pytest.mark.parametrize("case", ["rbnn-resnet20", "recu-resnet20", "siman-resnet20"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_checkpoint_layouts(tmp_path, layout, case):
    source, make, arch, forward = CIFAR_CASES[case]
    record = _check(tmp_path, source, make(), arch, forward, layout=LAYOUTS[layout])
    if layout == "state_dict":
        assert record["checkpoint"] == {"epoch": 400, "best_prec1": 87.4, "model": "resnet20_1w1a"}
    if layout == "parameter-list":
        assert record["checkpoint"] == {"epoch": 600, "best_prec1": 87.5}


def test_tensors_are_carried_exactly(tmp_path):
    sd = ref.cifar_resnet20("rbnn")
    torch.save(sd, tmp_path / "r.pt")
    import_checkpoint("rbnn", tmp_path / "r.pt", tmp_path / "w.pt", arch="resnet20_1w1a")
    state = checkpoint.load(tmp_path / "w.pt")["model"]
    p, q = "layer2.0.conv1", "stages.1.0.conv1"
    for theirs, ours in (("weight", "weight"), ("alpha", "alpha"), ("rotate", "theta"),
                         ("R1", "R1"), ("R2", "R2")):
        assert torch.equal(state[f"{q}.{ours}"], sd[f"{p}.{theirs}"])
    sd = ref.cifar_resnet20("recu")
    torch.save(sd, tmp_path / "r.pt")
    import_checkpoint("recu", tmp_path / "r.pt", tmp_path / "w.pt", arch="recu_resnet20_1w1a")
    state = checkpoint.load(tmp_path / "w.pt")["model"]
    assert state[f"{q}.tau"].shape == () and state[f"{q}.tau"].item() == sd[f"{p}.tau"].item()


# -- bad input --------------------------------------------------------------------------------
def _refused(tmp_path, payload, source, arch, message, **kw):
    path, out = tmp_path / "bad.pth", tmp_path / "out.pt"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    with pytest.raises(BnasError, match=message):
        import_checkpoint(source, path, out, arch=arch, **kw)
    assert not out.exists()


def test_another_architecture_is_refused(tmp_path):
    _refused(tmp_path, ref.cifar_resnet20("recu"), "recu", "vgg_small_1w1a",
             r"has no tensor conv0\.weight that 'vgg_small_1w1a' needs")
    widths = tuple(SMALL_R18["widths"])
    _refused(tmp_path, ref.cifar_resnet18("recu", conv_shortcut=True, widths=widths), "recu",
             _genotype(tmp_path, "r18", "avgpool_zero_pad"),
             r"24 tensors that 'r18' has no place for \(e\.g\. layer2\.0\.shortcut\.0\.weight\)")


def test_another_size_names_the_first_tensor_and_both_shapes(tmp_path):
    _refused(tmp_path, ref.cifar_resnet20("rbnn", classes=100), "rbnn", "resnet20_1w1a",
             r"linear\.weight has shape \(100, 64\), 'resnet20_1w1a' needs \(10, 64\)")


def test_another_project_is_refused(tmp_path):
    _refused(tmp_path, ref.cifar_resnet20("rbnn"), "recu", "resnet20_1w1a",
             r"looks like a rbnn checkpoint, not recu \(it holds layer1\.0\.conv1\.rotate\)")
    _refused(tmp_path, ref.cifar_resnet20("siman", prelu=True), "rbnn", "siman_resnet20_1w1a",
             r"looks like a siman checkpoint, not rbnn")


class Gadget:
    """Something a plain-tensor loader must not unpickle."""


def test_truncated_or_unsafe_files_are_refused(tmp_path):
    torch.save(ref.cifar_resnet20("recu"), tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    _refused(tmp_path, data[:len(data) // 2], "recu", "recu_resnet20_1w1a",
             "is not a checkpoint of plain tensors")
    _refused(tmp_path, pickle.dumps({"state_dict": Gadget()}, protocol=2), "recu", "recu_resnet20_1w1a",
             "is not a checkpoint of plain tensors")
    _refused(tmp_path, {"epoch": 1}, "recu", "recu_resnet20_1w1a", "holds no model weights")


@pytest.mark.parametrize("source,arch,project", [
    ("rbnn", "resnet20_bireal_1w1a", "RBNN"), ("recu", "recu_resnet20_1w1a", "ReCU"),
    ("siman", "siman_resnet20_1w1a", "SiMaN")])
def test_cli_import_then_eval(tmp_path, capsys, source, arch, project):
    sd = ref.cifar_resnet20(source, prelu=source == "siman")
    torch.save({"state_dict": sd}, tmp_path / "s.pth.tar")
    out = tmp_path / "w.pt"
    assert main(["import", "--from", source, str(tmp_path / "s.pth.tar"), "--arch", arch,
                 "--dataset", "digits", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "imported" in printed and project in printed
    assert main(["eval", "--weights", str(out), "--json", "--val-subset", "64", "--workers", "0",
                 "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 64 and 0.0 <= result["top1"] <= 100.0
    saved = checkpoint.load(out)
    assert saved["identity"]["binarizer"] == source and saved["imported"]["from"] == source
    assert saved["config"]["data_recipe"] == "seeds"  # the seeds normalise CIFAR as ImageNet


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    torch.save(ref.cifar_resnet20("rbnn", classes=100), tmp_path / "r.pt")
    code = main(["import", "--from", "rbnn", str(tmp_path / "r.pt"), "--arch", "resnet20_1w1a",
                 "--out", str(tmp_path / "w.pt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "linear.weight" in err
    assert not (tmp_path / "w.pt").exists()


# -- fine-tuning from imported weights ----------------------------------------------------------
def _imported_recu(tmp_path):
    torch.save({"state_dict": ref.cifar_resnet20("recu")}, tmp_path / "recu.pth.tar")
    out = tmp_path / "recu.pt"
    import_checkpoint("recu", tmp_path / "recu.pth.tar", out, arch="recu_resnet20_1w1a",
                      dataset="digits")
    return out


FINETUNE = {"arch": "recu_resnet20_1w1a", "binarizer": "recu", "dataset": "digits", "epochs": 1,
            "batch_size": 32, "train_subset": 64, "val_subset": 32, "workers": 0,
            "progress": False, "device": "cpu"}


def test_init_weights_starts_a_new_run_from_imported_weights(tmp_path):
    from bnas.train import Trainer, resolve_config
    from bnas.run.context import Context

    weights = _imported_recu(tmp_path)
    cfg = resolve_config(None, {**FINETUNE, "init_weights": str(weights),
                                "out": str(tmp_path / "run")})
    trainer = Trainer(cfg, Context())
    saved = checkpoint.load(weights)["model"]
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert trainer.start_epoch == 0 and not trainer.optimizer.state  # fresh optimizer
    trainer.fit()
    log = (tmp_path / "run" / "log").read_text()
    assert f"initial weights from {weights} (imported from ReCU" in log


def test_init_weights_of_another_network_is_one_line(tmp_path, capsys):
    weights = _imported_recu(tmp_path)
    argv = ["train", "--arch", "resnet20_1w1a", "--binarizer", "recu", "--dataset", "digits",
            "--epochs", "1", "--workers", "0", "--no-progress", "--device", "cpu",
            "--out", str(tmp_path / "run"), "--init-weights", str(weights)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds weights of 'recu_resnet20_1w1a'" in err
    assert main([*argv[:-1], str(tmp_path / "absent.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


# -- BNAS -------------------------------------------------------------------------------------
def test_bnas_cell_network_with_its_real_leftover_convolutions(tmp_path):
    c, layers = 4, 5  # reductions at cells 1 and 3: two residual convolutions
    sd = ref.bnas_cifar(c, layers)
    convs = [k for k, v in sd.items() if v.dim() == 4 and "preprocess_res" not in k]
    real = {name.rpartition(".op.0")[0] for name in convs[-2:]}
    assert real == {"cells.4._ops.1", "cells.4._ops.2"}  # the last cell's two convolutions
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "b.pt")
    out = tmp_path / "w.pt"
    record = import_checkpoint("bnas", tmp_path / "b.pt", out, arch="latest_cell_zeroise",
                               layers=layers, init_channels=c)
    assert record["layer_overrides"] == {"cells.4.ops.1.conv": "real_weight",
                                         "cells.4.ops.2.conv": "real_weight"}
    saved = checkpoint.load(out)
    assert saved["config"]["data_recipe"] == "bnas"
    model = build_model("latest_cell_zeroise", layers=layers, init_channels=c,
                        layer_overrides=saved["config"]["layer_overrides"])
    model.load_state_dict(saved["model"])
    model.double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, ref.bnas_cifar_forward(sd, x, c, layers, real),
                               rtol=1e-9, atol=1e-9)
    # binarizing the leftovers changes the function: the overrides matter
    plain = build_model("latest_cell_zeroise", layers=layers, init_channels=c).double().eval()
    plain.load_state_dict(saved["model"])
    with torch.no_grad():
        assert not torch.allclose(plain(x), got)


def test_bnas_weights_need_their_overrides(tmp_path, capsys):
    c, layers = 4, 5
    torch.save(ref.bnas_cifar(c, layers, classes=10), tmp_path / "b.pt")
    out = tmp_path / "w.pt"
    assert main(["import", "--from", "bnas", str(tmp_path / "b.pt"), "--arch",
                 "latest_cell_zeroise", "--layers", "5", "--init-channels", "4", "--dataset",
                 "digits", "--out", str(out)]) == 0
    assert "cells.4.ops.1.conv = real_weight" in capsys.readouterr().out
    assert main(["eval", "--weights", str(out), "--json", "--val-subset", "32", "--workers", "0",
                 "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 32
    argv = ["eval", "--weights", str(out), "--val-subset", "32", "--workers", "0",
            "--device", "cpu", "--layer-override", "cells.4.ops.1.conv=real_weight"]
    assert main(argv) == 2
    assert "layer overrides" in capsys.readouterr().err


def test_bnas_imagenet_network(tmp_path):
    c, layers = 8, 4  # reductions at cells 1 and 2 (named *_red there), the last cell normal
    sd = ref.bnas_imagenet(c, layers, classes=5)
    torch.save({"epoch": 250, "state_dict": {f"module.{k}": v for k, v in sd.items()},
                "amp": {"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 0}}},
               tmp_path / "b.pth.tar")
    out = tmp_path / "w.pt"
    record = import_checkpoint("bnas", tmp_path / "b.pth.tar", out, arch="latest_cell",
                               dataset="imagenet", num_classes=5, layers=layers, init_channels=c)
    assert record["layer_overrides"] == {"cells.3.ops.6.conv": "real_weight",
                                         "cells.3.ops.7.conv": "real_weight"}
    assert record["dropped"] == [] and record["checkpoint"] == {"epoch": 250}
    state = checkpoint.load(out)["model"]
    for theirs, ours in (("stem0.3.weight", "stem0.3.weight"),
                         ("cells.1.preprocess0_red.op.0.weight", "cells.1.preprocess0.conv.weight"),
                         ("cells.2.preprocess_res.1.bias", "cells.2.residual.1.bias"),
                         ("cells.3._ops.7.op.0.weight", "cells.3.ops.7.conv.weight")):
        assert torch.equal(state[ours], sd[theirs]), ours


def test_the_saved_model_name_must_match(tmp_path):
    sd = ref.cifar_resnet20("rbnn")
    _refused(tmp_path, {"model": "resnet20_bireal_1w1a", "state_dict": sd}, "rbnn",
             "resnet20_1w1a", r"saved for the project's 'resnet20_bireal_1w1a' \(bnas: --arch "
             r"resnet20_bireal_1w1a\), not 'resnet20_1w1a'")
    _refused(tmp_path, {"model": "resnet20_1w1a", "state_dict": ref.cifar_resnet20("recu")},
             "recu", "resnet20_bireal_1w1a", r"bnas: --arch recu_resnet20_1w1a")
    torch.save({"model": "resnet20_1w1a", "state_dict": ref.cifar_resnet20("recu")},
               tmp_path / "ok.pt")
    import_checkpoint("recu", tmp_path / "ok.pt", tmp_path / "w.pt", arch="recu_resnet20_1w1a")
