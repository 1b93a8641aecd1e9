"""Fault injection for the simulated instruments: what goes wrong on a bench, on demand.

Every simulated instrument has a :class:`Faults` (``server.instruments[role].faults``). A fault
either fires with a probability per program message (drawn from the instrument's own seeded
generator, so a run is repeatable and the ring's noise is untouched) or once, as a trigger on
the n-th message from now that it applies to.

Kinds (``KINDS``):

``timeout``          the message is executed, the reply is never sent (the client times out)
``garbled``          bytes of the reply are corrupted (non-ASCII bytes; a block loses its ``#``)
``truncated``        a text reply stops half way, without its terminator (the client times out
                     with half a reply in its buffer: a device clear must drop it)
``truncated_block``  a binary block stops half way through its payload (idem)
``disconnect``       the connection is closed before the message is executed (on a serial
                     port, which cannot be unplugged here: the message is lost, no reply)
``error``            an entry appears in the error queue (``error_entry``, default
                     ``-310,"System error"``) before the message is executed
``overload``         (analyzers) the next sweep is overloaded, reported as the model reports it
``unlocked``         (signal generators) the synthesizer loses lock: the SynthHD's lock bit reads 0
                     for ``unlock_s`` (rig time) until the next frequency change; an SCPI generator
                     queues ``520,"Synthesizer unlocked"`` (the code is a choice)
``slow``             the reply comes ``slow_s`` real seconds late (within or beyond the client's timeout)

Legacy hooks kept: ``drop_next_reply`` (count), ``delay_s`` (every reply), ``queue_error``.

A spec (``labpgt sim serve --faults SPEC``, ``SimServer(faults=SPEC)``) is ``;``-separated items:
``seed=N``, ``slow_s=S``, ``unlock_s=S``, and ``[role:]kind=P`` (probability per message, 0..1),
``[role:]kind@N`` (once, on the N-th applicable message) or ``[role:]kind`` (once, the next one);
no role (or ``*``) means every instrument. The same as a TOML table: ``{seed = 1, slow_s = 0.3,
spectrum_analyzer = {timeout = 0.001, overload = "once"}, all = {error = 1e-4}}`` (values: a
probability, ``"once"`` or ``"@N"``).

Standard library only.
"""
from __future__ import annotations

import contextlib
import random
import time

from sim.error_messages import MESSAGES

KINDS = ("timeout", "garbled", "truncated", "truncated_block", "disconnect", "error", "overload", "unlocked",
         "slow")
#: kinds that act before the message is executed; the others act on its reply
BEFORE = ("disconnect", "error", "overload", "unlocked")
ROLES = ("signal_generator", "current_source", "spectrum_analyzer")
GLOBAL_KEYS = ("seed", "slow_s", "unlock_s")

#: returned by a device's ``handle`` when the connection must be closed (the server does it)
DISCONNECT = object()


class FaultSpecError(ValueError):
    """A fault spec that cannot be understood; the message says what is allowed."""


class Faults:
    """Failure hooks of one simulated instrument (see the module docstring)."""

    def __init__(self, seed=0):
        self.drop_next_reply = 0
        self.delay_s = 0.0
        self.errors: list = []
        self.rates: dict[str, float] = {}
        self.pending: list[list] = []  # [kind, messages still to let pass]
        self.slow_s = 0.2
        self.unlock_s = 1.0
        self.error_entry = (-310, "System error")
        self.messages = 0  # program messages seen
        self.injected: list[tuple[int, str, str]] = []  # (message number, kind, message text)
        self.reseed(seed)

    # ---------------------------------------------------------------- configuration
    def reseed(self, seed) -> None:
        self.rng = random.Random(str(seed))

    def queue_error(self, code: int, message: str | None = None) -> None:
        self.errors.append((int(code), message if message is not None else MESSAGES.get(code, "Error")))

    def set_rate(self, kind: str, probability: float) -> None:
        _check_kind(kind)
        p = float(probability)
        if not 0.0 <= p <= 1.0:
            raise FaultSpecError(f"fault {kind!r}: probability {probability!r} is outside [0, 1]")
        if p:
            self.rates[kind] = p
        else:
            self.rates.pop(kind, None)

    def trigger(self, kind: str, after: int = 0) -> None:
        """Fire ``kind`` once, on the applicable message after ``after`` others have passed."""
        _check_kind(kind)
        if int(after) < 0:
            raise FaultSpecError(f"fault {kind!r}: a trigger needs a message number >= 1")
        self.pending.append([kind, int(after)])

    def clear(self) -> None:
        """No more faults (rates, triggers, latency)."""
        self.rates.clear()
        self.pending.clear()
        self.drop_next_reply = 0
        self.delay_s = 0.0

    @property
    def armed(self) -> bool:
        return bool(self.rates or self.pending or self.drop_next_reply or self.delay_s or self.errors)

    # ---------------------------------------------------------------- applying (by the devices)
    def before(self, device, message) -> tuple[str, ...]:
        """Called with each program message before it is executed; returns the reply faults due
        (and acts on the pre-execution ones). ``DISCONNECT`` in the result: do not execute."""
        self.messages += 1
        due = []
        for entry in self.pending:
            if entry[1] > 0:
                entry[1] -= 1
            elif entry[0] not in due:
                due.append(entry[0])
        for kind, p in self.rates.items():
            if self.rng.random() < p and kind not in due:
                due.append(kind)
        if not due:
            return ()
        after = []
        for kind in due:
            if kind not in BEFORE:
                after.append(kind)
                continue
            if kind == "disconnect":
                self._fired(kind, message)
                return ("disconnect",)
            if kind == "error":
                if not hasattr(device, "push_error"):
                    continue  # no error queue on this instrument: not applicable
                device.push_error(*self.error_entry)
            elif kind == "overload":
                if not hasattr(device, "force_overload"):
                    continue
                device.force_overload()
            elif kind == "unlocked":
                if not hasattr(device, "force_unlock"):
                    continue
                device.force_unlock(self.unlock_s)
            self._fired(kind, message)
        return tuple(after)

    def after(self, out: bytes | None, due: tuple[str, ...], message) -> bytes | None:
        """The reply as it leaves the instrument (faults applied), or None for no reply."""
        if out is not None and self.drop_next_reply > 0:
            self.drop_next_reply -= 1
            return None
        for kind in due:
            if out is None:
                break  # reply faults need a reply; a trigger waits for the next one
            if kind == "truncated_block" and not out.startswith(b"#"):
                continue
            if kind == "truncated" and out.startswith(b"#"):
                continue
            self._fired(kind, message)
            if kind == "timeout":
                out = None
            elif kind == "garbled":
                out = self._garble(out)
            elif kind in ("truncated", "truncated_block"):
                out = out[: max(1, (len(out) - 1) // 2)]  # no terminator follows
            elif kind == "slow":
                time.sleep(self.slow_s)  # the fault itself: an instrument that is late
        if out is not None and self.delay_s > 0:
            time.sleep(self.delay_s)
        return out

    def _fired(self, kind: str, message) -> None:
        text = message.decode("latin-1") if isinstance(message, (bytes, bytearray)) else str(message)
        self.injected.append((self.messages, kind, text[:80]))
        for entry in self.pending:
            if entry[0] == kind and entry[1] == 0:
                self.pending.remove(entry)
                break

    def _garble(self, out: bytes) -> bytes:
        data = bytearray(out)
        if data[:1] == b"#":
            data[0] = 0xA3  # the block header is gone: no reader can take it for a block
            return bytes(data)
        body = max(1, len(data) - 1)
        for _ in range(1 + body // 8):
            data[self.rng.randrange(body)] = self.rng.randrange(0x80, 0x100)
        return bytes(data)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise FaultSpecError(f"unknown fault kind {kind!r}; allowed: {', '.join(KINDS)}")


def _number(key: str, value, lo: float, hi: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise FaultSpecError(f"fault spec: {key} = {value!r} is not a number") from None
    if not lo <= v <= hi:
        raise FaultSpecError(f"fault spec: {key} = {value!r} is outside [{lo:g}, {hi:g}]")
    return v


def parse_spec(spec) -> dict:
    """A spec string or table -> ``{"seed": .., "slow_s": .., "unlock_s": .., "roles": {role: [(kind, how)]}}``
    where ``how`` is a probability (float) or ``("at", n)``."""
    out = {"seed": None, "slow_s": None, "unlock_s": None, "roles": {r: [] for r in ROLES}}
    if spec is None:
        return out
    items: list[tuple[str, str, object]] = []  # (role or "", key, value)
    if isinstance(spec, str):
        for raw in spec.replace("\n", ";").split(";"):
            item = raw.strip()
            if not item:
                continue
            role = ""
            head = item.split("=", 1)[0].split("@", 1)[0]
            if ":" in head:
                role, item = item.split(":", 1)
                role = role.strip()
            if "=" in item:
                key, value = item.split("=", 1)
            elif "@" in item:
                key, at = item.split("@", 1)
                value = "@" + at
            else:
                key, value = item, "once"
            items.append((role, key.strip(), value.strip()))
    elif isinstance(spec, dict):
        for key, value in spec.items():
            if isinstance(value, dict):
                for kind, how in value.items():
                    items.append((str(key), str(kind), how))
            else:
                items.append(("", str(key), value))
    else:
        raise FaultSpecError(f"a fault spec is a string or a table, got {type(spec).__name__}")
    for role, key, value in items:
        if not role and key in GLOBAL_KEYS:
            if key == "seed":
                try:
                    out["seed"] = int(value)
                except (TypeError, ValueError):
                    raise FaultSpecError(f"fault spec: seed = {value!r} is not an integer") from None
            else:
                out[key] = _number(key, value, 0.0, 3600.0)
            continue
        if role in ("", "*", "all"):
            roles = ROLES
        elif role in ROLES:
            roles = (role,)
        else:
            raise FaultSpecError(f"fault spec: unknown role {role!r}; allowed: {', '.join(ROLES)}, * or all")
        _check_kind(key)
        if isinstance(value, str) and (value == "once" or value.startswith("@")):
            n = 1
            if value.startswith("@"):
                try:
                    n = int(value[1:])
                except ValueError:
                    raise FaultSpecError(f"fault spec: {key}{value} is not @<message number>") from None
                if n < 1:
                    raise FaultSpecError(f"fault spec: {key}{value}: message numbers start at 1")
            how = ("at", n)
        else:
            how = _number(f"{role + ':' if role else ''}{key}", value, 0.0, 1.0)
        for r in roles:
            out["roles"][r].append((key, how))
    return out


def apply_spec(spec, instruments: dict, default_seed: int = 0) -> None:
    """Configure ``instruments`` (role -> simulated instrument) from a spec string or table."""
    parsed = parse_spec(spec)
    seed = default_seed if parsed["seed"] is None else parsed["seed"]
    for role, inst in instruments.items():
        faults = inst.faults
        faults.reseed(f"{seed}:{role}")
        if parsed["slow_s"] is not None:
            faults.slow_s = parsed["slow_s"]
        if parsed["unlock_s"] is not None:
            faults.unlock_s = parsed["unlock_s"]
        for kind, how in parsed["roles"].get(role, []):
            if isinstance(how, tuple):
                faults.trigger(kind, how[1] - 1)
            else:
                faults.set_rate(kind, how)


def handle_with_faults(device, message, execute, disconnected):
    """Run ``execute(message)`` under the device's rig lock (if any), with its faults applied.

    The one path every simulated instrument takes for a message: the armed faults decide
    first (a ``disconnect`` returns ``disconnected`` and the message is never executed), then
    the message runs, then the faults may spoil the reply.
    """
    faults = device.faults
    lock = device.lock if device.lock is not None else contextlib.nullcontext()
    armed = faults.armed
    due = ()
    if armed:
        with lock:
            due = faults.before(device, message)
        if "disconnect" in due:
            return disconnected
    with lock:
        out = execute(message)
    if armed:
        out = faults.after(out, due, message)
    return out
