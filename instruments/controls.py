"""`control`: one instrument setting declared once, next to its command pair.

A driver writes, for example::

    frequency_hz = control("SOUR:FREQ?", "SOUR:FREQ {:.2f}", limit="frequency_hz",
                           doc="CW frequency in Hz")

Reading the attribute sends the query and parses the reply; assigning checks the value
against the instrument's limits (before anything is sent) and hands the formatted command to
the instrument's ``_send_settings`` (which, for SCPI drivers, writes it, waits on ``*OPC?``
and drains the error queue). Batches such as ``configure_cw`` use :meth:`control.command`
to validate and format several settings before sending any of them.
"""
from __future__ import annotations

from typing import Any, Callable, Optional


def parse_bool(reply: str) -> bool:
    """Instruments answer booleans as 0/1 or ON/OFF (with or without a sign)."""
    text = reply.strip().strip('"').upper()
    if text in ("1", "+1", "ON"):
        return True
    if text in ("0", "+0", "OFF"):
        return False
    from .errors import ReplyError
    raise ReplyError(f"not a boolean reply: {reply!r}; expected 1, 0, ON or OFF")


class control:
    """A readable (and optionally writable) instrument setting.

    get_command: query sent by the getter (None: write-only).
    set_command: format string for the setter, applied to ``to_wire(value)`` (None: read-only).
    limit: name of the limit the value must lie in (``Instrument.limits``); None = unchecked.
    parse: reply text -> value in SI units.
    to_wire: SI value -> value placed into ``set_command`` (e.g. Hz -> MHz, bool -> int).
    guard: name of an instrument method called as ``guard(value)`` before a set is formatted
        (safety rules that need instrument state, e.g. "no output off while current flows").
    """

    def __init__(
        self,
        get_command: Optional[str],
        set_command: Optional[str] = None,
        *,
        limit: Optional[str] = None,
        parse: Callable[[str], Any] = float,
        to_wire: Optional[Callable[[Any], Any]] = None,
        guard: Optional[str] = None,
        doc: str = "",
    ):
        self.get_command = get_command
        self.set_command = set_command
        self.limit = limit
        self.parse = parse
        self.to_wire = to_wire
        self.guard = guard
        self.__doc__ = doc
        self.name = "?"

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, instrument, owner=None):
        if instrument is None:
            return self
        if self.get_command is None:
            raise AttributeError(f"{self.name} is write-only on {type(instrument).__name__}")
        return self.parse(instrument.query(self.get_command))

    def __set__(self, instrument, value) -> None:
        instrument._apply([(self.name, value)])

    def command(self, instrument, value, *, guarded: bool = True, check_limit: bool = True) -> str:
        """Validate ``value`` (limits, guard) and return the command that sets it. Sends nothing.

        ``guarded=False`` skips the guard for callers that enforce the same rule themselves
        (a ramp moves in ramp steps by construction); ``check_limit=False`` is for steps that
        only move a value back towards a limit's inside (never used to leave it).
        """
        if self.set_command is None:
            raise AttributeError(f"{self.name} is read-only on {type(instrument).__name__}")
        if self.limit is not None and check_limit:
            instrument.check_limit(self.limit, value, name=self.name)
        if self.guard is not None and guarded:
            getattr(instrument, self.guard)(value)
        wire = self.to_wire(value) if self.to_wire is not None else value
        if isinstance(wire, bool):
            wire = int(wire)
        return self.set_command.format(wire)

    def __repr__(self) -> str:
        return f"control({self.get_command!r}, {self.set_command!r}, limit={self.limit!r})"
