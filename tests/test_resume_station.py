"""`labpgt train --resume RUN --station FILE`: the recorded rig, shown before anything connects; a
station file of the same rig at new addresses moves it (recorded in the resume's status message);
anything else that differs is refused by name, and the file is left as it was."""
from __future__ import annotations

import pytest

from labpgt.cli import main
from labpgt.runfile import RunReader


def interrupted_run(tmp_path, monkeypatch, ctrl_c_at_checkpoint, server) -> tuple:
    """A run on ``server``'s station file, Ctrl-C at its third checkpoint (status aborted)."""

    station = tmp_path / "bench.toml"
    station.write_text(server.station_toml())
    run = tmp_path / "run.h5"
    with monkeypatch.context() as m:
        ctrl_c_at_checkpoint(m, at_call=3)
        assert main(["train", "--station", str(station), "--budget", "384", "--out", str(run),
                     "--checkpoint-every", "2", "--no-progress"]) == 130
    return station, run


def test_resume_shows_the_recorded_station_and_follows_a_move(tmp_path, monkeypatch, capsys, ctrl_c_at_checkpoint):
    from sim.server import SimServer

    with SimServer(seed=1) as first:
        station, run = interrupted_run(tmp_path, monkeypatch, ctrl_c_at_checkpoint, first)
        recorded = first.station_toml()
    with SimServer(seed=1) as moved_server:  # the same rig, now at other ports
        moved = tmp_path / "moved.toml"
        moved.write_text(moved_server.station_toml())
        assert moved_server.station_toml() != recorded
        before = run.read_bytes()

        # anything but addresses differing: refused by name, nothing written
        capsys.readouterr()
        bad = tmp_path / "bad.toml"
        bad.write_text(moved_server.station_toml().replace('pacing = "virtual"', 'pacing = "real"', 1))
        assert main(["train", "--resume", str(run), "--station", str(bad)]) == 2
        err = capsys.readouterr().err
        assert "station.pacing: is 'real', recorded 'virtual'" in err, err
        assert "only instrument addresses (resource) may change on --resume" in err
        assert run.read_bytes() == before

        # the same rig at new addresses: shown, followed, recorded
        assert main(["train", "--resume", str(run), "--station", str(moved), "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert "resuming on station" in err and "(moved to new addresses)" in err, err
        new_address = moved_server.station_toml().split('resource = "')[1].split('"')[0]
        assert "signal_generator: drivers.keysight:MXG at " + new_address in err
    with RunReader(run) as reader:
        assert reader.status == "completed"
        messages = [row["message"] for row in reader.status_history()]
    assert any("moved: signal_generator" in m and new_address in m for m in messages), messages


def test_resume_without_station_names_where_it_connects(tmp_path, monkeypatch, capsys, ctrl_c_at_checkpoint):
    from sim.server import SimServer

    with SimServer(seed=2) as server:
        station, run = interrupted_run(tmp_path, monkeypatch, ctrl_c_at_checkpoint, server)
        capsys.readouterr()
        address = server.station_toml().split('resource = "')[1].split('"')[0]
        assert main(["train", "--resume", str(run), "--no-progress"]) == 0
        err = capsys.readouterr().err
    assert "resuming on station" in err and "as recorded" in err and address in err, err


def test_an_embedded_run_cannot_be_moved_to_a_station(tmp_path, monkeypatch, capsys, ctrl_c_at_checkpoint):
    from sim.server import SimServer


    run = tmp_path / "embedded.h5"
    with monkeypatch.context() as m:
        ctrl_c_at_checkpoint(m, at_call=2)
        assert main(["train", "--budget", "384", "--out", str(run), "--checkpoint-every", "2", "--no-progress"]) == 130
    before = run.read_bytes()
    with SimServer(seed=0) as server:
        station = tmp_path / "bench.toml"
        station.write_text(server.station_toml())
        capsys.readouterr()
        assert main(["train", "--resume", str(run), "--station", str(station)]) == 2
    err = capsys.readouterr().err
    assert "recorded on the embedded simulated ring; --station cannot move it" in err, err
    assert run.read_bytes() == before


@pytest.mark.parametrize("key", ["driver", "limits"])
def test_moved_resources_refuses_other_differences(key):
    from sim.server import SimServer

    from instruments.station import Station
    from instruments.errors import StationFileError

    with SimServer(seed=0) as server:
        text = server.station_toml()
    recorded = Station.from_text(text, "rec.toml")
    if key == "driver":
        changed = text.replace('driver = "drivers.keysight:MXG"', 'driver = "drivers.windfreak:SynthHD"', 1)
    else:
        changed = text.replace("power_dbm = [-60.0, 0.0]", "power_dbm = [-50.0, 0.0]", 1)
    assert changed != text
    with pytest.raises(StationFileError, match=f"signal_generator.{key}: differs from the recorded station's"):
        recorded.moved_resources(Station.from_text(changed, "given.toml"))
    assert recorded.moved_resources(Station.from_text(text, "same.toml")) == {}
