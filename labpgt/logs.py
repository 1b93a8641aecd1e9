"""Logging for the command line: warnings on stderr by default, more with ``-v``, everything to ``--log-file``.

Library code logs through ``logging.getLogger(__name__)`` and never prints. Every message on the
wire is logged at DEBUG with role and resource (logger ``instruments.wire``): ``-vv`` or
``--log-file`` gives the wire trace a lab needs to debug a rig.
"""
from __future__ import annotations

import logging
import sys

_FORMAT_CONSOLE = "%(levelname)s: %(message)s"
_FORMAT_FILE = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
_installed: list[logging.Handler] = []  # ours, replaced by the next configure()


def configure(verbosity: int = 0, log_file: str | None = None) -> None:
    """verbosity 0: warnings; 1: info; 2 or more: debug (the wire trace). ``log_file``: DEBUG and up, appended."""
    root = logging.getLogger()
    while _installed:  # configure once per command, not once per call
        handler = _installed.pop()
        root.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG)
    console.setFormatter(logging.Formatter(_FORMAT_CONSOLE))
    handlers = [console]
    if log_file:
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setLevel(logging.DEBUG)
        to_file.setFormatter(logging.Formatter(_FORMAT_FILE, datefmt="%Y-%m-%dT%H:%M:%S"))
        handlers.append(to_file)
    for handler in handlers:
        _installed.append(handler)
        root.addHandler(handler)
    root.setLevel(min(h.level for h in handlers))
