"""StationReservoir: the per-measurement wire traffic, what it records, and what an error leaves behind."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from labpgt.reservoirs.encoding import BandReadout, KnobEncoder
from labpgt.contracts import NullRecorder, Perturbation
from labpgt.contracts import FLAG_SIMULATED
from labpgt.reservoirs.station import StationReservoir
from labpgt.runfile import RunFile, RunReader
from labpgt.runfile.thread import RecorderThread

from sim.server import SimServer

from instruments.station import Station

REFERENCE_HZ = 2.07e9


class Rows(NullRecorder):
    """A recorder that keeps one dict per measurement row (the batch split as the run file stores it)."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def measurements_batch(self, batch):
        super().measurements_batch(batch)
        for r in range(len(batch["features"])):
            self.rows.append({
                "time_s": float(batch["time_s"][r]), "step": batch["step"], "kind": batch["kind"],
                "sample_index": int(batch["sample_index"][r]), "node": int(batch["node"][r]),
                "perturbation_direction": batch["perturbation_direction"],
                "perturbation_sign": batch["perturbation_sign"],
                "settings": {"frequency_hz": float(batch["frequency_hz"][r]),
                             "power_dbm": float(batch["power_dbm"][r]), "current_a": batch["current_a"]},
                "trace_dbm": batch["trace_dbm"][r], "frequency_axis": batch["frequency_axis"],
                "features": batch["features"][r], "flags": int(batch["flags"][r]),
            })


def layout(station, nodes=2, bands=5):
    sa = station.spectrum_analyzer
    encoder = KnobEncoder(n_nodes=nodes, reference_hz=REFERENCE_HZ, current_min_a=0.0, current_max_a=2.5)
    readout = BandReadout(center_hz=REFERENCE_HZ, span_hz=sa.span_hz, points=sa.points, rbw_hz=sa.rbw_hz,
                          n_bands=bands)
    return encoder, readout


class CountingServer(SimServer):
    """Counts the messages each simulated instrument receives."""

    def start(self):
        super().start()
        self.messages = collections.Counter()
        self.lines = collections.defaultdict(list)
        for role, inst in self.instruments.items():
            handle = inst.handle

            def counted(message, _role=role, _handle=handle):
                self.messages[_role] += 1
                self.lines[_role].append(bytes(message))
                return _handle(message)

            inst.handle = counted
        return self


@pytest.fixture
def sim_station():
    with CountingServer(seed=3) as server:
        station = Station.from_text(server.station_toml(), "<sim>")
        with station:
            yield server, station


def knobs(batch, nodes, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, 2 * nodes))


def test_one_generator_message_and_two_analyzer_messages_per_measurement(sim_station):
    server, station = sim_station
    encoder, readout = layout(station)
    res = StationReservoir(station, encoder, readout, Rows(), simulated=True)
    # the first sweep learns sweep mode, sweep time and axis once; count a batch after it
    res.measure(knobs(1, 1 * 2)[:, :4], current_a=1.8, kind="train", step=0, sample_index=np.arange(1))
    before = dict(server.messages)
    res.measure(knobs(4, 2), current_a=1.8, kind="train", step=0, sample_index=np.arange(4))
    sent = {role: server.messages[role] - before.get(role, 0) for role in server.messages}
    # 8 measurements: settings+*OPC?+SYST:ERR? joined, then sweep (+status) and one binary block
    assert sent.get("signal_generator", 0) == 8
    assert sent.get("spectrum_analyzer", 0) == 16
    assert sent.get("current_source", 0) == 0  # the current did not change: nothing sent, nothing asked
    generator = server.lines["signal_generator"][-8:]
    assert all(line.startswith(b"SOUR:FREQ ") and line.endswith(b";*OPC?;:SYST:ERR?") for line in generator)
    analyzer = server.lines["spectrum_analyzer"][-16:]
    assert all(line.startswith(b"INIT:IMM;*OPC?") for line in analyzer[0::2])
    assert all(line == b"TRAC:DATA? TRACE1" for line in analyzer[1::2])


def test_features_are_those_of_the_per_sample_procedure_bit_for_bit():
    """Batched features and recording change nothing measured: same seed, old loop by hand."""
    u = knobs(5, 2, seed=1)

    def by_hand():
        with SimServer(seed=7) as server:
            station = Station.from_text(server.station_toml(), "<sim>")
            with station:
                encoder, readout = layout(station)
                StationReservoir(station, encoder, readout)  # same analyzer set-up
                station.current_source.ramp_to(1.8)
                s = encoder.encode(u, 1.8)
                out = np.empty((5, 10))
                for i in range(5):
                    for node in range(2):
                        station.signal_generator.configure_cw(float(s["drive_frequency_hz"][i, node]),
                                                              float(s["drive_power_dbm"][i, node]))
                        _, trace = station.spectrum_analyzer.measure()
                        out[i, node * 5:(node + 1) * 5] = readout.features(trace[None, :])[0]
                return out

    with SimServer(seed=7) as server:
        station = Station.from_text(server.station_toml(), "<sim>")
        with station:
            encoder, readout = layout(station)
            res = StationReservoir(station, encoder, readout)
            got = res.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(5))
    np.testing.assert_array_equal(got, by_hand())


def test_rows_recorded_per_measurement_sample_major(sim_station):
    _, station = sim_station
    encoder, readout = layout(station)
    rec = Rows()
    res = StationReservoir(station, encoder, readout, rec, simulated=True)
    u = knobs(3, 2, seed=2)
    feats = res.measure(u, current_a=1.8, kind="eval", step=4, sample_index=np.array([10, 20, 30]),
                        perturbation=Perturbation(direction=1, sign=-1))
    assert res.measurements == 6 and len(rec.rows) == 6
    s = encoder.encode(u, 1.8)
    for r, row in enumerate(rec.rows):
        i, node = divmod(r, 2)
        assert (row["sample_index"], row["node"], row["step"], row["kind"]) == ([10, 20, 30][i], node, 4, "eval")
        assert (row["perturbation_direction"], row["perturbation_sign"]) == (1, -1)
        assert row["settings"] == {"frequency_hz": s["drive_frequency_hz"][i, node],
                                   "power_dbm": s["drive_power_dbm"][i, node], "current_a": 1.8}
        assert row["trace_dbm"].dtype == np.float32 and row["trace_dbm"].shape == (readout.points,)
        np.testing.assert_array_equal(row["features"], feats[i, node * 5:(node + 1) * 5])
        np.testing.assert_array_equal(row["features"], readout.features(row["trace_dbm"][None, :])[0])
        assert row["flags"] & FLAG_SIMULATED
        assert row["frequency_axis"] == (readout.freqs_hz[0], readout.freqs_hz[-1], readout.points)
    assert [row["time_s"] for row in rec.rows] == sorted(row["time_s"] for row in rec.rows)


def test_the_run_file_gets_the_same_rows_through_the_batch_path_and_the_writer(sim_station, tmp_path):
    _, station = sim_station
    encoder, readout = layout(station)
    path = tmp_path / "run.h5"
    u = knobs(4, 2, seed=5)
    with RunFile.create(path, n_params=3, features_per_measurement=5, trace_points=readout.points) as run:
        with RecorderThread(run, max_pending=2) as writer:
            res = StationReservoir(station, encoder, readout, writer)
            feats = [res.measure(u, current_a=1.8, kind="train", step=k, sample_index=np.arange(4) + 4 * k)
                     for k in range(3)]
            writer.step({"step": 0, "loss": 0.0, "accuracy": 0.0, "grad_norm": 0.0, "measurements": 24,
                         "time_s": 0.0, "current_a": 1.8})
    with RunReader(path) as r:
        m = r.measurements[:]
    assert len(m["step"]) == 24
    assert m["step"].tolist() == [k for k in range(3) for _ in range(8)]
    assert m["sample_index"].tolist() == [4 * k + i for k in range(3) for i in range(4) for _ in range(2)]
    assert m["node"].tolist() == [0, 1] * 12
    np.testing.assert_array_equal(m["features"], np.concatenate([f.reshape(8, 5) for f in feats]))
    np.testing.assert_array_equal(m["features"], readout.features(m["trace_dbm"]))
    s = encoder.encode(u, 1.8)
    np.testing.assert_array_equal(m["frequency_hz"][:8], s["drive_frequency_hz"].ravel())


# ---------------------------------------------------------------------- failures, with fakes
class FakeAnalyzer:
    def __init__(self, points, fail_at=None):
        self.points, self.fail_at = points, fail_at
        self.sweeps = 0
        self.reference_level_dbm = 0.0
        self.overloaded = False

    def configure(self, **kwargs):
        pass

    def measure(self):
        if self.sweeps == self.fail_at:
            raise TimeoutError("the analyzer did not answer")
        trace = np.full(self.points, -90.0 + self.sweeps, dtype=np.float32)
        self.sweeps += 1
        return None, trace


class FakeGenerator:
    output_enabled = False

    def __init__(self):
        self.sent = []

    def configure_cw(self, frequency_hz, power_dbm):
        assert type(frequency_hz) is float and type(power_dbm) is float
        self.sent.append((frequency_hz, power_dbm))

    def enable_rf_at(self, frequency_hz, power_dbm):  # RF on at the rest setting (not a measurement)
        self.output_enabled = True
        return frequency_hz, power_dbm


class FakeSource:
    def __init__(self):
        self.ramps = []

    def ramp_to(self, current_a):
        self.ramps.append(current_a)


class FakeStation:
    def __init__(self, analyzer):
        self.spectrum_analyzer, self.signal_generator, self.current_source = analyzer, FakeGenerator(), FakeSource()


def fake_reservoir(fail_at=None, recorder=None):
    encoder = KnobEncoder(n_nodes=1, reference_hz=REFERENCE_HZ)
    readout = BandReadout(center_hz=REFERENCE_HZ, span_hz=20e6, points=40, rbw_hz=50e3, n_bands=4)
    station = FakeStation(FakeAnalyzer(40, fail_at))
    reservoir = StationReservoir(station, encoder, readout, recorder or Rows())
    reservoir.pipeline = False  # the fakes measure in one call (configure_cw, measure)
    return reservoir, station


def test_an_error_mid_batch_records_what_was_measured_and_raises():
    rec = Rows()
    res, station = fake_reservoir(fail_at=3, recorder=rec)
    with pytest.raises(TimeoutError, match="did not answer"):
        res.measure(knobs(6, 1), current_a=1.0, kind="train", step=2, sample_index=np.arange(6))
    assert res.measurements == 3
    assert [row["sample_index"] for row in rec.rows] == [0, 1, 2]
    assert [float(row["trace_dbm"][0]) for row in rec.rows] == [-90.0, -89.0, -88.0]
    assert len(station.signal_generator.sent) == 4  # the fourth setting went out, its sweep failed


def test_a_failing_recorder_does_not_hide_the_instrument_error():
    class Broken(Rows):
        def measurements_batch(self, batch):
            raise OSError("disk full")

    res, _ = fake_reservoir(fail_at=2, recorder=Broken())
    with pytest.raises(TimeoutError) as info:
        res.measure(knobs(4, 1), current_a=1.0, kind="train", step=0, sample_index=np.arange(4))
    assert any("disk full" in note for note in info.value.__notes__)


def test_the_current_is_ramped_once_per_value_and_settings_go_out_in_sample_major_order():
    rec = Rows()
    res, station = fake_reservoir(recorder=rec)
    u = knobs(3, 1)
    res.measure(u, current_a=1.2, kind="train", step=0, sample_index=np.arange(3))
    res.measure(u, current_a=1.2, kind="train", step=0, sample_index=np.arange(3))
    res.measure(u, current_a=1.3, kind="train", step=1, sample_index=np.arange(3))
    assert station.current_source.ramps == [1.2, 1.3]
    s = res.encoder.encode(u, 1.2)
    assert station.signal_generator.sent[:3] == list(zip(s["drive_frequency_hz"].ravel().tolist(),
                                                         s["drive_power_dbm"].ravel().tolist()))
    assert [row["current_a"] if "current_a" in row else row["settings"]["current_a"] for row in rec.rows] == \
        [1.2] * 6 + [1.3] * 3


def test_invalid_knobs_move_no_instrument():
    res, station = fake_reservoir()
    with pytest.raises(ValueError):
        res.measure(np.array([[0.0, 1.5]]), current_a=1.0, kind="train", step=0, sample_index=np.arange(1))
    assert station.signal_generator.sent == [] and station.current_source.ramps == []


@pytest.mark.parametrize("flavour", ["keysight", "alt"])
def test_pipelined_rows_are_those_of_the_unpipelined_loop_bit_for_bit(flavour, tmp_path):
    """Overlapping the trace read with the generator's settling changes nothing measured."""
    def run(pipeline):
        with SimServer(seed=11, flavour=flavour) as server:
            station = Station.from_text(server.station_toml(), "<sim>")
            with station:
                encoder, readout = layout(station)
                path = tmp_path / f"{flavour}-{pipeline}.h5"
                with RunFile.create(path, n_params=1, features_per_measurement=5, trace_points=readout.points) as rf:
                    res = StationReservoir(station, encoder, readout, rf, simulated=True)
                    res.pipeline = pipeline
                    out = [res.measure(knobs(6, 2, seed=s), current_a=0.8 + 0.01 * s, kind="train", step=s,
                                       sample_index=np.arange(6)) for s in range(3)]
                with RunReader(path) as r:
                    cols = {c: r.measurements.column(c) for c in ("trace_dbm", "features", "frequency_hz",
                                                                  "power_dbm", "flags", "step", "node")}
                return np.stack(out), cols

    features, rows = run(True)
    features_ref, rows_ref = run(False)
    assert features.tobytes() == features_ref.tobytes()
    for name, column in rows_ref.items():
        assert np.asarray(rows[name]).tobytes() == np.asarray(column).tobytes(), name


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("stage", ["ctrl-c, setting in flight", "settings reply"])
def test_an_exit_with_a_generator_setting_in_flight_leaves_the_rig_safe(stage):
    """Pipelined: the generator's reply to row k+1's settings is unread while trace k is read.
    The safe state still reaches every instrument (the unread reply is dropped first, never
    taken as the reply to the safe state's own *OPC?)."""
    with SimServer(seed=3, timeout_s=0.3) as server:
        station = Station.from_text(server.station_toml(), "<sim>")
        with pytest.raises((KeyboardInterrupt, _Boom)):
            with station:
                encoder, readout = layout(station, nodes=1)
                res = StationReservoir(station, encoder, readout, Rows(), simulated=True)
                res.measure(knobs(2, 1), current_a=1.8, kind="train", step=0, sample_index=np.arange(2))
                sg, sa = station.signal_generator, station.spectrum_analyzer
                if stage == "ctrl-c, setting in flight":
                    def interrupt():
                        assert sg._awaiting is not None, "no setting in flight: the case is not tested"
                        raise KeyboardInterrupt
                    sa.read_trace = interrupt
                else:
                    finish = sg.finish_cw

                    def boom():
                        if sg._awaiting is not None:
                            raise _Boom("the reply to a setting in flight")
                        return finish()
                    sg.finish_cw = boom
                res.measure(knobs(3, 1), current_a=1.8, kind="train", step=1, sample_index=np.arange(3))
        sim_sg, cs, sim_sa = (server.instruments[r] for r in ("signal_generator", "current_source",
                                                             "spectrum_analyzer"))
        assert sim_sg.output is False and cs.output is False and abs(cs.i_set) < 1e-9
        assert sim_sa.continuous is True
        drive = np.array([i for _, i in cs.drive_log])
        assert drive.max() > 1.0 and drive[-1] == 0.0
        assert np.abs(np.diff(drive)).max() <= 0.05 * (1 + 1e-9)  # ramped, never stepped
