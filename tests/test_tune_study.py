"""Studies of ``bnas tune``: storage, stored setups, pruners, and the report (no training here)."""
from __future__ import annotations

import optuna
import pytest
import yaml

from bnas.errors import BnasError
from bnas.train.config import resolve_config
from bnas.tune import TuneSetup
from bnas.tune.report import summary_table, write_plots, write_preset
from bnas.tune.setup import STUDY_ATTR, check_given
from bnas.tune.study import PRUNERS, PrunerOptions, load_setup, open_storage, open_study, storage_url

SETUP = TuneSetup(mode="train", overrides={"arch": "latest_cell_zeroise", "dataset": "digits",
                                           "layers": 3, "init_channels": 8},
                  budget={"epochs": 2, "train_subset": 64},
                  space={"lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
                         "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True}})


def test_storage_urls(tmp_path):
    assert storage_url(None, tmp_path / "out") == f"sqlite:///{tmp_path / 'out' / 'tune.db'}"
    assert (tmp_path / "out").is_dir()
    assert storage_url(str(tmp_path / "s.db"), tmp_path) == f"sqlite:///{tmp_path / 's.db'}"
    assert storage_url("postgresql://u@h/db", tmp_path) == "postgresql://u@h/db"


@pytest.mark.parametrize("url, shown", [
    ("sqlite:////nonexistent-dir/x/tune.db", "sqlite:////nonexistent-dir/x/tune.db"),
    ("postgresql://user:secret@127.0.0.1:9/db", "postgresql://user:***@127.0.0.1:9/db"),
    ("nosuchdialect://host/db", "nosuchdialect://host/db"),
])
def test_unreachable_storage_is_one_line(url, shown):
    with pytest.raises(BnasError) as info:
        open_storage(url)
    message = str(info.value)
    assert message.startswith(f"cannot open study storage {shown}: ") and "\n" not in message
    assert "secret" not in message


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_create_then_join_keeps_the_stored_setup(tmp_path):
    storage = open_storage(storage_url(None, tmp_path))
    assert load_setup(storage, "s") is None
    study, setup, created = open_study(storage, "s", SETUP, seed=0)
    assert created and setup == SETUP
    assert TuneSetup.from_json(study.user_attrs[STUDY_ATTR]) == SETUP
    other = TuneSetup(mode="train", overrides={"arch": "resnet20_1w1a"})
    joined, setup, created = open_study(storage, "s", other, seed=0)
    assert not created and setup == SETUP  # the stored setup wins
    # a worker joining draws its own sampler seed: it does not replay the creator's samples
    first = [optuna.load_study(study_name="s", storage=storage, sampler=s.sampler).ask()
             .suggest_float("x", 0, 1) for s in (study, joined)]
    assert first[0] != first[1]


def test_given_options_must_agree_with_the_stored_setup():
    check_given(SETUP, {"overrides.arch": "latest_cell_zeroise", "budget.epochs": 2}, "s")
    with pytest.raises(BnasError, match="study 's' was created with epochs=2, not 5"):
        check_given(SETUP, {"budget.epochs": 5}, "s")
    with pytest.raises(BnasError, match="created with binarizer=None, not recu"):
        check_given(SETUP, {"overrides.binarizer": "recu"}, "s")


def test_pruners():
    options = PrunerOptions(epochs=9, startup=2)
    assert isinstance(PRUNERS.get("median")(options), optuna.pruners.MedianPruner)
    hyperband = PRUNERS.get("hyperband")(options)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner) and hyperband._max_resource == 9
    assert isinstance(PRUNERS.get("none")(options), optuna.pruners.NopPruner)
    with pytest.raises(BnasError, match="unknown pruner"):
        PRUNERS.get("medain")


def _finished_study(tmp_path) -> optuna.Study:
    storage = open_storage(storage_url(None, tmp_path))
    study, _, _ = open_study(storage, "s", SETUP, seed=0)
    dist = {"lr": optuna.distributions.FloatDistribution(0.01, 0.5, log=True),
            "weight_decay": optuna.distributions.FloatDistribution(1e-6, 1e-3, log=True)}
    rows = [(optuna.trial.TrialState.COMPLETE, {1: 20.0, 2: 31.0}, 31.0, 0.05, 1e-4),
            (optuna.trial.TrialState.PRUNED, {1: 9.0}, None, 0.4, 1e-5),
            (optuna.trial.TrialState.COMPLETE, {1: 25.0, 2: 42.5}, 42.5, 0.1, 3e-5)]
    for state, steps, value, lr, wd in rows:
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value, params={"lr": lr, "weight_decay": wd}, distributions=dist,
            intermediate_values=steps))
    return study


def test_summary_preset_and_plots(tmp_path):
    study = _finished_study(tmp_path)
    table = summary_table(study).splitlines()
    assert table[0] == "study 's': 3 trials (2 complete, 1 pruned)"
    assert table[1].split() == ["trial", "state", "top1", "epochs", "lr", "weight_decay"]
    assert [line.split()[:4] for line in table[2:]] == [
        ["2", "complete", "42.5", "2"], ["0", "complete", "31", "2"], ["1", "pruned", "9", "1"]]

    best = write_preset(study, SETUP, tmp_path / "best.yaml")
    assert best.number == 2
    text = (tmp_path / "best.yaml").read_text()
    assert text.startswith("# bnas tune: best of study 's' (trial 2, top-1 42.50")
    preset = yaml.safe_load(text)
    full = resolve_config(None, SETUP.overrides)
    assert "out" not in preset and preset["epochs"] == full.epochs != 2  # the full budget, not the proxy's
    cfg = resolve_config(tmp_path / "best.yaml", {})
    assert (cfg.lr, cfg.weight_decay, cfg.arch, cfg.layers, cfg.dataset) == (
        0.1, 3e-5, "latest_cell_zeroise", 3, "digits")
    assert cfg.train_subset is None

    plots = write_plots(study, tmp_path)
    for stem in ("history", "intermediate", "importance"):
        assert plots[stem] == str(tmp_path / f"{stem}.png")
        assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_and_preset_without_enough_trials(tmp_path):
    storage = open_storage(storage_url(None, tmp_path))
    study, _, _ = open_study(storage, "s", SETUP, seed=0)
    assert write_preset(study, SETUP, tmp_path / "best.yaml") is None
    plots = write_plots(study, tmp_path)
    assert plots["importance"] == "skipped: needs 2 completed trials"
    assert plots["history"] == "skipped: needs 1 completed trial"
    assert plots["intermediate"] == "skipped: needs 1 trial with a finished epoch"
    assert not list(tmp_path.glob("*.png"))
