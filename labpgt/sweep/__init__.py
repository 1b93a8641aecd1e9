"""Characterizing the ring before training: sweeps as plans (a list of settings) run by one executor.

plan.py (what to measure, checked against the station's limits), timing.py (how long it takes),
analysis.py (a trace -> line, lock), executor.py (the one loop: limits, ramps, RF, interrupts),
file.py (the HDF5 map: named dimensions, CF attributes, NXdata; resume), plots.py (the PNG map).
"""
