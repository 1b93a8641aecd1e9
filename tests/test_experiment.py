"""Experiment options: defaults < --config file < flags; bad files say what is wrong and what is allowed."""
from __future__ import annotations

import argparse

import h5py
import numpy as np
import pytest

from labpgt.cli import main
from labpgt.experiment.options import OPTIONS, ConfigError, add_train_arguments, config_to_toml, parse_config_text, resolve


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(list(argv))


def test_precedence_defaults_then_file_then_flags(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('estimator = "pgt"\nbudget = 1234\nseed = 7\n')
    config = resolve(parse("--config", str(cfg), "--seed", "9"))
    assert config["estimator"] == "pgt" and config["budget"] == 1234 and config["seed"] == 9
    assert config["dataset"] == OPTIONS["dataset"].default


def test_every_cli_option_can_be_set_in_the_file(tmp_path):
    values = {"station": "x.toml", "dataset": "digits", "estimator": "spsa", "budget": 10, "seed": 1,
              "out": "o", "batch_size": 4, "lr": 0.1, "epsilon": 0.02, "directions": 2, "one_sided": True,
              "distribution": "gaussian", "scope": "upstream", "nodes": 2, "bands": 5, "hidden": 4,
              "current_a": 1.7, "current_window_a": 0.01, "reference_hz": 2.08e9, "eval_every": 3, "checkpoint_every": 4,
              "noise_scale": 3.0, "progress": False, "model": "transformer", "task": "narma10", "reservoir": "esn",
              "label": "class", "test_fraction": 0.3,
              "blocks": 3, "width": 8, "ring_step_at_s": 60.0, "ring_step_kelvin": -0.5, "ring_step_gain_db": -1.0,
              "reference_from": "maps/current.h5", "probe_center_hz": 2.05e9, "probe_span_hz": 1e8}
    assert set(values) == set(OPTIONS)
    parsed = parse_config_text(config_to_toml(values), "t")
    assert parsed == values


def test_unknown_key_is_named_and_allowed_keys_listed():
    with pytest.raises(ConfigError) as err:
        parse_config_text('budgett = 5\n', "exp.toml")
    assert "exp.toml" in str(err.value) and "'budgett'" in str(err.value) and "budget, seed" in str(err.value)


@pytest.mark.parametrize("text, words", [
    ('budget = "lots"\n', ["budget", "int", "lots"]),
    ('estimator = "adam"\n', ["estimator", "adam", "node, pgt, spsa, oracle"]),
    ('lr = -0.1\n', ["lr", "positive"]),
    ('budget = [\n', ["not valid TOML"]),
])
def test_bad_values_are_explained(text, words):
    with pytest.raises(ConfigError) as err:
        parse_config_text(text, "exp.toml")
    for word in words:
        assert word in str(err.value)


def test_train_refuses_a_bad_experiment_file_before_touching_anything(tmp_path, capsys):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('estimator = "backprop-magic"\n')
    out = tmp_path / "runs"
    assert main(["train", "--config", str(cfg), "--out", str(out)]) == 2
    assert "backprop-magic" in capsys.readouterr().err
    assert not out.exists()


def test_inspect_and_resume_refuse_files_that_are_not_runs(tmp_path, capsys):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5 at all")
    for path in (foreign, text):
        assert main(["train", "--resume", str(path)]) == 2
        err = capsys.readouterr().err
        assert str(path) in err
    assert main(["inspect", str(foreign)]) == 1
    assert "not a labpgt run file" in capsys.readouterr().out


def test_inspect_shows_what_a_truncated_run_still_holds(tmp_path, capsys):
    run = tmp_path / "run.h5"
    assert main(["train", "--budget", "64", "--out", str(run), "--no-progress"]) == 0
    cut = tmp_path / "cut.h5"
    cut.write_bytes(run.read_bytes()[: run.stat().st_size // 2])
    capsys.readouterr()
    assert main(["inspect", str(cut)]) == 1
    out = capsys.readouterr().out
    assert "truncated" in out and "readable" in out


@pytest.mark.parametrize("flag, value", [("--lr", "nan"), ("--current-a", "inf"), ("--epsilon", "nan")])
def test_non_finite_numbers_are_refused_before_anything_runs(tmp_path, capsys, flag, value):
    out = tmp_path / "runs"
    assert main(["train", flag, value, "--out", str(out)]) == 2
    assert "finite" in capsys.readouterr().err
    assert not out.exists()


def test_measure_checks_every_value_before_the_magnet_moves(capsys):
    assert main(["measure", "--power", "50"]) == 2
    err = capsys.readouterr().err
    assert "--power" in err and "50" in err


def test_peaks_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["measure", "--peaks", "0"])
    assert exit_info.value.code == 2
    assert "give 1 or more" in capsys.readouterr().err


def test_a_run_file_path_in_a_new_directory_is_created(tmp_path):
    run = tmp_path / "new" / "deeper" / "run.h5"
    assert main(["train", "--budget", "64", "--out", str(run), "--no-progress"]) == 0
    assert run.exists()


def test_an_experiment_table_beside_other_tables_is_explained():
    with pytest.raises(ConfigError) as err:
        parse_config_text('[experiment]\nbudget = 5\n[other]\nx = 1\n', "exp.toml")
    assert "one [experiment] table" in str(err.value)
    assert parse_config_text('[experiment]\nbudget = 5\n', "exp.toml") == {"budget": 5}


def test_the_shipped_example_experiment_file_is_valid():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "experiment.toml"
    config = resolve(parse("--config", str(path)))
    assert config["estimator"] == "node" and config["budget"] == 20000 and config["seed"] == 1


def test_a_budget_below_one_batch_is_refused_before_a_run_file_exists(tmp_path, capsys):
    run = tmp_path / "r.h5"
    assert main(["train", "--estimator", "node", "--budget", "10", "--nodes", "4", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "smaller than one batch" in err and "128 or more" in err  # 32 samples x 4 nodes
    assert not run.exists()


@pytest.mark.parametrize("flag, value", [("--hidden", "100000000"), ("--nodes", "100000"), ("--batch-size", "10000000"),
                                         ("--directions", "5000"), ("--bands", "1000000")])
def test_sizes_that_would_exhaust_memory_are_refused_before_anything_moves(flag, value, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", flag, value, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "too large" in err and value in err and err.count("\n") == 1
    assert not out.exists()


def test_a_long_fault_spec_is_a_spec_not_a_file_name(tmp_path):
    from labpgt.cli import fault_settings
    from sim.server import SimServer

    spec = ";".join(f"spectrum_analyzer:timeout@{n}" for n in range(1000, 1040))  # > 255 characters
    assert len(spec) > 255
    assert fault_settings(spec) == spec  # was: OSError "File name too long"
    with SimServer(seed=0, faults=fault_settings(spec)):
        pass  # the simulator accepts it as a spec
    table = tmp_path / "faults.toml"
    table.write_text('[faults]\nseed = 3\n')
    assert fault_settings(str(table)) == {"seed": 3}
