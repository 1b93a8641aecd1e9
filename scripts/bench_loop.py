"""Benchmark: the full path of one measurement, as ``labpgt train`` runs it on the embedded station.

Drivers over loopback (pyvisa-py raw sockets) -> simulated instruments (sim.server, in-process
threads, as the embedded station) -> features -> run file append, with a step record and its
flush after every batch of ``--batch`` samples (one virtual node per sample, as the default
experiment).

(a) zero latency (virtual clock): median µs per measurement (median over batches) and
    measurements per second (all measurements / all wall time), best and median of
    ``--repeat`` runs (other processes share this machine: the best run is the least
    disturbed one). A separate instrumented run breaks a measurement down into transport
    (client side incl. pyvisa: call time minus the server's time), simulation (server-side
    handle time: SCPI parsing, the ring, block encoding), features and run file (time the
    main thread spends in the recorder; with the writer thread also the writer's own time,
    concurrent with the loop).
(b) real-time instruments (``SimServer(realtime=True)``): nominal instrument time per
    measurement (generator settling + sweep time, from the simulator's own constants and
    the analyzer's sweep time), wall time per measurement, and the share of wall time the
    instruments are busy: nominal busy / wall, and server-side busy (time inside the
    instruments' handlers, which sleep for the operation) / wall.
(c) run file: bytes per measurement of the file the loop wrote, and the sustained write rate of
    the run file alone (16-row batches + step flush, traces uncompressed and lzf).
(f) the loop against its floor (``scripts/bench_floor.py``: the loop's wire work through pyvisa-py
    plus the run file's block appends, nothing else), in interleaved rounds: each round sets up
    the loop, the floor against an instantly answering server and the floor against the
    project's simulated instruments side by side and runs them in alternating chunks of
    ``--chunk`` measurements, in rotating order; the ratio loop / floor per round, its median
    and spread. Reported first.

    python scripts/bench_loop.py                       # (f) then (a) (b) (c), JSON + table
    python scripts/bench_loop.py --skip a,b,c          # (f) only: the loop against its floor
    python scripts/bench_loop.py --recorder direct     # run file in the main thread
    python scripts/bench_loop.py --profile             # cProfile of the main thread (a), top 25

Results: scripts/results/bench_loop.json (``--out``).
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import io
import json
import os
import platform
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # _machine, when loaded by path

from _machine import cpu_model  # noqa: E402
from bench_floor import Floor, summary, timed_run  # noqa: E402

from instruments.station import Station  # noqa: E402
from labpgt.reservoirs.encoding import BandReadout, KnobEncoder  # noqa: E402
from labpgt.experiment.probe import find_reference_hz  # noqa: E402
from labpgt.reservoirs.station import StationReservoir  # noqa: E402
from labpgt.runfile import RunFile  # noqa: E402
import sim.clock  # noqa: E402
from sim.server import SimServer  # noqa: E402

try:
    from labpgt.runfile.thread import RecorderThread
    if not Path(sys.modules[RecorderThread.__module__].__file__).resolve().is_relative_to(ROOT):
        RecorderThread = None  # an editable install's copy from another tree: not this tree's code
except ImportError:  # older trees (for "before" numbers)
    RecorderThread = None

CURRENT_A = 1.8


def machine() -> dict:
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_at_start": os.getloadavg()}


def git_head() -> str:
    try:
        import subprocess
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    except Exception:
        return "?"


class Acc:
    """Thread-safe time accumulators."""

    def __init__(self):
        self.lock = threading.Lock()
        self.t = collections.defaultdict(float)
        self.n = collections.Counter()

    def add(self, key, dt):
        with self.lock:
            self.t[key] += dt
            self.n[key] += 1


def timed(fn, acc, key):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc.add(key, time.perf_counter() - t0)
    return wrapper


class SimProcess:
    """``labpgt sim serve`` in a child process: its station file is read from its output."""

    def __init__(self, *, seed: int, realtime: bool, tmpdir: str):
        cmd = [sys.executable, "-m", "labpgt.cli", "sim", "serve", "--seed", str(seed),
               "--station-out", os.path.join(tmpdir, f"sim-station-{time.time_ns()}.toml")]
        if realtime:
            cmd.append("--realtime")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
        lines = []
        for line in self.proc.stdout:  # blocks until the server has printed its station file
            if line.startswith("# station file written to"):
                break
            lines.append(line)
        else:
            raise RuntimeError(f"labpgt sim serve exited ({self.proc.wait()}) before writing its station file")
        self._toml = "".join(lines)

    def station_toml(self) -> str:
        return self._toml

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # its Ctrl-C path closes the servers
        self.proc.wait(timeout=30)


class Rig:
    """The embedded station (in-process loopback servers) + reservoir + run file."""

    def __init__(self, *, realtime: bool, recorder_mode: str, batch: int, tmpdir: str, seed: int = 0,
                 trace_compression=None, sim_process: bool = False):
        if sim_process:  # the simulated instruments in their own process, as real ones are their own boxes
            self.server = SimProcess(seed=seed, realtime=realtime, tmpdir=tmpdir)
        else:
            self.server = SimServer(seed=seed, realtime=realtime).start()
        self.station = Station.from_text(self.server.station_toml(), source_name="<bench station>")
        self.station.__enter__()
        self.batch = batch
        ref, _, _ = find_reference_hz(self.station, CURRENT_A)
        sa = self.station.spectrum_analyzer
        self.encoder = KnobEncoder(n_nodes=1, reference_hz=ref, current_min_a=0.0, current_max_a=2.5)
        self.readout = BandReadout(center_hz=ref, span_hz=sa.span_hz, points=sa.points, rbw_hz=sa.rbw_hz,
                                   n_bands=10)
        self.path = os.path.join(tmpdir, f"bench-{'rt' if realtime else 'vc'}-{recorder_mode}-{time.time_ns()}.h5")
        self.run = RunFile.create(self.path, n_params=100, features_per_measurement=10,
                                  trace_points=self.readout.points, trace_compression=trace_compression)
        if recorder_mode == "thread" and RecorderThread is not None:
            self.recorder = RecorderThread(self.run)
        else:
            self.recorder = self.run
        self.recorder_mode = recorder_mode if self.recorder is not self.run else "direct"
        self.reservoir = StationReservoir(self.station, self.encoder, self.readout, self.recorder, simulated=True)
        self.reservoir.set_current(CURRENT_A)
        self.rng = np.random.default_rng(seed)
        self.step = 0
        self.rows = 0

    def one_batch(self):
        u = self.rng.uniform(-1, 1, (self.batch, self.encoder.n_inputs))
        self.reservoir.measure(u, current_a=CURRENT_A, kind="train", step=self.step,
                               sample_index=np.arange(self.batch))
        self.rows += self.batch
        self.recorder.step({"step": self.step, "loss": 0.0, "accuracy": 0.0, "grad_norm": 0.0,
                            "measurements": self.rows, "time_s": time.time(), "current_a": CURRENT_A})
        self.step += 1

    def loop(self, measurements: int) -> list[float]:
        """Per-batch wall times (s)."""
        times = []
        for _ in range(max(1, measurements // self.batch)):
            t0 = time.perf_counter()
            self.one_batch()
            times.append(time.perf_counter() - t0)
        return times

    def close(self):
        if self.recorder is not self.run:
            self.recorder.close()
        self.run.close()
        self.station.__exit__(None, None, None)
        self.server.stop()


def instrument(rig: Rig, acc: Acc) -> None:
    sg, sa = rig.station.signal_generator, rig.station.spectrum_analyzer
    if hasattr(sg, "begin_cw"):  # the halves (configure_cw and measure call them): each call counted once
        sg.begin_cw = timed(sg.begin_cw, acc, "client_generator")
        sg.finish_cw = timed(sg.finish_cw, acc, "client_generator")
        sa.single_sweep = timed(sa.single_sweep, acc, "client_analyzer")
        sa.read_trace = timed(sa.read_trace, acc, "client_analyzer")
    else:  # older trees
        sg.configure_cw = timed(sg.configure_cw, acc, "client_generator")
        sa.measure = timed(sa.measure, acc, "client_analyzer")
    for role, inst in rig.server.instruments.items():
        inst.handle = timed(inst.handle, acc, f"server_{role}")
    object.__setattr__(rig.readout, "features", timed(rig.readout.features, acc, "features"))
    # the recorder as the main thread sees it ...
    for name in ("measurement", "measurements_batch", "step"):
        if hasattr(rig.recorder, name):
            setattr(rig.recorder, name, timed(getattr(rig.recorder, name), acc, "runfile_main"))
    # ... and the run file's own work (in the writer thread when there is one)
    if rig.recorder is not rig.run:
        for name in ("measurement", "measurements_batch", "step"):
            setattr(rig.run, name, timed(getattr(rig.run, name), acc, "runfile_writer"))


# ------------------------------------------------------------------------------------------ (a)
def bench_zero_latency(args, tmpdir) -> dict:
    runs = []
    for r in range(args.repeat):
        rig = Rig(realtime=False, recorder_mode=args.recorder, batch=args.batch, tmpdir=tmpdir, seed=r)
        try:
            rig.loop(args.warmup)
            cpu0, t0 = time.process_time(), time.perf_counter()
            times = rig.loop(args.measurements)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            n = len(times) * args.batch
            runs.append({"measurements": n, "wall_s": wall, "measurements_per_s": n / wall,
                         "median_us_per_measurement": statistics.median(times) / args.batch * 1e6,
                         "cpu_us_per_measurement": cpu / n * 1e6, "recorder": rig.recorder_mode})
        finally:
            rig.close()
    best = max(runs, key=lambda x: x["measurements_per_s"])

    # the breakdown, from one instrumented run (the wrappers cost a little themselves)
    acc = Acc()
    rig = Rig(realtime=False, recorder_mode=args.recorder, batch=args.batch, tmpdir=tmpdir, seed=99)
    try:
        rig.loop(args.warmup)
        instrument(rig, acc)
        t0 = time.perf_counter()
        times = rig.loop(args.measurements)
        if rig.recorder is not rig.run:
            rig.recorder.drain()
        wall = time.perf_counter() - t0
        n = len(times) * args.batch
    finally:
        rig.close()
    per = {k: v / n * 1e6 for k, v in acc.t.items()}
    client = per.get("client_generator", 0) + per.get("client_analyzer", 0)
    server = sum(v for k, v in per.items() if k.startswith("server_"))
    breakdown = {
        "wall": wall / n * 1e6,
        "instruments_client_calls": client,
        "simulation_server_side": server,
        "transport_client_side": client - server,
        "features": per.get("features", 0.0),
        "run_file_main_thread": per.get("runfile_main", 0.0),
        "run_file_writer_thread": per.get("runfile_writer", 0.0),
        "server_by_role": {k[len("server_"):]: v for k, v in per.items() if k.startswith("server_")},
    }
    breakdown["other_main_thread"] = breakdown["wall"] - client - breakdown["features"] - breakdown["run_file_main_thread"]
    return {"runs": runs, "best": best,
            "median_of_runs_measurements_per_s": statistics.median(r["measurements_per_s"] for r in runs),
            "breakdown_us_per_measurement": breakdown}


# ------------------------------------------------------------------------------------------ (f)
FLOOR_CONTENDERS = ("loop", "floor_instant", "floor_sim")


def bench_against_floor(args, tmpdir) -> dict:
    """Interleaved rounds of (loop, floor against an instant server, floor against the simulator).

    In a round the three are set up side by side (whichever is not running is idle: its server
    threads wait on their sockets) and run in short alternating chunks of ``--chunk``
    measurements, in rotating order, until each has ``--round-measurements``: a change of the
    machine's load hits all three alike. A round's rate is its measurements over the wall time
    of its chunks; the ratio is taken per round.
    """
    runs = {name: [] for name in FLOOR_CONTENDERS}
    for r in range(args.rounds):
        contenders = {}
        try:
            for name in FLOOR_CONTENDERS:
                contenders[name] = (Rig(realtime=False, recorder_mode=args.recorder, batch=args.batch, tmpdir=tmpdir,
                                        seed=r) if name == "loop" else
                                    Floor(name[len("floor_"):], batch=args.batch, tmpdir=tmpdir, seed=r))
                contenders[name].loop(args.warmup)
            wall = dict.fromkeys(FLOOR_CONTENDERS, 0.0)
            cpu = dict.fromkeys(FLOOR_CONTENDERS, 0.0)
            batch_times = {name: [] for name in FLOOR_CONTENDERS}
            chunks = max(1, args.round_measurements // args.chunk)
            for c in range(chunks):
                order = FLOOR_CONTENDERS[c % 3:] + FLOOR_CONTENDERS[:c % 3]  # rotate: no side always first
                for name in order:
                    cpu0, t0 = time.process_time(), time.perf_counter()
                    batch_times[name] += contenders[name].loop(args.chunk)
                    wall[name] += time.perf_counter() - t0
                    cpu[name] += time.process_time() - cpu0
        finally:
            for contender in contenders.values():
                contender.close()
        for name in FLOOR_CONTENDERS:
            n = len(batch_times[name]) * args.batch
            runs[name].append({"round": r, "measurements": n, "wall_s": wall[name],
                               "measurements_per_s": n / wall[name],
                               "median_us_per_measurement": statistics.median(batch_times[name]) / args.batch * 1e6,
                               "cpu_us_per_measurement": cpu[name] / n * 1e6})
    rates = {name: [x["measurements_per_s"] for x in v] for name, v in runs.items()}
    ratios = {f"loop_over_{name}": [loop / floor for loop, floor in zip(rates["loop"], rates[name])]
              for name in ("floor_instant", "floor_sim")}
    return {"runs": runs, "rounds": args.rounds, "measurements_per_run": args.round_measurements,
            "chunk": args.chunk,
            "measurements_per_s": {name: summary(v) for name, v in rates.items()},
            "cpu_us_per_measurement": {name: summary([x["cpu_us_per_measurement"] for x in v])
                                       for name, v in runs.items()},
            "ratio": {name: summary(v) for name, v in ratios.items()}}


def floor_table(f: dict) -> str:
    def spread(s, fmt):
        return f"{fmt.format(s['median'])} ({fmt.format(s['q1'])}–{fmt.format(s['q3'])}; " \
               f"{fmt.format(s['min'])}–{fmt.format(s['max'])})"
    lines = [f"(f) the loop against its floor, {f['rounds']} rounds of {f['measurements_per_run']} measurements each, "
             f"interleaved in chunks of {f.get('chunk', f['measurements_per_run'])}; median (quartiles; min–max)",
             f"      {'':30s} {'measurements/s':36s} CPU µs/measurement (all threads)"]
    for name in FLOOR_CONTENDERS:
        lines.append(f"      {name:30s} {spread(f['measurements_per_s'][name], '{:.0f}'):36s} "
                     f"{f['cpu_us_per_measurement'][name]['median']:.0f}")
    for name, label in (("loop_over_floor_instant", "ratio loop / floor (instant)"),
                        ("loop_over_floor_sim", "ratio loop / floor (simulator)")):
        lines.append(f"      {label:30s} {spread(f['ratio'][name], '{:.2f}')}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ (b)
def bench_realtime(args, tmpdir) -> dict:
    from sim import instruments as sim_instruments

    acc = Acc()
    rig = Rig(realtime=True, recorder_mode=args.recorder, batch=args.batch, tmpdir=tmpdir,
              sim_process=args.sim_process)
    try:
        rig.loop(args.batch)  # learns sweep mode, time and axis
        sweep_s = float(rig.station.spectrum_analyzer.sweep_time_s)
        settle_s = float(getattr(sim_instruments, "GENERATOR_SETTLE_S", 0.0))
        if args.sim_process:  # nothing to instrument inside another process: nominal busy only
            t0 = time.perf_counter()
            times = rig.loop(args.realtime_measurements)
            wall = time.perf_counter() - t0
            n = len(times) * args.batch
            nominal = settle_s + sweep_s
            return {"measurements": n, "sim": "process", "generator_settle_ms": settle_s * 1e3,
                    "sweep_time_ms": sweep_s * 1e3, "nominal_instrument_ms_per_measurement": nominal * 1e3,
                    "wall_ms_per_measurement": wall / n * 1e3,
                    "median_batch_ms_per_measurement": statistics.median(times) / args.batch * 1e3,
                    "overhead_ms_per_measurement": wall / n * 1e3 - nominal * 1e3,
                    "busy_share_nominal": nominal * n / wall, "loadavg": os.getloadavg(),
                    "measurements_per_s": n / wall}
        for role, inst in rig.server.instruments.items():
            inst.handle = timed(inst.handle, acc, f"server_{role}")
        clock = rig.server.rig.clock
        advance_to = clock.advance_to

        def sleep_accounted(t, release=None):  # the simulated instruments' own waits, asked vs got
            asked = t - clock.now()
            t0 = time.perf_counter()
            try:
                return advance_to(t, release)
            finally:
                if asked > 0:
                    acc.add("sleep_asked", asked)
                    acc.add("sleep_got", time.perf_counter() - t0)

        clock.advance_to = sleep_accounted
        t0 = time.perf_counter()
        times = rig.loop(args.realtime_measurements)
        wall = time.perf_counter() - t0
        n = len(times) * args.batch
        busy = sum(v for k, v in acc.t.items() if k.startswith("server_"))
        overshoot = acc.t["sleep_got"] - acc.t["sleep_asked"]
    finally:
        rig.close()
    nominal = settle_s + sweep_s
    return {"measurements": n, "sim": "threads", "generator_settle_ms": settle_s * 1e3, "sweep_time_ms": sweep_s * 1e3,
            "nominal_instrument_ms_per_measurement": nominal * 1e3,
            "wall_ms_per_measurement": wall / n * 1e3,
            "median_batch_ms_per_measurement": statistics.median(times) / args.batch * 1e3,
            "overhead_ms_per_measurement": wall / n * 1e3 - nominal * 1e3,
            "busy_share_nominal": nominal * n / wall,
            "busy_share_server_side": busy / wall,
            "server_busy_ms_per_measurement": busy / n * 1e3,
            "host_sleep_overshoot_ms_per_measurement": overshoot / n * 1e3,
            "software_ms_per_measurement": (wall - busy) / n * 1e3,
            "loadavg": os.getloadavg(),
            "measurements_per_s": n / wall}


# ------------------------------------------------------------------------------------------ (c)
def bench_runfile(args, tmpdir, loop_file_bytes_per_measurement) -> dict:
    out = {"loop_file_bytes_per_measurement": loop_file_bytes_per_measurement, "sustained": []}
    points, rows = 401, args.runfile_measurements
    trace = np.random.default_rng(0).normal(-70, 8, (args.batch, points)).astype(np.float32)
    for compression in (None, "lzf"):
        path = os.path.join(tmpdir, f"rf-{compression}-{time.time_ns()}.h5")
        run = RunFile.create(path, n_params=100, features_per_measurement=10, trace_points=points,
                             trace_compression=compression)
        t0 = time.perf_counter()
        steps = rows // args.batch
        for s in range(steps):
            run.measurements_batch({
                "step": s, "kind": "train", "perturbation_direction": -1, "perturbation_sign": 0,
                "current_a": CURRENT_A, "frequency_axis": (2.06e9, 2.08e9, points),
                "time_s": np.full(args.batch, time.time()), "sample_index": np.arange(args.batch),
                "node": np.zeros(args.batch, np.int32), "frequency_hz": np.full(args.batch, 2.07e9),
                "power_dbm": np.full(args.batch, -20.0), "trace_dbm": trace + np.float32(s % 7),
                "features": np.zeros((args.batch, 10)), "flags": np.zeros(args.batch, np.uint16)})
            run.step({"step": s, "loss": 0.0, "accuracy": 0.0, "grad_norm": 0.0, "measurements": s,
                      "time_s": time.time(), "current_a": CURRENT_A})
        wall = time.perf_counter() - t0
        run.close()
        size = os.path.getsize(path)
        n = steps * args.batch
        out["sustained"].append({
            "trace_compression": compression or "none", "measurements": n, "rows_per_step": args.batch,
            "measurements_per_s": n / wall, "us_per_measurement": wall / n * 1e6,
            "bytes_per_measurement": size / n, "MB_per_s": size / wall / 1e6})
    return out


def profile_main_thread(args, tmpdir, top=25) -> str:
    rig = Rig(realtime=False, recorder_mode=args.recorder, batch=args.batch, tmpdir=tmpdir, seed=5)
    try:
        rig.loop(args.warmup)
        prof = cProfile.Profile()
        prof.enable()
        rig.loop(args.measurements)
        prof.disable()
    finally:
        rig.close()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def table(result) -> str:
    parts = []
    if "floor" in result:
        parts.append(floor_table(result["floor"]))
    if all(k in result for k in ("zero_latency", "realtime", "runfile")):
        parts.append(table_abc(result))
    return "\n".join(parts)


def table_abc(result) -> str:
    a, b, c = result["zero_latency"], result["realtime"], result["runfile"]
    bd = a["breakdown_us_per_measurement"]
    lines = [
        f"(a) zero latency, recorder={a['best']['recorder']}, batch {result['args']['batch']}: "
        f"best of {len(a['runs'])}: {a['best']['measurements_per_s']:.0f} measurements/s, "
        f"median {a['best']['median_us_per_measurement']:.0f} µs/measurement "
        f"(median of runs {a['median_of_runs_measurements_per_s']:.0f}/s; "
        f"process CPU {a['best']['cpu_us_per_measurement']:.0f} µs/measurement)",
        "    breakdown (instrumented run), µs per measurement:",
    ]
    for key in ("wall", "transport_client_side", "simulation_server_side", "features", "run_file_main_thread",
                "run_file_writer_thread", "other_main_thread"):
        lines.append(f"      {key:26s} {bd[key]:8.1f}")
    lines.append("      server by role: " + ", ".join(f"{k} {v:.1f}" for k, v in bd["server_by_role"].items()))
    lines += [
        f"(b) real time: nominal instrument time {b['nominal_instrument_ms_per_measurement']:.2f} ms "
        f"(settle {b['generator_settle_ms']:.1f} + sweep {b['sweep_time_ms']:.2f}), wall "
        f"{b['wall_ms_per_measurement']:.2f} ms/measurement -> busy {b['busy_share_nominal']:.1%} (nominal), "
        f"{b['busy_share_server_side']:.1%} (server-side: {b['server_busy_ms_per_measurement']:.2f} ms, of which "
        f"{b['host_sleep_overshoot_ms_per_measurement']:.2f} ms the host's late wake-ups); software outside the "
        f"instruments {b['software_ms_per_measurement']:.2f} ms/measurement",
        f"(c) run file: {c['loop_file_bytes_per_measurement']:.0f} bytes/measurement in the loop's file; sustained "
        + "; ".join(f"{s['trace_compression']}: {s['measurements_per_s']:.0f}/s, {s['bytes_per_measurement']:.0f} B, "
                    f"{s['MB_per_s']:.1f} MB/s" for s in c["sustained"]),
    ]
    return "\n".join(lines)


def markdown(before: dict | None, after: dict) -> str:
    """The rows of docs/benchmarks.md "## Measurement loop" from result files (before optional)."""
    cols = [("before", before), ("after", after)] if before else [("result", after)]

    def row(label, get, fmt):
        cells = []
        for _, r in cols:
            try:
                cells.append(fmt.format(get(r)))
            except (KeyError, TypeError):
                cells.append("–")
        return f"| {label} | " + " | ".join(cells) + " |"

    a = lambda r: r["zero_latency"]  # noqa: E731
    bd = lambda r: r["zero_latency"]["breakdown_us_per_measurement"]  # noqa: E731
    b = lambda r: r["realtime"]  # noqa: E731
    sus = lambda r, c: next(x for x in r["runfile"]["sustained"] if x["trace_compression"] == c)  # noqa: E731
    head = "| | " + " | ".join(name for name, _ in cols) + " |\n|---|" + "---|" * len(cols)
    lines = [
        "**(a) zero latency (virtual clock), logging included**", "", head,
        row("commit", lambda r: r["git_head"], "{}"),
        row("run-file writes", lambda r: a(r)["best"]["recorder"], "{}"),
        row("measurements/s, best of runs", lambda r: a(r)["best"]["measurements_per_s"], "{:.0f}"),
        row("measurements/s, median of runs", lambda r: a(r)["median_of_runs_measurements_per_s"], "{:.0f}"),
        row("median µs/measurement (best run)", lambda r: a(r)["best"]["median_us_per_measurement"], "{:.0f}"),
        row("process CPU µs/measurement (best run)", lambda r: a(r)["best"]["cpu_us_per_measurement"], "{:.0f}"),
        row("breakdown (instrumented run), µs/measurement: wall", lambda r: bd(r)["wall"], "{:.0f}"),
        row("— transport, client side incl. pyvisa", lambda r: bd(r)["transport_client_side"], "{:.0f}"),
        row("— simulation, server side (SCPI, ring, block)", lambda r: bd(r)["simulation_server_side"], "{:.0f}"),
        row("— features", lambda r: bd(r)["features"], "{:.1f}"),
        row("— run file, main thread (incl. waiting at the step flush)", lambda r: bd(r)["run_file_main_thread"],
            "{:.0f}"),
        row("— run file, writer thread (concurrent)", lambda r: bd(r)["run_file_writer_thread"], "{:.0f}"),
        row("— other (encoding, loop)", lambda r: bd(r)["other_main_thread"], "{:.0f}"),
        "", "**(b) real-time instruments** (`SimServer(realtime=True)`)", "", head,
        row("nominal instrument time, ms/measurement (settle + sweep)",
            lambda r: f"{b(r)['nominal_instrument_ms_per_measurement']:.1f} ({b(r)['generator_settle_ms']:.0f} + "
                      f"{b(r)['sweep_time_ms']:.0f})", "{}"),
        row("wall, ms/measurement", lambda r: b(r)["wall_ms_per_measurement"], "{:.2f}"),
        row("instruments busy: nominal time / wall", lambda r: 100 * b(r)["busy_share_nominal"], "{:.1f} %"),
        row("instruments busy: time inside the instruments / wall", lambda r: 100 * b(r)["busy_share_server_side"],
            "{:.1f} %"),
        row("— of which the host's late wake-ups of the sim's sleeps, ms/measurement",
            lambda r: b(r)["host_sleep_overshoot_ms_per_measurement"], "{:.2f}"),
        row("software outside the instruments, ms/measurement", lambda r: b(r)["software_ms_per_measurement"],
            "{:.2f}"),
        "", "**(c) run file**", "", head,
        row("bytes/measurement, the loop's file (401-point float32 trace = 1604 B)",
            lambda r: r["runfile"]["loop_file_bytes_per_measurement"], "{:.0f}"),
        row("sustained, traces uncompressed: measurements/s (MB/s)",
            lambda r: f"{sus(r, 'none')['measurements_per_s']:.0f} ({sus(r, 'none')['MB_per_s']:.1f})", "{}"),
        row("sustained, traces lzf: measurements/s (bytes/measurement)",
            lambda r: f"{sus(r, 'lzf')['measurements_per_s']:.0f} ({sus(r, 'lzf')['bytes_per_measurement']:.0f})",
            "{}"),
        "", "**machine load during the runs** (other sessions share this machine)", "", head,
        row("load average (1, 5, 15 min) at start", lambda r: ", ".join(
            f"{x:.1f}" for x in r["machine"]["loadavg_at_start"]), "{}"),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--measurements", type=int, default=3200, help="measurements per zero-latency run")
    p.add_argument("--warmup", type=int, default=160)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--batch", type=int, default=16, help="samples per forward batch (= per step)")
    p.add_argument("--recorder", choices=("thread", "direct"), default="thread",
                   help="run file behind the writer thread, or written in the main thread")
    p.add_argument("--realtime-measurements", type=int, default=320)
    p.add_argument("--runfile-measurements", type=int, default=8000)
    p.add_argument("--no-pipeline", action="store_true",
                   help="the measurement loop unpipelined (StationReservoir.pipeline = False): the A/B baseline")
    p.add_argument("--plain-sleep", action="store_true",
                   help="real-time simulated instruments wait with one plain time.sleep (sim.clock._SPIN_S = 0), "
                        "as before the yield-spin: the A/B baseline for (b)")
    p.add_argument("--sim-process", action="store_true",
                   help="(b): the simulated instruments in their own process (labpgt sim serve --realtime), "
                        "as real instruments are their own boxes, instead of threads sharing this process's GIL")
    p.add_argument("--rounds", type=int, default=7, help="(f): interleaved rounds of loop and floors")
    p.add_argument("--round-measurements", type=int, default=1600, help="(f): timed measurements per run")
    p.add_argument("--chunk", type=int, default=160, help="(f): measurements per turn within a round")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: f,a,b,c")
    p.add_argument("--profile", action="store_true", help="print the cProfile top of the main thread (a)")
    p.add_argument("--loop-only", action="store_true",
                   help="one uninstrumented zero-latency loop and nothing else (for an outside profiler: "
                        "py-spy record --gil --threads -- python scripts/bench_loop.py --loop-only)")
    p.add_argument("--commit-label", default="", help="commit recorded in the results (default: git HEAD)")
    p.add_argument("--markdown", nargs="+", metavar="RESULT.json",
                   help="print the docs table from [BEFORE.json] AFTER.json and exit")
    p.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_loop.json"))
    args = p.parse_args(argv)
    if args.no_pipeline:
        StationReservoir.pipeline = False
    if args.plain_sleep:
        sim.clock._SPIN_S = 0.0
    if args.markdown:
        results = [json.loads(Path(f).read_text()) for f in args.markdown]
        print(markdown(results[0] if len(results) > 1 else None, results[-1]))
        return 0
    if args.loop_only:
        with tempfile.TemporaryDirectory() as tmpdir:
            rig = Rig(realtime=False, recorder_mode=args.recorder, batch=args.batch, tmpdir=tmpdir)
            try:
                t0 = time.perf_counter()
                n = len(rig.loop(args.measurements)) * args.batch
                print(f"{n / (time.perf_counter() - t0):.0f} measurements/s")
            finally:
                rig.close()
        return 0
    skip = set(filter(None, args.skip.split(",")))
    result = {"machine": machine(), "git_head": args.commit_label or git_head(), "args": vars(args),
              "pipelined": bool(getattr(StationReservoir, "pipeline", False)),
              "sim_wait_spin_s": sim.clock._SPIN_S,
              "command": "python scripts/bench_loop.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    with tempfile.TemporaryDirectory() as tmpdir:
        if "f" not in skip:
            result["floor"] = bench_against_floor(args, tmpdir)
            print(floor_table(result["floor"]), flush=True)
        if "a" not in skip:
            result["zero_latency"] = bench_zero_latency(args, tmpdir)
            files = [f for f in os.listdir(tmpdir) if f.startswith("bench-vc")]
        if "b" not in skip:
            result["realtime"] = bench_realtime(args, tmpdir)
        if "c" not in skip:
            # the loop's own file: the (a) runs are closed; size / rows of the largest
            sizes = [os.path.getsize(os.path.join(tmpdir, f)) for f in files] if "a" not in skip else []
            per_meas = (max(sizes) / (args.measurements + args.warmup)) if sizes else float("nan")
            result["runfile"] = bench_runfile(args, tmpdir, per_meas)
        if args.profile:
            result["profile_main_thread"] = profile_main_thread(args, tmpdir)
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if not skip.intersection("abc"):
        print(table_abc(result))
    elif skip.issuperset("abc"):
        pass  # (f) alone: printed above
    else:
        print(json.dumps({k: v for k, v in result.items() if k not in ("args", "floor")}, indent=1)[:4000])
    if args.profile:
        print(result["profile_main_thread"])
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
