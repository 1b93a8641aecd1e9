"""``labpgt watch``: a live, read-only web page of a run file while it is written.

The watcher is its own process: it reads the run file through SWMR (never writing, never
locking it), so the training loop is neither blocked nor slowed by it, however many pages are
open. Pieces:

- :mod:`labpgt.watch.snapshot`: what a page shows, read from a run file (no web code);
- :mod:`labpgt.watch.listing`: the runs of a directory, and which paths may be served;
- :mod:`labpgt.watch.gate`: the HTTP gate (token, refused paths) in front of every request;
- :mod:`labpgt.watch.page`: the Bokeh documents (run page, directory listing);
- :mod:`labpgt.watch.server`: the Bokeh server on loopback, started by ``labpgt watch``;
- :mod:`labpgt.watch.cli`: the command's arguments and ``labpgt train --watch``'s launcher.

Bokeh (the optional extra ``labpgt[watch]``) is imported only by page and server.
"""
