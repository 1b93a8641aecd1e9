"""Property-based tests: whatever an instrument or a user sends, parsers end in the project's
own clear errors (or a value), never in another exception."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.scpi import parse_error, parse_overflow
from drivers.transport import TransportError, decode_reply, parse_block, parse_block_header
from instruments.controls import parse_bool
from instruments.errors import InstrumentError, ReplyError, StationFileError
from instruments.roles import decode_real32
from instruments.station import Station
from labpgt.experiment.options import ConfigError, parse_config_text
from labpgt.runfile import RunFileError, RunReader
from sim.faults import FaultSpecError, parse_spec
from sim.instruments import SimKeysightMXG, SimKeysightXSA, SimRig, SimWindfreakSynthHD

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
text = st.text(st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=40)
reply_text = st.one_of(text, st.from_regex(r"[+-]?\d{0,4}(\.\d{0,4})?([eE][+-]?\d{1,3})?,?\"?[ A-Za-z;]{0,12}\"?",
                                           fullmatch=True))


@FAST
@given(reply_text)
def test_numeric_replies_give_a_number_or_a_reply_error(reply):
    try:
        value = parse_overflow(reply)
    except ReplyError as exc:
        assert repr(reply) in str(exc)
        return
    assert isinstance(value, float)
    assert math.isnan(value) or abs(value) < 9.9e37


@FAST
@given(reply_text)
def test_boolean_replies_give_a_bool_or_a_reply_error(reply):
    try:
        assert parse_bool(reply) in (True, False)
    except ReplyError as exc:
        assert "expected 1, 0, ON or OFF" in str(exc)


@FAST
@given(reply_text)
def test_error_queue_entries_parse_or_give_a_reply_error(reply):
    try:
        code, message = parse_error(reply)
    except ReplyError:
        return
    assert isinstance(code, int) and isinstance(message, str)
    assert not message.startswith(('"', "'"))


@FAST
@given(st.integers(-999, 999), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
       st.sampled_from(["", "+"]), st.sampled_from(['"', "'", ""]))
def test_error_queue_entries_round_trip(code, message, plus, quote):
    message = message.strip().strip("\"'").strip()
    sign = plus if code >= 0 else ""
    assert parse_error(f"{sign}{code},{quote}{message}{quote}") == (code, message)


@FAST
@given(st.binary(max_size=64))
def test_block_headers_parse_or_give_a_transport_error(data):
    try:
        header_length, length = parse_block_header(data)
    except TransportError:
        return
    assert data[:1] == b"#" and header_length == 2 + int(data[1:2]) and length >= 0


@FAST
@given(st.binary(max_size=300), st.binary(max_size=3))
def test_block_messages_parse_exactly_or_give_a_transport_error(payload, tail):
    from drivers.transport import block
    framed = block(payload)
    assert parse_block(framed) == payload
    mangled = framed[:-1] + tail  # the terminator replaced by anything
    try:
        assert parse_block(mangled) == payload and tail == b"\n"
    except TransportError:
        assert tail != b"\n"
    for cut in range(0, len(framed) - 1, max(1, len(framed) // 7)):
        with pytest.raises(TransportError):
            parse_block(framed[:cut])


@FAST
@given(st.binary(max_size=2000), st.integers(1, 500), st.booleans())
def test_traces_decode_or_give_an_instrument_error(payload, points, big_endian):
    try:
        trace = decode_real32(payload, big_endian, points)
    except InstrumentError:
        return
    assert trace.shape == (points,) and np.all(np.isfinite(trace))


@FAST
@given(st.binary(max_size=40))
def test_serial_reply_lines_decode_or_give_a_transport_error(data):
    try:
        assert decode_reply(data, "ASRL/dev/null::INSTR", "f?") == data.decode("ascii")
    except TransportError as exc:
        assert "garbled reply" in str(exc)


@FAST
@given(st.text(st.characters(min_codepoint=0, max_codepoint=0x10FF), max_size=60))
def test_random_messages_never_crash_the_simulated_scpi_instruments(message):
    rig = SimRig(seed=0)
    for device in (SimKeysightMXG(rig), SimKeysightXSA(rig)):
        device.handle(message)  # must not raise
        while device.errors:
            code, _ = device.errors.pop()
            assert code < 0 or code == 520, code  # SCPI-defined errors only (520: a fault we inject)


@FAST
@given(st.binary(max_size=60))
def test_random_bytes_never_crash_the_simulated_synthhd(data):
    SimWindfreakSynthHD(SimRig(seed=0)).handle(data)


@FAST
@given(st.text(max_size=80))
def test_fault_specs_parse_or_give_a_fault_spec_error(spec):
    try:
        parse_spec(spec)
    except FaultSpecError:
        pass


STATION = """\
[station]
name = "p"
pacing = "virtual"
[signal_generator]
driver = "drivers.keysight:MXG"
resource = "TCPIP::127.0.0.1::40123::SOCKET"
[signal_generator.limits]
frequency_hz = [1.9e9, 2.3e9]
power_dbm = [-60.0, 0.0]
[current_source]
driver = "drivers.kepco:BOP"
resource = "TCPIP::127.0.0.1::40124::SOCKET"
[current_source.options]
timeout_s = 5.0
[current_source.limits]
current_a = [-2.5, 2.5]
compliance_v = 20.0
ramp_rate_a_per_s = 2.0
ramp_step_a = 0.05
[spectrum_analyzer]
driver = "drivers.keysight:XSeries"
resource = "TCPIP::127.0.0.1::40125::SOCKET"
[spectrum_analyzer.limits]
max_input_dbm = 20.0
frequency_hz = [1.0e9, 3.0e9]
[spectrum_analyzer.settings]
span_hz = 20e6
points = 401
"""
VALUES = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(lambda f: repr(f).lower()),
                   st.sampled_from(['"x"', "true", "[]", "[1, 2, 3]", '["a", 1]', "{}", "nan", "inf", "-0.0",
                                    '"TCPIP::h::0::SOCKET"', '"drivers.kepco:BOP"', '"drivers:nope"', "1e400"]))


def _mutated(base: str, data) -> str:
    lines = base.splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        how = data.draw(st.sampled_from(["drop", "value", "key", "junk"]))
        if how == "drop":
            del lines[i]
        elif how == "value" and "=" in lines[i]:
            lines[i] = lines[i].split("=")[0] + "= " + data.draw(VALUES)
        elif how == "key" and "=" in lines[i]:
            lines[i] = data.draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True)) + " =" + lines[i].split("=", 1)[1]
        else:
            lines.insert(i, data.draw(text))
        if not lines:
            break
    return "\n".join(lines) + "\n"


@FAST
@given(st.data())
def test_station_files_give_only_station_file_errors(data):
    source = data.draw(st.one_of(text, st.just(None)))
    source = _mutated(STATION, data) if source is None else source
    try:
        Station.from_text(source, "prop.toml")
    except StationFileError as exc:
        assert "prop.toml" in str(exc)


@FAST
@given(st.data())
def test_experiment_files_give_only_config_errors(data):
    base = 'dataset = "iris"\nestimator = "node"\nbudget = 600\nseed = 3\nlr = 0.02\none_sided = true\nnodes = 2\n'
    source = data.draw(st.one_of(text, st.just(None)))
    source = _mutated(base, data) if source is None else source
    try:
        config = parse_config_text(source, "exp.toml")
    except ConfigError as exc:
        assert "exp.toml" in str(exc)
        return
    assert isinstance(config, dict)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    from labpgt.runfile import RunFile
    path = tmp_path_factory.mktemp("rf") / "good.h5"
    with RunFile.create(path, n_params=3, features_per_measurement=2, trace_points=5) as run:
        for i in range(10):
            run.measurement({"step": 0, "kind": "train", "sample_index": i, "trace_dbm": np.zeros(5, np.float32),
                             "features": np.ones(2), "settings": {"frequency_hz": 2e9, "power_dbm": -10.0,
                                                                   "current_a": 1.8}})
        run.fault({"step": 0, "measurement_row": 3, "role": "spectrum_analyzer", "kind": "no_answer",
                   "recovered": True, "message": "x"})
        run.step({"step": 1, "loss": 1.0, "accuracy": 0.5, "grad_norm": 1.0, "measurements": 10, "time_s": 0.0,
                  "current_a": 1.8})
    return path.read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_run_files_give_only_run_file_errors(tmp_path, good_run, data):
    how = data.draw(st.sampled_from(["random", "truncated", "flipped"]))
    if how == "random":
        blob = data.draw(st.binary(max_size=2000))
    elif how == "truncated":
        blob = good_run[:data.draw(st.integers(0, len(good_run) - 1))]
    else:
        blob = bytearray(good_run)
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
        blob = bytes(blob)
    path = tmp_path / f"damaged-{data.draw(st.integers(0, 10**9))}.h5"
    path.write_bytes(blob)
    try:
        with RunReader(path) as r:
            r.steps(), r.faults(), r.status_history(), r.measurements[:]
    except RunFileError:
        pass


def test_a_run_file_from_before_the_faults_table_reads_as_no_faults(tmp_path, good_run):
    import h5py
    path = tmp_path / "old.h5"
    path.write_bytes(good_run)
    with h5py.File(path, "r+") as f:  # make it look like a format-1 file written before /faults
        del f["faults"]
        committed = f["committed"][:6]
        del f["committed"]
        f.create_dataset("committed", data=committed)
    with RunReader(path) as r:
        assert r.n_faults == 0 and len(r.faults()["kind"]) == 0 and r.n_measurements == 10
        assert r.steps()["step"].tolist() == [1]
    from labpgt.runfile import RunFile
    with RunFile.open_append(path) as run:  # resuming it keeps its layout: faults have nowhere to go
        assert run.fault({"step": 1, "measurement_row": 10, "role": "current_source", "kind": "no_answer",
                          "recovered": True}) is False
        run.set_status("completed")
    with RunReader(path) as r:
        assert r.status == "completed" and r.n_faults == 0 and len(r.resumes()["checkpoint"]) == 1
