"""The physical layer on a station: knobs -> instrument settings -> spectrum -> features.

One measurement per sample per virtual node. The per-measurement critical path holds only
what the instruments need, in as few round trips as the wire allows:

1. the signal generator gets frequency and power, its ``*OPC?`` and its error-queue read as
   one message (``SOUR:FREQ f;:SOUR:POW p;*OPC?;:SYST:ERR?`` on SCPI generators: one round
   trip; the queue is read after every batch of settings, as the design asks);
2. the analyzer sweeps once (``INIT:IMM;*OPC?``) and its trace is read as a binary block
   (axis, sweep time and sweep mode are cached by the driver, never re-queried).

Pipelined across the instruments: once sweep k is complete the analyzer holds its trace and
the generator no longer matters to it, so the settings of sample k+1 are *sent* then
(``begin_cw``), trace k is read and decoded while the generator settles, and only then is the
generator's reply (``*OPC?`` and its error-queue entry, ``finish_cw``) read before sweep k+1.
The order of sweeps and of what each instrument receives is unchanged; the trace read and the
loop's bookkeeping leave the critical path. A fault with a setting in flight: the generator's
reply is taken first (a fault there is recovered with the other), the row is repeated as
without pipelining, and the rest of the batch goes one sample at a time. Sending row k+1's
settings failing (a LimitError, a dropped link) is met at row k+1, as without pipelining.

Everything else happens once per call (a forward batch), after the last sweep: the traces
are cut into features in one vectorised call and the rows go to the recorder in one
``measurements_batch`` (the run file's block append; a recorder without it gets rows one at
a time). A call interrupted by an error still records the rows it measured before the error
is raised. The bias current is a physical *parameter*: it changes at most once per call and
is ramped.
"""
from __future__ import annotations

import time

import numpy as np

from labpgt.contracts import FLAG_SIMULATED, NullRecorder, Perturbation, Recorder, Reservoir
from labpgt.reservoirs.encoding import BandReadout, KnobEncoder
from labpgt.reservoirs.recovery import Overloaded, RecoveryPolicy


class StationReservoir(Reservoir):
    """The ring measured through a connected :class:`instruments.station.Station`."""

    #: every virtual node is its own measurement (one drive setting, one sweep)
    independent_nodes = True

    #: overlap the trace read of sample k with the generator's settling for k+1 (module docstring)
    pipeline = True

    def __init__(self, station, encoder: KnobEncoder, readout: BandReadout,
                 recorder: Recorder | None = None, *, simulated: bool = False,
                 recovery: RecoveryPolicy | None = None):
        self.station = station
        self.encoder = encoder
        self.readout = readout
        self.recorder = recorder or NullRecorder()
        self.n_inputs = encoder.n_inputs
        self.n_nodes = encoder.n_nodes
        self.n_features = encoder.n_nodes * readout.n_bands
        self.measurements = 0
        self.flags_base = FLAG_SIMULATED if simulated else 0
        self._current_a: float | None = None
        # faults: recover, repeat if safe, record (labpgt/reservoirs/recovery.py); the start-up's
        # policy when given (its start-up faults are kept there)
        self.recovery = recovery if recovery is not None else RecoveryPolicy()
        self._axis = (float(readout.freqs_hz[0]), float(readout.freqs_hz[-1]), int(readout.points))
        self.recovery.start_up(station, "the measurement set-up (analyzer window, RF on)", self._set_up,
                               reconnected=self.reconnected)

    def _set_up(self) -> None:
        self._configure_analyzer()
        self._switch_rf_on()

    def reconnected(self, role: str) -> None:
        """After ``role`` was reconnected: send again what this layer set up on the old connection."""
        if role == "spectrum_analyzer":
            self._configure_analyzer()  # the window
        elif role == "signal_generator":
            self._switch_rf_on()  # parked by the reconnect: RF on again, validated

    def forget_current(self) -> None:
        """The magnet's current is no longer known: the next measurement ramps it from the read-back."""
        self._current_a = None

    def _configure_analyzer(self) -> None:
        sa = self.station.spectrum_analyzer
        sa.configure(center_hz=self.readout.center_hz, span_hz=self.readout.span_hz,
                     rbw_hz=self.readout.rbw_hz, points=self.readout.points,
                     reference_level_dbm=sa.reference_level_dbm)

    def _switch_rf_on(self) -> None:
        """RF on through the generator's one RF switch (instruments.roles.SignalGenerator.enable_rf),
        at the encoder's rest setting (the reference line, the lowest power it uses), validated and
        read back -- before the magnet first moves, so it never ramps under an unchecked drive."""
        self.station.signal_generator.enable_rf_at(self.encoder.reference_hz, self.encoder.power_min_dbm)

    def set_current(self, current_a: float) -> None:
        """Ramp the bias magnet to ``current_a`` unless it is there already (once per step at most)."""
        current_a = self.encoder.check_current(current_a)
        if self._current_a != current_a:
            self.station.current_source.ramp_to(current_a)
            self._current_a = current_a

    def measure(self, u, *, current_a, kind, step, sample_index, perturbation=Perturbation()) -> np.ndarray:
        settings = self.encoder.encode(u, current_a)  # rejects NaN/inf/out-of-range before any instrument moves
        setup_flags = 0
        try:
            self.set_current(current_a)
        except Exception as exc:  # an instrument fault is recovered (and recorded), others re-raised
            _, setup_flags = self.recovery.repeat(self, exc, step=step, row_offset=0, current_a=current_a)
        freq_hz, power_dbm = settings["drive_frequency_hz"], settings["drive_power_dbm"]
        batch, nodes = freq_hz.shape
        n = batch * nodes
        sg, sa = self.station.signal_generator, self.station.spectrum_analyzer
        pipeline = self.pipeline
        in_flight = False  # row k's settings were sent during row k-1 (begin_cw), reply unread
        deferred = None  # sending row k's settings failed during row k-1: met at row k
        frequencies, powers = freq_hz.ravel().tolist(), power_dbm.ravel().tolist()  # sample-major
        traces = np.empty((n, self.readout.points), dtype=np.float32)
        times = np.empty(n)
        flags = np.full(n, self.flags_base, dtype=np.uint16)
        flags[0] |= setup_flags  # a fault while bringing the current: on the first row it touched
        done = 0
        try:
            for k in range(n):  # the critical path: instruments only
                try:
                    if deferred is not None:
                        exc, deferred = deferred, None
                        raise exc
                    if in_flight:
                        in_flight = False
                        sg.finish_cw()
                    else:
                        sg.configure_cw(frequencies[k], powers[k])
                    if not pipeline:
                        _, trace = sa.measure()
                        if sa.overloaded:
                            raise _overloaded()
                    else:
                        sa.single_sweep()
                        if sa.overloaded:  # (before the generator moves: the sweep is repeated as it was)
                            raise _overloaded()
                        if k + 1 < n:  # sweep k is done and held: the generator settles while it is read
                            try:
                                sg.begin_cw(frequencies[k + 1], powers[k + 1])
                                in_flight = True
                            except Exception as exc:  # noqa: BLE001 - met again at its own row
                                deferred, pipeline = exc, False
                        _, trace = sa.read_trace()
                except Exception as exc:  # a fault: recover and repeat (recorded), or re-raised
                    also = ()
                    if in_flight:  # the next row's reply first: nothing else may talk to the generator before
                        in_flight = False
                        try:
                            sg.finish_cw()
                        except Exception as generator_exc:  # noqa: BLE001 - recovered with the row's fault
                            also = (generator_exc,)
                    pipeline = False  # the rest of this batch one sample at a time
                    trace, more = self.recovery.repeat(self, exc, step=step, row_offset=k, current_a=current_a,
                                                       frequency_hz=frequencies[k], power_dbm=powers[k], also=also)
                    flags[k] |= more
                traces[k] = trace
                times[k] = time.time()
                done = k + 1
        except BaseException as exc:
            self.measurements += done
            if done:  # keep what was measured: the run file must show every measurement taken
                try:
                    self._record(done, traces, times, flags, freq_hz, power_dbm, current_a, kind, step,
                                 sample_index, perturbation, self.readout.features(traces[:done]))
                except Exception as record_exc:  # the instrument's error stays the one raised
                    exc.add_note(f"recording the {done} measurement(s) taken before it failed too: "
                                 f"{record_exc!r}")
            raise
        self.measurements += n
        per_node = self.readout.features(traces)
        self._record(n, traces, times, flags, freq_hz, power_dbm, current_a, kind, step, sample_index,
                     perturbation, per_node)
        return per_node.reshape(batch, self.n_features)

    def _record(self, done, traces, times, flags, freq_hz, power_dbm, current_a, kind, step, sample_index,
                perturbation, per_node) -> None:
        """The first ``done`` rows (sample-major: sample i, node j is row i * nodes + j)."""
        batch, nodes = freq_hz.shape
        rows = {
            "time_s": times[:done],
            "sample_index": np.repeat(np.asarray(sample_index, dtype=np.int64), nodes)[:done],
            "node": (np.tile(np.arange(nodes), batch) + perturbation.block * nodes)[:done],  # models/deep.py: block_of_node
            "frequency_hz": freq_hz.ravel()[:done],
            "power_dbm": power_dbm.ravel()[:done],
            "trace_dbm": traces[:done],
            "features": per_node,
            "flags": flags[:done],
        }
        common = {"step": int(step), "kind": kind, "perturbation_direction": perturbation.direction,
                  "perturbation_sign": perturbation.sign, "current_a": float(current_a),
                  "frequency_axis": self._axis}
        self.recorder.measurements_batch({**common, **rows})


def _overloaded():
    return Overloaded("spectrum_analyzer: the sweep was overloaded")
