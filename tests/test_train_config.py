"""Recipe presets and how a run's configuration is resolved."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from bnas.binarize import BINARIZERS
from bnas.cli import build_parser
from bnas.errors import BnasError
from bnas.train.config import TrainConfig, load_preset, preset_names, resolve_config, save_config
from bnas.run.context import per_process_batch
from bnas.run.context import Context
from bnas.train.options import overrides_from_args
from bnas.commands.train import FIELDS


def _cli(*argv: str) -> TrainConfig:
    args = build_parser().parse_args(["train", *argv])
    return resolve_config(*overrides_from_args(args, FIELDS))


def test_bnas_a_gets_the_bnas_cifar_recipe():
    cfg = resolve_config(None, {"config": "bnas-a"})
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (600, 256, 0.05, 0.9, 3e-6)
    assert (cfg.schedule, cfg.drop_path, cfg.dataset, cfg.optimizer) == ("onecycle", 0.2, "cifar10", "sgd")


def test_imagenet_configs_get_the_imagenet_recipes():
    cfg = resolve_config(None, {"config": "bnas-f"})
    assert (cfg.epochs, cfg.label_smoothing, cfg.grad_clip, cfg.schedule) == (250, 0.1, 5.0, "cosine_restarts")
    assert cfg.schedule_args == {"period": 50} and cfg.amp is None
    amp = resolve_config(None, {"config": "bnas-h"})
    assert amp.amp == "fp16" and amp.epochs == 250  # extends bnas-imagenet


def test_every_scheme_recipe_is_a_shipped_preset():
    """One source per recipe: each scheme names the presets of its paper."""
    for name in BINARIZERS.names():
        scheme = BINARIZERS.get(name)
        for family, preset in scheme.recipes.items():
            assert preset in preset_names()
            assert scheme.recipe(family) == load_preset(preset)
    assert BINARIZERS.get("plain").recipes == {"cifar": "bnas-cifar", "imagenet": "bnas-imagenet"}
    assert BINARIZERS.get("recu").recipe("imagenet")["batch_size"] == 512
    assert BINARIZERS.get("recu").recipe("mnist") == {}


def test_binarizer_recipe_fills_what_no_preset_pins():
    cfg = resolve_config(None, {"arch": "resnet20_1w1a", "binarizer": "recu"})
    assert (cfg.epochs, cfg.lr, cfg.weight_decay, cfg.warmup_epochs, cfg.schedule) == (600, 0.1, 5e-4, 5, "cosine")
    cfg = resolve_config(None, {"arch": "resnet20_1w1a", "binarizer": "ReCU", "dataset": "imagenet"})
    assert (cfg.binarizer, cfg.epochs, cfg.batch_size) == ("recu", 200, 512)


def test_options_beat_presets_and_presets_beat_recipes(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("lr: 0.3\nepochs: 7\n")
    cfg = resolve_config(preset, {"binarizer": "rbnn", "epochs": 3, "layers": None})
    # RBNN's 5 warm-up epochs, planned for the preset's 7, scale to the 3 given (phases.py)
    assert (cfg.lr, cfg.epochs, cfg.weight_decay, cfg.warmup_epochs) == (0.3, 3, 1e-4, 2)


def test_hyper_parameters_of_another_scheme_are_dropped(tmp_path):
    preset = tmp_path / "tuned.yaml"
    preset.write_text("binarizer: bop\nbinarizer_hparams: {gamma: 0.001}\n")
    assert resolve_config(preset, {}).binarizer_hparams == {"threshold": 1e-8, "gamma": 0.001}
    cfg = resolve_config(preset, {"binarizer": "recu", "binarizer_hparams": {"tau_min": 0.8}})
    assert cfg.binarizer_hparams == {"tau_min": 0.8}
    onecycle = resolve_config(None, {"config": "bnas-a", "schedule": "cosine"})
    assert onecycle.schedule_args == {}


def test_saved_config_resolves_to_itself(tmp_path):
    cfg = resolve_config(None, {"arch": "resnet20_1w1a", "binarizer": "bop", "dataset": "digits"})
    save_config(cfg, tmp_path / "config.yaml")
    assert resolve_config(tmp_path / "config.yaml", {}) == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["binarizer_hparams"]["gamma"]["every"] == 100


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(BnasError, match="unknown setting lrr in the options"):
        resolve_config(None, {"lrr": 1})
    with pytest.raises(BnasError, match="unknown recipe preset 'bnas-cifr'; did you mean bnas-cifar"):
        resolve_config("bnas-cifr", {})
    with pytest.raises(BnasError, match="unknown configuration 'bnas-z'"):
        resolve_config(None, {"config": "bnas-z"})
    with pytest.raises(BnasError, match="unknown binarizer 'recuu'"):
        resolve_config(None, {"binarizer": "recuu"})
    with pytest.raises(BnasError, match="unknown loader 'dalli'"):
        resolve_config(None, {"loader": "dalli"})
    with pytest.raises(BnasError, match="epochs must be an integer >= 1"):
        resolve_config(None, {"epochs": 0})
    (tmp_path / "bad.yaml").write_text("foo: 1\n")
    with pytest.raises(BnasError, match="unknown setting foo in preset"):
        resolve_config(tmp_path / "bad.yaml", {})
    (tmp_path / "image.yaml").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(BnasError, match="image.yaml: not a text file"):
        resolve_config(tmp_path / "image.yaml", {})
    with pytest.raises(BnasError, match="does not split evenly across 3 processes"):
        per_process_batch(256, Context(world_size=3))


def test_command_line_options(tmp_path):
    cfg = _cli("--config", "bnas-a", "--layers", "8", "--epochs", "3", "--binarizer", "recu",
               "--binarizer-hparam", "tau_min=0.8", "--no-progress", "--train-subset", "0.5")
    assert (cfg.config, cfg.layers, cfg.epochs, cfg.binarizer, cfg.progress) == ("bnas-a", 8, 3, "recu", False)
    assert cfg.binarizer_hparams == {"tau_min": 0.8} and cfg.train_subset == 0.5 and cfg.lr == 0.05
    imagenet = _cli("--config", "bnas-imagenet", "--arch", "latest_cell", "--grad-clip", "none",
                    "--amp", "bf16", "--schedule-arg", "period=10")
    assert imagenet.config is None and imagenet.grad_clip is None and imagenet.amp == "bf16"
    assert imagenet.schedule_args == {"period": 10}
    save_config(imagenet, tmp_path / "c.yaml")
    assert _cli("--config", str(tmp_path / "c.yaml")) == imagenet
    with pytest.raises(BnasError, match="unknown configuration, preset or file 'bnas-q'"):
        _cli("--config", "bnas-q")


def test_every_field_has_a_default_and_help():
    for field in dataclasses.fields(TrainConfig):
        assert field.metadata["help"]
    assert TrainConfig().validate() == TrainConfig()
    assert set(preset_names()) >= {"bnas-cifar", "bnas-imagenet", "bnas-imagenet-amp"}
