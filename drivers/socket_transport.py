"""A raw-socket transport: ``TCPIP::<host>::<port>::SOCKET`` spoken directly over TCP.

A LAN instrument's raw SCPI port (5025 on Keysight and R&S, 5024/5025 elsewhere) carries plain
program messages ended by ``\\n`` and replies ended by ``\\n``; binary blocks are IEEE 488.2
definite-length blocks followed by the terminator. There is no END indicator and no device
clear: the terminator is the only message end. That needs nothing of VISA, and pyvisa's generic
path (attribute look-ups, warning contexts and a ``select`` before every send and receive) was
the largest client-side cost of one measurement (docs/benchmarks.md, "The loop at the floor").

:class:`SocketTransport` has exactly the API and the bytes of
:class:`drivers.transport.VisaTransport` on such a resource (tests/test_transports.py runs the
same byte-level tests against both). Every other resource kind (VXI-11 ``INSTR``, HiSLIP, USB,
GPIB, serial) stays with pyvisa.
"""
from __future__ import annotations

import logging
import re
import socket
import struct
import sys
import time

from instruments.errors import TransportTimeout

from .transport import ReopenableLink, TransportError, decode_reply, parse_block_header

logger = logging.getLogger(__name__)

_SOCKET_RESOURCE = re.compile(r"^TCPIP(?P<board>\d*)::(?P<host>[^:]+|\[[0-9A-Fa-f:.]+\])::(?P<port>\d+)::SOCKET$",
                              re.IGNORECASE)

#: bytes asked from the socket per receive: a 20,001-point float64 trace in a few calls
_RECEIVE_SIZE = 65536

#: Linux: timeouts kept by the kernel (SO_RCVTIMEO/SO_SNDTIMEO on a blocking socket), so a
#: receive or a send is one system call; Python's own socket timeouts poll() before each
#: (measured: ~5 % of the loop's CPU). Elsewhere Python's timeouts.
_KERNEL_TIMEOUTS = sys.platform.startswith("linux")


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    micro = max(int((seconds - whole) * 1e6), 0 if whole else 1)  # 0 s would mean "wait forever"
    return struct.pack("ll", whole, micro)


def parse_socket_resource(resource: str) -> tuple[str, int] | None:
    """``TCPIP[board]::host::port::SOCKET`` -> (host, port); None for any other resource string."""
    match = _SOCKET_RESOURCE.match(resource.strip())
    if match is None:
        return None
    host = match.group("host")
    return host.strip("[]"), int(match.group("port"))


class SocketTransport(ReopenableLink):
    """A message-based raw TCP socket (see the module docstring); the VisaTransport API."""

    def __init__(self, resource: str, timeout_s: float = 5.0, read_termination: str = "\n",
                 write_termination: str = "\n"):
        address = parse_socket_resource(resource)
        if address is None:
            raise ValueError(f"not a raw-socket resource (TCPIP::<host>::<port>::SOCKET): {resource!r}")
        if not read_termination:
            raise ValueError("a raw socket needs a read termination: it is the only end of a reply")
        self.resource = resource
        self._address = address
        self._read_term = read_termination.encode("ascii")
        self._write_term = write_termination.encode("ascii")
        self._timeout_s = float(timeout_s)
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._link_down = False
        self._open()

    # ------------------------------------------------------------------ connection
    def _open(self) -> None:
        started = time.monotonic()
        try:
            sock = socket.create_connection(self._address, timeout=self._timeout_s)
        except OSError as exc:  # refused, unreachable, no route: nobody answers there
            self._link_down = True  # no connection: the next exchange must reconnect
            # the time it really took: a refusal comes at once, not after the timeout
            raise TransportTimeout(self.resource, round(time.monotonic() - started, 2),
                                   f"could not open: {exc}") from exc
        # a write followed at once by another would otherwise wait for the peer's delayed ACK
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._set_timeouts(self._timeout_s)
        self._buffer.clear()
        self._link_down = False

    def _set_timeouts(self, seconds: float, *, receive_only: bool = False) -> None:
        sock = self._sock
        if not _KERNEL_TIMEOUTS:
            sock.settimeout(seconds)
            return
        sock.settimeout(None)  # blocking: the kernel ends a wait with EAGAIN (BlockingIOError)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
        if not receive_only:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(seconds))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._buffer.clear()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    @timeout_s.setter
    def timeout_s(self, seconds: float) -> None:
        self._timeout_s = float(seconds)
        if self._sock is not None:
            self._set_timeouts(self._timeout_s)

    # ------------------------------------------------------------------ bytes
    def _dropped(self, doing: str, exc: BaseException | None = None) -> TransportTimeout:
        # refused or dropped: nobody is there to answer, and nothing is left to clear
        self._link_down = True
        return TransportTimeout(self.resource, self._timeout_s,
                                f"{doing}: {exc if exc is not None else 'connection closed by the instrument'}")

    def _send(self, command: str, doing: str) -> None:
        try:
            data = command.encode("ascii") + self._write_term
        except UnicodeEncodeError as exc:
            raise TransportError(f"{self.resource}: {doing} failed: not ASCII: {command!r}") from exc
        if self._sock is None:
            raise self._dropped(doing, ConnectionError("not connected"))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s <- %r", self.resource, data)
        try:
            self._sock.sendall(data)
        except (socket.timeout, BlockingIOError) as exc:
            raise TransportTimeout(self.resource, self._timeout_s, doing) from exc
        except OSError as exc:
            raise self._dropped(doing, exc) from exc

    def _receive(self, deadline: float, doing: str) -> None:
        """Append whatever arrives next (at least one byte) to the buffer, or raise by ``deadline``."""
        sock = self._sock
        if sock is None:
            raise self._dropped(doing, ConnectionError("not connected"))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TransportTimeout(self.resource, self._timeout_s, doing)
        # the whole reply within the timeout: a later part of it gets only what is left
        shortened = remaining < self._timeout_s - 1e-3
        if shortened:
            self._set_timeouts(remaining, receive_only=True)
        try:
            chunk = sock.recv(_RECEIVE_SIZE)
        except (socket.timeout, BlockingIOError) as exc:
            raise TransportTimeout(self.resource, self._timeout_s, doing) from exc
        except OSError as exc:
            raise self._dropped(doing, exc) from exc
        finally:
            if shortened:
                self._set_timeouts(self._timeout_s, receive_only=True)
        if not chunk:
            raise self._dropped(doing)
        self._buffer += chunk

    def _read_line(self, doing: str) -> bytes:
        """One reply up to its terminator (the terminator removed)."""
        buffer, term = self._buffer, self._read_term
        end = buffer.find(term)
        if end < 0:
            deadline = time.monotonic() + self._timeout_s
            searched = 0
            while end < 0:
                searched = max(len(buffer) - len(term) + 1, 0)
                self._receive(deadline, doing)
                end = buffer.find(term, searched)
        line = bytes(buffer[:end])
        del buffer[:end + len(term)]
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s -> %r", self.resource, line + term)
        return line

    def _read_exactly(self, count: int, deadline: float, doing: str) -> bytes:
        buffer = self._buffer
        while len(buffer) < count:
            self._receive(deadline, doing)
        data = bytes(buffer[:count])
        del buffer[:count]
        return data

    # ------------------------------------------------------------------ the transport API
    def write(self, command: str) -> None:
        self._send(command, f"write {command!r}")

    def query(self, command: str) -> str:
        doing = f"query {command!r}"
        self._send(command, doing)
        return decode_reply(self._read_line(doing), self.resource, command)

    send = write  # the first half of a query: its reply is taken later by read()

    def read(self) -> str:
        """One reply line (the second half of a query sent with send())."""
        return decode_reply(self._read_line("read"), self.resource, "read")

    def query_block(self, command: str) -> bytes:
        """Send, then read exactly header + payload + terminator (a terminator inside the data is data)."""
        doing = f"block query {command!r}"
        self._send(command, doing)
        deadline = time.monotonic() + self._timeout_s
        head = self._read_exactly(2, deadline, doing)
        try:
            digits = int(head[1:2] or b"0") if head[1:2].isdigit() else 0
            header_length, length = parse_block_header(head + self._read_exactly(digits, deadline, doing))
        except (TransportError, ValueError) as exc:
            raise TransportError(f"{self.resource}: bad block reply to {command!r}: {exc}") from exc
        rest = self._read_exactly(length + len(self._read_term), deadline, doing)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s -> block of %d bytes", self.resource, length)
        if rest[length:] != self._read_term:
            raise TransportError(f"{self.resource}: block reply to {command!r} not followed by the terminator "
                                 f"{self._read_term!r}: {rest[length:]!r}")
        return rest[:length]

    def clear(self) -> None:
        """No clear message exists on a raw socket: drop whatever is buffered or still arriving."""
        if self._link_down or self._sock is None:
            raise TransportError(f"{self.resource}: the connection is down; nothing to clear")
        self._buffer.clear()
        sock = self._sock
        self._set_timeouts(0.05, receive_only=True)
        try:
            for _ in range(1000):  # bounded: a live instrument stops talking eventually
                if not sock.recv(_RECEIVE_SIZE):
                    self._link_down = True  # closed meanwhile: the next exchange reconnects
                    break
        except OSError:
            pass  # the timeout that says "nothing more is coming"
        finally:
            self._set_timeouts(self._timeout_s, receive_only=True)
