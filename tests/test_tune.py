"""``bnas tune`` end to end on digits with a tiny cell network and the real training engine."""
from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
import yaml

from bnas import genotype
from bnas.cli import main
from bnas.train.config import resolve_config
from bnas.tune import PRUNERS
from bnas.tune.study import open_storage, storage_url

State = optuna.trial.TrialState
TINY = ["--arch", "latest_cell_zeroise", "--layers", "3", "--init-channels", "4",
        "--dataset", "digits", "--batch-size", "32", "--train-subset", "32", "--val-subset", "32",
        "--workers", "0"]


def _study(out, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage_url(None, out)))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A study of three 2-epoch trials under the median pruner (pruning from the second trial)."""
    out = tmp_path_factory.mktemp("tune")
    rc = main(["tune", *TINY, "--epochs", "2", "--trials", "3", "--pruner", "median",
               "--pruner-startup", "1", "--study", "s", "--out", str(out)])
    assert rc == 0
    return out


def test_study_with_pruning_completes(tuned):
    study = _study(tuned, "s")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert {t.state for t in trials} <= {State.COMPLETE, State.PRUNED}
    assert trials[0].state == State.COMPLETE  # nothing to compare with yet
    for t in trials:
        # validation top-1 reported after every epoch, at step = epochs trained
        steps = sorted(t.intermediate_values)
        assert steps == ([1, 2] if t.state == State.COMPLETE else [1])
        assert all(0.0 <= v <= 100.0 for v in t.intermediate_values.values())
        if t.state == State.COMPLETE:
            assert t.value == max(t.intermediate_values.values())  # the run's best top-1
        assert 5e-3 <= t.params["lr"] <= 0.5 and 1e-6 <= t.params["weight_decay"] <= 1e-3
        assert (tuned / "trials" / str(t.number) / "checkpoint.pt").is_file()
    summary = (tuned / "summary.txt").read_text().splitlines()
    assert summary[0].startswith("study 's': 3 trials") and len(summary) == 5
    assert (tuned / "history.png").is_file() and (tuned / "intermediate.png").is_file()


def test_pruned_trial_stops_after_its_epoch(tmp_path, monkeypatch, capsys):
    # a pruner that judges every trial hopeless: the engine must stop after the first epoch
    monkeypatch.setitem(PRUNERS._items, "always", lambda options: optuna.pruners.ThresholdPruner(lower=101.0))
    rc = main(["tune", *TINY, "--epochs", "3", "--trials", "1", "--pruner", "always",
               "--study", "p", "--out", str(tmp_path)])
    assert rc == 0
    (trial,) = _study(tmp_path, "p").get_trials()
    assert trial.state == State.PRUNED and list(trial.intermediate_values) == [1]
    metrics = (tmp_path / "trials" / "0" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1  # one epoch trained, its checkpoint written
    out = capsys.readouterr().out
    assert "trial 0 pruned: top-1 " in out and "best preset: none yet" in out
    assert f"intermediate plot: {tmp_path / 'intermediate.png'}" in out


def test_diverging_trial_is_pruned_and_the_study_goes_on(tmp_path, capsys):
    # a learning rate this large drives the loss to NaN in the second epoch
    rc = main(["tune", *TINY, "--train-subset", "64", "--epochs", "3", "--trials", "1",
               "--schedule", "constant", "--param", "lr=1e10:1e12:log", "--study", "d",
               "--out", str(tmp_path)])
    assert rc == 0
    (trial,) = _study(tmp_path, "d").get_trials()
    assert trial.state == State.PRUNED and "the training loss became nan" in trial.user_attrs["diverged"]
    assert "trial 0 pruned: diverged" in capsys.readouterr().out


def test_resume_adds_trials_and_rejects_other_settings(tuned, capsys):
    # resume with a cap on the whole study: one more trial, although 5 are allowed to this process
    assert main(["tune", "--study", "s", "--out", str(tuned), "--trials", "5", "--total-trials", "4",
                 "--workers", "0"]) == 0
    assert [t.number for t in _study(tuned, "s").get_trials()] == [0, 1, 2, 3]
    capsys.readouterr()
    assert main(["tune", "--study", "s", "--out", str(tuned), "--trials", "1", "--epochs", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bnas tune: error: study 's' was created with epochs=2, not 5; leave the option "
                   "out to join it, or pick another --study"]
    assert len(_study(tuned, "s").get_trials()) == 4


def test_best_preset_trains(tuned, tmp_path, capsys):
    preset = tuned / "best.yaml"
    study = _study(tuned, "s")
    best = max(study.get_trials(states=(State.COMPLETE,)), key=lambda t: t.value)
    settings = yaml.safe_load(preset.read_text())
    assert settings["lr"] == best.params["lr"] and settings["weight_decay"] == best.params["weight_decay"]
    assert settings["train_subset"] is None  # the proxy budget stays out of the preset
    run = tmp_path / "run"
    rc = main(["train", "--config", str(preset), "--epochs", "1", "--train-subset", "32",
               "--val-subset", "32", "--workers", "0", "--no-progress", "--out", str(run)])
    assert rc == 0
    used = yaml.safe_load((run / "config.yaml").read_text())
    assert (used["arch"], used["layers"], used["init_channels"], used["dataset"]) == (
        "latest_cell_zeroise", 3, 4, "digits")
    assert used["lr"] == best.params["lr"] and used["weight_decay"] == best.params["weight_decay"]
    assert "best top-1" in capsys.readouterr().out


def test_two_workers_share_one_sqlite_study(tmp_path):
    args = [sys.executable, "-m", "bnas", "tune", *TINY, "--epochs", "1", "--trials", "2",
            "--pruner", "hyperband", "--study", "w", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    results = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-2000:] for _, err in results]
    trials = _study(tmp_path, "w").get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == State.COMPLETE for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # no trial run twice
    assert sorted(p.name for p in (tmp_path / "trials").iterdir()) == ["0", "1", "2", "3"]
    outs = "".join(out for out, _ in results)
    assert outs.count("(new, 0 trials so far)") == 1 and "joined" in outs


def test_search_mode_tunes_the_search_and_retrains_what_it_found(tmp_path, capsys):
    user_dir = genotype.user_dir()
    rc = main(["tune", "--mode", "search", "--dataset", "digits", "--layers", "3", "--init-channels", "4",
               "--batch-size", "32", "--train-subset", "32", "--val-subset", "32", "--workers", "0",
               "--epochs", "1", "--trials", "1", "--search-arg", "epochs=1", "--search-arg", "subset=32",
               "--search-arg", "layers=3", "--search-arg", "init_channels=4", "--search-arg", "batch_size=16",
               "--channels-last", "--study", "sm", "--out", str(tmp_path)])  # retraining option
    assert rc == 0
    (trial,) = _study(tmp_path, "sm").get_trials()
    assert trial.state == State.COMPLETE and set(trial.params) == {"lam", "tau", "arch_lr"}
    found = genotype.load(trial.user_attrs["genotype"])  # the searched cell, kept with the trial
    assert trial.user_attrs["genotype"].startswith(str(tmp_path / "trials" / "0"))
    assert not list(user_dir.glob("*.json"))  # trial genotypes stay out of the user's library
    assert (tmp_path / "trials" / "0" / "train" / "best.pt").is_file()
    cfg = resolve_config(tmp_path / "best.yaml", {})  # retrains the best trial's genotype
    assert cfg.arch == trial.user_attrs["genotype"] and cfg.layers == 3 and cfg.dataset == "digits"
    assert genotype.load(cfg.arch).cells() == found.cells()
    assert "found by bnas search with epochs=1, subset=32" in (tmp_path / "best.yaml").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--param", "lrr=0.01:0.1"], "unknown hyper-parameter 'lrr'; did you mean lr?"),
    (["--param", "lr=0.5:0.1"], "parameter 'lr': empty range 0.5:0.1 (low must be below high)"),
    (["--binarizer", "recu", "--param", "Tmin=0.01:0.1"], "unknown hyper-parameter 'Tmin'"),
    (["--lr", "0.1", "--param", "lr=0.01:0.1"], "lr is both fixed by an option and tuned"),
    (["--search-arg", "epochs=1"], "--search-arg needs --mode search"),
    (["--mode", "search"], "--arch has no place in search mode"),
    (["--storage", "sqlite:////nonexistent-dir/tune.db"],
     "cannot open study storage sqlite:////nonexistent-dir/tune.db: "),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    rc = main(["tune", *TINY, "--trials", "1", "--study", "bad", "--out", str(tmp_path), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("bnas tune: error: ")
    assert message in err[0]
    assert not (tmp_path / "trials").exists()


def test_resuming_an_unknown_study_says_how_to_start_it(tmp_path, capsys):
    assert main(["tune", "--study", "nope", "--out", str(tmp_path)]) == 2
    assert "no study 'nope'" in capsys.readouterr().err


def test_print_space_shows_the_binarizer_defaults(capsys):
    assert main(["tune", *TINY, "--binarizer", "recu", "--print-space"]) == 0
    space = yaml.safe_load(capsys.readouterr().out)
    assert set(space) == {"lr", "weight_decay", "tau_min", "tau_max"}
    assert space["lr"] == {"type": "float", "low": 0.005, "high": 0.5, "log": True}
