"""The simulator's own side: its true state, and instruments that stop answering, on loopback.

What a client of the instruments reads back can be wrong (that is what is being tested); this
port answers from inside the simulator, never through a driver. ``labpgt sim serve
--control-port N`` (0: any free port) serves it on 127.0.0.1 only -- never on another address,
whatever ``--host`` the instruments use -- and writes the port into the station file as a
comment (``# simulator control: 127.0.0.1:<port>``). One line in, one JSON line out:

``state``          the rig as it is: RF output and its setting, the current source's output,
                   set-point and the coil's actual current, the largest step of current ever
                   driven into the coil (a ramp is small steps; a jump is a safety fault), the
                   analyzer's sweep mode, and which instruments are hung
``hang ROLE``      ROLE stops answering (a crashed instrument, a pulled cable): its outputs stay
                   as they are, what it is sent is neither executed nor answered
``revive ROLE``    ROLE answers again, in the state it was left in

Standard library only.
"""
from __future__ import annotations

import json
import math
import socket
import threading

LOOPBACK = "127.0.0.1"


def true_state(server) -> dict:
    """The simulated rig's state as the simulator holds it (``server``: a started ``SimServer``)."""
    rig = server.rig
    with rig.lock:
        now = rig.clock.now()
        frequency_hz, power_dbm = rig.drive()
        state = {"clock_s": now, "rf_output": frequency_hz is not None, "rf_frequency_hz": frequency_hz,
                 "rf_power_dbm": power_dbm, "hung": sorted(r for r, s in server.servers.items() if s.hung)}
        cs = rig.current_source
        if cs is not None:
            drive = [i for _, i in cs.drive_log]
            steps = [abs(b - a) for a, b in zip([0.0] + drive[:-1], drive)]
            state.update(current_output=bool(cs.output), current_setpoint_a=float(cs.i_set),
                         coil_current_a=float(cs.coil.current(now)),
                         largest_current_step_a=max(steps, default=0.0), current_changes=len(drive))
        analyzer = server.instruments.get("spectrum_analyzer")
        if analyzer is not None:
            state["analyzer_continuous"] = bool(analyzer.continuous)
    return state


def is_safe(state: dict, tolerance_a: float = 1e-3) -> bool:
    """RF off, the current source's output off, and no current in the coil."""
    coil_a = state.get("coil_current_a", 0.0)
    return (not state["rf_output"] and not state.get("current_output", False)
            and math.isfinite(coil_a) and abs(coil_a) <= tolerance_a)


class ControlServer:
    """The control port of a ``SimServer`` (see the module docstring); a daemon thread until ``stop()``."""

    def __init__(self, server, port: int = 0):
        self.server = server
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, int(port)))
        self._sock.listen(4)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name=f"sim-control-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(timeout=5.0)

    def answer(self, line: str) -> dict:
        words = line.split()
        if words == ["state"]:
            return true_state(self.server)
        if len(words) == 2 and words[0] in ("hang", "revive"):
            served = self.server.servers.get(words[1])
            if served is None:
                return {"error": f"unknown role {words[1]!r}; roles: {', '.join(self.server.servers)}"}
            served.hung = words[0] == "hang"
            return {"ok": True, "hung": sorted(r for r, s in self.server.servers.items() if s.hung)}
        return {"error": f"unknown command {line!r}; commands: state, hang ROLE, revive ROLE"}

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # stopped
            with conn:
                try:
                    for raw in conn.makefile("r", encoding="utf-8"):
                        conn.sendall((json.dumps(self.answer(raw.strip())) + "\n").encode())
                except OSError:
                    continue


def ask(port: int, command: str, timeout_s: float = 5.0) -> dict:
    """One command to a control port on this machine; its JSON answer."""
    with socket.create_connection((LOOPBACK, int(port)), timeout=timeout_s) as conn:
        conn.sendall(command.encode() + b"\n")
        reply = conn.makefile("r", encoding="utf-8").readline()
    return json.loads(reply)
