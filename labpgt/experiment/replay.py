"""Replay: rerun a recorded experiment against its recorded measurements.

:func:`replay` builds the recorded experiment's trainer on a ReplayReservoir, runs it, and
compares its final parameters with the recorded final checkpoint bit for bit.

Rows abandoned by a ``--resume`` (recorded after the checkpoint the run continued from) are
skipped, so a resumed run replays as the uninterrupted run it stands for.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from labpgt.contracts import NullRecorder
from labpgt.reservoirs.replay import (RecordingExhausted, ReplayDivergence, ReplayReservoir, SettingsEncoder,
                                      bits_of)
from labpgt.runfile import RunReader


class _CaptureRecorder(NullRecorder):
    """Keeps what the replayed trainer reports (steps, evaluations, checkpoints) in memory."""

    def __init__(self):
        super().__init__()
        self.steps, self.evaluations, self.checkpoints = [], [], []

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


def replay(path, build_trainer, *, encoder: SettingsEncoder, independent_nodes: bool = True) -> ReplayResult:
    """Rerun the run in ``path`` against its recorded measurements.

    build_trainer(reservoir, recorder) -> a trainer with ``run()`` and a ``model.params()``.
    encoder: the run's encoder; independent_nodes: as the recorded reservoir declared. The
    result compares the final parameters with the recorded final checkpoint
    (``np.array_equal`` and the raw float64 bytes) or reports the first divergence.
    """
    with RunReader(path) as reader:
        reservoir = ReplayReservoir(reader, encoder, independent_nodes=independent_nodes)
        recorded_ckpt = reader.last_checkpoint()
        steps_rec = reader.steps()
        step_rows = reader.effective_rows("steps")
        steps_rec = {k: v[step_rows] for k, v in steps_rec.items()}
    total = len(reservoir._rows)
    recorder = _CaptureRecorder()
    trainer = build_trainer(reservoir, recorder)
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
            if key in rec and bits_of([rec[key]])[0] != bits_of([recorded[key][i]])[0]:
                out.append({"step": int(rec["step"]), "column": key, "recorded": float(recorded[key][i]),
                            "replayed": float(rec[key])})
                break
    return out
