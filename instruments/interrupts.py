"""Ctrl-C and SIGTERM: the one module that decides what an interrupt does.

- :func:`terminate_as_interrupt`: SIGTERM becomes :class:`Terminated`, a KeyboardInterrupt, so
  every ``with`` block on the way out leaves the rig safe and a run file is marked aborted (not
  failed), exactly as for Ctrl-C.
- :class:`StopAfterStep`: around a training loop, the first Ctrl-C or SIGTERM asks the loop to
  finish the step in flight, checkpoint and stop (``stop_requested``); a second one stops at
  once (KeyboardInterrupt; the station still leaves the rig safe on the way out).
- :func:`held_while_safe`: while the rig is being made safe (RF off, current ramped to zero),
  Ctrl-C and SIGTERM are held and delivered afterwards: an impatient second Ctrl-C during the
  ramp down must not leave current in the magnet.

Signal handlers can only be installed from the main thread; elsewhere these do nothing.
It lives in ``instruments`` because the station's safe state needs it and ``instruments`` may
import nothing of the application; the application uses it from here.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator, Protocol

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an interrupt (see :func:`terminate_as_interrupt`)."""


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum, frame):
    raise Terminated(f"terminated by signal {signum}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` inside the block."""
    if not _on_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Stoppable(Protocol):
    stop_requested: bool


class StopAfterStep:
    """First Ctrl-C / SIGTERM: ``target.stop_requested = True``; a second: KeyboardInterrupt (see the module)."""

    def __init__(self, target: Stoppable):
        self.target = target
        self.previous: dict = {}

    def _handle(self, signum, frame):
        if self.target.stop_requested:
            raise KeyboardInterrupt
        self.target.stop_requested = True
        log.warning("signal %d: finishing the step in flight, then checkpoint and stop (again to stop at once)",
                    signum)

    def __enter__(self) -> "StopAfterStep":
        if _on_main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in _SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def held_while_safe() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM inside the block, then deliver the first one received (see the module)."""
    if not _on_main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum, frame):
        received.append(signum)
        log.warning("making the rig safe (RF off, current ramping to zero): please wait")

    previous = {sig: signal.signal(sig, hold) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            handler = previous[received[0]]
            if callable(handler):
                handler(received[0], None)
            elif handler == signal.SIG_DFL and received[0] == signal.SIGINT:
                raise KeyboardInterrupt
