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
from labpgt.runfile.reader import WINDOW_ROWS


class _CaptureRecorder(NullRecorder):
    """Compares each step the replayed trainer reports with the recorded one as it comes, and
    keeps only the checkpoint the comparison needs: a replay's memory does not grow with the run."""

    def __init__(self, recorded_steps: dict, final_checkpoint: dict | None):
        super().__init__()
        self.recorded_steps = recorded_steps  # loss and grad_norm of the effective step rows
        self.final = (final_checkpoint["step"], final_checkpoint["measurements"]) if final_checkpoint else None
        self.n_steps = 0
        self.step_mismatches: list[dict] = []
        self.checkpoint_at_final: dict | None = None  # the replayed checkpoint taken where the recorded final one was

    def step(self, record):
        i = self.n_steps
        self.n_steps += 1
        if i < len(self.recorded_steps["loss"]):
            mismatch = _step_mismatch(self.recorded_steps, i, record)
            if mismatch is not None:
                self.step_mismatches.append(mismatch)

    def checkpoint(self, state):
        if self.final is not None and (int(state["step"]), int(state["measurements"])) == self.final:
            self.checkpoint_at_final = {**state, "params": np.array(state["params"], dtype=np.float64, copy=True)}


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


def replay(path, build_trainer, *, encoder: SettingsEncoder, independent_nodes: bool = True,
           window_rows: int = WINDOW_ROWS) -> ReplayResult:
    """Rerun the run in ``path`` against its recorded measurements.

    build_trainer(reservoir, recorder) -> a trainer with ``run()`` and a ``model.params()``.
    encoder: the run's encoder; independent_nodes: as the recorded reservoir declared;
    window_rows: recorded rows read at a time (memory, not results, depends on it). The
    result compares the final parameters with the recorded final checkpoint
    (``np.array_equal`` and the raw float64 bytes) or reports the first divergence.
    """
    with RunReader(path) as reader:  # open for the whole replay: the reservoir reads it a window at a time
        reservoir = ReplayReservoir(reader, encoder, independent_nodes=independent_nodes, window_rows=window_rows)
        recorded_ckpt = reader.last_checkpoint()
        steps = reader.steps()
        step_rows = reader.effective_rows("steps")
        recorder = _CaptureRecorder({k: steps[k][step_rows] for k in ("step", "loss", "grad_norm")}, recorded_ckpt)
        del steps  # the other step columns are not compared
        total = reservoir.recorded
        trainer = build_trainer(reservoir, recorder)
        result = ReplayResult(ok=False, message="", measurements_recorded=total)
        divergence = None
        try:
            trainer.run()
        except RecordingExhausted as e:
            divergence = e  # fine if the recording simply ended (an aborted run): compare below
        except ReplayDivergence as e:
            result.divergence = e
            result.steps = recorder.n_steps
            result.measurements_replayed = reservoir.position
            result.message = f"replay diverged: {e}"
            return result
    result.steps = recorder.n_steps
    result.measurements_replayed = reservoir.position
    result.step_mismatches = recorder.step_mismatches
    if recorded_ckpt is None:
        result.message = "the run file holds no checkpoint to compare the final parameters with"
        result.divergence = divergence
        return result
    # the replayed checkpoint taken at the same point as the recorded final one
    mine = recorder.checkpoint_at_final
    if mine is None:
        result.divergence = divergence
        result.message = (f"the replay never reached the recorded final checkpoint (step {recorded_ckpt['step']}, "
                          f"{recorded_ckpt['measurements']} measurements)"
                          + (f": {divergence}" if divergence else f"; it ended at step {recorder.n_steps}"))
        return result
    a = np.asarray(mine["params"], dtype=np.float64)
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


def _step_mismatch(recorded: dict, i: int, replayed: dict) -> dict | None:
    """The first of loss, grad_norm that replayed step ``i`` reports differently from the record."""
    for key in ("loss", "grad_norm"):
        if key in replayed and bits_of([replayed[key]])[0] != bits_of([recorded[key][i]])[0]:
            return {"step": int(replayed["step"]), "column": key, "recorded": float(recorded[key][i]),
                    "replayed": float(replayed[key])}
    return None
