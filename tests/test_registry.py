"""Every (model, estimator) combination of the registry, built with every option the CLI accepts for it:
the estimator uses what was asked, the run file records it, and what does not apply is refused."""
from __future__ import annotations

import argparse
import json

import pytest

from labpgt.cli import main
from labpgt.experiment import registry
from labpgt.experiment.options import ConfigError, add_train_arguments, resolve
from labpgt.runfile import RunReader

#: a value for every estimator option of the CLI, none of them the tuned default
ASKED = {"epsilon": 0.07, "directions": 3, "one_sided": True, "distribution": "gaussian", "scope": "upstream"}
FLAGS = {"epsilon": ["--epsilon", "0.07"], "directions": ["--directions", "3"], "one_sided": ["--one-sided"],
         "distribution": ["--distribution", "gaussian"], "scope": ["--scope", "upstream"]}
COMBINATIONS = [(model, name) for model in registry.MODELS for name in registry.estimators_for(model)]


def transformer_reservoir(name: str) -> str:
    """The echo-state network (fast), or the ring for an estimator that needs independent virtual nodes."""
    return "ring" if registry.ESTIMATORS[name].independent_nodes else "esn"


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(list(argv))


def cli_args(model: str, name: str) -> list[str]:
    spec = registry.ESTIMATORS[name]
    args = ["--model", model, "--estimator", name, "--batch-size", "4", "--seed", "5", "--no-progress"]
    if model == "transformer":
        args += ["--reservoir", transformer_reservoir(name), "--budget", "400", "--eval-every", "1000"]
    else:
        args += ["--budget", "48"]
    if spec.lr_applies:
        args += ["--lr", "0.013"]
    for setting in spec.settings_for(model):
        args += FLAGS[setting.option]
    return args


def expected_options(name: str, model: str) -> dict:
    return {s.keyword: s.convert(ASKED[s.option]) for s in registry.ESTIMATORS[name].settings_for(model)}


def test_the_registry_is_the_one_list():
    assert registry.MODELS == ("dense", "transformer", "deep")
    assert set(registry.estimators_for("dense")) == {"node", "pgt", "spsa", "oracle", "twin"}
    assert set(registry.estimators_for("deep")) == {"node", "pgt", "phyll"}
    assert set(registry.estimators_for("transformer")) == {"node", "pgt", "spsa", "oracle", "backprop", "node-token",
                                                           "token-twin"}
    # every estimator option of the CLI maps onto a constructor keyword of some estimator
    assert set(registry.ESTIMATOR_OPTIONS) == set(ASKED)


@pytest.mark.parametrize("model, name", COMBINATIONS)
def test_every_combination_uses_and_records_every_option_asked(model, name, tmp_path, capsys):
    out = tmp_path / "run.h5"
    assert main(["train", *cli_args(model, name), "--out", str(out)]) == 0, capsys.readouterr().err
    with RunReader(out) as reader:
        recorded = json.loads(reader.metadata["estimator_options"])
        experiment = reader.metadata["experiment_toml"]
    for keyword, value in expected_options(name, model).items():
        assert recorded[keyword] == value, (keyword, recorded)
    assert "batch_size = 4" in experiment
    # the same options rebuild the same estimator (what replay and --resume do)
    capsys.readouterr()
    assert main(["replay", str(out)]) == 0
    assert "bit for bit" in capsys.readouterr().out


def test_the_cases_that_were_silently_wrong_now_do_what_was_asked(tmp_path):
    # the transformer's node-token took eps 0.1 and pgt 1 direction while the file said 0.05 and 3
    from labpgt.experiment.builder import build_trainer, in_process_reservoir

    for argv, keyword, value in ((("--epsilon", "0.05", "--estimator", "node-token"), "epsilon", 0.05),
                                 (("--directions", "3", "--estimator", "pgt"), "n_directions", 3)):
        config = resolve(parse("--model", "transformer", "--reservoir", "esn", *argv))
        trainer = build_trainer(config, in_process_reservoir("esn", 8))
        assert trainer.estimator.options()[keyword] == value


@pytest.mark.parametrize("model, name", COMBINATIONS)
def test_options_that_do_not_apply_are_refused_naming_what_does(model, name):
    spec = registry.ESTIMATORS[name]
    taken = {s.option for s in spec.settings_for(model)}
    base = ["--model", model, "--estimator", name] + (["--reservoir", transformer_reservoir(name)]
                                                      if model == "transformer" else [])
    for option in set(ASKED) - taken:
        with pytest.raises(ConfigError, match=f"option '{option}' does not apply to estimator '{name}'"):
            resolve(parse(*base, *FLAGS[option]))
    if not spec.lr_applies:
        with pytest.raises(ConfigError, match="'lr' does not apply"):
            resolve(parse(*base, "--lr", "0.1"))


def test_model_options_that_do_not_apply_are_refused():
    with pytest.raises(ConfigError, match="'nodes' = 3 applies to the dense and deep models only"):
        resolve(parse("--model", "transformer", "--nodes", "3"))
    with pytest.raises(ConfigError, match="'task' = 'narma10' applies to the transformer model only"):
        resolve(parse("--task", "narma10"))
    with pytest.raises(ConfigError, match="noise_scale"):
        resolve(parse("--station", "lab.toml", "--noise-scale", "2"))
    # a value equal to the default changes nothing and is accepted (an effective TOML copied back)
    assert resolve(parse("--task", "digits-seq"))["model"] == "dense"


def test_an_oracle_without_a_noiseless_model_is_refused_when_built():
    from labpgt.data.datasets import load
    from labpgt.experiment.builder import make_trainer
    from labpgt.reservoirs.replay import ReplayReservoir  # a reservoir that declares no NoiselessModel

    class Measured(ReplayReservoir):
        def __init__(self):
            self.n_inputs, self.n_features, self.n_nodes, self.independent_nodes, self.measurements = 2, 10, 1, True, 0

    with pytest.raises(ValueError, match="a real station cannot be an oracle"):
        make_trainer(load("iris"), "oracle", Measured())


def test_a_kick_that_leaves_the_knob_range_is_refused_before_anything_is_measured(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", "--estimator", "node", "--epsilon", "0.2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "epsilon 0.2" in err and "1 - u_scale = 0.1" in err
    assert not out.exists()  # refused with the options, before the station was even started
