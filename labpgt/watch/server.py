"""The watcher's web server: a Bokeh server behind :class:`labpgt.watch.gate.RequestGate`.

Why Bokeh: it is a maintained library whose wheel carries its own JavaScript (BokehJS is
served by this server from the installed package, never from the internet), it pushes changes
to the page over a websocket by itself (incremental ``stream`` of new rows), and it has the
plots the page needs (lines, images, tables). The only dependency it adds beyond h5py and
numpy is its own wheel and small pure-Python helpers (tornado, jinja2, ...).

Bound to 127.0.0.1 unless ``host`` says otherwise; any other host gets a random token that
the gate checks on every request.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass

from labpgt.watch.listing import WatchRoot

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
IDLE_CHECK_MS = 1000


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def needs_token(host: str, forced: bool = False) -> bool:
    """Anything but loopback is reachable by others: a token is then required."""
    return forced or not is_loopback(host)


@dataclass(frozen=True)
class Served:
    url: str  # what to open (with the token, when there is one)
    port: int
    token: str | None


class WatchServer:
    """A running watcher on the current Tornado IOLoop; :meth:`run` blocks until stopped."""

    def __init__(self, target, host: str = "127.0.0.1", port: int = 0, stop_after_idle_s: float | None = None,
                 wait_for_file: bool = False, token_required: bool = False):
        # the watcher only reads: HDF5's file lock would stop a `train --resume` of a file a page
        # shows (a reader's shared lock refuses the writer's exclusive one), so it takes none
        os.environ["HDF5_USE_FILE_LOCKING"] = "FALSE"
        from bokeh.application import Application
        from bokeh.application.handlers.function import FunctionHandler
        from bokeh.server.server import BaseServer
        from bokeh.server.tornado import BokehTornado
        from bokeh.server.util import bind_sockets
        from tornado.httpserver import HTTPServer
        from tornado.ioloop import IOLoop, PeriodicCallback

        from labpgt.watch.gate import RequestGate
        from labpgt.watch.page import Hub, make_document

        self.root = WatchRoot(target, may_not_exist_yet=wait_for_file)
        self.hub = Hub(self.root)
        self.token = secrets.token_urlsafe(24) if needs_token(host, token_required) else None
        sockets, self.port = bind_sockets(host, port)
        if is_loopback(host):
            origins = [f"127.0.0.1:{self.port}", f"localhost:{self.port}", f"[::1]:{self.port}"]
        elif host in ("0.0.0.0", "::", ""):
            origins = ["*"]  # any address of this machine; the token cookie (SameSite=Strict) gates it
        else:
            origins = [f"{host}:{self.port}"]
        application = Application(FunctionHandler(lambda doc: make_document(doc, self.hub)))
        tornado_app = BokehTornado({"/": application}, extra_websocket_origins=origins,
                                   # forget closed pages quickly, so the files they showed are let go
                                   check_unused_sessions_milliseconds=2000,
                                   unused_session_lifetime_milliseconds=5000)
        gate = RequestGate(tornado_app, self.root, self.token, cookie_name=f"labpgt_watch_{self.port}")
        self._http = HTTPServer(gate, xheaders=False)
        self._http.add_sockets(sockets)
        self.io_loop = IOLoop.current()
        self._server = BaseServer(self.io_loop, tornado_app, self._http)
        shown_host = f"[{host}]" if ":" in host else host
        url = f"http://{shown_host}:{self.port}/"
        self.served = Served(url + (f"?token={self.token}" if self.token else ""), self.port, self.token)
        self.stop_after_idle_s = stop_after_idle_s
        self._idle_check = PeriodicCallback(self._stop_when_idle, IDLE_CHECK_MS) if stop_after_idle_s else None

    def _stop_when_idle(self) -> None:
        """Stop once no page has been open for stop_after_idle_s and the watched run is over."""
        if self.hub.open_pages:
            return
        if time.monotonic() - self.hub.last_activity_s < self.stop_after_idle_s:
            return
        if not self.root.is_dir:
            from labpgt.watch.snapshot import status_of

            if status_of(self.root.path)[0] == "running":
                self.hub.last_activity_s = time.monotonic()
                return
        log.info("no page open for %.0f s and the run is over: stopping", self.stop_after_idle_s)
        self.stop()

    def start(self) -> None:
        self._server.start()
        if self._idle_check is not None:
            self._idle_check.start()

    def run(self) -> None:
        """Serve until stopped; Ctrl-C and SIGTERM stop the loop from inside it (an exception raised
        by a signal handler in the middle of a Bokeh callback could be swallowed by it)."""
        self.start()
        loop = self.io_loop.asyncio_loop
        stops = (signal.SIGINT, signal.SIGTERM)
        for sig in stops:
            loop.add_signal_handler(sig, self.stop)
        try:
            self.io_loop.start()
        finally:
            for sig in stops:
                loop.remove_signal_handler(sig)

    def stop(self) -> None:
        if self._idle_check is not None:
            self._idle_check.stop()
        self._server.stop()
        self.io_loop.stop()
