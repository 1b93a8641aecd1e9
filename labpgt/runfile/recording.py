"""The one recorder of a run: every record goes to every subscriber, once.

The trainer and the reservoir of a run both talk to one :class:`Recording` (a
:class:`labpgt.contracts.Recorder`). It adds what belongs to the whole run rather than to one
measurement -- the simulated flag on every row of a simulated run, and state that must be in
every checkpoint (the embedded simulator's world: clock, noise stream, coil) -- and hands each
record to its subscribers (the run file's writer thread; anything else that wants to see the
run). No wrapper copies attributes of another: what a reservoir can do is declared on the
reservoir (labpgt/contracts.py), and the recorder contract is the same for every subscriber.
"""
from __future__ import annotations

import json
import logging
from typing import Callable

import numpy as np

from labpgt.contracts import Recorder

log = logging.getLogger(__name__)


class Recording:
    """Fan-out :class:`~labpgt.contracts.Recorder` (see the module docstring).

    subscribers: the recorders to feed, in order; flags: bits OR-ed into every measurement row
    (e.g. FLAG_SIMULATED); checkpoint_extra: name -> callable, each called at every checkpoint
    and stored under that name in the checkpoint's ``extra`` JSON; rows_before: measurement
    rows already in the run file (a resumed run), so that ``n_measurements`` counts the file's rows.
    """

    def __init__(self, *subscribers: Recorder, flags: int = 0,
                 checkpoint_extra: dict[str, Callable[[], object]] | None = None, rows_before: int = 0):
        self.subscribers = subscribers
        self.flags = int(flags)
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self._rows = int(rows_before)

    def measurements_batch(self, batch: dict) -> None:
        if self.flags:
            batch = {**batch, "flags": np.asarray(batch.get("flags", 0)) | self.flags}
        self._rows += len(batch["features"])
        for subscriber in self.subscribers:
            subscriber.measurements_batch(batch)

    def step(self, record: dict) -> None:
        for subscriber in self.subscribers:
            subscriber.step(record)

    def evaluation(self, record: dict) -> None:
        for subscriber in self.subscribers:
            subscriber.evaluation(record)

    def checkpoint(self, state: dict) -> None:
        if self.checkpoint_extra:
            extra = json.loads(state["extra"])
            for name, value_of in self.checkpoint_extra.items():
                extra[name] = value_of()
            state = {**state, "extra": json.dumps(extra)}
        # (scripts/fault_campaign.py aims its interrupts at the checkpoint between these two lines)
        log.debug("checkpoint at step %d: writing", int(state["step"]))
        for subscriber in self.subscribers:
            subscriber.checkpoint(state)
        log.debug("checkpoint at step %d: written", int(state["step"]))

    def fault(self, record: dict) -> None:
        for subscriber in self.subscribers:
            subscriber.fault(record)

    @property
    def n_measurements(self) -> int:
        return self._rows
