"""Both raw-socket transports, byte for byte: pyvisa-py (VisaTransport) and the direct socket
(SocketTransport) against one scripted loopback server.

Every test runs for both: the bytes that reach the instrument, the replies handed back, and what
each failure raises must be the same (the drivers above cannot tell which one they talk through).
"""
from __future__ import annotations

import socket
import threading
import time

import pytest

from drivers.scpi import SCPIInstrument
from drivers.socket_transport import SocketTransport, parse_socket_resource
from drivers.transport import TransportError, VisaTransport, block
from instruments.errors import TransportTimeout

CLOSE = object()  # a scripted "reply": the instrument drops the connection


class ScriptedServer:
    """A raw-socket instrument on loopback that expects exact lines and answers from a script.

    ``script``: (line expected with its terminator, reply bytes or None or CLOSE, delay_s).
    Every byte received is kept in ``received``; a line other than expected is recorded in
    ``mismatches`` (and not answered). Accepts a new connection after one is closed.
    """

    def __init__(self, script):
        self.script = list(script)
        self.received = bytearray()
        self.mismatches: list = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(2)
        self.port = self._listener.getsockname()[1]
        self.resource = f"TCPIP::127.0.0.1::{self.port}::SOCKET"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            if not self._serve(connection):
                return

    def _serve(self, connection) -> bool:
        pending = b""
        with connection:
            while True:
                try:
                    chunk = connection.recv(65536)
                except OSError:
                    return True
                if not chunk:
                    return True
                self.received += chunk
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    line += b"\n"
                    if not self.script:
                        self.mismatches.append((line, "script finished"))
                        continue
                    expected, reply, delay_s = self.script.pop(0)
                    if line != expected:
                        self.mismatches.append((line, expected))
                        continue
                    if delay_s:
                        time.sleep(delay_s)  # the instrument's own latency (a test of timeouts)
                    if reply is CLOSE:
                        return True
                    if reply is not None:
                        connection.sendall(reply)

    def stop(self):
        self._listener.close()

    def assert_done(self):
        assert not self.mismatches, self.mismatches
        assert not self.script, f"never sent: {self.script}"


def open_transport(kind: str, resource: str, timeout_s: float = 2.0):
    if kind == "visa":
        return VisaTransport(resource, timeout_s=timeout_s)
    import drivers.socket_transport

    transport = SocketTransport(resource, timeout_s=timeout_s)
    # the kernel keeps the timeouts of a blocking socket, or Python keeps them
    assert transport._sock.gettimeout() == (None if drivers.socket_transport._KERNEL_TIMEOUTS else timeout_s)
    return transport


# "socket-python": the direct socket with Python's own timeouts (not Linux's kernel timeouts)
KINDS = ("visa", "socket", "socket-python")


@pytest.fixture(params=KINDS)
def kind(request, monkeypatch):
    if request.param == "socket-python":
        import drivers.socket_transport

        monkeypatch.setattr(drivers.socket_transport, "_KERNEL_TIMEOUTS", False)
    return request.param


def run(kind, script, body, timeout_s=2.0):
    server = ScriptedServer(script)
    transport = open_transport(kind, server.resource, timeout_s)
    try:
        body(transport)
    finally:
        transport.close()
        server.stop()
    return server


def test_resource_strings():
    assert parse_socket_resource("TCPIP::127.0.0.1::5025::SOCKET") == ("127.0.0.1", 5025)
    assert parse_socket_resource("tcpip0::lab-sa.local::5025::socket") == ("lab-sa.local", 5025)
    assert parse_socket_resource("TCPIP::[fe80::1]::5025::SOCKET") == ("fe80::1", 5025)
    for other in ("TCPIP::10.0.0.2::INSTR", "TCPIP::10.0.0.2::hislip0::INSTR", "USB0::0x0957::0x1797::X::INSTR",
                  "GPIB0::18::INSTR", "ASRL/dev/ttyACM0::INSTR", "TCPIP::10.0.0.2::port::SOCKET"):
        assert parse_socket_resource(other) is None


def test_scpi_drivers_speak_raw_sockets_directly_unless_a_visa_library_is_named(monkeypatch):
    import drivers.scpi as scpi

    made = []
    monkeypatch.setattr(scpi, "SocketTransport", lambda resource, **kw: made.append(("socket", resource)))
    monkeypatch.setattr(scpi, "VisaTransport", lambda resource, **kw: made.append(("visa", resource, kw)))
    SCPIInstrument.open_transport("TCPIP::127.0.0.1::5025::SOCKET", {"timeout_s": 1.0})
    SCPIInstrument.open_transport("TCPIP::127.0.0.1::5025::SOCKET", {"visa_library": "@py"})
    SCPIInstrument.open_transport("TCPIP::10.0.0.2::hislip0::INSTR", {})
    SCPIInstrument.open_transport("GPIB0::18::INSTR", {})
    assert [m[0] for m in made] == ["socket", "visa", "visa", "visa"]
    assert made[1][2]["visa_library"] == "@py"


def test_write_query_and_split_query_put_the_same_bytes_on_the_wire(kind):
    script = [(b"SOUR:FREQ 2070000000.00;:SOUR:POW -10.00\n", None, 0),
              (b"*OPC?\n", b"1\n", 0),
              (b"SOUR:FREQ 2.0e9;*OPC?;:SYST:ERR?\n", b'1;+0,"No error"\n', 0),
              (b"*IDN?\n", b"Keysight Technologies,N5183B,SIM0001,1.0\n", 0)]

    def body(t):
        t.write("SOUR:FREQ 2070000000.00;:SOUR:POW -10.00")
        assert t.query("*OPC?") == "1"
        t.send("SOUR:FREQ 2.0e9;*OPC?;:SYST:ERR?")  # its reply is read later
        assert t.read() == '1;+0,"No error"'
        assert t.query("*IDN?") == "Keysight Technologies,N5183B,SIM0001,1.0"

    server = run(kind, script, body)
    server.assert_done()
    assert bytes(server.received) == b"".join(line for line, _, _ in script)


def test_a_reply_sent_ahead_waits_for_its_read(kind):
    # pipelining: two queries sent, both replies arrive before the first read
    script = [(b"A?\n", b"1\n", 0), (b"B?\n", b"2\n", 0)]

    def body(t):
        t.send("A?")
        t.send("B?")
        time.sleep(0.05)  # both replies are in the socket now (a test of buffering, not a sync)
        assert t.read() == "1"
        assert t.read() == "2"

    run(kind, script, body).assert_done()


@pytest.mark.parametrize("points", [1, 401, 2000])
def test_a_block_is_read_exactly_with_terminators_inside_the_data(kind, points):
    payload = bytes((i * 7 + 10) % 256 for i in range(4 * points))  # holds many b"\n" (10)
    assert b"\n" in payload
    script = [(b"TRAC:DATA? TRACE1\n", block(payload), 0), (b"*OPC?\n", b"1\n", 0)]

    def body(t):
        assert t.query_block("TRAC:DATA? TRACE1") == payload
        assert t.query("*OPC?") == "1"  # nothing of the block is left over

    run(kind, script, body).assert_done()


@pytest.mark.parametrize("reply", [b"#3004abcdX", b"#3004abcd\r\n", b"X3004abcd\n", b"#0abcd\n", b"#a004abcd\n"])
def test_a_malformed_block_is_a_transport_error(kind, reply):
    def body(t):
        with pytest.raises(TransportError):
            t.query_block("TRAC:DATA?")

    run(kind, [(b"TRAC:DATA?\n", reply, 0)], body, timeout_s=0.3).assert_done()


def test_a_garbled_reply_is_a_transport_error(kind):
    def body(t):
        with pytest.raises(TransportError):
            t.query("*IDN?")

    run(kind, [(b"*IDN?\n", b"\xff\xfe garbage\n", 0)], body).assert_done()


def test_a_missing_reply_times_out_and_a_clear_drops_the_late_one(kind):
    script = [(b"*OPC?\n", b"1\n", 0.5), (b"*IDN?\n", b"SIM,X,1,2\n", 0)]

    def body(t):
        with pytest.raises(TransportTimeout):
            t.query("*OPC?")
        time.sleep(0.6)  # the late reply arrives meanwhile
        t.clear()
        assert t.query("*IDN?") == "SIM,X,1,2"  # not the late "1"

    run(kind, script, body, timeout_s=0.2).assert_done()


def test_the_timeout_is_settable(kind):
    script = [(b"INIT:IMM;*OPC?\n", b"1\n", 0.4)]

    def body(t):
        t.timeout_s = 1.5
        assert t.timeout_s == 1.5
        assert t.query("INIT:IMM;*OPC?") == "1"
        t.timeout_s = 0.2
        assert t.timeout_s == 0.2

    run(kind, script, body, timeout_s=0.2).assert_done()


def test_a_dropped_connection_is_no_answer_and_reconnect_restores_it(kind):
    script = [(b"*OPC?\n", CLOSE, 0), (b"*IDN?\n", b"SIM,X,1,2\n", 0)]

    def body(t):
        with pytest.raises(TransportTimeout):
            t.query("*OPC?")
        t.reconnect()
        assert not t.link_down
        assert t.query("*IDN?") == "SIM,X,1,2"

    run(kind, script, body, timeout_s=0.3).assert_done()


def test_nobody_listening_is_no_answer(kind):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # at open (the direct socket) or at the first exchange (pyvisa-py connects lazily)
    with pytest.raises(TransportTimeout):
        open_transport(kind, f"TCPIP::127.0.0.1::{port}::SOCKET", 0.5).query("*IDN?")


def test_a_command_that_is_not_ascii_is_refused_before_sending(kind):
    def body(t):
        with pytest.raises(TransportError):
            t.write("SOUR:FREQ 2 GHz µ")
        assert t.query("*OPC?") == "1"

    server = run(kind, [(b"*OPC?\n", b"1\n", 0)], body)
    server.assert_done()
    assert bytes(server.received) == b"*OPC?\n"
