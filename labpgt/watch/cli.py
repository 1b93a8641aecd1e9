"""``labpgt watch [RUN.h5 | RUNS_DIR]`` and the launcher behind ``labpgt train --watch``."""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import select
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: a watcher started by ``train --watch`` stops by itself this long after the run ended and the
#: last page closed (or at once with ``kill PID``)
BESIDE_RUN_IDLE_S = 600.0
STARTUP_TIMEOUT_S = 60.0


def require_bokeh() -> None:
    """A one-line error when the optional extra is missing (before anything is started)."""
    if importlib.util.find_spec("bokeh") is None:
        raise ValueError("labpgt watch needs Bokeh, the optional extra: pip install 'labpgt[watch]'")


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", default="runs",
                        help="a run file (.h5), or a directory whose runs are listed (default: runs)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: loopback only); any other address needs the "
                             "token printed at start on every request")
    parser.add_argument("--token", action="store_true",
                        help="require the token even on loopback (a machine shared with other users)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one, printed at start)")
    parser.add_argument("--stop-after-idle", type=float, metavar="SECONDS",
                        help="stop when no page has been open this long and the run is over")
    parser.add_argument("--wait", action="store_true",
                        help="a run file that does not exist yet is waited for (train --watch)")
    parser.add_argument("--detach", action="store_true",
                        help="after printing the address, write nothing more to the terminal (train --watch)")


def cmd_watch(args) -> int:
    require_bokeh()
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} is not a port; give 1..65535, or 0 for a free one")
    from labpgt.watch.server import WatchServer

    server = WatchServer(Path(args.target), host=args.host, port=args.port, stop_after_idle_s=args.stop_after_idle,
                         wait_for_file=args.wait, token_required=args.token)
    what = "runs in" if server.root.is_dir else "run"
    print(f"watching {what} {server.root.path} (read-only) at {server.served.url}", flush=True)
    if server.served.token:
        print(f"token: {server.served.token} (checked on every request; the address above carries it)", flush=True)
    if args.detach:
        # the launching terminal is not ours: nothing more goes to it
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    server.run()  # until Ctrl-C or SIGTERM (or idle, with --stop-after-idle)
    print("stopped watching", file=sys.stderr)
    return 0


def start_beside(run_path, host: str = "127.0.0.1") -> tuple[str, int]:
    """Start ``labpgt watch RUN`` as a separate process (its own session, so the run's Ctrl-C does
    not stop it) and return (its URL, its pid). Raises RuntimeError if it did not come up."""
    command = [sys.executable, "-m", "labpgt.cli", "watch", str(run_path), "--host", host, "--detach", "--wait",
               "--stop-after-idle", str(BESIDE_RUN_IDLE_S)]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    line = ""
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            break
    url = line.rsplit(" at ", 1)[-1].strip() if " at " in line else ""
    if not url.startswith("http"):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        reason = (err or "").strip().splitlines()[-1:] or ["no address printed in time"]
        raise RuntimeError(f"the watcher did not start: {reason[0]}")
    proc.stdout.close()
    proc.stderr.close()
    return url, proc.pid


def watch_beside(run_path) -> None:
    """``labpgt train --watch``: the page's address on the terminal, the watcher in its own process."""
    require_bokeh()
    url, pid = start_beside(run_path)
    print(f"watch: {url}  (read-only page of this run, served by process {pid}; it stops "
          f"{BESIDE_RUN_IDLE_S / 60:.0f} min after the run ends and its last page closes)", flush=True)
