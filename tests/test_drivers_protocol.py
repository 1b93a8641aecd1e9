"""Byte-exact conversations between each driver and its instrument, as the manuals have them.

Every exchange lists the exact bytes sent (terminator included) and the exact bytes the
instrument answers; ScriptedTransport fails on any difference and on exchanges left over.
"""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from drivers.keithley import Keithley2400
from drivers.kepco import BOP, model_ranges
from drivers.keysight import MXG, XSeries
from drivers.rohde import FSV
from drivers.scpi import join_commands, parse_error
from drivers.transport import ScriptedTransport, ScriptMismatch, block, parse_block
from drivers.windfreak import SynthHD
from instruments.errors import InstrumentError, InstrumentReportedError, LimitError

OPC = (b"*OPC?\n", b"1\n")
NO_ERROR_KEYSIGHT = (b"SYST:ERR?\n", b'+0,"No error"\n')
NO_ERROR_RS = (b"SYST:ERR?\n", b'0,"No error"\n')

SG_LIMITS = {"frequency_hz": [1.9e9, 2.3e9], "power_dbm": [-60.0, 0.0]}
CS_LIMITS = {"current_a": [-2.5, 2.5], "compliance_v": 20.0, "ramp_rate_a_per_s": 2.0, "ramp_step_a": 0.05}
KEITHLEY_LIMITS = {"current_a": [-1.0, 1.0], "compliance_v": 20.0, "ramp_rate_a_per_s": 2.0, "ramp_step_a": 0.05}
SA_LIMITS = {"max_input_dbm": 20.0, "frequency_hz": [1.0e9, 3.0e9]}


def connect(driver, pairs, limits=None, **kwargs):
    transport = ScriptedTransport.for_driver(driver, pairs)
    return driver(transport, limits=limits or {}, station_file="test.toml", **kwargs), transport


def done(transport):
    transport.assert_done()


# ====================================================================== helpers
def test_error_entries_are_split_at_the_first_comma():
    assert parse_error('+0,"No error"') == (0, "No error")
    assert parse_error('-113,"Undefined header"') == (-113, "Undefined header")
    assert parse_error('-222,"Data out of range; value clipped, sort of"') == (
        -222, "Data out of range; value clipped, sort of")
    assert parse_error("0, No Error") == (0, "No Error")


def test_joined_commands_restart_at_the_root():
    assert join_commands(["SOUR:FREQ 1", "SOUR:POW 2", "*OPC?"]) == "SOUR:FREQ 1;:SOUR:POW 2;*OPC?"


def test_scripted_transport_fails_on_a_wrong_command_and_on_leftovers():
    transport = ScriptedTransport([(b"SOUR:FREQ?\n", b"1\n")])
    with pytest.raises(ScriptMismatch, match="SOUR:FREQ:CW"):
        transport.query("SOUR:FREQ:CW?")
    transport = ScriptedTransport([(b"OUTP:STAT 0\n", None), (b"*OPC?\n", b"1\n")])
    transport.write("OUTP:STAT 0")
    with pytest.raises(ScriptMismatch, match="never happened"):
        transport.close()
    transport = ScriptedTransport([(b"*OPC?\n", b"1")])  # reply without its terminator
    with pytest.raises(ScriptMismatch, match="terminator"):
        transport.query("*OPC?")


def test_scripted_transport_as_a_context_manager_cannot_forget_the_leftover_check():
    with pytest.raises(ScriptMismatch, match=r"1 scripted exchanges never happened, next: b'\*OPC\?\\n'"):
        with ScriptedTransport([(b"OUTP:STAT 0\n", None), (b"*OPC?\n", b"1\n")]) as transport:
            transport.write("OUTP:STAT 0")
    with pytest.raises(ZeroDivisionError):  # an error inside the block is reported as itself
        with ScriptedTransport([(b"*OPC?\n", b"1\n")]):
            1 / 0


def test_block_framing():
    payload = struct.pack("<3f", -1.0, -2.0, -3.0)
    assert block(payload) == b"#212" + payload + b"\n"
    assert parse_block(b"#212" + payload + b"\n") == payload
    with pytest.raises(InstrumentError):
        parse_block(b"#212" + payload)  # terminator missing


# ====================================================================== Keysight MXG
def test_mxg_identify_and_init():
    sg, t = connect(MXG, [
        (b"*IDN?\n", b"Agilent Technologies, N5181A, MY50140000, A.01.20\n"),
        (b"OUTP:MOD OFF\n", None), OPC, NO_ERROR_KEYSIGHT,
    ], SG_LIMITS)
    assert sg.identify() == "Agilent Technologies, N5181A, MY50140000, A.01.20"
    sg.initialize()
    done(t)


def test_mxg_getters():
    sg, t = connect(MXG, [
        (b"SOUR:FREQ?\n", b"+2.05000000000000E+09\n"),
        (b"SOUR:POW?\n", b"-1.00000000E+001\n"),
        (b"OUTP:STAT?\n", b"1\n"),
        (b"OUTP:STAT?\n", b"0\n"),
    ], SG_LIMITS)
    assert sg.frequency_hz == 2.05e9
    assert sg.power_dbm == -10.0
    assert sg.output_enabled is True
    assert sg.output_enabled is False
    done(t)


def test_mxg_setters_sync_and_check_errors():
    sg, t = connect(MXG, [
        (b"SOUR:FREQ 2050000000.50\n", None), OPC, NO_ERROR_KEYSIGHT,
        (b"SOUR:POW -12.25\n", None), OPC, NO_ERROR_KEYSIGHT,
        (b"OUTP:STAT 0\n", None), OPC, NO_ERROR_KEYSIGHT,
    ], SG_LIMITS)
    sg.frequency_hz = 2.0500000005e9
    sg.power_dbm = -12.25
    with pytest.raises(InstrumentError, match=r"RF is switched on only by enable_rf\(\).*nothing was sent"):
        sg.output_enabled = True
    with pytest.raises(InstrumentError, match="no validated frequency and power"):
        sg.enable_rf()  # direct sets are not a validated pair
    sg.safe_state()
    done(t)


def test_mxg_enable_rf_reads_the_setting_back_before_switching_on():
    sg, t = connect(MXG, [
        (b"SOUR:FREQ 2100000000.00;:SOUR:POW -20.00;*OPC?;:SYST:ERR?\n", b'1;+0,"No error"\n'),
        (b"SOUR:FREQ?\n", b"+2.10000000000000E+09\n"), (b"SOUR:POW?\n", b"-2.00000000E+001\n"),
        (b"OUTP:STAT 1\n", None), OPC, NO_ERROR_KEYSIGHT,
    ], SG_LIMITS)
    assert sg.enable_rf_at(2.1e9, -20.0) == (2.1e9, -20.0)
    done(t)


def test_mxg_enable_rf_refuses_a_read_back_that_disagrees_or_leaves_the_limits():
    sg, t = connect(MXG, [
        (b"SOUR:FREQ 2100000000.00;:SOUR:POW -20.00;*OPC?;:SYST:ERR?\n", b'1;+0,"No error"\n'),
        (b"SOUR:FREQ?\n", b"+2.10000000000000E+09\n"), (b"SOUR:POW?\n", b"-1.00000000E+001\n"),
        (b"SOUR:FREQ?\n", b"+2.60000000000000E+09\n"), (b"SOUR:POW?\n", b"-2.00000000E+001\n"),
    ], SG_LIMITS)
    with pytest.raises(InstrumentError, match=r"refusing to switch RF on: the generator reads back .*-10\.000 dBm"):
        sg.enable_rf_at(2.1e9, -20.0)
    with pytest.raises(LimitError, match=r"frequency_hz read back before RF on = 2600000000.0"):
        sg.enable_rf()
    done(t)  # no OUTP:STAT 1 was sent


def test_mxg_configure_cw_is_one_message_with_its_opc_and_error_read():
    # the per-measurement hot path: settings, *OPC? and the first error-queue entry in one round trip
    sg, t = connect(MXG, [
        (b"SOUR:FREQ 2100000000.00;:SOUR:POW -20.00;*OPC?;:SYST:ERR?\n", b'1;+0,"No error"\n'),
        (b"SOUR:FREQ 2100000001.50;:SOUR:POW -19.75;*OPC?;:SYST:ERR?\n", b'+1;+0,"No error"\n'),
    ], SG_LIMITS)
    sg.configure_cw(2.1e9, -20.0)
    sg.configure_cw(2.1000000015e9, -19.75)
    done(t)


def test_mxg_configure_cw_error_in_the_reply_drains_the_queue_and_raises():
    sg, t = connect(MXG, [
        (b"SOUR:FREQ 2100000000.00;:SOUR:POW -20.00;*OPC?;:SYST:ERR?\n",
         b'1;-222,"Data out of range;value clipped"\n'),
        (b"SYST:ERR?\n", b'-221,"Settings conflict"\n'), NO_ERROR_KEYSIGHT,
    ], SG_LIMITS)
    with pytest.raises(InstrumentReportedError) as info:
        sg.configure_cw(2.1e9, -20.0)
    assert info.value.entries == [(-222, "Data out of range;value clipped"), (-221, "Settings conflict")]
    done(t)


def test_mxg_configure_cw_rejects_a_reply_without_opc_and_entry():
    sg, t = connect(MXG, [
        (b"SOUR:FREQ 2100000000.00;:SOUR:POW -20.00;*OPC?;:SYST:ERR?\n", b"1\n"),
    ], SG_LIMITS)
    with pytest.raises(InstrumentError, match="unexpected reply"):
        sg.configure_cw(2.1e9, -20.0)
    done(t)


def test_mxg_error_queue_is_drained_and_raised():
    sg, t = connect(MXG, [
        (b"SOUR:POW -5.00\n", None), OPC,
        (b"SYST:ERR?\n", b'-222,"Data out of range"\n'),
        (b"SYST:ERR?\n", b'-113,"Undefined header"\n'),
        NO_ERROR_KEYSIGHT,
        (b"SYST:ERR?\n", b'-350,"Queue overflow"\n'), NO_ERROR_KEYSIGHT,
    ], SG_LIMITS)
    with pytest.raises(InstrumentReportedError) as info:
        sg.power_dbm = -5.0
    assert info.value.entries == [(-222, "Data out of range"), (-113, "Undefined header")]
    assert sg.errors() == [(-350, "Queue overflow")]
    done(t)


def test_mxg_limits_are_checked_before_sending():
    sg, t = connect(MXG, [], SG_LIMITS)
    with pytest.raises(LimitError, match=r"power_dbm = 5.0 .*\[-60, 0\] dBm.*test.toml"):
        sg.power_dbm = 5.0
    with pytest.raises(LimitError, match="frequency_hz"):
        sg.configure_cw(2.5e9, -10.0)
    with pytest.raises(LimitError, match="power_dbm"):
        sg.configure_cw(2.0e9, 1.0)  # a valid frequency is not sent alone either
    with pytest.raises(LimitError):
        sg.frequency_hz = float("nan")
    assert t.sent == []


# ====================================================================== Keysight X-Series
def trace_values(points=401):
    return -80.0 + 10.0 * np.sin(np.linspace(0, 3, points)).astype(np.float32)


def xseries_connected(extra):
    return connect(XSeries, [
        (b"INST:SEL SA;:CONF:SAN;:FORM:DATA REAL,32;:FORM:BORD SWAP;:CALC:MARK1:MODE POS\n", None),
        OPC, NO_ERROR_KEYSIGHT,
    ] + extra, SA_LIMITS)


def test_xseries_init_getters_and_configure():
    sa, t = xseries_connected([
        (b"SENS:FREQ:CENT?\n", b"+2.05000000E+09\n"),
        (b"SENS:FREQ:SPAN?\n", b"+2.00000000E+07\n"),
        (b"SENS:FREQ:STAR?\n", b"+2.04000000E+09\n"),
        (b"SENS:FREQ:STOP?\n", b"+2.06000000E+09\n"),
        (b"SENS:BAND:RES?\n", b"+5.00000000E+04\n"),
        (b"DISP:WIND:TRAC:Y:RLEV?\n", b"+0.00000000E+00\n"),
        (b"SENS:SWE:POIN?\n", b"+401\n"),
        (b"SENS:SWE:TIME?\n", b"+1.20000000E-02\n"),
        (b"INIT:CONT?\n", b"1\n"),
        (b"SENS:FREQ:CENT 2050000000.000;:SENS:FREQ:SPAN 20000000.000;:SENS:BAND:RES 50000.000;"
         b":SENS:SWE:POIN 401;:DISP:WIND:TRAC:Y:RLEV -10.00\n", None), OPC, NO_ERROR_KEYSIGHT,
        (b"SENS:FREQ:STAR 2000000000.000\n", None), OPC, NO_ERROR_KEYSIGHT,
        (b"SENS:FREQ:STOP 2100000000.000\n", None), OPC, NO_ERROR_KEYSIGHT,
    ])
    sa.initialize()
    assert (sa.center_hz, sa.span_hz, sa.start_hz, sa.stop_hz) == (2.05e9, 2e7, 2.04e9, 2.06e9)
    assert (sa.rbw_hz, sa.reference_level_dbm, sa.points, sa.sweep_time_s) == (5e4, 0.0, 401, 0.012)
    assert sa.continuous is True
    sa.configure(center_hz=2.05e9, span_hz=20e6, rbw_hz=50e3, points=401, reference_level_dbm=-10.0)
    sa.start_hz = 2.0e9
    sa.stop_hz = 2.1e9
    done(t)


def test_xseries_measure_reads_one_little_endian_block_with_few_round_trips():
    values = trace_values()
    payload = struct.pack("<401f", *values)
    sa, t = xseries_connected([
        (b"INIT:CONT 0\n", None), OPC, NO_ERROR_KEYSIGHT,
        (b"SENS:SWE:TIME?\n", b"+1.20000000E-02\n"),
        (b"INIT:IMM;*OPC?;:SYST:ERR?\n", b'1;+0,"No error"\n'),
        (b"SENS:FREQ:STAR?\n", b"+2.04000000E+09\n"),
        (b"SENS:FREQ:STOP?\n", b"+2.06000000E+09\n"),
        (b"SENS:SWE:POIN?\n", b"+401\n"),
        (b"TRAC:DATA? TRACE1\n", b"#41604" + payload + b"\n"),
        # the second measurement: nothing changed, so one sweep + one block
        (b"INIT:IMM;*OPC?;:SYST:ERR?\n", b'1;+0,"No error"\n'),
        (b"TRAC:DATA? TRACE1\n", block(payload)),
    ])
    sa.initialize()
    freqs, dbm = sa.measure()
    assert dbm.dtype == np.float32
    np.testing.assert_array_equal(dbm, values.astype(np.float32))
    np.testing.assert_allclose(freqs, np.linspace(2.04e9, 2.06e9, 401))
    freqs2, dbm2 = sa.measure()
    np.testing.assert_array_equal(dbm2, dbm)
    done(t)


def test_xseries_rejects_a_big_endian_block():
    payload = struct.pack(">401f", *trace_values())
    sa, t = xseries_connected([
        (b"INIT:CONT 0\n", None), OPC, NO_ERROR_KEYSIGHT,
        (b"SENS:SWE:TIME?\n", b"+1.20000000E-02\n"),
        (b"INIT:IMM;*OPC?;:SYST:ERR?\n", b'1;+0,"No error"\n'),
        (b"SENS:FREQ:STAR?\n", b"+2.04000000E+09\n"),
        (b"SENS:FREQ:STOP?\n", b"+2.06000000E+09\n"),
        (b"SENS:SWE:POIN?\n", b"+401\n"),
        (b"TRAC:DATA? TRACE1\n", block(payload)),
    ])
    sa.initialize()
    with pytest.raises(InstrumentError, match="byte order"):
        sa.measure()


def test_xseries_reconfigure_invalidates_the_cached_axis():
    payload = struct.pack("<401f", *trace_values())
    sweep = [(b"INIT:IMM;*OPC?;:SYST:ERR?\n", b'1;+0,"No error"\n')]
    sa, t = xseries_connected([
        (b"INIT:CONT 0\n", None), OPC, NO_ERROR_KEYSIGHT,
        (b"SENS:SWE:TIME?\n", b"+1.20000000E-02\n"), *sweep,
        (b"SENS:FREQ:STAR?\n", b"+2.04000000E+09\n"), (b"SENS:FREQ:STOP?\n", b"+2.06000000E+09\n"),
        (b"SENS:SWE:POIN?\n", b"+401\n"), (b"TRAC:DATA? TRACE1\n", block(payload)),
        (b"SENS:FREQ:CENT 2100000000.000\n", None), OPC, NO_ERROR_KEYSIGHT,
        (b"SENS:SWE:TIME?\n", b"+1.20000000E-02\n"), *sweep,
        (b"SENS:FREQ:STAR?\n", b"+2.09000000E+09\n"), (b"SENS:FREQ:STOP?\n", b"+2.11000000E+09\n"),
        (b"SENS:SWE:POIN?\n", b"+401\n"), (b"TRAC:DATA? TRACE1\n", block(payload)),
    ])
    sa.initialize()
    sa.measure()
    sa.configure(center_hz=2.1e9)
    freqs, _ = sa.measure()
    assert freqs[0] == 2.09e9 and freqs[-1] == 2.11e9
    done(t)


def test_xseries_long_sweep_extends_the_timeout_and_restores_it():
    sa, t = xseries_connected([
        (b"INIT:CONT 0\n", None), OPC, NO_ERROR_KEYSIGHT,
        (b"SENS:SWE:TIME?\n", b"+1.00000000E+01\n"),
        (b"INIT:IMM;*OPC?;:SYST:ERR?\n", b'1;+0,"No error"\n'),
    ])
    sa.initialize()
    sa.single_sweep()
    assert t.timeouts_seen[-1] == pytest.approx(12.0)  # 10 s sweep + 2 s margin
    assert t.timeout_s == 5.0
    done(t)


def test_xseries_peak_and_overflow_marker():
    sa, t = connect(XSeries, [
        (b"CALC:MARK1:MAX\n", None), (b"CALC:MARK1:X?\n", b"+2.05012500E+09\n"),
        (b"CALC:MARK1:Y?\n", b"-7.25000000E+00\n"),
        (b"CALC:MARK1:MAX\n", None), (b"CALC:MARK1:X?\n", b"+2.05012500E+09\n"),
        (b"CALC:MARK1:Y?\n", b"9.91E37\n"),
    ], SA_LIMITS)
    assert sa.peak() == (2.050125e9, -7.25)
    hz, dbm = sa.peak()
    assert hz == 2.050125e9 and math.isnan(dbm)
    done(t)


def test_xseries_safe_state_and_limits():
    sa, t = connect(XSeries, [(b"INIT:CONT 1\n", None), OPC, NO_ERROR_KEYSIGHT], SA_LIMITS)
    with pytest.raises(LimitError, match="reference_level_dbm"):
        sa.configure(center_hz=2e9, reference_level_dbm=25.0)  # above max_input_dbm
    with pytest.raises(LimitError, match="stop_hz"):
        sa.configure(center_hz=2.99e9, span_hz=100e6)  # the span reaches beyond 3 GHz
    with pytest.raises(LimitError, match="points"):
        sa.configure(points=401.5)
    assert t.sent == []
    sa.safe_state()
    done(t)


# ====================================================================== R&S FSV
def fsv_connected(extra):
    return connect(FSV, [
        (b"FORM REAL,32;:FORM:BORD SWAP;:CALC:MARK1 ON\n", None), OPC, NO_ERROR_RS,
    ] + extra, SA_LIMITS)


def test_fsv_getters_and_configure():
    sa, t = fsv_connected([
        (b"FREQ:CENT?\n", b"2050000000\n"),
        (b"FREQ:SPAN?\n", b"20000000\n"),
        (b"BAND:RES?\n", b"50000\n"),
        (b"DISP:WIND:TRAC:Y:SCAL:RLEV?\n", b"0\n"),
        (b"SWE:POIN?\n", b"401\n"),
        (b"SWE:TIME?\n", b"0.0125\n"),
        (b"INIT:CONT?\n", b"0\n"),
        (b"FREQ:CENT 2050000000.000;:FREQ:SPAN 20000000.000;:BAND:RES 50000.000;:SWE:POIN 401;"
         b":DISP:WIND:TRAC:Y:SCAL:RLEV 0.00\n", None), OPC, NO_ERROR_RS,
        (b"INP:ATT 10\n", None), OPC, NO_ERROR_RS,
    ])
    sa.initialize()
    assert (sa.center_hz, sa.span_hz, sa.rbw_hz, sa.reference_level_dbm) == (2.05e9, 2e7, 5e4, 0.0)
    assert (sa.points, sa.sweep_time_s, sa.continuous) == (401, 0.0125, False)
    sa.configure(center_hz=2.05e9, span_hz=20e6, rbw_hz=50e3, points=401, reference_level_dbm=0.0)
    sa.attenuation_db = 10
    done(t)


def test_fsv_measure_reads_a_big_endian_block():
    values = trace_values()
    sa, t = fsv_connected([
        (b"INIT:CONT 0\n", None), OPC, NO_ERROR_RS,
        (b"SWE:TIME?\n", b"0.0125\n"),
        (b"INIT:IMM;*OPC?;:STAT:QUES:POW:COND?\n", b"1;0\n"),
        (b"FREQ:STAR?\n", b"2040000000\n"), (b"FREQ:STOP?\n", b"2060000000\n"), (b"SWE:POIN?\n", b"401\n"),
        (b"TRAC:DATA? TRACE1\n", b"#41604" + struct.pack(">401f", *values) + b"\n"),
    ])
    sa.initialize()
    freqs, dbm = sa.measure()
    np.testing.assert_array_equal(dbm, values.astype(np.float32))
    done(t)


def test_fsv_rejects_a_little_endian_block():
    sa, t = fsv_connected([
        (b"INIT:CONT 0\n", None), OPC, NO_ERROR_RS,
        (b"SWE:TIME?\n", b"0.0125\n"),
        (b"INIT:IMM;*OPC?;:STAT:QUES:POW:COND?\n", b"1;0\n"),
        (b"FREQ:STAR?\n", b"2040000000\n"), (b"FREQ:STOP?\n", b"2060000000\n"), (b"SWE:POIN?\n", b"401\n"),
        (b"TRAC:DATA? TRACE1\n", block(struct.pack("<401f", *trace_values()))),
    ])
    sa.initialize()
    with pytest.raises(InstrumentError, match="byte order"):
        sa.measure()


def test_fsv_peak_not_found_is_nan():
    sa, t = connect(FSV, [
        (b"CALC:MARK1:MAX\n", None), (b"CALC:MARK1:X?\n", b"2050125000\n"), (b"CALC:MARK1:Y?\n", b"-7.25\n"),
        NO_ERROR_RS,
        (b"CALC:MARK1:MAX\n", None), (b"CALC:MARK1:X?\n", b"2050125000\n"), (b"CALC:MARK1:Y?\n", b"-7.25\n"),
        (b"SYST:ERR?\n", b'-200,"Execution error;no peak found"\n'), NO_ERROR_RS,
    ], SA_LIMITS)
    assert sa.peak() == (2.050125e9, -7.25)
    assert all(math.isnan(v) for v in sa.peak())
    done(t)


# ====================================================================== Keithley 2400
def test_keithley_init_selects_current_mode_reading_elements_and_the_source_range():
    cs, t = connect(Keithley2400, [
        (b"*IDN?\n", b"KEITHLEY INSTRUMENTS INC.,MODEL 2400,1234567,C30\n"),
        (b":SOUR:FUNC?\n", b"VOLT\n"), (b":OUTP?\n", b"0\n"),
        # the range set explicitly: autorange is lost when the 2400 goes to local
        (b":SOUR:FUNC CURR;:FORM:ELEM VOLT,CURR;:SOUR:CURR:RANG:AUTO 0;:SOUR:CURR:RANG 1\n", None),
        OPC, NO_ERROR_KEYSIGHT,
    ], KEITHLEY_LIMITS)
    assert cs.identify() == "KEITHLEY INSTRUMENTS INC.,MODEL 2400,1234567,C30"
    cs.initialize()
    assert cs.limits["compliance_v"] == (0.0, 20.0)  # within the 21 V the 1 A range gives
    done(t)


def test_keithley_small_currents_get_a_small_range_and_its_compliance():
    limits = dict(KEITHLEY_LIMITS, current_a=[-0.01, 0.01], compliance_v=100.0)
    with ScriptedTransport.for_driver(Keithley2400, [
        (b":SOUR:FUNC?\n", b"CURR\n"), (b":OUTP?\n", b"0\n"),
        (b":FORM:ELEM VOLT,CURR;:SOUR:CURR:RANG:AUTO 0;:SOUR:CURR:RANG 0.01\n", None), OPC, NO_ERROR_KEYSIGHT,
        (b":SENS:VOLT:PROT 100.000\n", None), OPC, NO_ERROR_KEYSIGHT,
    ]) as t:
        cs = Keithley2400(t, limits=limits, station_file="test.toml")
        cs.initialize()
        cs.apply_compliance()  # 100 V: allowed on the 10 mA range


def test_keithley_compliance_beyond_the_range_is_refused_at_load():
    problems = Keithley2400.station_limit_problems(dict(KEITHLEY_LIMITS, compliance_v=210.0))
    assert problems == [("compliance_v", "210 V exceeds the 21 V the Keithley 2400 gives on its 1 A source range "
                         "(needed for current_a up to 1 A)", "at most 21 V with this current_a")]
    assert Keithley2400.station_limit_problems(dict(KEITHLEY_LIMITS, current_a=[-0.1, 0.1],
                                                    compliance_v=210.0)) == []


def test_keithley_ramp_asks_the_output_state_once():
    with ScriptedTransport.for_driver(Keithley2400, [
        (b":OUTP?\n", b"1\n"), (b":MEAS:CURR?\n", b"+1.234000E+00,+1.000000E-01\n"),
        (b":SOUR:CURR?\n", b"+1.000000E-01\n"),
        (b":SOUR:CURR 0.150000\n", None), (b":SOUR:CURR 0.200000\n", None), OPC, NO_ERROR_KEYSIGHT,
    ]) as t:
        cs = Keithley2400(t, limits=KEITHLEY_LIMITS, station_file="test.toml")
        cs.ramp_to(0.2)
    assert t.sent.count(b":OUTP?\n") == 1


def test_keithley_getters_setters_and_overflow():
    cs, t = connect(Keithley2400, [
        (b":SOUR:CURR?\n", b"+1.000000E-01\n"),
        (b":SENS:VOLT:PROT?\n", b"+2.100000E+01\n"),
        (b":OUTP?\n", b"1\n"), (b":MEAS:CURR?\n", b"+1.234000E+00,+1.000100E-01\n"),
        (b":OUTP?\n", b"1\n"), (b":MEAS:VOLT?\n", b"+9.910000E+37,+1.000100E-01\n"),
        (b":OUTP?\n", b"0\n"),  # output off: nothing is measured (it would switch the source on)
        (b":SENS:VOLT:PROT 20.000\n", None), OPC, NO_ERROR_KEYSIGHT,
        # a direct setpoint change within one ramp step of the measured current
        (b":OUTP?\n", b"1\n"), (b":MEAS:CURR?\n", b"+1.234000E+00,+1.000100E-01\n"),
        (b":SOUR:CURR 0.140000\n", None), OPC, NO_ERROR_KEYSIGHT,
    ], KEITHLEY_LIMITS)
    assert cs.current_setpoint_a == 0.1
    assert cs.compliance_voltage_v == 21.0
    assert cs.measured_current_a == pytest.approx(0.10001)
    assert math.isnan(cs.measured_voltage_v)
    assert cs.measured_current_a == 0.0
    cs.compliance_voltage_v = 20.0
    cs.current_setpoint_a = 0.14
    done(t)


def test_keithley_refuses_jumps_and_range_violations_before_sending():
    cs, t = connect(Keithley2400, [
        (b":OUTP?\n", b"1\n"), (b":MEAS:CURR?\n", b"+1.234000E+00,+1.000100E-01\n"),
    ], KEITHLEY_LIMITS)
    with pytest.raises(LimitError, match="current_a"):
        cs.current_setpoint_a = 1.02  # beyond the station's 1.0 A
    with pytest.raises(LimitError, match="ramp_to"):
        cs.current_setpoint_a = 0.5  # a jump of 0.4 A, more than one 0.05 A step
    assert t.sent == [b":OUTP?\n", b":MEAS:CURR?\n"]
    done(t)


# ====================================================================== Kepco BOP
def test_kepco_model_range_from_idn():
    assert model_ranges("KEPCO,BIT 4886 36-12  08-04-2023,H249977,4.04-1.82") == {
        "current_a": (-12.0, 12.0), "compliance_v": (0.0, 36.0)}
    assert model_ranges("KEPCO,BOP 20-5,E1234,2.0")["current_a"] == (-5.0, 5.0)
    assert model_ranges("KEPCO,BOP,,") == {"current_a": (-12.0, 12.0), "compliance_v": (0.0, 36.0)}


def test_kepco_init_getters_setters():
    cs, t = connect(BOP, [
        (b"*IDN?\n", b"KEPCO,BIT 4886 36-12  08-04-2023,H249977,4.04-1.82\n"),
        (b"FUNC:MODE?\n", b"0\n"), (b"OUTP?\n", b"0\n"),
        (b"FUNC:MODE CURR\n", None), OPC, NO_ERROR_RS,
        (b"CURR?\n", b"0.0000\n"),
        (b"VOLT?\n", b"20.000\n"),
        (b"MEAS:CURR?\n", b"4.99E-3\n"),
        (b"MEAS:VOLT?\n", b"1.25E-1\n"),
        (b"OUTP?\n", b"1\n"),
        (b"VOLT 20.000000\n", None), OPC, NO_ERROR_RS,
        (b"MEAS:CURR?\n", b"4.99E-3\n"),
        (b"CURR 0.050000\n", None), OPC, NO_ERROR_RS,
        (b"MEAS:CURR?\n", b"4.99E-3\n"),
        (b"OUTP 0\n", None), OPC, NO_ERROR_RS,
    ], CS_LIMITS)
    assert cs.identify().startswith("KEPCO,BIT 4886 36-12")
    cs.initialize()
    assert cs.current_setpoint_a == 0.0
    assert cs.compliance_voltage_v == 20.0
    assert cs.measured_current_a == 0.00499
    assert cs.measured_voltage_v == 0.125
    assert cs.output_enabled is True
    cs.apply_compliance()
    cs.current_setpoint_a = 0.05
    cs.output_enabled = False  # 5 mA flows: within the zero tolerance
    done(t)


def test_kepco_refuses_output_off_while_current_flows():
    cs, t = connect(BOP, [(b"MEAS:CURR?\n", b"1.2\n")], CS_LIMITS)
    with pytest.raises(InstrumentError, match="refusing to switch the output off while 1.2 A"):
        cs.output_enabled = False
    assert b"OUTP 0\n" not in t.sent
    done(t)


def test_kepco_refuses_output_on_with_a_setpoint():
    cs, t = connect(BOP, [(b"CURR?\n", b"1.0\n")], CS_LIMITS)
    with pytest.raises(InstrumentError, match="switch the output on with a setpoint of 1 A"):
        cs.output_enabled = True
    done(t)


def test_kepco_ramp_from_read_back():
    cs, t = connect(BOP, [
        (b"OUTP?\n", b"1\n"), (b"MEAS:CURR?\n", b"1.0E-1\n"), (b"CURR?\n", b"1.00000E-01\n"),
        (b"CURR 0.150000\n", None), (b"CURR 0.200000\n", None), (b"CURR 0.250000\n", None),
        OPC, NO_ERROR_RS,
    ], CS_LIMITS)
    cs.ramp_to(0.25)
    done(t)


# ====================================================================== Windfreak SynthHD
def synth(pairs):
    return connect(SynthHD, pairs, SG_LIMITS)


def test_windfreak_identity_from_plus_minus_v1():
    sg, t = synth([(b"+", b"SynthHD\n"), (b"-", b"1023\n"), (b"v1", b"3.0\n"),
                   (b"C0", None), (b"E?", b"0\n"), (b"h0E1", None)])
    assert sg.identify() == "Windfreak Technologies,SynthHD,1023,3.0"
    sg.initialize()
    assert sg.errors() == []  # no error queue: nothing is asked
    done(t)


def test_windfreak_frequency_in_mhz_read_back_and_lock():
    sg, t = synth([
        (b"f?", b"2050.00000000\n"),
        (b"C0", None), (b"f2050.12345600", None), (b"f?", b"2050.12345600\n"),
        (b"p", b"0\n"), (b"p", b"0\n"), (b"p", b"1\n"),  # polled until the PLL locks
        (b"C0", None), (b"W-10.500", None), (b"W?", b"-10.500\n"),
    ])
    assert sg.frequency_hz == 2.05e9
    sg.frequency_hz = 2.050123456e9
    sg.power_dbm = -10.5
    done(t)


def test_windfreak_configure_cw_and_output():
    sg, t = synth([
        (b"C0", None), (b"f2100.00000000", None), (b"W-20.000", None),
        (b"f?", b"2100.00000000\n"), (b"p", b"1\n"), (b"W?", b"-20.000\n"),
        (b"f?", b"2100.00000000\n"), (b"W?", b"-20.000\n"),  # read back once more before RF on
        (b"C0", None), (b"E1r1h1", None),
        (b"E?", b"1\n"), (b"r?", b"1\n"), (b"h?", b"1\n"),
        (b"C0", None), (b"h0r0", None),
        (b"E?", b"1\n"), (b"r?", b"0\n"),  # the first switch found off answers
    ])
    sg.configure_cw(2.1e9, -20.0)
    sg.enable_rf()
    assert sg.output_enabled is True
    sg.safe_state()
    assert sg.output_enabled is False
    done(t)


def test_windfreak_unlocked_or_wrong_read_back_is_an_error():
    sg, t = synth([
        (b"C0", None), (b"f2050.00000000", None), (b"f?", b"2050.00000000\n"), *[(b"p", b"0\n")] * 100,
        (b"C0", None), (b"W-10.000", None), (b"W?", b"-30.000\n"),
    ])
    with pytest.raises(InstrumentError, match="not locked"):
        sg.frequency_hz = 2.05e9
    with pytest.raises(InstrumentError, match="reads back -30"):
        sg.power_dbm = -10.0
    with pytest.raises(LimitError):
        sg.power_dbm = 10.0
    done(t)


# ====================================================================== every SCPI driver: IDN and queue
@pytest.mark.parametrize("driver, limits, idn, errors_reply, no_error", [
    (MXG, SG_LIMITS, b"Agilent Technologies, N5183A, MY1, B.01\n", b'-221,"Settings conflict"\n', NO_ERROR_KEYSIGHT),
    (XSeries, SA_LIMITS, b"Keysight Technologies,N9020A,MY2,A.14\n", b'-113,"Undefined header"\n', NO_ERROR_KEYSIGHT),
    (FSV, SA_LIMITS, b"Rohde&Schwarz,FSV-7,100001/007,3.40\n", b'-222,"Data out of range"\n', NO_ERROR_RS),
    (Keithley2400, KEITHLEY_LIMITS, b"KEITHLEY INSTRUMENTS INC.,MODEL 2400,1,C30\n", b'+803,"Output not on"\n',
     NO_ERROR_KEYSIGHT),
    (BOP, CS_LIMITS, b"KEPCO,BIT 4886 36-12,H1,4.04\n", b'-222,"Data out of range"\n', NO_ERROR_RS),
])
def test_every_scpi_driver_identifies_and_drains_its_queue(driver, limits, idn, errors_reply, no_error):
    instrument, t = connect(driver, [
        (b"*IDN?\n", idn), (b"SYST:ERR?\n", errors_reply), (b"SYST:ERR?\n", errors_reply), no_error, no_error,
    ], limits)
    assert instrument.identify() == idn.decode().strip()
    code, message = parse_error(errors_reply.decode().strip())
    assert instrument.errors() == [(code, message), (code, message)]
    instrument.check_errors()  # empty now: no exception
    done(t)


# ====================================================================== pipelined measurement loop
# StationReservoir overlaps the trace read of sample k with the generator's settling for k+1:
# sweep k complete -> generator settings k+1 sent (not waited for) -> trace k read -> the
# generator's reply (*OPC? + error entry) read -> sweep k+1. One journal shared by both
# scripted transports records what each instrument receives, in the order it receives it.
def test_mxg_begin_and_finish_cw_are_configure_cw_in_two_halves():
    sg, t = connect(MXG, [
        (b"SOUR:FREQ 2100000000.00;:SOUR:POW -20.00;*OPC?;:SYST:ERR?\n", b'1;+0,"No error"\n'),
        (b"SOUR:FREQ 2100000001.50;:SOUR:POW -19.75;*OPC?;:SYST:ERR?\n",
         b'1;-222,"Data out of range;value clipped"\n'),
        NO_ERROR_KEYSIGHT,
    ], SG_LIMITS)
    sg.begin_cw(2.1e9, -20.0)
    assert t.sent == [b"SOUR:FREQ 2100000000.00;:SOUR:POW -20.00;*OPC?;:SYST:ERR?\n"]  # sent, not waited for
    sg.finish_cw()
    sg.begin_cw(2.1000000015e9, -19.75)
    with pytest.raises(InstrumentReportedError) as info:  # the error check stays with the batch
        sg.finish_cw()
    assert info.value.entries == [(-222, "Data out of range;value clipped")]
    sg.finish_cw()  # nothing on its way: nothing sent, nothing read
    with pytest.raises(LimitError):
        sg.begin_cw(2.5e9, -10.0)  # limits before anything is sent
    done(t)
    assert t.clears == 0


def test_mxg_an_unread_reply_is_dropped_before_anything_else_is_sent():
    # e.g. the safe state after an exception with a setting in flight: the stale "1;+0" must not
    # be taken as the reply to the next *OPC?
    sg, t = connect(MXG, [
        (b"SOUR:FREQ 2100000000.00;:SOUR:POW -20.00;*OPC?;:SYST:ERR?\n", b'1;+0,"No error"\n'),
        (b"OUTP:STAT 0\n", None), OPC, NO_ERROR_KEYSIGHT,
    ], SG_LIMITS)
    sg.begin_cw(2.1e9, -20.0)
    sg.safe_state()
    assert t.clears == 1
    done(t)


def test_windfreak_begin_cw_does_everything_and_finish_cw_nothing():
    sg, t = synth([
        (b"C0", None), (b"f2100.00000000", None), (b"W-20.000", None),
        (b"f?", b"2100.00000000\n"), (b"p", b"1\n"), (b"W?", b"-20.000\n"),
    ])
    sg.begin_cw(2.1e9, -20.0)
    done(t)
    sg.finish_cw()
    assert len(t.sent) == 6
    done(t)


class _Source:
    """Stands in for the current source (its protocol is tested above)."""

    def __init__(self):
        self.ramps = []

    def ramp_to(self, current_a):
        self.ramps.append(current_a)


from tests.test_physical import Rows  # noqa: E402 - one row-keeping recorder for the tests


class _Faults(Rows):
    def __init__(self):
        super().__init__()
        self.faults = []

    def fault(self, record):
        self.faults.append(record)


def _pipelined_rig(sg_pairs, sa_pairs):
    """MXG + X-Series on scripted transports sharing one journal, configured and warmed up."""
    from types import SimpleNamespace

    from labpgt.reservoirs.encoding import BandReadout, KnobEncoder
    from labpgt.reservoirs.station import StationReservoir

    journal = []
    sg_t = ScriptedTransport.for_driver(MXG, [  # RF on at the encoder's rest setting, read back first
        (b"SOUR:FREQ 2070000000.00;:SOUR:POW -40.00;*OPC?;:SYST:ERR?\n", b'1;+0,"No error"\n'),
        (b"SOUR:FREQ?\n", b"+2.07000000000000E+09\n"), (b"SOUR:POW?\n", b"-4.00000000E+001\n"),
        (b"OUTP:STAT 1\n", None), OPC, NO_ERROR_KEYSIGHT] + sg_pairs, resource="SG", journal=journal)
    sa_t = ScriptedTransport.for_driver(XSeries, [
        (b"DISP:WIND:TRAC:Y:RLEV?\n", b"-1.00000000E+01\n"),
        (b"SENS:FREQ:CENT 2070000000.000;:SENS:FREQ:SPAN 20000000.000;:SENS:BAND:RES 50000.000;"
         b":SENS:SWE:POIN 401;:DISP:WIND:TRAC:Y:RLEV -10.00\n", None), OPC, NO_ERROR_KEYSIGHT] + sa_pairs,
        resource="SA", journal=journal)
    sg = MXG(sg_t, limits=SG_LIMITS, station_file="test.toml")
    sa = XSeries(sa_t, limits=SA_LIMITS, station_file="test.toml")
    station = SimpleNamespace(signal_generator=sg, spectrum_analyzer=sa, current_source=_Source(),
                              instruments={"signal_generator": sg, "spectrum_analyzer": sa})
    readout = BandReadout(center_hz=2.07e9, span_hz=20e6, points=401, rbw_hz=50e3, n_bands=4)
    encoder = KnobEncoder(n_nodes=1, reference_hz=2.07e9, current_min_a=0.0, current_max_a=2.5)
    recorder = _Faults()
    reservoir = StationReservoir(station, encoder, readout, recorder)
    # sweep mode, sweep time and axis are learnt once (tested above), not what is tested here
    sa._continuous, sa._sweep_time_s, sa._axis_hz = False, 0.012, np.linspace(2.06e9, 2.08e9, 401)
    u = np.array([[0.0, 0.0], [0.5, -0.2], [-0.25, 0.6]])
    s = encoder.encode(u, 1.8)
    settings = [f"SOUR:FREQ {f:.2f};:SOUR:POW {p:.2f};*OPC?;:SYST:ERR?\n".encode()
                for f, p in zip(s["drive_frequency_hz"].ravel(), s["drive_power_dbm"].ravel())]
    del journal[:]
    return reservoir, u, settings, journal, sg_t, sa_t, recorder


SWEEP = (b"INIT:IMM;*OPC?;:SYST:ERR?\n", b'1;+0,"No error"\n')
OK = b'1;+0,"No error"\n'


def _trace(level):
    return (b"TRAC:DATA? TRACE1\n", block(struct.pack("<401f", *np.full(401, level, np.float32))))


def test_pipelined_loop_sends_the_next_setting_before_reading_the_trace():
    settings = _pipelined_rig([], [])[2]
    reservoir, u, settings, journal, sg_t, sa_t, rec = _pipelined_rig(
        [(m, OK) for m in settings], [SWEEP, _trace(-80.0), SWEEP, _trace(-81.0), SWEEP, _trace(-82.0)])
    features = reservoir.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(3))
    assert features.shape == (3, 4)
    assert [(who, how, msg) for who, how, msg in journal] == [
        ("SG", "send", settings[0]), ("SG", "read", b""),
        ("SA", "query", SWEEP[0]),
        ("SG", "send", settings[1]),  # sweep 0 complete: the generator moves on ...
        ("SA", "query", _trace(0)[0]),  # ... while trace 0 is read
        ("SG", "read", b""),  # settings 1 done, error queue empty
        ("SA", "query", SWEEP[0]),
        ("SG", "send", settings[2]),
        ("SA", "query", _trace(0)[0]),
        ("SG", "read", b""),
        ("SA", "query", SWEEP[0]),
        ("SA", "query", _trace(0)[0]),  # the last sample: nothing left to send
    ]
    assert [float(r["trace_dbm"][0]) for r in rec.rows] == [-80.0, -81.0, -82.0]
    assert not any(r["flags"] for r in rec.rows) and rec.faults == []
    assert sg_t.clears == sa_t.clears == 0
    done(sg_t), done(sa_t)


def test_pipelined_a_trace_read_fault_takes_the_generator_reply_first_then_repeats_the_row():
    from labpgt.contracts import FLAG_FAULT, FLAG_REPEATED
    from drivers.transport import TIMEOUT

    settings = _pipelined_rig([], [])[2]
    idn = (b"*IDN?\n", b"Keysight Technologies,N9020A,SIM,A.1\n")
    reservoir, u, settings, journal, sg_t, sa_t, rec = _pipelined_rig(
        [(settings[0], OK), (settings[1], OK),  # row 1's setting in flight when trace 0 fails
         (settings[0], OK),  # the repeat of row 0 re-sends its settings
         (settings[1], OK), (settings[2], OK)],  # the rest of the batch one sample at a time
        [SWEEP, (b"TRAC:DATA? TRACE1\n", TIMEOUT),
         idn, NO_ERROR_KEYSIGHT,  # the analyzer recovered: cleared, identified, queue read
         SWEEP, _trace(-80.0), SWEEP, _trace(-81.0), SWEEP, _trace(-82.0)])
    reservoir.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(3))
    assert [(who, how) for who, how, _ in journal] == [
        ("SG", "send"), ("SG", "read"), ("SA", "query"),
        ("SG", "send"), ("SA", "query"),  # trace 0: no answer
        ("SG", "read"),  # row 1's reply taken before anything else talks to the generator
        ("SA", "query"), ("SA", "query"),  # *IDN?, SYST:ERR?
        ("SG", "send"), ("SG", "read"), ("SA", "query"), ("SA", "query"),  # row 0 repeated
        ("SG", "send"), ("SG", "read"), ("SA", "query"), ("SA", "query"),  # row 1, unpipelined
        ("SG", "send"), ("SG", "read"), ("SA", "query"), ("SA", "query"),  # row 2
    ]
    assert [float(r["trace_dbm"][0]) for r in rec.rows] == [-80.0, -81.0, -82.0]
    assert [r["flags"] & (FLAG_FAULT | FLAG_REPEATED) for r in rec.rows] == [FLAG_FAULT | FLAG_REPEATED, 0, 0]
    assert [(f["role"], f["kind"], f["recovered"], f["measurement_row"]) for f in rec.faults] == [
        ("spectrum_analyzer", "no_answer", True, 0)]
    assert sg_t.clears == 0 and sa_t.clears >= 1
    done(sg_t), done(sa_t)


def test_pipelined_a_generator_fault_in_flight_with_an_analyzer_fault_is_recovered_and_recorded_with_it():
    from labpgt.contracts import FLAG_FAULT, FLAG_REPEATED
    from drivers.transport import TIMEOUT

    settings = _pipelined_rig([], [])[2]
    sg_idn = (b"*IDN?\n", b"Keysight Technologies,N5183B,SIM,A.1\n")
    sa_idn = (b"*IDN?\n", b"Keysight Technologies,N9020A,SIM,A.1\n")
    reservoir, u, settings, journal, sg_t, sa_t, rec = _pipelined_rig(
        [(settings[0], OK), (settings[1], b'1;520,"Synthesizer unlocked"\n'), NO_ERROR_KEYSIGHT,
         sg_idn, NO_ERROR_KEYSIGHT,  # the generator recovered first ...
         (settings[0], OK), (settings[1], OK), (settings[2], OK)],
        [SWEEP, (b"TRAC:DATA? TRACE1\n", TIMEOUT),
         sa_idn, NO_ERROR_KEYSIGHT,  # ... then the analyzer
         SWEEP, _trace(-80.0), SWEEP, _trace(-81.0), SWEEP, _trace(-82.0)])
    reservoir.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(3))
    assert [(f["role"], f["kind"], f["recovered"], f["measurement_row"]) for f in rec.faults] == [
        ("signal_generator", "unlocked", True, 0), ("spectrum_analyzer", "no_answer", True, 0)]
    assert [r["flags"] & (FLAG_FAULT | FLAG_REPEATED) for r in rec.rows] == [FLAG_FAULT | FLAG_REPEATED, 0, 0]
    assert [float(r["trace_dbm"][0]) for r in rec.rows] == [-80.0, -81.0, -82.0]
    done(sg_t), done(sa_t)


def test_pipelined_a_failure_sending_the_next_setting_is_met_at_its_own_row():
    from labpgt.contracts import FLAG_FAULT, FLAG_REPEATED
    from drivers.transport import TIMEOUT

    settings = _pipelined_rig([], [])[2]
    sg_idn = (b"*IDN?\n", b"Keysight Technologies,N5183B,SIM,A.1\n")
    reservoir, u, settings, journal, sg_t, sa_t, rec = _pipelined_rig(
        [(settings[0], OK), (settings[1], TIMEOUT),  # row 1's reply never comes
         sg_idn, NO_ERROR_KEYSIGHT, (settings[1], OK), (settings[2], OK)],
        [SWEEP, _trace(-80.0), SWEEP, _trace(-81.0), SWEEP, _trace(-82.0)])
    reservoir.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(3))
    assert [(f["role"], f["kind"], f["measurement_row"]) for f in rec.faults] == [("signal_generator", "no_answer", 1)]
    assert [r["flags"] & (FLAG_FAULT | FLAG_REPEATED) for r in rec.rows] == [0, FLAG_FAULT | FLAG_REPEATED, 0]
    assert [float(r["trace_dbm"][0]) for r in rec.rows] == [-80.0, -81.0, -82.0]
    done(sg_t), done(sa_t)
