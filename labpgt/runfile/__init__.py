"""Run files: one HDF5 file per run, written while the run goes (SWMR), read by every tool."""
from labpgt.runfile.hdf5 import KINDS, Probe, RunFile, RunFileError, RunReader, inspect

__all__ = ["KINDS", "Probe", "RunFile", "RunFileError", "RunReader", "inspect"]
