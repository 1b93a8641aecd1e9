"""Faults injected in the simulated instruments: recovered, repeated, recorded; or a failed run."""
from __future__ import annotations

import numpy as np
import pytest

from instruments.station import Station
from labpgt.reservoirs.encoding import BandReadout, KnobEncoder
from labpgt.contracts import FLAG_FAULT, FLAG_OVERLOAD, FLAG_REPEATED
from labpgt.reservoirs.station import StationReservoir
from labpgt.reservoirs.recovery import MeasurementFailed
from labpgt.runfile import RunFile, RunReader
from sim.faults import FaultSpecError, Faults, apply_spec, parse_spec
from sim.instruments import SimKeysightMXG, SimRig
from sim.server import SimServer


def test_spec_strings_and_tables_configure_rates_and_triggers():
    parsed = parse_spec("seed=4; slow_s=0.5; spectrum_analyzer:timeout=0.01; *:error@3; overload")
    assert parsed["seed"] == 4 and parsed["slow_s"] == 0.5
    assert ("timeout", 0.01) in parsed["roles"]["spectrum_analyzer"]
    assert ("error", ("at", 3)) in parsed["roles"]["current_source"]
    assert ("overload", ("at", 1)) in parsed["roles"]["signal_generator"]
    table = parse_spec({"seed": 1, "spectrum_analyzer": {"garbled": 0.2, "disconnect": "@2"}})
    assert table["roles"]["spectrum_analyzer"] == [("garbled", 0.2), ("disconnect", ("at", 2))]


@pytest.mark.parametrize("spec, words", [
    ("spectrum_analyzer:explode=0.1", ["explode", "allowed", "timeout"]),
    ("timeout=1.5", ["1.5", "[0, 1]"]),
    ("magnet:timeout=0.1", ["magnet", "allowed", "current_source"]),
    ("error@0", ["start at 1"]),
    ("seed=x", ["seed", "integer"]),
])
def test_bad_specs_say_what_is_allowed(spec, words):
    with pytest.raises(FaultSpecError) as info:
        SimServer(faults=spec)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_rates_are_seeded_and_repeatable():
    def injected(seed):
        g = SimKeysightMXG(SimRig(seed=0))
        apply_spec(f"seed={seed};timeout=0.2;garbled=0.2;error=0.1", {"signal_generator": g})
        for i in range(200):
            g.handle("*OPC?" if i % 2 else "SOUR:FREQ 2.07GHZ")
        return g.faults.injected
    a, b, c = injected(1), injected(1), injected(2)
    assert a == b and a != c
    assert 40 < len(a) < 130  # ~0.5 per message, replies only for the reply kinds
    assert {kind for _, kind, _ in a} == {"timeout", "garbled", "error"}


def test_one_shot_trigger_fires_once_on_the_nth_applicable_message():
    f = Faults()
    g = SimKeysightMXG(SimRig(seed=0))
    g.faults = f
    f.trigger("timeout", after=2)
    replies = [g.handle("*OPC?") for _ in range(5)]
    assert replies == [b"1\n", b"1\n", None, b"1\n", b"1\n"]
    assert [(n, k) for n, k, _ in f.injected] == [(3, "timeout")]


@pytest.fixture
def rig(tmp_path):
    with SimServer(seed=1, timeout_s=0.3) as server:
        station = Station.from_text(server.station_toml(), "<faults test>")
        with station:
            station.spectrum_analyzer.sweep_timeout_margin_s = 0.2
            readout = BandReadout(center_hz=2.07e9, span_hz=20e6, points=401, rbw_hz=50e3, n_bands=4)
            encoder = KnobEncoder(n_nodes=1, reference_hz=2.07e9, current_min_a=-2.5, current_max_a=2.5)
            run = RunFile.create(tmp_path / "run.h5", n_params=2, features_per_measurement=4, trace_points=401)
            reservoir = StationReservoir(station, encoder, readout, run, simulated=True)
            yield server, station, reservoir, run
            for inst in server.instruments.values():
                inst.faults.clear()
        run.close()


U = np.array([[0.1, -0.2], [0.3, 0.4], [-0.5, 0.0], [0.2, 0.2]])


@pytest.mark.parametrize("role, kind, seen", [
    ("spectrum_analyzer", "timeout", {"no_answer"}),
    ("spectrum_analyzer", "truncated_block", {"no_answer"}),
    ("spectrum_analyzer", "garbled", {"bad_reply"}),
    ("spectrum_analyzer", "disconnect", {"no_answer", "connection_lost"}),
    ("spectrum_analyzer", "error", {"instrument_error"}),
    ("spectrum_analyzer", "overload", {"overload"}),
    ("signal_generator", "truncated", {"no_answer"}),
    ("signal_generator", "unlocked", {"unlocked"}),
    ("current_source", "disconnect", {"no_answer", "connection_lost"}),
    # the generator's second message of the batch is row 1's settings, sent while trace 0 is read
    ("signal_generator@1", "truncated", {"no_answer"}),
    ("signal_generator@1", "unlocked", {"unlocked"}),
    ("signal_generator@1", "disconnect", {"no_answer", "connection_lost"}),
    ("signal_generator@1", "garbled", {"bad_reply"}),
])
def test_each_fault_is_recovered_repeated_flagged_and_recorded(rig, role, kind, seen):
    server, station, reservoir, run = rig
    role, _, after = role.partition("@")
    reservoir.measure(U[:1], current_a=1.8, kind="train", step=0, sample_index=np.arange(1))
    reservoir._current_a = None if role == "current_source" else reservoir._current_a  # the magnet is asked
    server.instruments[role].faults.trigger(kind, after=int(after or (1 if role == "spectrum_analyzer" else 0)))
    features = reservoir.measure(U, current_a=1.8, kind="train", step=1, sample_index=np.arange(4))
    assert np.all(np.isfinite(features))
    run.flush()
    with RunReader(run.path) as r:
        flags = r.measurements.column("flags")
        faults = r.faults()
    assert [k for _, k, _ in server.instruments[role].faults.injected] == [kind]
    assert len(flags) == 5 and r is not None
    assert len(faults["kind"]) >= 1 and set(faults["kind"]) <= seen, faults
    assert all(faults["recovered"]) and set(faults["role"]) == {role}
    row = int(faults["measurement_row"][0])
    assert 1 <= row <= 4
    expected = FLAG_FAULT if role == "current_source" else FLAG_REPEATED | FLAG_FAULT  # the ramp is redone, not a row
    assert flags[row] & (FLAG_REPEATED | FLAG_FAULT) == expected
    others = np.delete(flags, row)
    assert not np.any(others & (FLAG_REPEATED | FLAG_FAULT))
    assert not flags[row] & FLAG_OVERLOAD  # a one-off overload cleared on the repeat


def test_a_fault_that_does_not_go_away_fails_the_measurement_and_is_recorded_unrecovered(rig):
    server, station, reservoir, run = rig
    server.instruments["spectrum_analyzer"].faults.set_rate("garbled", 1.0)
    with pytest.raises(MeasurementFailed, match="failed 4 times.*bad_reply"):
        reservoir.measure(U, current_a=1.8, kind="train", step=3, sample_index=np.arange(4))
    server.instruments["spectrum_analyzer"].faults.clear()
    run.flush()
    with RunReader(run.path) as r:
        faults = r.faults()
        assert r.n_measurements == 0
    assert len(faults["kind"]) == 4 and not any(faults["recovered"])
    assert list(faults["attempt"]) == [1, 2, 3, 4] and set(faults["measurement_row"]) == {0}


def test_a_failed_step_is_checkpointed_at_its_start_and_the_run_marked_failed(tmp_path):
    from labpgt.experiment.builder import build_trainer
    from labpgt.experiment.options import defaults

    config = defaults()
    config.update(budget=320, seed=2, progress=False)
    with SimServer(seed=2, timeout_s=0.3) as server:
        with Station.from_text(server.station_toml(), "<fail test>") as station:
            readout = BandReadout(center_hz=2.07e9, span_hz=20e6, points=401, rbw_hz=50e3, n_bands=10)
            encoder = KnobEncoder(n_nodes=1, reference_hz=2.07e9, current_min_a=-2.5, current_max_a=2.5)
            reservoir = StationReservoir(station, encoder, readout, simulated=True)
            trainer = build_trainer(config, reservoir, current_bounds_a=(1.78, 1.82))
            run = RunFile.create(tmp_path / "fail.h5", n_params=trainer.model.params().size,
                                 features_per_measurement=10, trace_points=401,
                                 optimizer_state_shapes={k: np.shape(v) for k, v in trainer.opt_state.items()})

            def progress(record):
                if record["kind"] == "step" and record["step"] == 3:  # from step 4 on the analyzer is gone
                    server.instruments["spectrum_analyzer"].faults.set_rate("garbled", 1.0)
            trainer.progress = progress
            with pytest.raises(MeasurementFailed):
                with run:
                    reservoir.recorder = trainer.recorder = run
                    trainer.run()
            server.instruments["spectrum_analyzer"].faults.clear()
    with RunReader(tmp_path / "fail.h5") as r:
        assert r.status == "failed"
        ckpt = r.last_checkpoint()
        done = int(r.steps()["measurements"][-1])  # training measurements after step 3
        assert ckpt["step"] == 3 and ckpt["measurements"] == done and done > 0
        assert ckpt["measurement_rows"] == done  # the failed step's rows are left to be abandoned
        assert r.n_faults == 4 and not any(r.faults()["recovered"])
        import json
        assert json.loads(ckpt["extra"])["status"] == "failed"


def test_faults_on_both_instruments_with_a_setting_in_flight_are_recovered_and_recorded(rig):
    server, station, reservoir, run = rig
    reservoir.measure(U[:1], current_a=1.8, kind="train", step=0, sample_index=np.arange(1))
    server.instruments["spectrum_analyzer"].faults.trigger("timeout", after=1)  # trace 0's read
    server.instruments["signal_generator"].faults.trigger("unlocked", after=1)  # row 1's settings, in flight
    features = reservoir.measure(U, current_a=1.8, kind="train", step=1, sample_index=np.arange(4))
    assert np.all(np.isfinite(features))
    run.flush()
    with RunReader(run.path) as r:
        flags = r.measurements.column("flags")
        faults = r.faults()
    assert sorted(zip(faults["role"], faults["kind"])) == [("signal_generator", "unlocked"),
                                                           ("spectrum_analyzer", "no_answer")]
    assert all(faults["recovered"]) and set(faults["measurement_row"]) == {1}
    assert [int(f) & (FLAG_REPEATED | FLAG_FAULT) for f in flags] == [0, FLAG_REPEATED | FLAG_FAULT, 0, 0, 0]
