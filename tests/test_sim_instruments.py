"""The simulated instruments in-process: strings in, exact bytes out."""
from __future__ import annotations

import math

import struct

import numpy as np
import pytest

from sim.instruments import (SimKeithley2400, SimKepcoBOP, SimKeysightMXG, SimKeysightXSA, SimRig,
                             SimRohdeFSV, SimWindfreakSynthHD)

from sim.ring import Ring


class StandInRing:
    """A cheap ring with the sim.ring API (a noise floor and an RBW-wide line at the drive), for
    the real-time test, whose point is the instruments' own waiting, not the physics."""

    def __init__(self, params=None, seed=0):
        self.params = params
        self.seed = seed
        self.current = 0.0

    def set_current(self, t_s, current_a):
        self.current = current_a

    def field_oe(self, t_s):
        return 3.0 + 140.0 * self.current

    def spectrum(self, t_s, freqs_hz, rbw_hz, drive_hz, drive_dbm, averages=1, ref_level_dbm=0.0):
        rng = np.random.default_rng([self.seed, int(round(t_s * 1e6))])
        trace = -110.0 + 10 * np.log10(rng.exponential(1.0, len(freqs_hz))) / np.sqrt(averages)
        if drive_hz is not None:
            trace = np.maximum(trace, drive_dbm - 20.0 - 3.0 * ((np.asarray(freqs_hz) - drive_hz) / rbw_hz) ** 2)
        overload = bool(trace.max() > ref_level_dbm + 5.0)
        return np.minimum(trace, ref_level_dbm + 10.0), overload

    def free_running(self, field_oe, t_s=0.0):
        return None


def make_ring(seed=0):
    return Ring(seed=seed)


@pytest.fixture
def rig():
    return SimRig(seed=0, ring=make_ring(0))


def q(inst, msg: str) -> bytes:
    return inst.query(msg)


def w(inst, msg: str) -> None:
    inst.write(msg)


def err(inst) -> bytes:
    return inst.query("SYST:ERR?")


# ----------------------------------------------------------------------------- parser


def test_idn_says_simulated(rig):
    assert q(SimKeysightMXG(rig), "*IDN?") == b"Keysight Technologies,N5183B,SIM0001,sim-0.1.0\n"
    for cls in (SimKepcoBOP, SimKeithley2400, SimKeysightXSA, SimRohdeFSV):
        fields = q(cls(rig), "*idn?").decode().strip().split(",")
        assert len(fields) == 4 and fields[2].startswith("SIM") and fields[3].startswith("sim-")


def test_long_and_short_forms_case_insensitive(rig):
    g = SimKeysightMXG(rig)
    w(g, "SOURCE:FREQUENCY:CW 2.07GHZ")
    assert q(g, "sour:freq?") == b"+2.070000000000000E+09\n"
    w(g, "frequency 2071 MHz")
    assert q(g, ":SOURce:FREQuency:CW?") == b"+2.071000000000000E+09\n"
    w(g, ":POW:LEV:IMM:AMPL -12.5 dBm")
    assert q(g, "SOUR:POW?") == b"-1.25000000E+01\n"
    assert err(g) == b'+0,"No error"\n'
    w(g, "SOURc:FREQ 2e9")  # neither short nor long form
    assert err(g) == b'-113,"Undefined header"\n'
    assert q(g, "FREQ?") == b"+2.071000000000000E+09\n"


def test_semicolon_chain_and_header_path_rule(rig):
    sa = SimKeysightXSA(rig)
    # SPAN continues :SENS:FREQ; *OPC does not change the path; ':' goes back to the root
    assert q(sa, ":SENS:FREQ:CENT 2.07e9;*OPC;SPAN 10 MHz;:SENS:FREQ:SPAN?;CENT?") == \
        b"+1.00000000000E+007;+2.07000000000E+009\n"
    assert err(sa) == b'+0,"No error"\n'
    bop = SimKepcoBOP(rig)
    w(bop, "FUNC:MODE CURR;FUNC:MODE?")  # second header resolves to FUNC:FUNC:MODE
    assert err(bop) == b'-113,"Undefined header"\n'
    assert q(bop, "FUNC:MODE CURR;:FUNC:MODE?") == b"1\n"
    assert q(bop, "FUNC:MODE VOLT;MODE?") == b"0\n"


def test_out_of_range_keeps_value_and_queues_222(rig):
    g = SimKeysightMXG(rig)
    w(g, "SOUR:FREQ 2e9")
    w(g, "SOUR:FREQ 30e9")
    assert q(g, "SOUR:FREQ?") == b"+2.000000000000000E+09\n"
    w(g, "SOUR:POW 25")
    w(g, "BOGUS")
    assert q(g, "SYST:ERR?") == b'-222,"Data out of range"\n'
    assert q(g, "SYST:ERR:NEXT?") == b'-222,"Data out of range"\n'
    assert q(g, "SYST:ERR?") == b'-113,"Undefined header"\n'
    assert q(g, "SYST:ERR?") == b'+0,"No error"\n'
    assert q(g, "*ESR?") == b"48\n"  # CME 32 + EXE 16
    assert q(g, "*ESR?") == b"0\n"
    w(g, "OUTP MAYBE")
    assert err(g) == b'+0,"No error"\n'.replace(b'+0,"No error"', b'-224,"Illegal parameter value"')


def test_error_format_per_vendor_and_cls(rig):
    for cls, empty in ((SimKeysightMXG, b'+0,"No error"\n'), (SimKeysightXSA, b'+0,"No error"\n'),
                       (SimRohdeFSV, b'0,"No error"\n'), (SimKeithley2400, b'0,"No error"\n'),
                       (SimKepcoBOP, b'0,"No error"\n')):
        inst = cls(rig)
        assert err(inst) == empty
        w(inst, "NO:SUCH:THING")
        assert q(inst, "*STB?") == b"4\n"  # error available
        w(inst, "*CLS")
        assert err(inst) == empty


def test_queue_overflow_and_query_interrupted(rig):
    g = SimKeysightMXG(rig)
    for _ in range(40):
        w(g, "NOPE")
    errors = [q(g, "SYST:ERR?") for _ in range(31)]
    assert errors[28] == b'-113,"Undefined header"\n'
    assert errors[29] == b'-350,"Queue overflow"\n'
    assert errors[30] == b'+0,"No error"\n'
    w(g, "*IDN?")
    w(g, "*OPC?")  # the *IDN? reply was never read
    assert g.read() == b"1\n"
    assert g.read() == b""  # nothing to read
    assert err(g) == b'-410,"Query INTERRUPTED"\n'
    assert err(g) == b'-420,"Query UNTERMINATED"\n'


def test_numeric_units_min_max(rig):
    g = SimKeysightMXG(rig)
    assert q(g, "FREQ? MAX") == b"+2.000000000000000E+10\n"
    w(g, "FREQ 2070000 kHz")
    assert q(g, "FREQ?") == b"+2.070000000000000E+09\n"
    w(g, "FREQ 5 DBM")
    assert err(g) == b'-131,"Invalid suffix"\n'
    k = SimKeithley2400(rig)
    w(k, ":SOUR:FUNC CURR;:SOUR:CURR 250 mA")
    assert q(k, ":SOUR:CURR?") == b"+2.500000E-01\n"


def test_common_commands(rig):
    g = SimKeysightMXG(rig)
    assert q(g, "*OPT?") == b"1E1,520\n"
    assert q(g, "*TST?") == b"0\n"
    assert q(g, "*OPC?") == b"1\n"
    w(g, "*OPC")
    assert q(g, "*ESR?") == b"1\n"
    w(g, "OUTP ON;*RST")
    assert q(g, "OUTP?") == b"0\n"


# ----------------------------------------------------------------------------- generator


def test_mxg_output_and_timing(rig):
    g = SimKeysightMXG(rig)
    w(g, ":OUTP:MOD OFF;:OUTP ON;:SOUR:FREQ 2.07e9;POW -10")
    assert q(g, ":OUTP?;:OUTP:MOD?") == b"1;0\n"
    assert rig.drive() == (2.07e9, -10.0)
    assert rig.now() == 0.0
    assert q(g, "*OPC?") == b"1\n"
    assert rig.now() == pytest.approx(5e-3)  # set frequency/power ~ 5 ms
    w(g, ":OUTP OFF")
    assert rig.drive() == (None, None)


def test_synthhd_byte_stream_mhz_and_lock(rig):
    s = SimWindfreakSynthHD(rig)
    assert s.handle(b"C0f2070.00000000W-10.000h1E1r1") is None
    assert s.handle(b"f?") == b"2070.00000000\n"
    assert s.handle(b"W?h?E?r?") == b"-10.000\n1\n1\n1\n"
    assert rig.drive() == (2070e6, -10.0)
    s.handle(b"f2071.5")
    polls = [s.handle(b"p") for _ in range(6)]  # each query is a 1 ms round trip
    assert polls[:4] == [b"0\n"] * 4 and polls[4:] == [b"1\n"] * 2
    assert s.handle(b"C1f?C0f?") == b"2000.00000000\n2071.50000000\n"
    s.handle(b"f99999W55Q7?")  # out of range, unknown: ignored
    assert s.handle(b"f?W?") == b"2071.50000000\n-10.000\n"
    s.handle(b"h0")
    assert rig.drive() == (None, None)
    assert s.handle(b"+-v0v1v2").split(b"\n")[:5] == [
        b"SynthHD", b"9990006", b"Firmware Version 3.22 sim-0.1.0 (simulated)", b"Hardware Version 2.06", b"HD"]


# ----------------------------------------------------------------------------- current sources


def test_kepco_current_mode_coil_and_ranges(rig):
    bop = SimKepcoBOP(rig)
    assert q(bop, "FUNC:MODE?;:OUTP?") == b"0;0\n"
    w(bop, "FUNC:MODE CURR;:VOLT 20;:CURR 1.8;:OUTP 1")
    assert q(bop, "MEAS:VOLT?") == b"2.00000E+01\n"  # in compliance while the coil charges
    assert q(bop, "*OPC?") == b"1\n"
    # the magnet's field settled to 0.05 Oe of its 252 Oe move: tau_coil * ln(252 / 0.05)
    assert rig.now() == pytest.approx(0.3 * math.log(252.0 / 0.05))
    assert q(bop, "MEAS:CURR?;:MEAS:VOLT?") == b"1.80000E+00;3.60000E+00\n"  # R = 2 ohm
    w(bop, "CURR 13")
    assert err(bop) == b'-222,"Data out of range"\n'
    assert q(bop, "CURR?") == b"1.80000E+00\n"


def test_keithley_2400(rig):
    k = SimKeithley2400(rig)
    assert q(k, ":SOUR:FUNC?;:OUTP?") == b"VOLT;0\n"
    w(k, ":SOUR:FUNC CURR;:SOUR:CURR:LEV 1.0;:SENS:VOLT:PROT 20")
    assert q(k, ":SENS:VOLT:PROT?") == b"+2.000000E+01\n"
    w(k, ":READ?")
    assert k.read() == b""
    assert err(k) == b'803,"Output not on"\n'
    assert err(k) == b'-420,"Query UNTERMINATED"\n'  # the read with nothing to read
    w(k, ":FORM:ELEM CURR,VOLT")  # answered in the 2400's fixed order VOLT,CURR
    assert q(k, ":MEAS:CURR?") == b"+2.000000E+01,+0.000000E+00\n"  # coil charging, in compliance
    assert q(k, ":OUTP?") == b"1\n"  # :MEASure? turned the output on, as the manual says
    q(k, "*OPC?")
    assert q(k, ":READ?") == b"+2.000000E+00,+1.000000E+00\n"
    w(k, ":SOUR:CURR 1.1")
    assert err(k) == b'-222,"Data out of range"\n'
    w(k, ":SOUR:CURR 1.05;:SENS:VOLT:PROT 1.5")  # 1.05 A x 2 ohm needs 2.1 V: compliance
    q(k, "*OPC?")
    w(k, ":FORM:ELEM CURR,STAT")
    i, stat = (float(x) for x in q(k, ":READ?").split(b","))
    assert i == pytest.approx(0.75, rel=1e-3) and int(stat) & 8


# ----------------------------------------------------------------------------- analyzers


def setup_sa(sa, n=401):
    w(sa, f":INIT:CONT OFF;:FREQ:CENT 2.07e9;SPAN 20e6;:BAND 50e3;:SWE:POIN {n}")


def test_coupled_frequencies(rig):
    sa = SimKeysightXSA(rig)
    w(sa, ":FREQ:STAR 2.0e9;STOP 2.1e9")
    assert q(sa, ":FREQ:CENT?;SPAN?") == b"+2.05000000000E+009;+1.00000000000E+008\n"
    w(sa, ":FREQ:SPAN 20e6")
    assert q(sa, ":FREQ:STAR?;STOP?;CENT?") == b"+2.04000000000E+009;+2.06000000000E+009;+2.05000000000E+009\n"
    w(sa, ":FREQ:CENT 2.07e9")
    assert q(sa, ":FREQ:STAR?;STOP?") == b"+2.06000000000E+009;+2.08000000000E+009\n"
    w(sa, ":FREQ:STOP 2.05e9")  # below the start: the start follows
    assert q(sa, ":FREQ:STAR?;SPAN?") == b"+2.05000000000E+009;+0.00000000000E+000\n"
    fsv = SimRohdeFSV(rig)
    w(fsv, "FREQ:CENT 2.07 GHz;SPAN 20 MHz")
    assert q(fsv, "FREQ:STAR?;STOP?") == b"2060000000;2080000000\n"
    w(fsv, "FREQ:CENT 8e9")
    assert err(fsv) == b'-222,"Data out of range"\n'


def test_sweep_time_and_virtual_clock(rig):
    sa = SimKeysightXSA(rig)
    setup_sa(sa)
    t_sweep = 2.5 * 20e6 / 50e3 ** 2
    assert float(q(sa, ":SWE:TIME?")) == pytest.approx(t_sweep)
    t0 = rig.now()
    w(sa, ":INIT")
    assert rig.now() == t0
    assert q(sa, "*OPC?") == b"1\n"
    assert rig.now() == pytest.approx(t0 + t_sweep)
    w(sa, ":TRAC1:TYPE AVER;:AVER:COUN 4;:INIT;*WAI")
    assert rig.now() == pytest.approx(t0 + 5 * t_sweep)
    fsv = SimRohdeFSV(rig)
    w(fsv, "INIT:CONT OFF;:FREQ:CENT 2.07e9;SPAN 20e6;:BAND:RES 50e3;:SWE:COUN 3")
    t1 = rig.now()
    assert q(fsv, "INIT;*OPC?") == b"1\n"
    assert rig.now() == pytest.approx(t1 + 3 * t_sweep)


def test_block_header_and_byte_order_keysight(rig):
    sa = SimKeysightXSA(rig)
    for n, head in ((1, b"#14"), (401, b"#41604"), (1001, b"#44004"), (20001, b"#580004")):
        setup_sa(sa, n)
        w(sa, ":FORM REAL,32;:INIT;*WAI")
        reply = q(sa, ":TRAC? TRACE1")
        assert reply.startswith(head) and len(reply) == len(head) + 4 * n + 1 and reply.endswith(b"\n")
    # a known trace through both orders: Keysight NORMal = big endian, SWAPped = little
    known = np.array([-12.5, 3.25, -101.125], dtype=np.float64)
    sa._trace, sa._trace_freqs, sa._sweep = known, np.array([1.0, 2.0, 3.0]), None
    assert q(sa, ":FORM:BORD?") == b"NORM\n"
    assert q(sa, ":TRAC:DATA? TRACE1") == b"#212" + struct.pack(">3f", *known) + b"\n"
    w(sa, ":FORM:BORD SWAP")
    assert q(sa, ":TRAC? TRACE1") == b"#212" + struct.pack("<3f", *known) + b"\n"
    w(sa, ":FORM:DATA REAL,64")
    assert q(sa, ":TRAC? TRACE1") == b"#224" + struct.pack("<3d", *known) + b"\n"
    w(sa, ":FORM ASC")
    assert q(sa, ":TRAC? TRACE1") == b"-1.25000000E+01,3.25000000E+00,-1.01125000E+02\n"


def test_block_byte_order_rohde(rig):
    fsv = SimRohdeFSV(rig)
    known = np.array([-12.5, 3.25], dtype=np.float64)
    w(fsv, "INIT:CONT OFF;:FORM REAL,32")
    fsv._trace, fsv._trace_freqs, fsv._sweep = known, np.array([1.0, 2.0]), None
    assert q(fsv, "FORM:BORD?") == b"NORM\n"
    assert q(fsv, "TRAC:DATA? TRACE1") == b"#18" + struct.pack("<2f", *known) + b"\n"  # R&S NORM = little
    w(fsv, "FORM:BORD SWAP")
    assert q(fsv, "TRAC1? TRACE1") == b"#18" + struct.pack(">2f", *known) + b"\n"
    w(fsv, "FORM REAL,64")
    assert err(fsv) == b'-224,"Illegal parameter value"\n'
    # a flat trace has no peak above the excursion
    fsv._trace = np.full(2, -90.0)
    w(fsv, "CALC:MARK1:MAX")
    assert err(fsv) == b'-200,"Execution error;no peak found"\n'


def test_binary_matches_ascii_and_same_seed_same_trace():
    traces = []
    for _ in range(2):
        rig = SimRig(seed=7, ring=make_ring(7))
        g, sa = SimKeysightMXG(rig), SimKeysightXSA(rig)
        w(g, ":SOUR:FREQ 2.07e9;POW -20;:OUTP ON")
        setup_sa(sa)
        w(sa, ":FORM REAL,32;:FORM:BORD SWAP;:INIT;*WAI")
        raw = q(sa, ":TRAC? TRACE1")
        w(sa, ":FORM ASC")
        text = q(sa, ":TRAC? TRACE1")
        binary = np.frombuffer(raw[6:-1], dtype="<f4")
        ascii_ = np.array(text.decode().split(","), dtype=np.float64).astype(np.float32)
        np.testing.assert_array_equal(binary, ascii_)
        traces.append(raw)
    assert traces[0] == traces[1]


def test_stale_trace_until_the_sweep_is_done(rig):
    g, sa = SimKeysightMXG(rig), SimKeysightXSA(rig)
    setup_sa(sa)
    w(sa, ":FORM REAL,64;:FORM:BORD SWAP;:INIT;*WAI")
    first = q(sa, ":TRAC? TRACE1")
    w(g, ":SOUR:FREQ 2.07e9;POW -10;:OUTP ON")
    w(sa, ":INIT")
    assert q(sa, ":TRAC? TRACE1") == first  # no *OPC?: the previous sweep
    q(sa, "*OPC?")
    assert q(sa, ":TRAC? TRACE1") != first


def test_marker_peak_keysight(rig):
    g, sa = SimKeysightMXG(rig), SimKeysightXSA(rig)
    assert q(sa, ":CALC:MARK1:Y?") == b"+9.91000000000E+037\n"  # marker off
    w(g, ":SOUR:FREQ 2.07e9;POW -10;:OUTP ON")
    setup_sa(sa)
    w(sa, ":INIT;*WAI;:CALC:MARK1:MAX")
    x, y = (float(v) for v in q(sa, ":CALC:MARK1:X?;Y?").split(b";"))
    assert 2.06e9 <= x <= 2.08e9 and -100 < y < 5
    assert q(sa, ":CALC:MARK1:MODE?") == b"POS\n"


def test_overload_per_vendor(rig):
    sa = SimKeysightXSA(rig)
    setup_sa(sa)
    w(sa, ":DISP:WIND:TRAC:Y:RLEV -160 dBm;:INIT;*OPC")
    assert err(sa) == b'-300,"Device-specific error;Final IF Overload"\n'
    fsv = SimRohdeFSV(rig)
    w(fsv, "INIT:CONT OFF;:FREQ:CENT 2.07e9;SPAN 20e6;:BAND:RES 50e3")
    assert q(fsv, "STAT:QUES:POW:COND?") == b"0\n"
    w(fsv, "DISP:TRAC:Y:RLEV -130;:INIT;*WAI")
    assert q(fsv, "STAT:QUES:POW:COND?") == b"1\n"
    assert err(fsv) == b'0,"No error"\n'


def test_reset_states(rig):
    sa = SimKeysightXSA(rig)
    w(sa, ":INIT:CONT OFF;:FORM REAL,32;:SWE:POIN 401;*RST")
    assert q(sa, ":INIT:CONT?;:FORM?;:FORM:BORD?;:SWE:POIN?") == b"1;ASC,8;NORM;1001\n"
    k = SimKeithley2400(rig)
    w(k, ":SOUR:FUNC CURR;:OUTP ON;*RST")
    assert q(k, ":OUTP?") == b"0\n"


def test_faults_drop_reply_and_queue_error(rig):
    g = SimKeysightMXG(rig)
    g.faults.drop_next_reply = 1
    w(g, "*IDN?")
    assert g.read() == b""
    assert err(g) == b'-420,"Query UNTERMINATED"\n'  # in-process: the read found nothing
    assert q(g, "*OPC?") == b"1\n"
    g.faults.queue_error(-310, "System error")
    assert err(g) == b'-310,"System error"\n'


def test_realtime_instruments_really_take_their_time():
    import time

    rig = SimRig(seed=0, realtime=True, ring=StandInRing(seed=0))
    g, sa = SimKeysightMXG(rig), SimKeysightXSA(rig)
    t = time.perf_counter()
    assert q(g, ":SOUR:FREQ 2.07e9;*OPC?") == b"1\n"
    assert time.perf_counter() - t >= 0.0045
    setup_sa(sa)  # 20 ms sweep
    t = time.perf_counter()
    assert q(sa, ":INIT;*OPC?") == b"1\n"
    assert time.perf_counter() - t >= 0.019


def test_realtime_clock_waits_are_never_early_and_not_skipped_when_late():
    # the yield-spin of sim.clock: a wait ends at or after its deadline, never before; a deadline
    # already passed returns at once (now, not the deadline)
    from sim.clock import VirtualClock

    clock = VirtualClock(realtime=True)
    for dt in (0.0003, 0.002, 0.006):
        target = clock.now() + dt
        reached = clock.advance_to(target)
        assert reached >= target
        assert clock.now() >= target
    past = clock.now() - 1.0
    assert clock.advance_to(past) >= past + 1.0

