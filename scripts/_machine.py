"""What the benchmarks record about the machine they ran on (shared by the scripts in scripts/)."""
from __future__ import annotations

from pathlib import Path


def cpu_model(unknown: str = "?") -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), or ``unknown`` where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return unknown
