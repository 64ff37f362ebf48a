"""The training engine on tiny runs: files, callbacks, evaluation, failures and bad input."""
from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch

from bnas.cli import main
from bnas.data.loaders import subset
from bnas.errors import BnasError
from bnas.train import NonFiniteLoss, Trainer, evaluate, resolve_config, train
from bnas.train import checkpoint
from bnas.run.context import Context
from bnas.train.engine import weights_settings
from bnas.run.progress import Progress

TINY = {"arch": "latest_cell_zeroise", "layers": 3, "init_channels": 8, "dataset": "digits",
        "epochs": 2, "batch_size": 32, "train_subset": 96, "val_subset": 64, "workers": 0,
        "progress": False}
CLI_TINY = ["--arch", "latest_cell_zeroise", "--layers", "3", "--init-channels", "8",
            "--dataset", "digits", "--epochs", "1", "--batch-size", "32", "--train-subset", "64",
            "--val-subset", "64", "--workers", "0", "--no-progress"]
CALLBACK_KEYS = {"top1", "top5", "loss", "train_loss", "train_top1", "lr", "epoch_time"}


def tiny(out: Path, **overrides) -> object:
    return resolve_config(None, {**TINY, "out": str(out), **overrides})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One two-epoch run shared by the tests that only read its results."""
    out = tmp_path_factory.mktemp("run")
    calls = []
    result = train(tiny(out), on_epoch_end=lambda epoch, metrics: calls.append((epoch, metrics)))
    return out, result, calls


def test_a_run_writes_config_log_metrics_and_checkpoints(finished_run):
    out, result, calls = finished_run
    assert {"best_top1", "last_top1", "last_top5", "last_loss", "epochs"} <= set(result)
    assert result["epochs"] == 2 and result["out"] == str(out)
    assert [epoch for epoch, _ in calls] == [0, 1]
    assert all(CALLBACK_KEYS <= set(metrics) for _, metrics in calls)
    assert result["last_top1"] == calls[-1][1]["top1"]
    assert result["best_top1"] == max(metrics["top1"] for _, metrics in calls)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1] and records[1]["top1"] == result["last_top1"]
    assert "epoch 2/2" in (out / "log").read_text()
    assert resolve_config(out / "config.yaml", {}) == tiny(out)
    saved = checkpoint.load(out / "checkpoint.pt")
    assert saved["kind"] == "checkpoint" and saved["epoch"] == 2
    assert {"model", "optimizer", "scaler", "schedule", "binarizer", "rng", "best_top1",
            "identity", "config"} <= set(saved)
    assert saved["binarizer"] == {"name": "plain"} and len(saved["rng"]) == 1
    assert saved["best_top1"] == result["best_top1"]
    best = checkpoint.load(out / "best.pt")
    assert best["kind"] == "weights" and best["top1"] == result["best_top1"]
    assert not list(out.glob(".*.tmp"))


def test_saved_weights_evaluate_to_the_logged_accuracy(finished_run):
    out, result, calls = finished_run
    last = evaluate(tiny(out), out / "checkpoint.pt")
    assert last["top1"] == pytest.approx(result["last_top1"])
    assert last["loss"] == pytest.approx(result["last_loss"], rel=1e-5)
    best = evaluate(tiny(out), out / "best.pt")
    assert best["top1"] == pytest.approx(result["best_top1"]) and best["samples"] == 64


def test_eval_command_takes_the_model_from_the_weights(finished_run, capsys):
    out, result, _ = finished_run
    assert main(["eval", "--weights", str(out / "checkpoint.pt"), "--val-subset", "64", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["top1"] == pytest.approx(result["last_top1"])


def test_weights_of_another_architecture_are_refused(finished_run, capsys):
    out, _, _ = finished_run
    with pytest.raises(BnasError, match="holds weights of 'latest_cell_zeroise'.*not of 'latest_cell'"):
        weights_settings(out / "best.pt", {"arch": "latest_cell"})
    with pytest.raises(BnasError, match=r"not of 'latest_cell_zeroise' \(4 layers.*tensors"):
        evaluate(tiny(out, layers=4), out / "best.pt")
    with pytest.raises(BnasError, match="binarizer plain, not recu"):
        evaluate(tiny(out, binarizer="recu"), out / "best.pt")
    assert main(["eval", "--weights", str(out / "best.pt"), "--arch", "resnet20_1w1a"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds weights of 'latest_cell_zeroise'" in err


def test_resume_refuses_a_checkpoint_of_another_architecture(finished_run, tmp_path):
    out, _, _ = finished_run
    with pytest.raises(BnasError, match="holds weights of 'latest_cell_zeroise'"):
        train(tiny(tmp_path / "other", init_channels=12, resume=str(out / "checkpoint.pt"),
                   epochs=3))
    with pytest.raises(BnasError, match="holds weights only"):
        train(tiny(tmp_path / "other", resume=str(out / "best.pt"), epochs=3))


def test_a_finished_run_resumes_to_nothing(finished_run):
    out, result, _ = finished_run
    again = train(tiny(out, resume=True))
    assert again["best_top1"] == result["best_top1"] and again["epochs"] == 2


def test_an_exception_from_the_callback_stops_after_the_checkpoint(tmp_path):
    class Stop(Exception):
        pass

    def stop(epoch, metrics):
        raise Stop(epoch)

    with pytest.raises(Stop):
        train(tiny(tmp_path, epochs=3), on_epoch_end=stop)
    assert checkpoint.load(tmp_path / "checkpoint.pt")["epoch"] == 1


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    cfg = tiny(tmp_path, epochs=3)
    trainer = Trainer(cfg, Context())
    criterion = trainer.criterion
    saved = {}

    def poisoned(logits, target):
        loss = criterion(logits, target)
        return loss * float("nan") if trainer.model.training and saved else loss

    def remember(epoch, metrics):
        saved["bytes"] = (tmp_path / "checkpoint.pt").read_bytes()

    trainer.criterion = poisoned
    with pytest.raises(NonFiniteLoss, match=r"became nan at epoch 2, step 1 .*last good checkpoint "
                                            r"is .*checkpoint.pt \(epoch 1\)"):
        trainer.fit(remember)
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved["bytes"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last(tmp_path, amp):
    result = train(tiny(tmp_path, epochs=1, amp=amp, channels_last=True, grad_clip=5.0,
                        label_smoothing=0.1))
    assert torch.isfinite(torch.tensor(result["last_loss"]))
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert saved["config"]["amp"] == amp
    assert ("scale" in saved["scaler"]) == (amp == "fp16")


def test_command_line_run_and_bad_input(tmp_path, capsys):
    assert main(["train", *CLI_TINY, "--out", str(tmp_path / "cli")]) == 0
    assert "best top-1" in capsys.readouterr().out
    assert (tmp_path / "cli" / "best.pt").is_file()
    bad = [
        (["--arch", "latest_cel"], "unknown architecture 'latest_cel'"),
        (["--arch", str(tmp_path / "gone.json"), "--dataset", "cifar10", "--data",
          str(tmp_path / "no-data")], "genotype file not found"),  # before the data are missed
        (["--config", "bnas-q"], "unknown configuration, preset or file 'bnas-q'"),
        (["--binarizer", "recuu"], "unknown binarizer 'recuu'"),
        (["--loader", "dalli"], "unknown loader 'dalli'"),
        (["--dataset", "imagenet", "--data", str(tmp_path / "missing")], "image folder not found"),
        (["--resume", str(tmp_path / "cli" / "nothing.pt")], "checkpoint not found"),
    ]
    for extra, message in bad:
        assert main(["train", *CLI_TINY, "--out", str(tmp_path / "bad"), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)


def _has_dali() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(_has_dali(), reason="the message is for machines without DALI")
def test_dali_loader_says_how_to_install_it(tmp_path):
    with pytest.raises(BnasError, match="needs NVIDIA DALI .*pip install nvidia-dali"):
        train(tiny(tmp_path, loader="dali", dataset="imagenet", data=str(tmp_path)))


def test_subsets_are_fixed_samples():
    data = torch.utils.data.TensorDataset(torch.arange(100))
    a, b = subset(data, 0.25, seed=3), subset(data, 0.25, seed=3)
    assert len(a) == 25 and a.indices == b.indices and a.indices == sorted(a.indices)
    assert len(subset(data, 10, seed=0)) == 10 and subset(data, 500, seed=0) is data


def test_progress_line_shows_loss_accuracy_speed_and_finish_time():
    stream = io.StringIO()
    progress = Progress(epochs=3, stream=stream, every=0.0)
    progress.start_epoch_(0, 10)
    assert progress.due(5)
    progress.draw(5, 1.2345, 56.7, 640)
    line = stream.getvalue()
    assert "epoch 1/3 [ 5/10] loss 1.2345 top1 56.70%" in line
    assert "img/s" in line and "eta" in line


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    train(tiny(tmp_path, epochs=1))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_hooks_drop_path_ramp_and_loss(tmp_path):
    """The scheme's hooks run at every epoch and batch, drop path ramps as 0.2 * e / E, and the
    smoothed loss is BNAS's ``sum_k -((1 - eps) * onehot + eps / K) * log p``, batch-averaged."""
    trainer = Trainer(tiny(tmp_path, epochs=3, drop_path=0.2, label_smoothing=0.1), Context())
    binarizer = trainer.model.binarizer
    calls = []
    set_epoch, before_batch = binarizer.set_epoch, binarizer.before_batch
    binarizer.set_epoch = lambda m, e, n: (calls.append(("epoch", e, n)), set_epoch(m, e, n))
    binarizer.before_batch = lambda m, e, b: (calls.append(("batch", e, b)), before_batch(m, e, b))
    ramps = []
    trainer.fit(lambda epoch, metrics: ramps.append(trainer.model.drop_path_prob))
    steps = len(trainer.data.train)
    assert calls == [c for e in range(3) for c in [("epoch", e, 3)] + [("batch", e, b) for b in range(steps)]]
    assert ramps == pytest.approx([0.0, 0.2 / 3, 0.4 / 3])

    logits, target = torch.randn(6, 10), torch.randint(0, 10, (6,))
    smooth = 0.9 * torch.nn.functional.one_hot(target, 10) + 0.1 / 10
    by_hand = (-smooth * torch.log_softmax(logits, 1)).mean(0).sum()
    assert trainer.criterion(logits, target) == pytest.approx(by_hand.item(), rel=1e-6)


def test_top_k_counts():
    from bnas.run.metrics import Meter, topk_correct

    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    target = torch.tensor([1, 2, 0])
    assert [int(c) for c in topk_correct(logits, target, (1, 2, 5))] == [1, 2, 3]
    meter = Meter(torch.device("cpu"))
    meter.update(torch.tensor(2.0), logits, target)
    assert meter.result() == {"loss": 2.0, "top1": pytest.approx(100 / 3), "top5": 100.0, "samples": 3}
