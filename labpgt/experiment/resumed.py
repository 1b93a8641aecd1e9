"""What ``labpgt train --resume`` continues: the recorded experiment, its last valid checkpoint, the
station it connects to (shown before anything connects; moved to new addresses or refused, never
ignored), with the options given beside it checked against the recording."""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass

from labpgt.experiment import registry
from labpgt.experiment.builder import dataset_of_config
from labpgt.experiment.options import ConfigError, check_resume_options, defaults, parse_config_text
from labpgt.runfile import RunReader, checkpoints
from labpgt.runfile.precheck import check_before_resume

log = logging.getLogger(__name__)


@dataclass
class Resumed:
    """What a run file says about the run it holds (``--resume``)."""

    config: dict
    state: dict | None  # the last checkpoint (None: killed before its first one; the run starts over)
    layout: dict  # the physical layer as recorded
    station_text: str
    embedded: bool
    dataset: object | None  # the dense model's data set, from the file's /dataset record
    probe: object | None = None  # the start-up probe as recorded (/probe)
    note: str = ""  # what the resume changed, for its status message (a station moved to new addresses)
    checkpoint: int = -1  # the checkpoint row continued from (-1: none, the run starts over)
    estimator_options: dict | None = None  # registry.recorded_options: what the estimator is rebuilt with


def read_resumed(path, given: dict) -> Resumed:
    """What ``--resume`` continues: the recorded experiment, with the budget in force (the last resume's,
    or ``--budget``); any other option ``given`` that would change the experiment is refused."""
    check_before_resume(path)  # damaged (read in a child, with a time limit), or locked: refused here
    with RunReader(path) as reader:
        if reader.status == "completed":
            raise ConfigError(f"{path}: this run is already completed; nothing was changed (start a new run "
                              f"instead of --resume; --budget extends only a run that has not completed)")
        config = recorded_config(reader, path)
        index, state, passed_over = checkpoints.last_valid(reader)
        for i, why in passed_over:  # last first
            print(f"warning: {path}: checkpoint {i} is corrupt ({why}); it is passed over", file=sys.stderr)
        if passed_over:
            where = (f"checkpoint {index} (step {state['step']})" if state is not None
                     else "the start (no valid checkpoint)")
            log.info("%s: corrupt checkpoints %s passed over; continuing from %s", path,
                        [i for i, _ in passed_over], where)
            print(f"warning: {path}: continuing from {where}; the rows recorded after it are abandoned",
                  file=sys.stderr)
        embedded = reader.metadata.get("embedded_simulator", False)
        station_text, moved_note = resumed_station(path, reader.metadata["station_toml"], embedded,
                                                   given.get("station"))
        given = check_resume_options({k: v for k, v in given.items() if k != "station"}, config, path)
        if "progress" in given:
            config["progress"] = given["progress"]
        if "budget" in given:
            spent = int(state["measurements"]) if state is not None else 0
            if given["budget"] < spent:
                raise ConfigError(f"{path}: --budget {given['budget']} is already spent: the run continues from a "
                                  f"checkpoint after {spent} training measurements; allowed: {spent} or more")
            print(f"resuming {path} with a budget of {given['budget']} training measurements (was "
                  f"{config['budget']}; {spent} spent at the checkpoint it continues from)", file=sys.stderr)
            config["budget"] = given["budget"]
        return Resumed(config=config, state=state, layout=json.loads(reader.metadata["physical_layer"]),
                       station_text=station_text, embedded=embedded, note=moved_note,
                       dataset=dataset_of_run(reader, config) if config["model"] != "transformer" else None,
                       probe=_recorded_probe(reader), checkpoint=index,
                       estimator_options=registry.recorded_options(config, reader.metadata.get("estimator_options")))


def resumed_station(path, recorded_text: str, embedded: bool, station_path) -> tuple[str, str]:
    """The station a resume connects to, and a note for the run file when it moved.

    The recorded station, unless ``--station`` names the same rig at new addresses (its resources may
    differ, nothing else); shown on stderr before anything connects, so the user sees where it goes."""
    from instruments.station import Station

    if embedded:
        if station_path is not None:
            raise ConfigError(f"{path}: this run was recorded on the embedded simulated ring; --station cannot "
                              f"move it (allowed with --resume: --budget, --progress/--no-progress)")
        return recorded_text, ""
    recorded = Station.from_text(recorded_text, source_name=f"{path} (recorded station)")
    note = ""
    if station_path is not None:
        given = Station.load(station_path)
        moved = recorded.moved_resources(given)
        if moved:
            note = "; moved: " + ", ".join(f"{role} {old} -> {new}" for role, (old, new) in moved.items())
            recorded, recorded_text = given, given.config_text
    print(f"resuming on station {recorded.name!r}{' (moved to new addresses)' if note else ' as recorded'}: "
          + "; ".join(recorded.describe_roles()), file=sys.stderr)
    return recorded_text, note


def _recorded_probe(reader: RunReader):
    from labpgt.runfile import RunFileError

    try:
        return reader.probe()
    except RunFileError:  # damaged: a resume before the first checkpoint cannot replay it
        return None


def recorded_config(reader: RunReader, path) -> dict:
    """The experiment a run file records, with the budget in force (a ``--resume --budget`` changes it)."""
    config = defaults()
    config.update(parse_config_text(reader.metadata["experiment_toml"], f"{path} (experiment)"))
    if reader.budget_in_force() is not None:
        config["budget"] = reader.budget_in_force()
    return config


def dataset_of_run(reader: RunReader, config: dict):
    """The data set a run trained on: its /dataset record (no need for the original file), or for files
    without one (older versions: bundled data sets only) the one its experiment names."""
    from labpgt.data.datasets import Dataset

    record = reader.dataset()
    if record is None:
        return dataset_of_config(config)
    return Dataset.from_record(record, where=str(reader.path))
