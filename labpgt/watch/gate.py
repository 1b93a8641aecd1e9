"""The gate in front of every HTTP request and websocket handshake the watcher receives.

It sits between Tornado's HTTP server and the Bokeh application, so nothing (pages, BokehJS
files, the websocket) is served past it:

- with a token (``--host`` other than loopback), a request must carry it, either as
  ``?token=...`` (answered with a redirect that sets an HttpOnly, SameSite=Strict cookie and
  drops the token from the address) or as that cookie (the websocket and BokehJS requests);
- a page that names a run (``?run=...``) outside what the watcher serves is refused (403);
- only GET and HEAD are allowed: nothing on the page can change anything.
"""
from __future__ import annotations

import hmac
import logging
import urllib.parse

from tornado import httputil

from labpgt.watch.listing import PathRefused, WatchRoot

log = logging.getLogger(__name__)

ALLOWED_METHODS = ("GET", "HEAD")


class RequestGate(httputil.HTTPServerConnectionDelegate):
    """Wraps the Bokeh Tornado application: checks each request before the application sees it."""

    def __init__(self, application: httputil.HTTPServerConnectionDelegate, root: WatchRoot,
                 token: str | None, cookie_name: str):
        self.application = application
        self.root = root
        self.token = token
        self.cookie_name = cookie_name

    def start_request(self, server_conn, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return _GatedRequest(self, self.application.start_request(server_conn, request_conn), request_conn)

    def on_close(self, server_conn) -> None:
        self.application.on_close(server_conn)

    def verdict(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders):
        """None to let the request through, else (status code, reason, extra headers, body)."""
        if start_line.method not in ALLOWED_METHODS:
            return 405, "Method Not Allowed", {"Allow": ", ".join(ALLOWED_METHODS)}, b"read-only: GET only\n"
        url = urllib.parse.urlsplit(start_line.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        if self.token is not None:
            cookie_ok = self._matches(_cookie(headers, self.cookie_name))
            given = query.get("token", [None])[0]
            if not cookie_ok and not self._matches(given):
                log.info("refused %s %s: no valid token", start_line.method, url.path)
                return 403, "Forbidden", {}, b"this page needs the token printed by labpgt watch at start\n"
            if given is not None:
                # trade the token in the address for a cookie, and drop it from the address bar
                rest = urllib.parse.urlencode([(k, v) for k, vs in query.items() if k != "token" for v in vs],
                                              doseq=True)
                location = url.path + (f"?{rest}" if rest else "")
                cookie = f"{self.cookie_name}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                return 302, "Found", {"Location": location, "Set-Cookie": cookie}, b""
        if "run" in query:
            try:
                self.root.resolve(query["run"][0])
            except PathRefused as exc:
                log.info("refused %s: %s", url.path, exc)
                return 403, "Forbidden", {}, f"refused: {exc}\n".encode()
        return None

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


def _cookie(headers: httputil.HTTPHeaders, name: str) -> str | None:
    for line in headers.get_list("Cookie"):
        for part in line.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
    return None


class _GatedRequest(httputil.HTTPMessageDelegate):
    """Passes a request on to the application, or answers it with the gate's refusal."""

    def __init__(self, gate: RequestGate, inner: httputil.HTTPMessageDelegate, conn: httputil.HTTPConnection):
        self.gate, self.inner, self.conn = gate, inner, conn
        self.passed = False

    def headers_received(self, start_line, headers):
        refusal = self.gate.verdict(start_line, headers)
        if refusal is None:
            self.passed = True
            return self.inner.headers_received(start_line, headers)
        code, reason, extra, body = refusal
        response = httputil.HTTPHeaders({"Content-Type": "text/plain; charset=utf-8",
                                         "Content-Length": str(len(body)), "Connection": "close", **extra})
        self.conn.write_headers(httputil.ResponseStartLine("HTTP/1.1", code, reason), response, body)
        self.conn.finish()
        return None

    def data_received(self, chunk):
        if self.passed:
            return self.inner.data_received(chunk)
        return None

    def finish(self):
        if self.passed:
            self.inner.finish()

    def on_connection_close(self):
        if self.passed:
            self.inner.on_connection_close()
