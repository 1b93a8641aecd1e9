"""Run files: one HDF5 file per run, written while the run goes (SWMR), read by every tool.

The layout is in :mod:`labpgt.runfile.format`; :class:`RunFile` writes, :class:`RunReader`
reads (also a file being written, killed or damaged), :func:`inspect` describes.
"""
from labpgt.runfile.format import BLOCK_ROWS, FORMAT_VERSION, KINDS, RunFileError
from labpgt.runfile.inspect import inspect
from labpgt.runfile.probe import Probe
from labpgt.runfile.reader import RunReader
from labpgt.runfile.superblock import clear_write_flags
from labpgt.runfile.writer import RunFile

__all__ = ["BLOCK_ROWS", "FORMAT_VERSION", "KINDS", "Probe", "RunFile", "RunFileError", "RunReader",
           "clear_write_flags", "inspect"]
