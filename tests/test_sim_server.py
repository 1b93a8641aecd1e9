"""The simulated instruments through real sockets, pyvisa-py and a pseudo-terminal."""
from __future__ import annotations

import socket
import struct
import threading
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import numpy as np
import pytest

from sim.server import SimServer

@pytest.fixture(scope="module")
def keysight():
    with SimServer(seed=0, flavour="keysight") as s:
        yield s


@pytest.fixture(scope="module")
def alt():
    with SimServer(seed=0, flavour="alt") as s:
        yield s


def port_of(resource: str) -> int:
    return int(resource.split("::")[2])


class Line:
    """A bare socket client: send lines, read lines and blocks exactly."""

    def __init__(self, resource, timeout=2.0):
        self.sock = socket.create_connection(("127.0.0.1", port_of(resource)), timeout=timeout)
        self.buf = b""

    def send(self, text: str):
        self.sock.sendall(text.encode() + b"\n")

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            self._fill(len(self.buf) + 1)
        i = self.buf.index(b"\n")
        out, self.buf = self.buf[: i + 1], self.buf[i + 1:]
        return out

    def query(self, text: str) -> bytes:
        self.send(text)
        return self.line()

    def block(self, text: str) -> bytes:
        self.send(text)
        self._fill(2)
        n = int(self.buf[1:2])
        self._fill(2 + n)
        length = int(self.buf[2:2 + n])
        total = 2 + n + length + 1
        self._fill(total)
        out, self.buf = self.buf[:total], self.buf[total:]
        return out

    def close(self):
        self.sock.close()


def test_raw_socket_lines_blocks_and_reconnect(keysight):
    sa = Line(keysight.resources["spectrum_analyzer"])
    assert sa.query("*IDN?") == b"Keysight Technologies,N9020A,SIM0003,sim-0.1.0\n"
    sa.send(":INIT:CONT OFF;:FREQ:CENT 2.07e9;SPAN 20e6;:BAND 50e3;:SWE:POIN 401;:FORM REAL,32;:FORM:BORD SWAP")
    assert sa.query(":INIT;*OPC?") == b"1\n"
    reply = sa.block(":TRAC? TRACE1")
    assert reply[:6] == b"#41604" and len(reply) == 6 + 1604 + 1 and reply[-1:] == b"\n"
    assert sa.query("SYST:ERR?") == b'+0,"No error"\n'
    sa.send("NOT:A:COMMAND\r")  # CR LF from the client is fine
    sa.close()
    again = Line(keysight.resources["spectrum_analyzer"])  # a new client after a disconnect
    assert again.query("SYST:ERR?") == b'-113,"Undefined header"\n'
    assert again.query(":SWE:POIN?") == b"401\n"
    again.close()


def test_pyvisa_socket_binary_both_orders(keysight):
    import pyvisa
    rm = pyvisa.ResourceManager("@py")
    try:
        sa = rm.open_resource(keysight.resources["spectrum_analyzer"], read_termination="\n",
                              write_termination="\n", timeout=5000)
        g = rm.open_resource(keysight.resources["signal_generator"], read_termination="\n",
                             write_termination="\n", timeout=5000)
        assert g.query("*IDN?").startswith("Keysight Technologies,N5183B,SIM")
        g.write(":SOUR:FREQ 2.07 GHz;POW -20 dBm;:OUTP ON")
        assert g.query("*OPC?") == "1"
        assert float(g.query(":SOUR:FREQ?")) == 2.07e9
        sa.write("*RST;:INIT:CONT OFF;:FREQ:CENT 2.07e9;SPAN 20e6;:BAND 50e3;:SWE:POIN 1001;:FORM REAL,32")
        assert sa.query(":INIT;*OPC?") == "1"
        big = sa.query_binary_values(":TRAC? TRACE1", datatype="f", is_big_endian=True, container=np.array)
        sa.write(":FORM:BORD SWAP")
        little = sa.query_binary_values(":TRAC? TRACE1", datatype="f", is_big_endian=False, container=np.array)
        sa.write(":FORM ASC")
        text = sa.query_ascii_values(":TRAC? TRACE1", container=np.array)
        assert len(big) == 1001
        np.testing.assert_array_equal(big, little)
        np.testing.assert_array_equal(big, text.astype(np.float32))
        sa.write(":SENS:FREQ:CENT 99e9")
        assert sa.query("SYST:ERR?") == '-222,"Data out of range"'
        assert sa.query("SYST:ERR?") == '+0,"No error"'
        bop = rm.open_resource(keysight.resources["current_source"], read_termination="\n",
                               write_termination="\n", timeout=5000)
        assert bop.query("FUNC:MODE?") == "0"
        bop.close()
        sa.close()
        g.close()
    finally:
        rm.close()


def test_fault_no_answer_times_out(keysight):
    g = keysight.instruments["signal_generator"]
    c = Line(keysight.resources["signal_generator"], timeout=0.3)
    g.faults.drop_next_reply = 1
    c.send("*IDN?")
    with pytest.raises(socket.timeout):
        c.line()
    assert c.query("*OPC?") == b"1\n"
    c.close()


def test_rohde_byte_order_on_the_wire(alt):
    fsv = Line(alt.resources["spectrum_analyzer"])
    assert fsv.query("*IDN?").startswith(b"Rohde&Schwarz,FSV-7,SIM")
    fsv.send("INIT:CONT OFF;:FREQ:CENT 2.07e9;SPAN 20e6;:BAND:RES 50e3;:SWE:POIN 401;:FORM REAL,32")
    assert fsv.query("INIT;*OPC?") == b"1\n"
    little = fsv.block("TRAC:DATA? TRACE1")  # R&S default NORMal: little endian
    fsv.send("FORM:BORD SWAP")
    big = fsv.block("TRAC:DATA? TRACE1")
    assert little[:6] == big[:6] == b"#41604"
    a = np.frombuffer(little[6:-1], "<f4")
    b = np.frombuffer(big[6:-1], ">f4")
    np.testing.assert_array_equal(a, b)
    assert struct.unpack("<f", little[6:10]) == struct.unpack(">f", big[6:10])
    assert fsv.query("SYST:ERR?") == b'0,"No error"\n'
    fsv.close()


def test_synthhd_over_pyserial(alt):
    import serial
    path = alt.resources["signal_generator"][len("ASRL"):-len("::INSTR")]
    assert path.startswith("/dev/pts/")
    port = serial.Serial(path, timeout=2)
    try:
        port.write(b"C0f2070.00000000W-10.000h1E1r1")
        port.write(b"f?")
        assert port.readline() == b"2070.00000000\n"
        port.write(b"W?")
        assert port.readline() == b"-10.000\n"
        port.write(b"f2071.00000000")
        polls = []
        for _ in range(8):
            port.write(b"p")
            polls.append(port.readline())
        assert polls[0] == b"0\n" and polls[-1] == b"1\n"  # PLL relocks after ~4 ms (virtual)
        port.write(b"h0")
        port.write(b"h?")
        assert port.readline() == b"0\n"
    finally:
        port.close()
    port = serial.Serial(path, timeout=2)  # reconnect
    try:
        port.write(b"f?")
        assert port.readline() == b"2071.00000000\n"
    finally:
        port.close()


def test_synthhd_over_pyvisa_asrl(alt):
    import pyvisa
    rm = pyvisa.ResourceManager("@py")
    try:
        s = rm.open_resource(alt.resources["signal_generator"], read_termination="\n", write_termination="",
                             timeout=3000)
        assert s.query("f?") == "2071.00000000"
        assert s.query("+") == "SynthHD"
        s.close()
    finally:
        rm.close()


def test_keithley_over_socket(alt):
    k = Line(alt.resources["current_source"])
    k.send(":SOUR:FUNC CURR;:SOUR:CURR 1.0;:SENS:VOLT:PROT 20;:OUTP ON;:FORM:ELEM CURR")
    assert k.query("*OPC?") == b"1\n"
    assert k.query(":READ?") == b"+1.000000E+00\n"
    k.send(":SOUR:CURR 0;:OUTP OFF")
    assert k.query("*OPC?;:OUTP?") == b"1;0\n"
    k.close()


def test_station_toml(keysight, alt):
    text = keysight.station_toml()
    st = tomllib.loads(text)
    assert st["station"]["name"] == "simulated ring (keysight flavour, seed 0)"
    assert st["station"]["pacing"] == "virtual"
    assert st["signal_generator"]["driver"] == "drivers.keysight:MXG"
    assert st["current_source"]["driver"] == "drivers.kepco:BOP"
    assert st["spectrum_analyzer"]["driver"] == "drivers.keysight:XSeries"
    for role, res in keysight.resources.items():
        assert st[role]["resource"] == res and res.startswith("TCPIP::127.0.0.1::") and res.endswith("::SOCKET")
    assert st["current_source"]["limits"]["current_a"] == [-2.5, 2.5]
    assert st["spectrum_analyzer"]["settings"] == {"span_hz": 20e6, "rbw_hz": 50e3, "points": 401,
                                                   "reference_level_dbm": 0.0}
    st2 = tomllib.loads(alt.station_toml())
    assert st2["signal_generator"]["driver"] == "drivers.windfreak:SynthHD"
    assert st2["signal_generator"]["resource"].startswith("ASRL/dev/pts/")
    assert st2["current_source"]["driver"] == "drivers.keithley:Keithley2400"
    assert st2["spectrum_analyzer"]["driver"] == "drivers.rohde:FSV"
    assert st2["current_source"]["limits"]["current_a"] == [-1.0, 1.0]


def test_alt_ring_has_the_stronger_coil():
    with SimServer(seed=0, flavour="alt") as s:
        assert s.rig.ring.params.coil_oe_per_a == 250.0


def test_stop_closes_everything():
    before = {t.ident for t in threading.enumerate()}
    s = SimServer(seed=1, flavour="keysight").start()
    s2 = SimServer(seed=1, flavour="alt").start()
    res = s.resources["spectrum_analyzer"]
    c = Line(res)
    assert c.query("*OPC?") == b"1\n"
    s.stop()
    s2.stop()
    c.close()
    after = {t.ident for t in threading.enumerate() if t.is_alive()}
    assert after <= before
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port_of(res)), timeout=0.5)
