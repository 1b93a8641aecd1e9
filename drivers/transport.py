"""Transports: how bytes reach an instrument.

All transports share one small API, in text with the terminators added/removed here:

    write(command)            send one message
    query(command) -> str     send, read one reply line (terminator stripped)
    query_block(command)      send, read an IEEE 488.2 definite-length block -> payload bytes
    send(command), read()     a query in two halves: the reply is read later (pipelining
                              across instruments: other instruments are talked to meanwhile)
    clear()                   device clear / drop whatever is pending (after a timeout)
    reconnect(), link_down    open the resource again (after a dropped connection)
    timeout_s                 read timeout in seconds (settable)
    close(), resource

``VisaTransport`` goes through pyvisa (pyvisa-py by default), ``SerialTransport`` through
pyserial (the Windfreak is not a VISA instrument), ``ScriptedTransport`` replays an exact
byte-level conversation for tests. Timeouts raise :class:`TransportTimeout`; the instrument,
which knows its role, turns that into ``NoAnswerError``.
"""
from __future__ import annotations

import re
import time
from typing import Optional, Sequence, Union

from instruments.errors import LinkError, TransportTimeout


class TransportError(LinkError):
    """The link itself failed (connection lost, malformed framing)."""


def decode_reply(data: bytes, resource: str, command: str) -> str:
    """An ASCII reply line; anything else is a garbled reply (TransportError), never a UnicodeDecodeError."""
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise TransportError(f"{resource}: garbled reply to {command!r} (not ASCII): {data[:40]!r}") from exc


def parse_block_header(head: bytes) -> tuple[int, int]:
    """``#<n><len>`` -> (header length, payload length). Only the definite-length form is accepted."""
    if len(head) < 2 or head[:1] != b"#" or not head[1:2].isdigit() or head[1:2] == b"0":
        raise TransportError(f"not an IEEE 488.2 definite-length block header: {head[:12]!r}")
    digits = int(head[1:2])
    if len(head) < 2 + digits or not head[2:2 + digits].isdigit():
        raise TransportError(f"truncated IEEE 488.2 block header: {head[:12]!r}")
    return 2 + digits, int(head[2:2 + digits])


def parse_block(message: bytes, termination: bytes = b"\n") -> bytes:
    """A whole block message ``#<n><len><data><term>`` -> ``<data>`` (checked byte-exactly)."""
    header_length, length = parse_block_header(message[:11])
    end = header_length + length
    payload = message[header_length:end]
    if len(payload) != length:
        raise TransportError(f"block announced {length} bytes, got {len(payload)}")
    if message[end:] != termination:
        raise TransportError(f"block not followed by exactly the terminator {termination!r}: {message[end:][:16]!r}")
    return payload


# ====================================================================== VISA
_resource_managers: dict = {}


def _resource_manager(visa_library: str):
    import pyvisa

    manager = _resource_managers.get(visa_library)
    if manager is not None:
        try:
            manager.session  # pyvisa shares one manager per library: anybody may have closed it
        except pyvisa.errors.InvalidSession:
            manager = None
    if manager is None:
        manager = _resource_managers[visa_library] = pyvisa.ResourceManager(visa_library)
    return manager


class ReopenableLink:
    """What a network transport shares: a link that, once dropped, only reopening brings back.
    Subclasses set ``_link_down`` and implement ``_open`` and ``close``."""

    _link_down = False

    @property
    def link_down(self) -> bool:
        """True once the connection was refused or dropped (only :meth:`reconnect` helps then)."""
        return self._link_down

    def reconnect(self) -> None:
        """Close the connection and open the resource again (after a dropped connection)."""
        self.close()
        self._open()

    def _open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class VisaTransport(ReopenableLink):
    """A message-based VISA resource (TCPIP SOCKET/INSTR, GPIB, USB, ASRL) through pyvisa."""

    def __init__(self, resource: str, visa_library: str = "@py", timeout_s: float = 5.0,
                 read_termination: str = "\n", write_termination: str = "\n"):
        import pyvisa
        from pyvisa import constants

        self.resource = resource
        self._constants = constants
        self._errors = pyvisa.errors
        self._visa_library = visa_library
        self._read_termination = read_termination
        self._write_termination = write_termination
        self._term_bytes = read_termination.encode("ascii")
        self._timeout_s = float(timeout_s)
        self._is_socket = "::SOCKET" in resource.upper()
        self._open()

    def _open(self) -> None:
        constants = self._constants
        resource = self.resource
        started = time.monotonic()
        try:
            self._session = _resource_manager(self._visa_library).open_resource(
                resource, read_termination=self._read_termination, write_termination=self._write_termination,
                timeout=int(round(self._timeout_s * 1000)), open_timeout=int(round(self._timeout_s * 1000)))
        except Exception as exc:  # refused, unreachable, no such board: nobody answers there
            # the time it really took: a refusal comes long before the timeout
            raise TransportTimeout(resource, round(time.monotonic() - started, 2), f"could not open: {exc}") from exc
        self._link_down = False
        if self._is_socket:
            # a raw socket has no END indicator: the read terminator is the only message end
            self._session.set_visa_attribute(constants.VI_ATTR_TERMCHAR_EN, constants.VI_TRUE)
            self._disable_nagle()
        self._termchar_enabled = bool(self._session.get_visa_attribute(constants.VI_ATTR_TERMCHAR_EN))

    def _disable_nagle(self) -> None:
        """A write followed at once by another (settings then ``*OPC?``, ramp steps) would wait
        ~40 ms each for Nagle's algorithm to meet the peer's delayed ACK."""
        constants = self._constants
        try:
            self._session.set_visa_attribute(constants.VI_ATTR_TCPIP_NODELAY, constants.VI_TRUE)
            return
        except Exception:
            pass
        try:  # pyvisa-py 0.8 does not expose the attribute on sockets: set it on its socket
            import socket

            backend = self._session.visalib.sessions[self._session.session]
            backend.interface.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except Exception:
            pass  # slower, still correct

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    @timeout_s.setter
    def timeout_s(self, seconds: float) -> None:
        self._timeout_s = float(seconds)
        self._session.timeout = int(round(self._timeout_s * 1000))

    def _translate(self, exc: Exception, doing: str):
        if isinstance(exc, self._errors.VisaIOError) and exc.error_code == self._constants.StatusCode.error_timeout:
            return TransportTimeout(self.resource, self._timeout_s, doing)
        if isinstance(exc, ConnectionError) or (
                isinstance(exc, self._errors.VisaIOError)
                and exc.error_code == self._constants.StatusCode.error_connection_lost):
            # refused or dropped: nobody is there to answer, and nothing is left to clear
            self._link_down = True
            return TransportTimeout(self.resource, self._timeout_s, f"{doing}: {exc}")
        return TransportError(f"{self.resource}: {doing} failed: {exc}")

    def write(self, command: str) -> None:
        try:
            self._session.write(command)
        except Exception as exc:
            raise self._translate(exc, f"write {command!r}") from exc

    def query(self, command: str) -> str:
        try:
            return self._session.query(command)
        except Exception as exc:
            raise self._translate(exc, f"query {command!r}") from exc

    send = write  # the first half of a query: its reply is taken later by read()

    def read(self) -> str:
        """One reply line (the second half of a query sent with send())."""
        try:
            return self._session.read()
        except Exception as exc:
            raise self._translate(exc, "read") from exc

    def query_block(self, command: str) -> bytes:
        """Read exactly header + payload + terminator with the termination character off.

        pyvisa's generic binary reader is about five times slower on a raw socket.
        """
        constants = self._constants
        session = self._session
        try:
            session.write(command)
            if self._termchar_enabled:
                session.set_visa_attribute(constants.VI_ATTR_TERMCHAR_EN, constants.VI_FALSE)
            try:
                head = session.read_bytes(2)
                header_length, length = parse_block_header(head + session.read_bytes(int(head[1:2] or b"0")))
                rest = session.read_bytes(length + len(self._term_bytes))
            finally:
                if self._termchar_enabled:
                    session.set_visa_attribute(constants.VI_ATTR_TERMCHAR_EN, constants.VI_TRUE)
        except (TransportError, ValueError) as exc:
            raise TransportError(f"{self.resource}: bad block reply to {command!r}: {exc}") from exc
        except Exception as exc:
            raise self._translate(exc, f"block query {command!r}") from exc
        if rest[length:] != self._term_bytes:
            raise TransportError(f"{self.resource}: block reply to {command!r} not followed by the terminator "
                                 f"{self._term_bytes!r}: {rest[length:]!r}")
        return rest[:length]

    def clear(self) -> None:
        """Device clear; on a raw socket (no clear message exists) drop whatever is still arriving."""
        if self._link_down:
            raise TransportError(f"{self.resource}: the connection is down; nothing to clear")
        if not self._is_socket:
            try:
                self._session.clear()
            except Exception as exc:
                raise self._translate(exc, "device clear") from exc
            return
        saved_ms = self._session.timeout
        self._session.timeout = 50
        try:
            for _ in range(1000):  # bounded: a live instrument stops talking eventually
                self._session.read_raw()
        except Exception:
            pass  # the timeout that says "nothing more is coming" (or a dead link)
        finally:
            self._session.timeout = saved_ms

    def close(self) -> None:
        try:
            self._session.close()
        except Exception:
            pass


# ====================================================================== serial
_ASRL = re.compile(r"^ASRL(?P<port>.+?)::INSTR$", re.IGNORECASE)


def serial_port_from_resource(resource: str) -> str:
    """``ASRL/dev/ttyACM0::INSTR`` -> ``/dev/ttyACM0``; ``ASRL3::INSTR`` -> ``COM3``; a path stays a path."""
    match = _ASRL.match(resource)
    if not match:
        return resource
    port = match.group("port")
    return f"COM{port}" if port.isdigit() else port


class SerialTransport:
    """A line-oriented serial port through pyserial (Windfreak: no write terminator, ``\\n`` replies)."""

    def __init__(self, resource: str, timeout_s: float = 2.0, baud_rate: int = 115200,
                 read_termination: str = "\n", write_termination: str = ""):
        import serial

        self.resource = resource
        self._serial_module = serial
        self._read_term = read_termination.encode("ascii")
        self._write_term = write_termination.encode("ascii")
        self._timeout_s = float(timeout_s)
        self._baud_rate = int(baud_rate)
        self._open()

    def _open(self) -> None:
        started = time.monotonic()
        try:
            self._port = self._serial_module.serial_for_url(
                serial_port_from_resource(self.resource), baudrate=self._baud_rate,
                timeout=self._timeout_s, write_timeout=self._timeout_s)
        except Exception as exc:
            raise TransportTimeout(self.resource, round(time.monotonic() - started, 2),
                                   f"could not open: {exc}") from exc

    link_down = False  # a serial port has no connection to lose; a vanished port fails to reopen

    def reconnect(self) -> None:
        """Close the port and open it again."""
        self.close()
        self._open()

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    @timeout_s.setter
    def timeout_s(self, seconds: float) -> None:
        self._timeout_s = float(seconds)
        self._port.timeout = self._timeout_s

    def write(self, command: str) -> None:
        try:
            self._port.write(command.encode("ascii") + self._write_term)
        except self._serial_module.SerialTimeoutException as exc:
            raise TransportTimeout(self.resource, self._timeout_s, f"write {command!r}") from exc
        except Exception as exc:
            raise TransportError(f"{self.resource}: write {command!r} failed: {exc}") from exc

    def query(self, command: str) -> str:
        self.write(command)
        return self.read(command)

    send = write  # the first half of a query: its reply is taken later by read()

    def read(self, command: str = "") -> str:
        """One reply line (to ``command``, for the messages)."""
        try:
            line = self._port.read_until(self._read_term)
        except Exception as exc:
            raise TransportError(f"{self.resource}: read after {command!r} failed: {exc}") from exc
        if not line.endswith(self._read_term):
            raise TransportTimeout(self.resource, self._timeout_s, f"reply to {command!r}, got {line!r}")
        return decode_reply(line[: -len(self._read_term)], self.resource, command).rstrip("\r")

    def query_block(self, command: str) -> bytes:
        raise TransportError(f"{self.resource}: binary blocks are not used over this serial link")

    def clear(self) -> None:
        self._port.reset_input_buffer()

    def close(self) -> None:
        try:
            self._port.close()
        except Exception:
            pass


# ====================================================================== scripted (tests)
class ScriptMismatch(AssertionError):
    """The driver sent something other than the script expected (or left the script unfinished)."""


#: a scripted reply that makes the exchange time out
TIMEOUT = object()

Reply = Union[bytes, None, object]


class ScriptedTransport:
    """Replays an exact conversation: a list of (bytes sent, bytes replied), terminators included.

    A write must match a pair whose reply is ``None``; a query or block query must match a pair
    whose reply are the exact bytes the instrument would send (reply line with its terminator,
    or the whole block message). ``TIMEOUT`` as reply raises :class:`TransportTimeout`.
    Any difference fails loudly; pairs left over fail at ``close()`` (or ``assert_done()``).
    ``sent`` keeps every message sent, ``clears`` counts device clears.

    A query may be split: ``send`` takes a pair that has a reply and keeps the reply until
    ``read`` (a ``TIMEOUT`` reply raises at the read); a clear drops replies not read. A
    ``journal`` list shared by several transports records the order across instruments:
    ``(resource, "send" | "read" | "write" | "query", bytes)``.
    """

    def __init__(self, pairs: Sequence[tuple[bytes, Reply]] = (), *, resource: str = "SCRIPTED::INSTR",
                 read_termination: str = "\n", write_termination: str = "\n", timeout_s: float = 5.0,
                 journal: Optional[list] = None):
        self.pairs = list(pairs)
        self.resource = resource
        self.read_termination = read_termination.encode("ascii")
        self.write_termination = write_termination.encode("ascii")
        self.timeout_s = timeout_s
        self.sent: list[bytes] = []
        self.timeouts_seen: list[float] = []
        self.clears = 0
        self.closed = False
        self._position = 0
        self._unread: list = []
        self.journal = journal

    @classmethod
    def for_driver(cls, driver, pairs: Sequence[tuple[bytes, Reply]] = (), **kwargs) -> "ScriptedTransport":
        """A script with the terminations the driver class declares."""
        kwargs.setdefault("read_termination", driver.read_termination)
        kwargs.setdefault("write_termination", driver.write_termination)
        return cls(pairs, **kwargs)

    def extend(self, pairs: Sequence[tuple[bytes, Reply]]) -> None:
        self.pairs.extend(pairs)

    def _next(self, message: bytes, wants_reply: bool, how: str = "query", defer_timeout: bool = False) -> Reply:
        self.sent.append(message)
        if self.journal is not None:
            self.journal.append((self.resource, how, message))
        if wants_reply and how != "send" and self._unread:
            raise ScriptMismatch(f"{self.resource}: {message!r} queried while the reply to an earlier message "
                                 f"is unread (it would be taken as this one's)")
        self.timeouts_seen.append(self.timeout_s)
        if self.closed:
            raise ScriptMismatch(f"{self.resource}: {message!r} sent after close()")
        if self._position >= len(self.pairs):
            raise ScriptMismatch(f"{self.resource}: unexpected {message!r}: the script is finished "
                                 f"({len(self.pairs)} exchanges)")
        expected, reply = self.pairs[self._position]
        if message != expected:
            raise ScriptMismatch(f"{self.resource}: exchange {self._position}: sent {message!r}, "
                                 f"the script expects {expected!r}")
        if wants_reply and reply is None:
            raise ScriptMismatch(f"{self.resource}: exchange {self._position}: {message!r} waits for a reply "
                                 f"but the script has none (a write was expected)")
        if not wants_reply and reply is not None and reply is not TIMEOUT:
            raise ScriptMismatch(f"{self.resource}: exchange {self._position}: {message!r} was written "
                                 f"without reading the scripted reply {reply!r}")
        self._position += 1
        if reply is TIMEOUT and not defer_timeout:
            raise TransportTimeout(self.resource, self.timeout_s, f"scripted timeout on {message!r}")
        return reply

    def write(self, command: str) -> None:
        self._next(command.encode("ascii") + self.write_termination, wants_reply=False, how="write")

    def send(self, command: str) -> None:
        self._unread.append(self._next(command.encode("ascii") + self.write_termination, wants_reply=True,
                                       how="send", defer_timeout=True))

    def read(self) -> str:
        if self.journal is not None:
            self.journal.append((self.resource, "read", b""))
        if not self._unread:
            raise ScriptMismatch(f"{self.resource}: read with no reply on its way (nothing was sent)")
        reply = self._unread.pop(0)
        if reply is TIMEOUT:
            raise TransportTimeout(self.resource, self.timeout_s, "scripted timeout on a read")
        return self._line(reply)

    def query(self, command: str) -> str:
        return self._line(self._next(command.encode("ascii") + self.write_termination, wants_reply=True))

    def _line(self, reply) -> str:
        assert isinstance(reply, bytes)
        if not reply.endswith(self.read_termination) or not self.read_termination:
            raise ScriptMismatch(f"{self.resource}: scripted reply {reply!r} lacks the terminator "
                                 f"{self.read_termination!r}")
        return reply[: -len(self.read_termination)].decode("ascii")

    def query_block(self, command: str) -> bytes:
        reply = self._next(command.encode("ascii") + self.write_termination, wants_reply=True)
        assert isinstance(reply, bytes)
        return parse_block(reply, self.read_termination)

    def clear(self) -> None:
        self.clears += 1
        self._unread.clear()

    link_down = False
    reconnects = 0

    def reconnect(self) -> None:
        self.reconnects += 1

    @property
    def remaining(self) -> list:
        return self.pairs[self._position:]

    def assert_done(self) -> None:
        if self._position != len(self.pairs):
            raise ScriptMismatch(f"{self.resource}: {len(self.pairs) - self._position} scripted exchanges "
                                 f"never happened, next: {self.pairs[self._position][0]!r}")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.assert_done()

    def __enter__(self) -> "ScriptedTransport":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Leaving the ``with`` block checks the script both ways: an exchange that never happened
        fails here (unless the block already failed: that error is the news)."""
        if exc_type is None:
            self.assert_done()


def block(payload: bytes, termination: bytes = b"\n") -> bytes:
    """Frame ``payload`` as an IEEE 488.2 definite-length block message (for tests and fakes)."""
    length = str(len(payload)).encode("ascii")
    return b"#" + str(len(length)).encode("ascii") + length + payload + termination
