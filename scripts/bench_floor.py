"""Benchmark: the floor of one training measurement -- the loop's wire work and logging, nothing else.

Per measurement, exactly what the project's loop puts on the wire, through pyvisa-py raw sockets
(``TCPIP::127.0.0.1::<port>::SOCKET``, the read termination on for replies, Nagle off):

1. generator: ``SOUR:FREQ f;:SOUR:POW p;*OPC?;:SYST:ERR?`` (one query, reply ``1;+0,"No error"``);
2. analyzer:  ``INIT:IMM;*OPC?;:SYST:ERR?`` (one query, the same reply);
3. analyzer:  ``TRAC:DATA? TRACE1``, a 401-point float32 definite-length block read with the
   read termination off as exactly 2 + <digits> + 1604 + 1 bytes, decoded with ``np.frombuffer``;

and per step of ``--batch`` measurements a block append of the same rows the run file keeps (13
scalar columns, the trace, 10 features) to an SWMR HDF5 file (chunked, resizable, low-level
writes), then one flush. No features are computed, no model, no estimator, no checks.

Two servers, each in this process (threads, as the embedded station's):

* ``instant``: a trivial server that answers at once with fixed replies (the software floor);
* ``sim``: the project's own simulated instruments (``sim.server.SimServer``, Keysight flavour:
  SCPI parsing, the ring, the trace), set up in-process once, then driven exactly as above --
  the difference to ``instant`` is the simulator's share.

The floor deliberately uses no project code on the client side (only pyvisa, numpy, h5py), so
that it stays the same yardstick while the project changes. ``scripts/bench_loop.py`` runs it
interleaved with the project's loop and reports the ratio.

    python scripts/bench_floor.py                     # both floors, a few rounds, table + JSON
    python scripts/bench_floor.py --server instant --rounds 5 --measurements 3200

Results: scripts/results/bench_floor.json (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _machine import cpu_model  # noqa: E402

TRACE_POINTS = 401
N_FEATURES = 10
SETTINGS_REPLY = b'1;+0,"No error"\n'
SWEEP_COMMAND = "INIT:IMM;*OPC?;:SYST:ERR?"
TRACE_COMMAND = "TRAC:DATA? TRACE1"
#: the simulated station's current and span, as the loop's benchmark uses them
CURRENT_A = 1.8
SPAN_HZ = 20e6
RBW_HZ = 50e3

# the run file's per-measurement scalar columns (name, dtype), written as the run file writes them
SCALAR_COLUMNS = (("time_s", "f8"), ("step", "i8"), ("kind", "i1"), ("sample_index", "i8"), ("node", "i4"),
                  ("perturbation_direction", "i4"), ("perturbation_sign", "i1"), ("frequency_hz", "f8"),
                  ("power_dbm", "f8"), ("current_a", "f8"), ("trace_start_hz", "f8"), ("trace_stop_hz", "f8"),
                  ("flags", "u2"))


def ieee_block(payload: bytes) -> bytes:
    length = str(len(payload)).encode("ascii")
    return b"#" + str(len(length)).encode("ascii") + length + payload + b"\n"


class InstantServer:
    """A raw-socket SCPI server on loopback that answers every query at once with a fixed reply."""

    def __init__(self, trace_dbm: np.ndarray):
        self._block = ieee_block(np.asarray(trace_dbm, dtype="<f4").tobytes())
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self.port = self._listener.getsockname()[1]
        self._connection: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name=f"instant-{self.port}", daemon=True)
        self._thread.start()

    @property
    def resource(self) -> str:
        return f"TCPIP::127.0.0.1::{self.port}::SOCKET"

    def _reply(self, line: bytes) -> bytes | None:
        if line.startswith(b"TRAC:DATA?"):
            return self._block
        return SETTINGS_REPLY if b"?" in line else None

    def _serve(self) -> None:
        try:
            connection, _ = self._listener.accept()
        except OSError:
            return  # closed before anybody connected
        self._connection = connection
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        while True:
            try:
                chunk = connection.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                reply = self._reply(line)
                if reply is not None:
                    connection.sendall(reply)

    def stop(self) -> None:
        for sock in (self._connection, self._listener):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        self._thread.join(timeout=5)


class SimulatedStation:
    """The project's simulated instruments (threads in this process), set up for the floor in-process."""

    def __init__(self, seed: int = 0):
        from sim.server import SimServer

        self.server = SimServer(seed=seed).start()
        instruments = self.server.instruments
        generator, current, analyzer = (instruments[r] for r in ("signal_generator", "current_source",
                                                                 "spectrum_analyzer"))
        # set up through the instruments' own command parsers, before any client connects
        _expect(current.query(f"FUNC:MODE CURR;:VOLT 20;:CURR {CURRENT_A};:OUTP 1;*OPC?"), b"1\n")
        rig = self.server.rig
        self.center_hz = rig.ring.free_running(rig.ring.field_oe(rig.now()), rig.now())[0]
        _expect(analyzer.query(f"FORM:DATA REAL,32;:FORM:BORD SWAP;:SENS:FREQ:CENT {self.center_hz:.3f};"
                               f":SENS:FREQ:SPAN {SPAN_HZ};:SENS:BAND:RES {RBW_HZ};:SENS:SWE:POIN {TRACE_POINTS};"
                               ":INIT:CONT 0;*OPC?;:SYST:ERR?"), SETTINGS_REPLY)
        _expect(generator.query(f"OUTP:MOD 0;:SOUR:FREQ {self.center_hz:.2f};:SOUR:POW -20;:OUTP 1;*OPC?;"
                                ":SYST:ERR?"), SETTINGS_REPLY)
        self.generator_resource = self.server.resources["signal_generator"]
        self.analyzer_resource = self.server.resources["spectrum_analyzer"]

    def stop(self) -> None:
        self.server.stop()


def _expect(reply: bytes, expected: bytes) -> None:
    if reply != expected:
        raise RuntimeError(f"simulated station set-up: got {reply!r}, expected {expected!r}")


def _open_socket_resource(resource_manager, resource: str):
    from pyvisa import constants

    session = resource_manager.open_resource(resource, read_termination="\n", write_termination="\n",
                                             timeout=5000)
    # a raw socket has no END: the terminator ends a reply line
    session.set_visa_attribute(constants.VI_ATTR_TERMCHAR_EN, constants.VI_TRUE)
    try:
        session.set_visa_attribute(constants.VI_ATTR_TCPIP_NODELAY, constants.VI_TRUE)
    except Exception:  # pyvisa-py 0.8 does not expose it on sockets: set it on its socket
        backend = session.visalib.sessions[session.session]
        backend.interface.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return session


class Floor:
    """The floor's client and file: ``loop(n)`` measures n measurements in steps of ``batch``."""

    def __init__(self, server_kind: str, *, batch: int, tmpdir: str, seed: int = 0):
        import pyvisa

        self.kind = server_kind
        self.batch = batch
        rng = np.random.default_rng(seed)
        if server_kind == "instant":
            trace = rng.normal(-90.0, 8.0, TRACE_POINTS).astype(np.float32)
            self._servers = [InstantServer(trace), InstantServer(trace)]
            generator_resource, analyzer_resource = (s.resource for s in self._servers)
            self.center_hz = 2.07e9
        elif server_kind == "sim":
            station = SimulatedStation(seed=seed)
            self._servers = [station]
            generator_resource, analyzer_resource = station.generator_resource, station.analyzer_resource
            self.center_hz = station.center_hz
        else:
            raise ValueError(f"unknown floor server {server_kind!r}; choose instant or sim")
        self._resource_manager = pyvisa.ResourceManager("@py")
        self.generator = _open_socket_resource(self._resource_manager, generator_resource)
        self.analyzer = _open_socket_resource(self._resource_manager, analyzer_resource)
        from pyvisa import constants
        self._termchar_attribute, self._on, self._off = (constants.VI_ATTR_TERMCHAR_EN, constants.VI_TRUE,
                                                          constants.VI_FALSE)
        self.path = os.path.join(tmpdir, f"floor-{server_kind}-{time.time_ns()}.h5")
        self._file, self._columns = _create_file(self.path)
        self._rows = 0
        self._step = 0
        self._rng = rng
        self._axis = (self.center_hz - SPAN_HZ / 2, self.center_hz + SPAN_HZ / 2)

    def _measure(self, frequency_hz: float, power_dbm: float) -> np.ndarray:
        if self.generator.query(f"SOUR:FREQ {frequency_hz:.2f};:SOUR:POW {power_dbm:.2f};*OPC?;:SYST:ERR?") \
                != '1;+0,"No error"':
            raise RuntimeError("generator: unexpected reply")
        analyzer = self.analyzer
        if analyzer.query(SWEEP_COMMAND) != '1;+0,"No error"':
            raise RuntimeError("analyzer: unexpected sweep reply")
        analyzer.write(TRACE_COMMAND)
        analyzer.set_visa_attribute(self._termchar_attribute, self._off)
        try:
            head = analyzer.read_bytes(2)
            length = int(analyzer.read_bytes(int(head[1:2])))
            data = analyzer.read_bytes(length + 1)
        finally:
            analyzer.set_visa_attribute(self._termchar_attribute, self._on)
        return np.frombuffer(data, dtype="<f4", count=length // 4)

    def one_batch(self) -> None:
        n = self.batch
        frequencies = (self.center_hz + self._rng.uniform(-5e6, 5e6, n)).tolist()
        powers = self._rng.uniform(-40.0, -5.0, n).tolist()
        traces = np.empty((n, TRACE_POINTS), np.float32)
        times = np.empty(n)
        for k in range(n):
            traces[k] = self._measure(frequencies[k], powers[k])
            times[k] = time.time()
        scalars = {"time_s": times, "step": self._step, "kind": 0, "sample_index": np.arange(n), "node": 0,
                   "perturbation_direction": -1, "perturbation_sign": 0, "frequency_hz": frequencies,
                   "power_dbm": powers, "current_a": CURRENT_A, "trace_start_hz": self._axis[0],
                   "trace_stop_hz": self._axis[1], "flags": 16}
        for name, dtype in SCALAR_COLUMNS:
            _append(self._columns[name], np.broadcast_to(np.asarray(scalars[name], dtype=dtype), (n,)))
        _append(self._columns["trace_dbm"], traces)
        _append(self._columns["features"], np.zeros((n, N_FEATURES)))
        self._file.flush()
        self._rows += n
        self._step += 1

    def loop(self, measurements: int) -> list[float]:
        """Per-batch wall times (s)."""
        times = []
        for _ in range(max(1, measurements // self.batch)):
            t0 = time.perf_counter()
            self.one_batch()
            times.append(time.perf_counter() - t0)
        return times

    def close(self) -> None:
        for session in (self.generator, self.analyzer):
            try:
                session.close()
            except Exception:
                pass
        self._file.close()
        for server in self._servers:
            server.stop()


def _create_file(path: str):
    f = h5py.File(path, "w", libver="latest")
    group = f.create_group("measurements")
    columns = {}
    for name, dtype in SCALAR_COLUMNS:
        columns[name] = group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,))
    columns["trace_dbm"] = group.create_dataset("trace_dbm", shape=(0, TRACE_POINTS), maxshape=(None, TRACE_POINTS),
                                                dtype="f4", chunks=(64, TRACE_POINTS))
    columns["features"] = group.create_dataset("features", shape=(0, N_FEATURES), maxshape=(None, N_FEATURES),
                                               dtype="f8", chunks=(4096, N_FEATURES))
    f.swmr_mode = True
    return f, columns


def _append(dataset, values) -> None:
    """Grow by len(values) rows and write them with low-level calls (h5py's cheapest append)."""
    values = np.ascontiguousarray(values, dtype=dataset.dtype)
    dsid = dataset.id
    shape = dsid.shape
    n, k = shape[0], values.shape[0]
    dsid.set_extent((n + k, *shape[1:]))
    file_space = dsid.get_space()
    file_space.select_hyperslab((n, *(0 for _ in shape[1:])), values.shape)
    dsid.write(h5py.h5s.create_simple(values.shape), file_space, values)


def timed_run(contender, *, warmup: int, measurements: int, batch: int) -> dict:
    """Warm up, then time ``measurements`` (whole batches): the numbers of one run."""
    contender.loop(warmup)
    cpu0, t0 = time.process_time(), time.perf_counter()
    times = contender.loop(measurements)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = len(times) * batch
    return {"measurements": n, "wall_s": wall, "measurements_per_s": n / wall,
            "median_us_per_measurement": statistics.median(times) / batch * 1e6,
            "cpu_us_per_measurement": cpu / n * 1e6}


def summary(values: list[float]) -> dict:
    """Median, quartiles and range of a list of per-round numbers."""
    values = sorted(values)
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": values[0], "max": values[-1],
            "n": len(values)}


def machine() -> dict:
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_at_start": os.getloadavg()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", choices=("instant", "sim", "both"), default="both")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each server once per round)")
    p.add_argument("--measurements", type=int, default=1600, help="timed measurements per run")
    p.add_argument("--warmup", type=int, default=160)
    p.add_argument("--batch", type=int, default=16, help="measurements per step (one flush each)")
    p.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_floor.json"))
    args = p.parse_args(argv)
    kinds = ["instant", "sim"] if args.server == "both" else [args.server]
    result = {"machine": machine(), "args": vars(args), "runs": {k: [] for k in kinds},
              "command": "python scripts/bench_floor.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    with tempfile.TemporaryDirectory() as tmpdir:
        for r in range(args.rounds):
            for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                floor = Floor(kind, batch=args.batch, tmpdir=tmpdir, seed=r)
                try:
                    result["runs"][kind].append(timed_run(floor, warmup=args.warmup, measurements=args.measurements,
                                                          batch=args.batch))
                finally:
                    floor.close()
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    result["summary"] = {k: {"measurements_per_s": summary([x["measurements_per_s"] for x in v]),
                             "cpu_us_per_measurement": summary([x["cpu_us_per_measurement"] for x in v])}
                         for k, v in result["runs"].items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"floor, {args.rounds} rounds x {args.measurements} measurements, batch {args.batch} "
          f"(load {result['machine']['loadavg_at_start'][0]:.1f} -> {result['machine']['loadavg_at_end'][0]:.1f})")
    print(f"{'server':10s} {'meas/s median':>14s} {'(min-max)':>16s} {'CPU µs/meas':>12s}")
    for kind, s in result["summary"].items():
        rate, cpu = s["measurements_per_s"], s["cpu_us_per_measurement"]
        print(f"{kind:10s} {rate['median']:14.0f} {rate['min']:8.0f}-{rate['max']:<7.0f} {cpu['median']:12.0f}")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
