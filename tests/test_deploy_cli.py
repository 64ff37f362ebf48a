"""bnas export, bnas eval --packed and bnas bench on a tiny trained run, and their one-line
errors."""
from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from bnas.cli import main
from bnas.deploy import load, pack
from bnas.deploy.source import trained_model
from bnas.errors import BnasError
from bnas.train import resolve_config, train
from bnas.train.engine import evaluate

TINY = {"arch": "latest_cell_zeroise", "layers": 3, "init_channels": 8,
        "dataset": "synthetic", "image_size": 16, "epochs": 1, "batch_size": 32, "train_subset": 64,
        "val_subset": 64, "workers": 0, "progress": False}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(resolve_config(None, {**TINY, "out": str(out)}))
    return out / "best.pt"


def test_export_writes_a_file_equal_to_the_packed_model(weights, tmp_path, capsys):
    out = tmp_path / "m.bnx"
    assert main(["export", "--weights", str(weights), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}: ") and "binary weights" in printed
    loaded = load(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), pack(trained_model(weights, None, {}))(x))


def test_eval_packed_gives_the_float_models_predictions(weights, capsys):
    assert main(["eval", "--weights", str(weights), "--val-subset", "96", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["eval", "--weights", str(weights), "--val-subset", "96", "--packed", "--json"]) == 0
    packed = json.loads(capsys.readouterr().out)
    assert packed["top1"] == plain["top1"] and packed["samples"] == plain["samples"]
    assert packed["loss"] == pytest.approx(plain["loss"], rel=1e-5)


def test_eval_packed_reads_an_exported_file(weights, tmp_path, capsys):
    out = tmp_path / "m.bnx"
    assert main(["export", "--weights", str(weights), "--out", str(out)]) == 0
    assert load(out).deploy_identity["data"] == {"data_recipe": "bnas", "image_size": 16}
    capsys.readouterr()
    assert main(["eval", "--weights", str(weights), "--val-subset", "96", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["eval", "--weights", str(out), "--val-subset", "96", "--packed", "--json"]) == 0
    packed = json.loads(capsys.readouterr().out)
    assert packed["top1"] == plain["top1"] and packed["samples"] == plain["samples"] == 96
    assert packed["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    for argv, message in [([], "evaluate it with --packed"),
                          (["--packed", "--layers", "5"], "drop --layers")]:
        assert main(["eval", "--weights", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    other_classes = resolve_config(None, {"dataset": "synthetic", "num_classes": 5,
                                          "val_subset": 8, "workers": 0, "progress": False})
    with pytest.raises(BnasError, match="has 10 outputs; dataset 'synthetic' has 5 classes"):
        evaluate(other_classes, out, packed=True)
    cut = tmp_path / "cut.bnx"
    cut.write_bytes(out.read_bytes()[:-100])
    other_format = tmp_path / "f.bnx"
    other_format.write_bytes(b"BNASPACK not a model")
    not_export = tmp_path / "x.bnx"
    not_export.write_bytes(b"not a model")
    for bad, message in [(cut, "truncated"), (other_format, "format"), (not_export, "x.bnx")]:
        assert main(["eval", "--weights", str(bad), "--packed"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_bench_prints_latency_memory_and_layers(weights, tmp_path, capsys):
    assert main(["bench", "resnet20_1w1a", "--batches", "1,2", "--min-time", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"pytorch", "packed"} <= set(result["latency_ms"])
    columns = {f"{b}x{n}" for b in (1, 2) for n in result["threads"]}
    assert set(result["latency_ms"]["packed"]) == columns
    assert result["model"] == "resnet20_1w1a" and result["image_size"] == 32
    assert set(result["throughput"]) >= {"pytorch", "packed"}
    # measured in a fresh process from a pickled copy of the model, run before it was saved
    assert all(result["peak_memory_mb"][e] is not None for e in ("pytorch", "packed"))
    kinds = {row["kind"] for row in result["layers"]}
    assert {"PackedBasicBlock", "Conv2d", "Linear"} <= kinds  # blocks run fused, as one
    out = tmp_path / "m.bnx"
    main(["export", "--weights", str(weights), "--out", str(out)])
    capsys.readouterr()
    assert main(["bench", "--weights", str(out), "--batches", "1", "--min-time", "0"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("latest_cell_zeroise at 16x16") and "packed speed-up" in text
    assert "PackedBinConvOp" in text  # at the size it was trained at, from the file or the weights
    assert main(["bench", "--weights", str(weights), "--batches", "1", "--min-time", "0",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image_size"] == 16


@pytest.mark.parametrize("argv, message", [
    (["bench"], "give an architecture or --weights"),
    (["bench", "resnet20_1w1a", "--batches", "1,x"], "--batches"),
    (["bench", "resnet20_1w1a", "--min-time", "inf"], "--min-time"),
    (["bench", "resnet20_1w1a", "--min-time", "-1"], "--min-time"),
    (["bench", "--weights", "missing.pt"], "not found"),
    (["export", "--weights", "missing.pt", "--out", "x.bnx"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_eval_packed_refuses_what_the_engine_does_not_run(weights, capsys):
    assert main(["eval", "--weights", str(weights), "--packed", "--channels-last"]) == 2
    assert "float32 on the CPU" in capsys.readouterr().err


def test_layer_times_are_medians_over_forwards_and_count_every_call():
    """One slow forward does not move a layer's time; a module called twice per forward counts
    both calls."""
    from bnas.deploy.bench import layer_times

    class Slow(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            time.sleep(0.3 if self.calls == 3 else 0.01)
            return x

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.slow, self.twice = Slow(), nn.Identity()

        def forward(self, x):
            return self.twice(self.twice(self.slow(x)))

    times = layer_times(Net(), torch.zeros(1), ["slow", "twice", "missing"], runs=5)
    assert set(times) == {"slow", "twice"}
    assert 0.009 < times["slow"] < 0.04  # the third call (a timed one) slept 0.3 s: mean 0.068
    assert times["twice"] < 0.005
    fake = iter(range(1000))
    counted = layer_times(Net(), torch.zeros(1), ["twice"], runs=3,
                          clock=lambda: float(next(fake)))
    assert counted == {"twice": 2.0}  # two calls per forward, each one tick of the fake clock
