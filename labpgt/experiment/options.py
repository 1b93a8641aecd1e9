"""Experiment options: CLI flags or a TOML file, the same names.

Precedence: built-in defaults < the ``--config`` file < flags given on the command line.
The effective configuration is written to the run file verbatim as TOML, so ``--resume`` and
``labpgt replay`` rebuild exactly the same trainer. Which estimator takes which option is the
registry's (labpgt/experiment/registry.py); an option that does not apply is refused, never
dropped.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from labpgt.experiment import registry
from labpgt.experiment.registry import ESTIMATORS
from labpgt.models import deep, dense, transformer
from labpgt.reservoirs.direct import DirectRingReservoir
from labpgt.reservoirs.esn import EchoStateReservoir

MODEL_DEFAULTS = {"dense": dense.DEFAULTS, "transformer": transformer.DEFAULTS, "deep": deep.DEFAULTS}


class ConfigError(ValueError):
    """An experiment option that is unknown or has a value that is not allowed."""


@dataclass(frozen=True)
class Option:
    type: type
    default: object
    help: str
    choices: tuple | None = None
    maximum: float | None = None  # sizes that would exhaust memory are refused before anything moves


#: every experiment option; each is a CLI flag (--name with - for _) and a TOML key
OPTIONS: dict[str, Option] = {
    "station": Option(str, None, "station TOML (default: the embedded simulated ring)"),
    "dataset": Option(str, "iris", "data set: iris, digits, or a data file (.csv with a header, .npz or .h5/.hdf5 "
                      "with x and y); a file's data is kept in the run file (up to 10 MB)"),
    "label": Option(str, None, "CSV data file: the label column (default: the last column)"),
    "test_fraction": Option(float, None, "data file: share of each class held out for testing (default: 0.2)"),
    "model": Option(str, "dense", "dense: digital -> ring -> readout on a station; transformer: a transformer "
                    "with a reservoir layer evaluated in-process; deep: --blocks passes through the station's ring "
                    "(chosen by --blocks > 1 too)", ("dense", "transformer", "deep")),
    "task": Option(str, "digits-seq", "transformer task", ("digits-seq", "narma10")),
    "reservoir": Option(str, "ring", "transformer reservoir: the simulated ring (direct mode) or an echo-state "
                        "network", ("ring", "esn")),
    "estimator": Option(str, None, "gradient estimator (default: " + ", ".join(
                            f"{name} on the {model} model" for model, name in registry.DEFAULT_ESTIMATORS.items())
                        + "; which apply to which model: labpgt/experiment/registry.py)",
                        tuple(ESTIMATORS)),
    "budget": Option(int, 20000, "training measurements to spend (the step that reaches it is finished, so a run "
                     "may spend up to one step more)", maximum=10**10),
    "seed": Option(int, 0, "seed of batches, perturbations and the embedded simulated ring"),
    "out": Option(str, "runs", "run file, or a directory for a new timestamped run file"),
    "batch_size": Option(int, None, "samples per step (default: the estimator's tuned value)", maximum=100_000),
    "lr": Option(float, None, "learning rate (default: the estimator's tuned value)"),
    "epsilon": Option(float, None, "perturbation size (node: knobs, pgt: parameters; default: the estimator's tuned value)"),
    "directions": Option(int, None, "pgt, node, node-token: perturbation directions per step (default: the "
                         "estimator's tuned value)", maximum=1000),
    "one_sided": Option(bool, None, "pgt: one-sided differences (default: two-sided)"),
    "distribution": Option(str, None, "pgt: perturbation distribution (default: rademacher)", ("gaussian", "rademacher")),
    "scope": Option(str, None, "pgt: parameters perturbed (default: all)", ("all", "upstream")),
    "nodes": Option(int, 1, "virtual nodes (measurements) per sample", maximum=256),
    "bands": Option(int, 10, "readout bands across the analyzer span", maximum=4096),
    "hidden": Option(int, 8, "width of the digital layer before the ring", maximum=4096),
    "current_a": Option(float, 1.8, "initial bias current, A"),
    "current_window_a": Option(float, 0.02, "the trained bias current stays within ± this of current_a, A"),
    "reference_hz": Option(float, None, "drive reference frequency, Hz (default: found by a probe sweep)"),
    "reference_from": Option(str, None, "a sweep map (labpgt sweep ...): take the operating point from it instead "
                             "of a probe sweep (a current map: its point nearest current_a; a map at one current: "
                             "that current) -- the bias current and the ring's line there"),
    "probe_center_hz": Option(float, None, "probe sweep centre, Hz (default: from the current through the nominal "
                              "tuning, 2.07 GHz at 1.8 A and 0.6 GHz/A, inside the analyzer's limits; with no "
                              "plausible line there, the whole band the generator can reach)"),
    "probe_span_hz": Option(float, None, "probe sweep span, Hz (default: 200 MHz)"),
    "eval_every": Option(int, 25, "steps between evaluations on the test split"),
    "checkpoint_every": Option(int, 25, "steps between checkpoints"),
    "noise_scale": Option(float, 1.0, "embedded simulated ring: noise multiplier"),
    "progress": Option(bool, True, "show a progress bar"),
    # deep physical networks (labpgt/models/deep.py) and a scheduled step of the embedded simulated ring
    "blocks": Option(int, 1, "passes through the ring per forward pass: > 1 builds a deep physical network of this "
                     "many blocks (the deep model; node, pgt, phyll)", maximum=64),
    "width": Option(int, None, "deep model: outputs of each block's digital linear layer (default: 32)",
                    maximum=4096),
    "ring_step_at_s": Option(float, None, "embedded simulated ring: virtual time (s) of a step change of its "
                             "temperature and loop gain (default: none)"),
    "ring_step_kelvin": Option(float, 2.0, "embedded simulated ring: the step's temperature change, K"),
    "ring_step_gain_db": Option(float, 0.0, "embedded simulated ring: the step's amplifier gain change, dB"),
}

#: options whose value may be zero or negative
SIGNED = ("seed", "current_a", "ring_step_kelvin", "ring_step_gain_db")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment TOML; every option below can be set there")
    parser.add_argument("--resume", metavar="RUN.h5", help="continue an interrupted run as recorded; with --budget N "
                        "to a new budget (other options that would change the experiment are refused)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the instrument-time estimate "
                        "(measurements x the station's time per measurement); nothing is moved")
    parser.add_argument("--watch", action="store_true", help="serve a live page of the run (labpgt watch) beside it")
    for name, opt in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if opt.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=opt.help)
        else:
            # options without a fixed default say in their help what they default to
            suffix = f" (default: {opt.default})" if opt.default is not None else ""
            parser.add_argument(flag, type=opt.type, default=None, choices=opt.choices, help=opt.help + suffix)


def _check_value(name: str, value, source: str):
    opt = OPTIONS[name]
    if value is None:
        return None
    if opt.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if opt.type is bool and not isinstance(value, bool) or (
            opt.type is not bool and (isinstance(value, bool) or not isinstance(value, opt.type))):
        raise ConfigError(f"{source}: option {name!r} must be {opt.type.__name__}, got {value!r}")
    if opt.choices and value not in opt.choices:
        raise ConfigError(f"{source}: option {name!r} = {value!r} is not allowed; allowed: {', '.join(opt.choices)}")
    if opt.type is float and not math.isfinite(value):
        raise ConfigError(f"{source}: option {name!r} must be a finite number, got {value!r}")
    if opt.type in (int, float) and name not in SIGNED and value <= 0:
        raise ConfigError(f"{source}: option {name!r} must be positive, got {value!r}")
    if opt.maximum is not None and value > opt.maximum:
        raise ConfigError(f"{source}: option {name!r} = {value!r} is too large; allowed: 1 to {opt.maximum:g}")
    return value


def parse_config_text(text: str, source: str) -> dict:
    """Options from an experiment TOML (flat keys, the CLI's names with _)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    if "experiment" in data and set(data) != {"experiment"}:
        raise ConfigError(f"{source}: give the options either as flat keys or inside one [experiment] table, "
                          f"not both and no other tables (found: {', '.join(sorted(data))})")
    data = data.get("experiment", data) if set(data) == {"experiment"} else data
    return checked_options(data, source)


def checked_options(data: dict, source: str) -> dict:
    """Options given as a mapping (a TOML file's, a notebook's dict): names known, values allowed."""
    unknown = sorted(set(data) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(OPTIONS)}")
    return {k: _check_value(k, v, source) for k, v in data.items()}


def experiment_config(source=None, **options) -> dict:
    """The checked experiment of the Python API: defaults < ``source`` (a dict of options, a TOML
    file's path, or TOML text) < ``options``; the same names and checks as ``labpgt train``."""
    config = defaults()
    if isinstance(source, dict):
        config.update(checked_options(source, "experiment"))
    elif isinstance(source, Path) or (isinstance(source, str) and "=" not in source and "\n" not in source):
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read experiment file {path}: {exc.strerror}") from None
        config.update(parse_config_text(text, str(path)))
    elif isinstance(source, str):
        config.update(parse_config_text(source, "experiment TOML"))
    elif source is not None:
        raise ConfigError(f"an experiment is a dict of options, a TOML file's path or TOML text; got "
                          f"{type(source).__name__}")
    config.update(checked_options(options, "experiment"))
    return check_combination(config)


def defaults() -> dict:
    return {name: opt.default for name, opt in OPTIONS.items()}


def resolve(args: argparse.Namespace) -> dict:
    """Defaults < config file < flags given; options that do not apply to the experiment are refused."""
    config = defaults()
    given = vars(args)
    if given.get("config"):
        path = Path(args.config)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read experiment file {path}: {exc.strerror}") from None
        config.update(parse_config_text(text, str(path)))
    for name in OPTIONS:
        value = given.get(name)
        if value is not None:
            config[name] = _check_value(name, value, "command line")
    return check_combination(config)


_STATION_OPTIONS = ("station", "dataset", "label", "test_fraction", "nodes", "bands", "current_window_a",
                    "reference_hz", "reference_from", "probe_center_hz", "probe_span_hz", "ring_step_at_s",
                    "ring_step_kelvin", "ring_step_gain_db")
#: options that mean something for some models only (a value other than the default is refused elsewhere)
MODEL_OPTIONS = {
    "dense": (*_STATION_OPTIONS, "hidden"),
    "transformer": ("task", "reservoir"),
    "deep": (*_STATION_OPTIONS, "blocks", "width"),
}


def check_applies(config: dict, source: str = "experiment") -> None:
    """Refuse an option set to something other than its default where it has no effect."""
    own = MODEL_OPTIONS[config["model"]]
    for name in OPTIONS:
        if name in own or config[name] == OPTIONS[name].default:
            continue
        models = [model for model, names in MODEL_OPTIONS.items() if name in names]
        if models:
            raise ConfigError(f"{source}: option {name!r} = {config[name]!r} applies to the {' and '.join(models)} "
                              f"model{'s' if len(models) > 1 else ''} only, not to model {config['model']!r} (its own options: {', '.join(own)})")
    if config["model"] != "transformer" and config["station"] is not None:
        for name in ("noise_scale", "ring_step_at_s"):
            if config[name] != OPTIONS[name].default:
                raise ConfigError(f"{source}: option {name!r} applies to the embedded simulated ring only, not to "
                                  f"the station {config['station']}")
    if config["ring_step_at_s"] is None:
        for name in ("ring_step_kelvin", "ring_step_gain_db"):
            if config[name] != OPTIONS[name].default:
                raise ConfigError(f"{source}: option {name!r} sizes the step that ring_step_at_s schedules; "
                                  f"set ring_step_at_s too")
    if config["model"] != "transformer" and config["reference_from"] is not None and (
            config["reference_hz"] is not None or config["probe_center_hz"] is not None
            or config["probe_span_hz"] is not None):
        raise ConfigError(f"{source}: reference_from takes the line from the map; it cannot be combined with "
                          f"reference_hz, probe_center_hz or probe_span_hz")


def check_combination(config: dict, source: str = "experiment") -> dict:
    """Options that are fine alone but not together (the registry knows which estimator takes what).

    ``--blocks`` > 1 on the dense model selects the deep model (recorded as ``model = "deep"``)."""
    if config["model"] == "dense" and config["blocks"] > 1:
        config = {**config, "model": "deep"}
    if config["estimator"] is None:  # recorded as chosen: a run file always names its estimator
        config = {**config, "estimator": registry.DEFAULT_ESTIMATORS[config["model"]]}
    if config["model"] == "transformer" and config["station"] is not None:
        raise ConfigError(f"{source}: the transformer's reservoir is evaluated in-process (the simulated ring in "
                          f"direct mode, or an echo-state network); it takes no station")
    check_applies(config, source)
    # the transformer's in-process reservoirs, as builder.in_process_reservoir makes them
    nodes = {"ring": DirectRingReservoir, "esn": EchoStateReservoir}[config["reservoir"]].independent_nodes
    defaults_of_model = MODEL_DEFAULTS[config["model"]]
    limits = registry.ModelLimits(defaults_of_model["u_scale"], defaults_of_model.get("train_current", True))
    try:
        registry.check_experiment(config["estimator"], config["model"], config, limits)
        if config["model"] == "transformer":
            registry.check_reservoir(config["estimator"], config["model"], nodes)
    except registry.RegistryError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config


def config_to_toml(config: dict) -> str:
    lines = ["# labpgt experiment (effective configuration)"]
    for name, value in config.items():
        if value is None:
            continue
        lines.append(f"{name} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


#: options that --resume takes: they change how much is trained or what is shown, not the experiment
RESUME_OPTIONS = ("budget", "progress")


def given_options(args: argparse.Namespace) -> dict:
    """The options given on the command line: the ``--config`` file's, then the flags'."""
    given, flags = {}, vars(args)
    if flags.get("config"):
        path = Path(args.config)
        try:
            given.update(parse_config_text(path.read_text(), str(path)))
        except OSError as exc:
            raise ConfigError(f"cannot read experiment file {path}: {exc.strerror}") from None
    for name in OPTIONS:
        if flags.get(name) is not None:
            given[name] = _check_value(name, flags[name], "command line")
    return given


def check_resume_options(given: dict, recorded: dict, path) -> dict:
    """The options given with ``--resume`` that it takes (budget, progress). Any other that would change
    the recorded experiment is refused, naming it; the same value as recorded is accepted."""
    given = checked_options(given, "resume")
    for name, value in given.items():
        if name not in RESUME_OPTIONS and value != recorded[name]:
            flag = "--" + name.replace("_", "-")
            was = f"{name} = {recorded[name]!r}" if recorded[name] is not None else f"{name} not set"
            raise ConfigError(f"{path}: {flag} {value!r} would change the recorded experiment ({was}); "
                              f"--resume continues it as recorded; allowed with --resume: "
                              f"--budget, --progress/--no-progress (start a new run to change {name})")
    return {name: value for name, value in given.items() if name in RESUME_OPTIONS}
