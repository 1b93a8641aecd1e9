"""Which files a watcher may serve: the one file it was given, or the HDF5 files under its directory.

A page names a run by its path relative to the directory (``?run=sub/RUN.h5``); anything that
resolves (symbolic links followed) outside the directory, or is not an HDF5 file under it, is
refused. A watcher given one file serves that file and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labpgt.watch.snapshot import status_of

RUN_SUFFIXES = (".h5", ".hdf5")


class PathRefused(ValueError):
    """A requested path that this watcher does not serve."""


@dataclass(frozen=True)
class ListedRun:
    name: str  # path relative to the watched directory, with /
    status: str
    detail: str
    mtime_s: float


class WatchRoot:
    """The file or directory given to ``labpgt watch``."""

    def __init__(self, path, may_not_exist_yet: bool = False):
        path = Path(path)
        if not path.exists() and not (may_not_exist_yet and path.suffix in RUN_SUFFIXES):
            raise FileNotFoundError(f"{path} does not exist; give a run file (.h5) or a directory of runs")
        self.path = path.resolve()
        self.is_dir = self.path.is_dir()
        if not self.is_dir and self.path.suffix not in RUN_SUFFIXES:
            raise ValueError(f"{path} is not a run file (.h5) nor a directory of runs")
        self._listing_cache: dict[str, tuple] = {}

    def resolve(self, name: str | None) -> Path:
        """The file a page asked for (``None``: the watched file itself); PathRefused otherwise."""
        if not self.is_dir:
            if name not in (None, ""):
                raise PathRefused(f"this watcher serves {self.path.name} only")
            return self.path
        if not name:
            raise PathRefused("no run named")
        if "\x00" in name or Path(name).is_absolute():
            raise PathRefused(f"{name!r}: give a path relative to the watched directory")
        candidate = (self.path / name).resolve()
        try:
            candidate.relative_to(self.path)
        except ValueError:
            raise PathRefused(f"{name!r} is outside the watched directory") from None
        if candidate.suffix not in RUN_SUFFIXES or not candidate.is_file():
            raise PathRefused(f"{name!r} is not a run file in the watched directory")
        return candidate

    def runs(self) -> list[ListedRun]:
        """Every HDF5 file under the directory, newest first, with its status (cached by size and mtime)."""
        if not self.is_dir:
            return []
        out = []
        for file in sorted(p for suffix in RUN_SUFFIXES for p in self.path.rglob(f"*{suffix}")):
            try:
                file.resolve().relative_to(self.path)
                st = file.stat()
            except (ValueError, OSError):
                continue  # a link that leads outside, or a file gone meanwhile
            name = file.relative_to(self.path).as_posix()
            key = (st.st_mtime_ns, st.st_size)
            cached = self._listing_cache.get(name)
            # a running file may be killed without changing: look again at those every time
            if cached is None or cached[0] != key or cached[1] in ("running", "killed"):
                status, detail = status_of(file)
                cached = self._listing_cache[name] = (key, status, detail)
            out.append(ListedRun(name, cached[1], cached[2], st.st_mtime))
        return sorted(out, key=lambda run: run.mtime_s, reverse=True)
