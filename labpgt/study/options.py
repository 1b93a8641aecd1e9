"""The one place the study package touches the experiment's option table.

A study validates every trial's experiment before anything runs, with the same rules
``labpgt train --config`` applies (the trial itself then runs through that command).
"""
from __future__ import annotations

from labpgt.experiment.options import OPTIONS, ConfigError, check_combination, config_to_toml, parse_config_text

__all__ = ["OPTIONS", "ConfigError", "check_combination", "config_to_toml", "parse_config_text",
           "experiment_defaults", "validated_experiment"]


def experiment_defaults() -> dict:
    return {name: option.default for name, option in OPTIONS.items()}


def validated_experiment(options: dict, source: str) -> dict:
    """The full experiment (defaults < ``options``), checked as ``labpgt train --config`` would.

    The options go through the experiment's own TOML parser, so the error for a bad value is the
    one ``labpgt train`` gives, prefixed with ``source`` (file and table of the study).
    """
    text = config_to_toml({name: value for name, value in options.items()})
    config = experiment_defaults()
    config.update(parse_config_text(text, source))
    return check_combination(config, source)
