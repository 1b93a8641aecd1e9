"""Loopback servers: the simulated instruments reachable as real ones.

* SCPI instruments: raw-socket servers on 127.0.0.1 (``TCPIP::127.0.0.1::<port>::SOCKET``),
  ``\\n``-terminated program messages (a trailing ``\\r`` is dropped), several commands per line,
  replies ``\\n``-terminated (binary blocks raw, then ``\\n``). One client at a time; a client
  may disconnect and the next one is served.
* Windfreak SynthHD: a pseudo-terminal (``os.openpty``, slave in raw mode), reachable by
  pyserial at ``/dev/pts/N`` and by pyvisa-py as ``ASRL/dev/pts/N::INSTR``. Bytes that arrive
  together (within 2 ms of each other) form one packet, the way the device frames USB packets.

``SimServer`` starts a rig's instruments (daemon threads), exposes ``.resources`` (role ->
resource string), ``.instruments`` (role -> simulated instrument, e.g. for ``faults``) and
``.station_toml()``. ``faults=`` takes a fault spec (``sim.faults``: a string or a ``[faults]``
table), seeded from the server's seed unless the spec names its own. ``start_state="unsafe"``
(or a dict) serves the instruments as a careless user left them, ``wire_log=True`` keeps every
message received with the rig's state after it in ``.wire_log`` (both: ``sim.start_state``).
``control_port=N`` (0: any free port) serves the simulator's own state and instrument hangs on
127.0.0.1 (``sim.control``). Stopping closes every socket and file descriptor and joins every thread.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import select
import socket
import sys
import threading
import tty

from sim.faults import DISCONNECT, apply_spec
from sim.start_state import WireLog, apply_start_state, parse_start_state
from sim.instruments import (SimKeithley2400, SimKepcoBOP, SimKeysightMXG, SimKeysightXSA, SimRig,
                             SimRohdeFSV, SimWindfreakSynthHD, _Analyzer)

__all__ = ["SimServer", "SocketServer", "PtyServer", "serve_forever", "FLAVOURS"]


class _Waker:
    """A self-pipe that wakes a select() when the server stops."""

    def __init__(self):
        self.r, self.w = os.pipe()

    def wake(self):
        try:
            os.write(self.w, b"x")
        except OSError:
            pass

    def close(self):
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


def _safe_handle(device, message) -> bytes | None:
    try:
        return device.handle(message)
    except Exception as e:  # a bug in the simulator must not kill the server
        print(f"sim: {type(device).__name__} failed on {message!r}: {e!r}", file=sys.stderr)
        push = getattr(device, "push_error", None)
        if push is not None:
            push(-300, f"Device-specific error;simulator fault {type(e).__name__}")
        return None


class _ServedDevice:
    """A device served by a thread of its own until ``stop()`` (a self-pipe wakes it, no polling)."""

    #: called as ``observer(device, message)`` after each message is handled (a wire log), or None
    observer = None
    #: a hung instrument (``SimServer.hang``): it keeps its outputs as they are, reads what it is
    #: sent and neither executes nor answers anything (connections are still accepted)
    hung = False

    def _start_thread(self, label: str) -> None:
        self._waker = _Waker()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sim-{type(self.device).__name__}-{label}",
                                        daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._waker.wake()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self._close()
        self._waker.close()

    def _close(self) -> None:
        """Release what the server holds (its socket or pty), after the thread has ended."""
        raise NotImplementedError


class SocketServer(_ServedDevice):
    """One SCPI device on a raw TCP socket."""

    def __init__(self, device, host: str = "127.0.0.1", port: int = 0):
        self.device = device
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(1)
        self.port = self._sock.getsockname()[1]
        self._conn: socket.socket | None = None
        self._start_thread(str(self.port))

    @property
    def resource(self) -> str:
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    def _close(self) -> None:
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._sock, self._waker.r], [], [])
            except (OSError, ValueError):
                return
            if self._waker.r in ready or self._stop.is_set():
                return
            try:
                conn, _addr = self._sock.accept()
            except OSError:
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self._serve(conn)
            finally:
                self._conn = None
                try:
                    conn.close()
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        connection = self._conn
        if connection is not None:
            try:  # wakes the thread blocked receiving from it
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super().stop()

    def _serve(self, conn: socket.socket) -> None:
        # a blocking receive, woken by stop() shutting the connection down: one system call a
        # message instead of a select() and a recv() (the messages come one at a time)
        self._conn = conn
        buf = b""
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return  # client went away; wait for the next one
            buf += chunk
            while True:
                i = buf.find(b"\n")
                if i < 0:
                    break
                line, buf = buf[:i], buf[i + 1:]
                if line.endswith(b"\r"):
                    line = line[:-1]
                if self.hung:
                    continue
                out = _safe_handle(self.device, line)
                if self.observer is not None:
                    self.observer(self.device, line)
                if out is DISCONNECT:
                    return  # a fault: the connection drops (closed by the caller)
                if out:
                    try:
                        conn.sendall(out)
                    except OSError:
                        return


class PtyServer(_ServedDevice):
    """A serial device on a pseudo-terminal."""

    PACKET_GAP_S = 0.002

    def __init__(self, device):
        self.device = device
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._start_thread("pty")

    @property
    def resource(self) -> str:
        return f"ASRL{self.path}::INSTR"

    def _close(self) -> None:
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def _run(self) -> None:
        # the slave stays open here, so a client closing the port does not hang up the master
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master, self._waker.r], [], [])
            except (OSError, ValueError):
                return
            if self._waker.r in ready:
                return
            try:
                data = os.read(self._master, 4096)
            except OSError:
                return
            while True:  # gather what arrives together: one packet
                more, _, _ = select.select([self._master], [], [], self.PACKET_GAP_S)
                if not more:
                    break
                try:
                    data += os.read(self._master, 4096)
                except OSError:
                    break
            if self.hung:
                continue
            out = _safe_handle(self.device, data)
            if self.observer is not None:
                self.observer(self.device, data)
            if out:
                try:
                    os.write(self._master, out)
                except OSError:
                    return


# ----------------------------------------------------------------------------- flavours

# role -> (instrument class, driver, transport)
FLAVOURS = {
    "keysight": {
        "signal_generator": (SimKeysightMXG, "drivers.keysight:MXG"),
        "current_source": (SimKepcoBOP, "drivers.kepco:BOP"),
        "spectrum_analyzer": (SimKeysightXSA, "drivers.keysight:XSeries"),
    },
    "alt": {
        "signal_generator": (SimWindfreakSynthHD, "drivers.windfreak:SynthHD"),
        "current_source": (SimKeithley2400, "drivers.keithley:Keithley2400"),
        "spectrum_analyzer": (SimRohdeFSV, "drivers.rohde:FSV"),
    },
}

#: the coil of the "alt" flavour is stronger: the Keithley 2400 stops at 1.05 A
ALT_COIL_OE_PER_A = 250.0

_LIMITS = {
    "keysight": {"current_a": (-2.5, 2.5), "compliance_v": 20.0},
    "alt": {"current_a": (-1.0, 1.0), "compliance_v": 20.0},
}


def _ring_params_for(flavour: str, ring_params):
    if ring_params is not None or flavour != "alt":
        return ring_params
    from sim.ring import RingParams
    base = RingParams()
    if dataclasses.is_dataclass(base):
        return dataclasses.replace(base, coil_oe_per_a=ALT_COIL_OE_PER_A)
    return RingParams(coil_oe_per_a=ALT_COIL_OE_PER_A)


class SimServer:
    """The simulated station on loopback.

    >>> with SimServer(seed=0, flavour="keysight") as s:
    ...     s.resources["spectrum_analyzer"]      # 'TCPIP::127.0.0.1::<port>::SOCKET'
    ...     text = s.station_toml()
    """

    def __init__(self, seed: int = 0, flavour: str = "keysight", realtime: bool = False, ring_params=None,
                 host: str = "127.0.0.1", ports: dict | None = None, ring=None, faults=None,
                 timeout_s: float = 5.0, start_state=None, wire_log: bool = False,
                 control_port: int | None = None):
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown flavour {flavour!r}; choose one of {sorted(FLAVOURS)}")
        self.seed = int(seed)
        self.flavour = flavour
        self.faults = faults  # a sim.faults spec (string or table), applied at start()
        self.timeout_s = float(timeout_s)  # the client timeout written into station_toml()
        from sim.faults import parse_spec
        parse_spec(faults)  # a bad spec fails here, before anything starts
        #: how the instruments are found by the first client (sim.start_state: None, "unsafe", a dict)
        self.start_state = parse_start_state(start_state)
        #: with ``wire_log=True``: every message received, with the rig's state after it (sim.start_state)
        self.wire_log: WireLog | None = None
        self._want_wire_log = bool(wire_log)
        self.realtime = bool(realtime)
        self.host = host
        self.ports = dict(ports or {})
        self._ring_params = ring_params
        self._ring = ring
        self.rig: SimRig | None = None
        self.instruments: dict = {}
        self.servers: dict = {}
        self.resources: dict[str, str] = {}
        self.drivers: dict[str, str] = {}
        self._control_port = control_port
        self.control = None  # sim.control.ControlServer, with control_port

    def start(self) -> "SimServer":
        if self.rig is not None:
            return self
        ring_params = None if self._ring is not None else _ring_params_for(self.flavour, self._ring_params)
        self.rig = SimRig(seed=self.seed, realtime=self.realtime, ring_params=ring_params, ring=self._ring)
        if self._want_wire_log:
            self.wire_log = WireLog(self.rig)
        try:
            for role, (cls, driver) in FLAVOURS[self.flavour].items():
                inst = cls(self.rig)
                if isinstance(inst, SimWindfreakSynthHD):
                    server = PtyServer(inst)
                else:
                    server = SocketServer(inst, self.host, int(self.ports.get(role, 0)))
                if self.wire_log is not None:
                    server.observer = functools.partial(self.wire_log, role)
                self.instruments[role] = inst
                self.servers[role] = server
                self.resources[role] = server.resource
                self.drivers[role] = driver
            if self.start_state is not None:
                apply_start_state(self.start_state, self.instruments)  # before anyone can connect
            for server in self.servers.values():
                server.start()
            apply_spec(self.faults, self.instruments, default_seed=self.seed)
            if self._control_port is not None:
                from sim.control import ControlServer

                self.control = ControlServer(self, self._control_port)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.control is not None:
            self.control.stop()
            self.control = None
        for server in self.servers.values():
            server.stop()
        self.servers.clear()

    def __enter__(self) -> "SimServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def world_state(self) -> dict:
        """The simulated world's state (virtual time, ring noise stream, coil), JSON-able.

        The coil's history before anything can still ask for the field (now, or a sweep begun
        and not computed yet) is dropped, so the state's size does not grow with the run.
        """
        with self.rig.lock:
            now = self.rig.clock.now()
            pending = [inst.pending_sweep_start_s() for inst in self.instruments.values()
                       if isinstance(inst, _Analyzer)]
            needed_from_s = min([now] + [t for t in pending if t is not None])
            return {"clock_s": now, "ring": self.rig.ring.get_state(needed_from_s)}

    def load_world_state(self, state: dict) -> None:
        with self.rig.lock:
            self.rig.clock.set_time(state["clock_s"])
            self.rig.ring.set_state(state["ring"])

    def station_toml(self) -> str:
        if not self.resources:
            raise RuntimeError("start the SimServer first")
        lim = _LIMITS[self.flavour]
        pacing = "real" if self.realtime else "virtual"
        pacing_note = ("instruments take their real time" if self.realtime else
                       "ramps do not wait in wall time; the simulated coil models the lag")
        r, d = self.resources, self.drivers
        lo, hi = lim["current_a"]
        control = "" if self.control is None else f"# simulator control: 127.0.0.1:{self.control.port}\n"
        return f"""\
{control}[station]
name = "simulated ring ({self.flavour} flavour, seed {self.seed})"
pacing = "{pacing}"          # {pacing_note}
[signal_generator]
driver = "{d['signal_generator']}"
resource = "{r['signal_generator']}"
[signal_generator.options]
timeout_s = {self.timeout_s!r}
[signal_generator.limits]
frequency_hz = [1.9e9, 2.3e9]
power_dbm = [-60.0, 0.0]
[current_source]
driver = "{d['current_source']}"
resource = "{r['current_source']}"
[current_source.options]
timeout_s = {self.timeout_s!r}
[current_source.limits]
current_a = [{lo:.1f}, {hi:.1f}]
compliance_v = {lim['compliance_v']:.1f}
ramp_rate_a_per_s = 2.0
ramp_step_a = 0.05
[spectrum_analyzer]
driver = "{d['spectrum_analyzer']}"
resource = "{r['spectrum_analyzer']}"
[spectrum_analyzer.options]
timeout_s = {self.timeout_s!r}
[spectrum_analyzer.limits]
max_input_dbm = 20.0
frequency_hz = [1.0e9, 3.0e9]
[spectrum_analyzer.settings]
span_hz = 20e6
rbw_hz = 50e3
points = 401
reference_level_dbm = 0.0
"""


def serve_forever(seed: int = 0, flavour: str = "keysight", realtime: bool = False, out=None) -> None:
    """Serve the simulated station until Ctrl-C; print its station file first."""
    out = out if out is not None else sys.stdout
    with SimServer(seed=seed, flavour=flavour, realtime=realtime) as server:
        print(server.station_toml(), file=out, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
