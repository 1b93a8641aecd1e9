"""Replay: rerun a recorded experiment against its recorded measurements.

:class:`ReplayReservoir` answers each ``measure()`` with the recorded features, in recorded
order, after checking that the request is the one recorded: same step, kind, sample indices,
virtual nodes, perturbation, and the settings the encoder makes of ``u`` and ``current_a``
equal to the recorded ones bit for bit. Any difference raises :class:`ReplayDivergence`
naming the step, sample, node and both values.

:func:`replay` builds the recorded experiment's trainer on a ReplayReservoir, runs it, and
compares its final parameters with the recorded final checkpoint bit for bit.

Rows abandoned by a ``--resume`` (recorded after the checkpoint the run continued from) are
skipped, so a resumed run replays as the uninterrupted run it stands for.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .interfaces import KINDS, Perturbation
from .runfile import RunReader


class ReplayDivergence(RuntimeError):
    """The replayed run asked for something other than what was recorded."""

    def __init__(self, message, *, step=None, sample_index=None, node=None, row=None):
        super().__init__(message)
        self.step, self.sample_index, self.node, self.row = step, sample_index, node, row


class RecordingExhausted(ReplayDivergence):
    """The replay asked for more measurements than the recording holds."""


def _bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


def encoder_settings(encoder, u, current_a):
    """Adapter: (frequency_hz [B, V], power_dbm [B, V], current_a float) from an encoder.

    Accepts :class:`labpgt.encoding.KnobEncoder` (``encode(u, current_a)`` -> dict of arrays) or
    any object with ``settings(u, current_a)`` -> per sample, per node, a dict with
    frequency_hz, power_dbm, current_a.
    """
    if hasattr(encoder, "encode"):
        s = encoder.encode(u, current_a)
        freq = np.asarray(s.get("drive_frequency_hz", s.get("frequency_hz")), dtype=np.float64)
        power = np.asarray(s.get("drive_power_dbm", s.get("power_dbm")), dtype=np.float64)
        return freq, power, float(s["current_a"])
    rows = encoder.settings(u, current_a)
    freq = np.array([[d["frequency_hz"] for d in sample] for sample in rows], dtype=np.float64)
    power = np.array([[d["power_dbm"] for d in sample] for sample in rows], dtype=np.float64)
    return freq, power, float(rows[0][0].get("current_a", current_a)) if rows else float(current_a)


class ReplayReservoir:
    """A Reservoir whose measurements are the recorded ones (see the module docstring).

    reader: a RunReader; encoder: the run's encoder (KnobEncoder or adapter, see
    :func:`encoder_settings`); noiseless: optional noise-free model for the oracle estimator.
    """

    def __init__(self, reader: RunReader, encoder, *, noiseless=None):
        self.encoder = encoder
        self.n_nodes = int(encoder.n_nodes)
        self.n_inputs = int(encoder.n_inputs)
        self.features_per_node = reader.features_per_measurement
        self.n_features = self.n_nodes * self.features_per_node
        self.measurements = 0
        if noiseless is not None:
            self.noiseless = noiseless
        rows = reader.effective_rows("measurements")
        m = reader.measurements
        # the scalar columns are ~100 bytes a row: hold them (and the features) in memory
        cols = ("step", "kind", "sample_index", "node", "perturbation_direction", "perturbation_sign",
                "frequency_hz", "power_dbm", "current_a")
        self._rec = {c: m.column(c)[rows] for c in cols}
        self._features = m.column("features")[rows]
        self._rows = rows
        self.position = 0  # next recorded row (index into the effective rows)

    @property
    def remaining(self) -> int:
        return len(self._rows) - self.position

    def measure(self, u, *, current_a, kind, step, sample_index, perturbation=Perturbation()) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64)
        sample_index = np.asarray(sample_index)
        b, v = len(u), self.n_nodes
        need = b * v
        lo = self.position
        if lo + need > len(self._rows):
            raise RecordingExhausted(
                f"replay asks for {need} measurements at step {step} ({kind}), but the recording holds only "
                f"{self.remaining} more (of {len(self._rows)})", step=step)
        rec = {c: a[lo:lo + need] for c, a in self._rec.items()}
        freq, power, cur = encoder_settings(self.encoder, u, current_a)
        req = {
            "step": np.full(need, step, dtype=np.int64),
            "kind": np.full(need, KINDS.index(kind), dtype=np.int8),
            "sample_index": np.repeat(sample_index.astype(np.int64), v),
            "node": np.tile(np.arange(v), b) + perturbation.block * v,  # deep.py: block_of_node
            "perturbation_direction": np.full(need, perturbation.direction),
            "perturbation_sign": np.full(need, perturbation.sign),
            "frequency_hz": freq.reshape(need),
            "power_dbm": power.reshape(need),
            "current_a": np.full(need, cur, dtype=np.float64),
        }
        for name, want in req.items():
            got = rec[name]
            bad = (_bits(got) != _bits(want)) if got.dtype.kind == "f" else (got != want)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                self._diverge(name, j, lo, rec, req, step, kind)
        self.position = lo + need
        self.measurements += need
        return self._features[lo:lo + need].reshape(b, v * self.features_per_node)

    def _diverge(self, name, j, lo, rec, req, step, kind):
        def show(col, x):
            if col == "kind":
                return repr(KINDS[int(x)])
            if isinstance(x, (float, np.floating)):
                return f"{float(x)!r} (0x{np.float64(x).view(np.uint64):016x})"
            return repr(int(x))
        row = int(self._rows[lo + j])
        raise ReplayDivergence(
            f"replay diverges at step {int(rec['step'][j])} (requested step {step}, {kind}), sample "
            f"{int(rec['sample_index'][j])}, node {int(rec['node'][j])} (recorded row {row}): {name} recorded "
            f"{show(name, rec[name][j])}, requested {show(name, req[name][j])}",
            step=int(rec["step"][j]), sample_index=int(rec["sample_index"][j]), node=int(rec["node"][j]), row=row)


class _CaptureRecorder:
    """Keeps what the replayed trainer reports (steps, evaluations, checkpoints) in memory."""

    def __init__(self):
        self.steps, self.evaluations, self.checkpoints = [], [], []

    def measurement(self, record):
        pass

    def step(self, record):
        self.steps.append(dict(record))

    def evaluation(self, record):
        self.evaluations.append(dict(record))

    def checkpoint(self, state):
        self.checkpoints.append({**state, "params": np.array(state["params"], dtype=np.float64, copy=True)})


@dataclass
class ReplayResult:
    ok: bool  # final parameters equal the recorded final checkpoint's, bit for bit
    message: str
    steps: int = 0  # steps the replay completed
    measurements_replayed: int = 0
    measurements_recorded: int = 0
    params_equal: bool = False
    first_difference: dict | None = None  # {"index", "recorded", "replayed"} of the first differing parameter
    divergence: ReplayDivergence | None = None
    step_mismatches: list = field(default_factory=list)  # steps whose loss/grad_norm differ from the record

    def __str__(self):
        return self.message


def encoder_from_metadata(metadata: dict):
    """The KnobEncoder a run recorded in its metadata (``physical_layer`` JSON), or None."""
    layout = metadata.get("physical_layer")
    if not layout:
        return None
    from .encoding import KnobEncoder

    return KnobEncoder(**json.loads(layout)["encoder"])


def replay(path, build_trainer, *, encoder=None, noiseless=None) -> ReplayResult:
    """Rerun the run in ``path`` against its recorded measurements.

    build_trainer(experiment_toml, reservoir, recorder) -> a trainer with ``run()`` and a
    ``model.params()``. encoder: the run's encoder (default: from the run's ``physical_layer``
    metadata). The result compares the final parameters with the recorded final checkpoint
    (``np.array_equal`` and the raw float64 bytes) or reports the first divergence.
    """
    with RunReader(path) as reader:
        encoder = encoder if encoder is not None else encoder_from_metadata(reader.metadata)
        if encoder is None:
            raise ValueError(f"{path}: the run file records no encoder (metadata 'physical_layer'); pass encoder=")
        reservoir = ReplayReservoir(reader, encoder, noiseless=noiseless)
        recorded_ckpt = reader.last_checkpoint()
        steps_rec = reader.steps()
        step_rows = reader.effective_rows("steps")
        steps_rec = {k: v[step_rows] for k, v in steps_rec.items()}
        experiment_toml = reader.metadata["experiment_toml"]
    total = len(reservoir._rows)
    recorder = _CaptureRecorder()
    trainer = build_trainer(experiment_toml, reservoir, recorder)
    result = ReplayResult(ok=False, message="", measurements_recorded=total)
    divergence = None
    try:
        trainer.run()
    except RecordingExhausted as e:
        divergence = e  # fine if the recording simply ended (an aborted run): compare below
    except ReplayDivergence as e:
        result.divergence = e
        result.steps = len(recorder.steps)
        result.measurements_replayed = reservoir.position
        result.message = f"replay diverged: {e}"
        return result
    result.steps = len(recorder.steps)
    result.measurements_replayed = reservoir.position
    result.step_mismatches = _compare_steps(steps_rec, recorder.steps)
    if recorded_ckpt is None:
        result.message = "the run file holds no checkpoint to compare the final parameters with"
        result.divergence = divergence
        return result
    # the replayed checkpoint taken at the same point as the recorded final one
    mine = [c for c in recorder.checkpoints
            if int(c["step"]) == recorded_ckpt["step"] and int(c["measurements"]) == recorded_ckpt["measurements"]]
    if not mine:
        result.divergence = divergence
        result.message = (f"the replay never reached the recorded final checkpoint (step {recorded_ckpt['step']}, "
                          f"{recorded_ckpt['measurements']} measurements)"
                          + (f": {divergence}" if divergence else f"; it ended at step {len(recorder.steps)}"))
        return result
    a = np.asarray(mine[-1]["params"], dtype=np.float64)
    b = np.asarray(recorded_ckpt["params"], dtype=np.float64)
    result.params_equal = a.shape == b.shape and np.array_equal(a, b) and a.tobytes() == b.tobytes()
    if not result.params_equal:
        if a.shape != b.shape:
            result.first_difference = {"index": None, "recorded": b.shape, "replayed": a.shape}
        else:
            i = int(np.flatnonzero(a.view(np.uint64) != b.view(np.uint64))[0])
            result.first_difference = {"index": i, "recorded": float(b[i]), "replayed": float(a[i])}
        first_step = result.step_mismatches[0]["step"] if result.step_mismatches else None
        result.message = (f"final parameters differ from the recorded checkpoint at step {recorded_ckpt['step']}: "
                          f"parameter {result.first_difference['index']} recorded "
                          f"{result.first_difference['recorded']!r}, replayed {result.first_difference['replayed']!r}"
                          + (f"; first step whose loss or gradient differs: {first_step}" if first_step else ""))
        return result
    if reservoir.remaining and divergence is None:
        result.message = (f"final parameters equal bit for bit, but the replay used {reservoir.position} of "
                          f"{total} recorded measurements")
        return result
    result.ok = True
    result.message = (f"replay matches: {result.steps} steps, {reservoir.position} measurements, final parameters "
                      f"equal to the recorded checkpoint at step {recorded_ckpt['step']} bit for bit")
    return result


def _compare_steps(recorded: dict, replayed: list) -> list:
    out = []
    for i, rec in enumerate(replayed[:len(recorded["step"])]):
        for key in ("loss", "grad_norm"):
            if key in rec and _bits([rec[key]])[0] != _bits([recorded[key][i]])[0]:
                out.append({"step": int(rec["step"]), "column": key, "recorded": float(recorded[key][i]),
                            "replayed": float(rec[key])})
                break
    return out
