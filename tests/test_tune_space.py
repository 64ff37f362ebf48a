"""The search-space format of ``bnas tune``: parsing, validation, sampling, defaults."""
from __future__ import annotations

import math

import optuna
import pytest
import yaml

from bnas.binarize import BINARIZERS
from bnas.errors import BnasError
from bnas.train.config import TrainConfig
from bnas.tune import defaults
from bnas.search.config import SearchConfig
from bnas.tune.modes import NOT_TUNABLE, SEARCH_NOT_TUNABLE, config_targets
from bnas.tune.space import SearchSpace, Target, build_space, parse_param, parse_param_option

TARGETS = {"lr": Target("config", 0.1), "weight_decay": Target("config", 0.0),
           "warmup_epochs": Target("config", 0), "optimizer": Target("config", "sgd"),
           "grad_clip": Target("config", None, "float"), "depth": Target("config", None),
           "tau_min": Target("binarizer_hparams", 0.85)}


def test_entries_parse_with_types_inferred_from_the_targets():
    space = SearchSpace.parse({
        "lr": {"type": "float", "low": 1e-3, "high": 0.5, "log": True},
        "weight_decay": {"low": "1e-6", "high": "1e-3", "log": True},  # PyYAML reads 1e-6 as text
        "warmup_epochs": {"low": 0, "high": 5},
        "grad_clip": {"low": 1, "high": 10},
        "optimizer": {"choices": ["sgd", "adam"]},
    }, TARGETS)
    assert space["lr"].type == "float" and space["lr"].log
    assert (space["weight_decay"].low, space["weight_decay"].high) == (1e-6, 1e-3)
    assert space["warmup_epochs"].type == "int"            # the field is an int
    assert space["grad_clip"].type == "float"              # declared float: integer bounds widen
    assert isinstance(space["grad_clip"].low, float)
    assert parse_param("depth", {"low": 1, "high": 4}, TARGETS).type == "int"  # undeclared: the bounds
    assert space["optimizer"].type == "categorical" and space["optimizer"].choices == ("sgd", "adam")


def test_param_option_forms():
    assert parse_param_option("lr=0.01:0.3:log", TARGETS).to_dict() == {
        "type": "float", "low": 0.01, "high": 0.3, "log": True}
    assert parse_param_option("warmup_epochs=1:4", TARGETS).to_dict() == {"type": "int", "low": 1, "high": 4}
    assert parse_param_option("optimizer=sgd,adam", TARGETS).choices == ("sgd", "adam")
    assert parse_param_option("grad_clip=1,5.5,null", TARGETS).choices == (1, 5.5, None)


@pytest.mark.parametrize("text, message", [
    ("lrr=0.1:1", "unknown hyper-parameter 'lrr'; did you mean lr"),
    ("lr=0.5:0.1", "empty range 0.5:0.1"),
    ("lr=0.1:0.1", "empty range 0.1:0.1"),
    ("lr=0:1:log", "a log range needs low > 0"),
    ("lr=a:b", "low must be a number"),
    ("lr=0.1:1:lin", "expected name=low:high"),
    ("lr=", "expected name=low:high"),
    ("warmup_epochs=0.5:3", "low must be an integer"),
    ("optimizer=sgd,sgd", "repeated choices"),
])
def test_bad_param_options(text, message):
    with pytest.raises(BnasError, match=message.replace("(", r"\(")):
        parse_param_option(text, TARGETS)


@pytest.mark.parametrize("entry, message", [
    ({"type": "float", "low": 0.1}, "needs 'high'"),
    ({"type": "float", "low": 0.1, "high": 1, "lo": 0}, "unknown key lo"),
    ({"type": "float", "low": 0.1, "high": 1, "log": True, "step": 0.1}, "either log or step"),
    ({"type": "float", "low": 0.1, "high": 1, "step": 2.0}, "step must be positive"),
    ({"type": "categorical", "choices": []}, "at least one choice"),
    ({"type": "categorical", "choices": "sgd"}, "choices must be a list"),
    ({"type": "categorical", "choices": [[1, 2]]}, "numbers, strings"),
    ({"type": "normal", "low": 0, "high": 1}, "unknown parameter type 'normal'"),
    (0.1, "expected a mapping"),
])
def test_bad_entries(entry, message):
    with pytest.raises(BnasError, match=message):
        parse_param("lr", entry, TARGETS)


def test_space_yaml_round_trip_and_overrides():
    space = build_space({"lr": {"low": 0.01, "high": 0.5, "log": True}}, TARGETS,
                        params=["optimizer=sgd,adam", "lr=0.001:0.01"])
    assert list(space) == ["lr", "optimizer"]
    assert space["lr"].to_dict() == {"type": "float", "low": 0.001, "high": 0.01}
    again = SearchSpace.parse(yaml.safe_load(space.to_yaml()), TARGETS)
    assert again.to_dict() == space.to_dict()


def test_space_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {low: 1e-3, high: 1e-1, log: true}\ntau_min: {low: 0.6, high: 0.8}\n")
    space = build_space({}, TARGETS, space_file=path)
    assert space.to_dict() == {"lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
                               "tau_min": {"type": "float", "low": 0.6, "high": 0.8}}
    path.write_text("lr: [1, 2\n")
    with pytest.raises(BnasError, match="not valid YAML"):
        build_space({}, TARGETS, space_file=path)
    with pytest.raises(BnasError, match="cannot read search space"):
        build_space({}, TARGETS, space_file=tmp_path / "missing.yaml")


def test_sampled_values_stay_in_range_with_their_type():
    space = build_space({}, TARGETS, params=["lr=0.001:0.1:log", "warmup_epochs=0:3", "optimizer=sgd,adam"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = space.suggest(study.ask())
        assert 0.001 <= values["lr"] <= 0.1 and isinstance(values["lr"], float)
        assert values["warmup_epochs"] in range(4) and isinstance(values["warmup_epochs"], int)
        assert values["optimizer"] in ("sgd", "adam")
    # log scale: log-uniform draws have their median near the range's geometric mean (0.01)
    logs = sorted(math.log10(space["lr"].suggest(study.ask())) for _ in range(200))
    assert abs(logs[100] + 2.0) < 0.3
    assert [space["lr"].suggest(optuna.trial.FixedTrial({"lr": v})) for v in (0.001, 0.1)] == [0.001, 0.1]


@pytest.mark.parametrize("binarizer", BINARIZERS.names())
def test_default_spaces_are_valid_for_their_binarizer(binarizer):
    hparams = BINARIZERS.get(binarizer).hparams
    targets = {**config_targets(TrainConfig),
               **{k: Target("binarizer_hparams", v) for k, v in hparams.items()}}
    space = SearchSpace.parse(defaults.train_space(binarizer), targets)
    for name, param in space.items():
        default = targets[name].default
        if param.type != "categorical" and isinstance(default, (int, float)) and name in hparams:
            # each range brackets the method's published default
            assert param.low <= default <= param.high, (name, default)
        if param.log:
            assert param.low > 0 and math.isfinite(math.log(param.high / param.low))
    assert defaults.train_space("no-such-scheme") == defaults.SGD_SPACE


def test_run_fields_are_not_tunable():
    targets = config_targets(TrainConfig)
    assert {"lr", "weight_decay", "momentum", "label_smoothing", "warmup_epochs"} <= set(targets)
    assert not NOT_TUNABLE & set(targets)
    assert targets["grad_clip"].number == "float" and targets["warmup_epochs"].number == "int"
    assert NOT_TUNABLE <= {f for f in TrainConfig.__dataclass_fields__}


def test_default_search_space_brackets_bnas_settings():
    targets = config_targets(SearchConfig)
    space = SearchSpace.parse(defaults.SEARCH_SPACE, targets)
    assert list(space) == ["lam", "tau", "arch_lr"]
    bnas = SearchConfig()  # lambda 1.0, tau 7.7, arch lr 3e-4 (Kim et al., ECCV 2020)
    for name, param in space.items():
        assert param.log and param.low < getattr(bnas, name) < param.high
    assert {"lr", "momentum", "order", "space"} <= set(targets)
    assert not SEARCH_NOT_TUNABLE & set(targets)
