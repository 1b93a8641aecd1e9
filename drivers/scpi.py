"""IEEE 488.2 / SCPI common ground: identification, ``*OPC?`` synchronisation, the error queue.

``control`` (the one-line property declaration) lives in :mod:`instruments.controls` because
the roles use it too; it is re-exported here for the vendor modules.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from instruments.controls import control, parse_bool
from instruments.errors import InstrumentError, InstrumentReportedError, ReplyError
from instruments.roles import Instrument, Setting

from .socket_transport import SocketTransport, parse_socket_resource
from .transport import VisaTransport, parse_block, parse_block_header

__all__ = ["control", "parse_bool", "parse_error", "parse_overflow", "join_commands", "SCPIInstrument",
           "parse_block", "parse_block_header", "OVERFLOW"]

#: what SCPI instruments answer for "no number here" (marker off screen, measurement overflow)
OVERFLOW = 9.91e37


def parse_overflow(reply: str) -> float:
    """A number, with the SCPI overflow value 9.91e37 read as NaN."""
    try:
        value = float(reply)
    except (TypeError, ValueError):
        raise ReplyError(f"not a number reply: {reply!r}") from None
    return math.nan if abs(value) >= 9.9e37 else value


def parse_error(reply: str) -> tuple[int, str]:
    """``-113,"Undefined header"`` -> (-113, 'Undefined header'); split at the first comma only."""
    code_text, _, message = reply.partition(",")
    try:
        code = int(code_text.strip())
    except ValueError as exc:
        raise ReplyError(f"not an error-queue entry (<code>,\"<message>\"): {reply!r}") from exc
    return code, message.strip().strip("\"'").strip()


def join_commands(commands: Sequence[str]) -> str:
    """Join SCPI commands into one message; ``;:`` restarts each at the root of the tree."""
    parts = []
    for index, command in enumerate(commands):
        if index and not command.startswith(("*", ":")):
            command = ":" + command
        parts.append(command)
    return ";".join(parts)


class SCPIInstrument(Instrument):
    """Behaviour shared by SCPI instruments: settings batches end with ``*OPC?`` and an empty error queue."""

    read_termination = "\n"
    write_termination = "\n"
    transport_options = ("timeout_s", "visa_library")
    #: commands sent once after connecting (vendor modules fill this in)
    init_commands: tuple[str, ...] = ()
    #: after an interrupted query, read up to the identity's reply (instruments.roles ``_drop_late_reply``)
    resync_query = "*IDN?"
    #: an entry that never ends would be a fault, not a queue
    max_error_entries = 100

    @classmethod
    def open_transport(cls, resource: str, options: Mapping[str, object]):
        timeout_s = float(options.get("timeout_s", cls.default_timeout_s))
        if "visa_library" not in options and parse_socket_resource(resource) is not None:
            # a raw socket needs no VISA: spoken directly (the same bytes, far less overhead);
            # naming a visa_library in the station keeps it on pyvisa
            return SocketTransport(resource, timeout_s=timeout_s, read_termination=cls.read_termination,
                                   write_termination=cls.write_termination)
        return VisaTransport(resource, visa_library=str(options.get("visa_library", "@py")),
                             timeout_s=float(options.get("timeout_s", cls.default_timeout_s)),
                             read_termination=cls.read_termination, write_termination=cls.write_termination)

    def identify(self) -> str:
        return self.query("*IDN?").strip()

    def synchronise(self) -> None:
        reply = self.query("*OPC?").strip()
        if reply not in ("1", "+1"):
            raise InstrumentError(f"{self.role}: unexpected reply {reply!r} to *OPC?")

    def errors(self) -> list[tuple[int, str]]:
        entries = []
        for _ in range(self.max_error_entries):
            code, message = parse_error(self.query("SYST:ERR?"))
            if code == 0:
                return entries
            entries.append((code, message))
        raise InstrumentError(f"{self.role}: error queue still not empty after {self.max_error_entries} reads: "
                              f"{entries[-3:]}")

    def initialize(self) -> None:
        if self.init_commands:
            self._transmit_settings([Setting("init", None, command) for command in self.init_commands])

    def _transmit_settings(self, settings: Sequence[Setting]) -> None:
        """One joined write, one ``*OPC?``, then the error queue read empty."""
        if settings:
            self.write(join_commands([s.command for s in settings]))
        self.synchronise()
        self.check_errors("setting " + ", ".join(f"{s.name}={s.value!r}" for s in settings) if settings else "")

    def _transmit_settings_one_message(self, settings: Sequence[Setting]) -> None:
        """``<settings>;*OPC?;:SYST:ERR?`` as one query: one round trip instead of three.

        The reply is ``1;<first error-queue entry>``; a non-zero entry drains the rest of the
        queue and raises. (A command error, -1xx, makes an instrument discard the rest of the
        message, so it goes unanswered: a NoAnswerError, the entry left in the queue.)
        """
        self._begin_settings_one_message(settings)
        self._finish_settings()

    def _begin_settings_one_message(self, settings: Sequence[Setting]) -> None:
        """Send the query of :meth:`_transmit_settings_one_message`; its reply is read by the second half."""
        self._io(self.transport.send, join_commands([s.command for s in settings] + ["*OPC?", "SYST:ERR?"]))
        self._awaiting = settings

    def _finish_settings_one_message(self, settings: Sequence[Setting]) -> None:
        reply = self._io(self.transport.read)
        done, separator, entry = reply.partition(";")
        if not separator or done.strip() not in ("1", "+1"):
            raise InstrumentError(f"{self.role}: unexpected reply {reply!r} to settings;*OPC?;:SYST:ERR?")
        code, message = parse_error(entry)
        if code != 0:
            entries = [(code, message)] + self.errors()
            raise InstrumentReportedError(self.role, entries,
                                          "setting " + ", ".join(f"{s.name}={s.value!r}" for s in settings))
