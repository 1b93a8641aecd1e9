"""The simulated rig's clock.

Virtual (the default): time stands still between instrument operations and only moves when an
instrument spends time (a synthesizer locking, a sweep, a coil settling) and somebody waits for
it (``*OPC?``, ``*WAI``, a polled lock bit). Runs are deterministic and as fast as the host.

Real time (``realtime=True``): ``now()`` follows the wall clock from the moment the clock was
made, and waiting for an operation really sleeps until it is done -- the instrument's own
latency, the one place in ``sim`` where ``time.sleep`` is used.

Standard library only.
"""
from __future__ import annotations

import threading
import time


_SPIN_S = 0.0005  # the last half millisecond of a real-time wait is yielded away, not slept


class VirtualClock:
    """Seconds since the rig was switched on."""

    def __init__(self, t0: float = 0.0, realtime: bool = False):
        self.realtime = bool(realtime)
        self._t = float(t0)
        self._t0 = float(t0)
        self._wall0 = time.monotonic()
        self._lock = threading.Lock()

    def now(self) -> float:
        if self.realtime:
            return self._t0 + (time.monotonic() - self._wall0)
        return self._t

    def set_time(self, t: float) -> None:
        """Put a virtual clock at ``t`` (restoring a saved simulated world)."""
        if self.realtime:
            raise RuntimeError("a real-time clock follows the wall clock and cannot be set")
        with self._lock:
            self._t = float(t)

    def _sleep_until(self, t: float) -> None:
        """Sleep until ``now() >= t``: the instrument's own latency, not synchronisation.

        A plain ``time.sleep`` wakes ~0.2 ms late on Linux (timer slack and the thread's
        rescheduling), so a simulated 5 ms settle would take 5.2 ms and the simulator would
        be slower than the instrument it models. Sleep to just short of ``t``, then yield
        (``sleep(0)`` releases the GIL) until it is reached."""
        coarse = t - self.now() - _SPIN_S
        if coarse > 0:
            time.sleep(coarse)
        while self.now() < t:
            time.sleep(0)

    def advance(self, dt: float, release=None) -> float:
        """Spend ``dt`` seconds; see :meth:`advance_to`."""
        return self.advance_to(self.now() + max(0.0, float(dt)), release)

    def advance_to(self, t: float, release=None) -> float:
        """Move time forward to ``t`` (never backwards) and return the new time.

        In real time this sleeps until the wall clock reaches ``t``. ``release`` is an optional
        lock held by the caller that is released while sleeping, so other instruments of the
        rig keep answering meanwhile.
        """
        if self.realtime:
            if float(t) > self.now():
                if release is not None:
                    release.release()
                    try:
                        self._sleep_until(float(t))
                    finally:
                        release.acquire()
                else:
                    self._sleep_until(float(t))
            return self.now()
        with self._lock:
            if t > self._t:
                self._t = float(t)
            return self._t
