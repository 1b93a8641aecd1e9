"""Exceptions raised by roles, stations and transports.

Every message names enough to act on without a debugger: the role, the quantity and value,
the allowed range, and the station file the limit came from.
"""
from __future__ import annotations


class InstrumentError(Exception):
    """Anything that went wrong talking to, or deciding about, an instrument."""

    #: the station role concerned, where the error knows it (None: not known)
    role: str | None = None


class LinkError(InstrumentError):
    """The link to an instrument misbehaved (a garbled, truncated or unframed reply, a dropped
    connection): worth a device clear or a reconnect and another try."""


class ReplyError(LinkError, ValueError):
    """A reply that cannot be what was asked for (a number, a boolean, an error-queue entry)."""


class LimitError(InstrumentError, ValueError):
    """A requested value lies outside the allowed range. Raised before anything is sent."""

    def __init__(self, role: str, quantity: str, value, allowed: str, source: str):
        self.role = role
        self.quantity = quantity
        self.value = value
        self.allowed = allowed
        self.source = source
        super().__init__(
            f"{role}: {quantity} = {value!r} is outside the allowed range {allowed} "
            f"(limit from {source}); nothing was sent"
        )


class TransportTimeout(InstrumentError, TimeoutError):
    """A transport waited ``seconds`` for a reply from ``resource`` and got none.

    Transports do not know which role they serve; the instrument translates this into a
    :class:`NoAnswerError` that names the role.
    """

    def __init__(self, resource: str, seconds: float, detail: str = ""):
        self.resource = resource
        self.seconds = seconds
        self.detail = detail
        super().__init__(f"no answer at {resource} after {seconds:g} s" + (f" ({detail})" if detail else ""))


class NoAnswerError(InstrumentError, TimeoutError):
    """An instrument did not answer in time."""

    def __init__(self, role: str, resource: str, seconds: float, detail: str = ""):
        self.role = role
        self.resource = resource
        self.seconds = seconds
        # the detail says why when it was not a plain silence (e.g. the connection was refused)
        super().__init__(f"no answer from {role} at {resource} after {seconds:g} s" + (f" ({detail})" if detail else ""))


class WrongInstrumentError(InstrumentError):
    """The instrument at a role's address identifies as another model than its driver expects."""


class InstrumentReportedError(InstrumentError):
    """The instrument's error queue held entries: ``entries`` is a list of (code, message)."""

    def __init__(self, role: str, entries: list[tuple[int, str]], context: str = ""):
        self.role = role
        self.entries = list(entries)
        listed = "; ".join(f"{code} {message!r}" for code, message in self.entries)
        where = f" after {context}" if context else ""
        super().__init__(f"{role} reported errors{where}: {listed}")


class StationFileError(ValueError):
    """A station file is malformed. The message names the file, the key and what is allowed."""

    def __init__(self, source: str, key: str, problem: str, allowed: str = ""):
        self.source = source
        self.key = key
        self.problem = problem
        self.allowed = allowed
        text = f"{source}: {key}: {problem}"
        if allowed:
            text += f"; allowed: {allowed}"
        super().__init__(text)
