"""Simulated instruments around the simulated ring, each speaking its vendor's dialect.

They share one :class:`SimRig` (the ring, a clock, a lock, a seed): the analyzer's trace is
``Ring.spectrum`` at the rig's time with the generator's state and the coil's field.

SCPI instruments (``sim.scpi.SCPIDevice``; in-process ``query("...") -> bytes``, or ``handle``):

* :class:`SimKeysightMXG`     N5183B-like, options ``1E1,520`` (9 kHz-20 GHz, -130..+19 dBm)
* :class:`SimKeithley2400`    +/-1.05 A, +/-210 V, the magnet coil as an R-L load
* :class:`SimKepcoBOP`        BOP 36-12 behind a BIT 4886: +/-12 A, +/-36 V
* :class:`SimKeysightXSA`     N9020A-like swept SA, option 526 (-80 MHz..26.5 GHz)
* :class:`SimRohdeFSV`        FSV-7-like (0..7 GHz)

Serial (not SCPI): :class:`SimWindfreakSynthHD` (``handle(bytes) -> bytes``).

Timing (virtual clock unless the rig is real-time; see ``sim.clock``):

* generator frequency/power change: the operation completes 5 ms later (``*OPC?`` waits);
  SynthHD: PLL unlocked for 4 ms after a frequency change (``p`` answers 0), each serial query
  costs 1 ms;
* current change: ``*OPC?`` waits until the output reached the setpoint through the coil (R-L,
  limited by the compliance voltage) *and* the magnet's field settled to within
  ``FIELD_SETTLED_OE`` of its target (at least 3 tau_coil; a full 0 -> 1.8 A ramp about
  8.5 tau_coil) -- the clock advances, the ring's own coil model gives the field meanwhile;
* analyzer ``INIT``: the sweep takes its sweep time times the sweep/average count;
  ``*OPC?``/``*WAI`` wait for it. Until then ``TRAC:DATA?`` answers the previous trace (stale,
  as a real instrument without synchronisation). In continuous mode a trace query is a sweep
  taken at the current time.

Overload (the ring's flag: above reference level + 5 dB):

* Keysight X-series: a queue entry ``-300,"Device-specific error;Final IF Overload"`` after the
  sweep (the X-series shows overload as a condition message; the code is a choice, the X-series
  manual pages at hand do not number it);
* R&S FSV: ``STATus:QUEStionable:POWer:CONDition?`` bit 0 (OVERload) while the last sweep was
  overloaded, ``...:POWer[:EVENt]?`` latched until read; nothing in the error queue.

numpy and the standard library only; never ``drivers``, ``instruments`` or ``labpgt``.
"""
from __future__ import annotations

import collections
import math
import re
import threading

import numpy as np

from sim.clock import VirtualClock
from sim.faults import handle_with_faults
from sim.scpi import (Choices, SCPIDevice, SCPIError, block, boolean, none, nr1, nr3, number,
                      one, unquote)

SIM_VERSION = "0.1.0"

GENERATOR_SETTLE_S = 5e-3  # frequency / power change (ring-physics.md, Timing)
SYNTH_LOCK_S = 4e-3  # SynthHD PLL lock after a frequency change
SERIAL_QUERY_S = 1e-3  # one USB-CDC round trip
NAN_REPLY = 9.91e37


def _ring_tau_coil(ring) -> float:
    params = getattr(ring, "params", None)
    for name in ("tau_coil_s", "coil_tau_s", "tau_coil"):
        v = getattr(params, name, None)
        if v is not None:
            return float(v)
    return 0.3


class SimRig:
    """One ring, one clock, one lock, one seed: what the simulated instruments share.

    ``ring`` may be given (any object with the ``sim.ring.Ring`` API); otherwise
    ``Ring(params=ring_params, seed=seed)`` from ``sim.ring``.
    """

    def __init__(self, seed: int = 0, realtime: bool = False, ring_params=None, ring=None,
                 clock: VirtualClock | None = None):
        self.seed = int(seed)
        self.clock = clock if clock is not None else VirtualClock(realtime=realtime)
        if ring is None:
            from sim.ring import Ring  # the physics model (numpy only)
            ring = Ring(params=ring_params, seed=self.seed)
        self.ring = ring
        self.lock = threading.Lock()
        self.generator = None  # the source whose tone reaches the ring
        self.current_source = None  # the source that drives the magnet
        self.tau_coil_s = _ring_tau_coil(ring)

    @property
    def realtime(self) -> bool:
        return self.clock.realtime

    def now(self) -> float:
        return self.clock.now()

    def drive(self):
        """(Hz, dBm) of the tone reaching the ring, or (None, None) when RF is off."""
        g = self.generator
        return g.drive() if g is not None else (None, None)


class _RigDevice(SCPIDevice):
    """An SCPI device attached to a rig."""

    def _noop(self, p, s):
        """Accepted and without effect here (e.g. clearing averages that are not simulated)."""

    def __init__(self, rig: SimRig):
        self.rig = rig
        self.clock = rig.clock
        self.lock = rig.lock
        super().__init__()


# ============================================================================ signal generator


class SimKeysightMXG(_RigDevice):
    """Keysight N5183B MXG (options 1E1 step attenuator, 520 = 20 GHz)."""

    idn = f"Keysight Technologies,N5183B,SIM0001,sim-{SIM_VERSION}"
    options = "1E1,520"
    plus_sign_errors = True
    F_MIN, F_MAX = 9e3, 20e9
    P_MIN, P_MAX = -130.0, 19.0

    def __init__(self, rig: SimRig):
        super().__init__(rig)
        if rig.generator is None:
            rig.generator = self

    def reset(self):
        self.frequency = self.F_MAX  # preset CW frequency is the maximum
        self.power = self.P_MIN
        self.output = False
        self.modulation = True
        self.phase = 0.0

    def drive(self):
        if self.output:
            return self.frequency, self.power
        return None, None

    def _settling(self):
        self.pending_until = max(self.pending_until, self.clock.now() + GENERATOR_SETTLE_S)

    def force_unlock(self, seconds: float) -> None:
        """Fault injection: the synthesizer lost lock, reported in the error queue (the code is a choice)."""
        self.push_error(520, "Synthesizer unlocked")

    def _freq(self, p, s):
        self.frequency = number(one(p), "HZ", self.F_MIN, self.F_MAX)
        self._settling()

    def _freq_q(self, p, s):
        v = self.frequency
        if p:
            v = number(one(p), "HZ", self.F_MIN, self.F_MAX)  # FREQ? MIN|MAX
        return nr3(v, 15)

    def _pow(self, p, s):
        self.power = number(one(p), "DBM", self.P_MIN, self.P_MAX)
        self._settling()

    def _pow_q(self, p, s):
        v = self.power
        if p:
            v = number(one(p), "DBM", self.P_MIN, self.P_MAX)
        return nr3(v, 8)

    def _outp(self, p, s):
        self.output = boolean(one(p))

    def _outp_q(self, p, s):
        none(p)
        return "1" if self.output else "0"

    def _mod(self, p, s):
        self.modulation = boolean(one(p))

    def _mod_q(self, p, s):
        none(p)
        return "1" if self.modulation else "0"

    def _phase(self, p, s):
        self.phase = number(one(p), None, -math.pi, math.pi)

    def _phase_q(self, p, s):
        none(p)
        return nr3(self.phase, 8)

    @classmethod
    def _setup_commands(cls, r):
        super()._setup_commands(r)
        r.command("[:SOURce]:FREQuency[:CW|FIXed]", set=cls._freq, query=cls._freq_q)
        r.command("[:SOURce]:POWer[:LEVel][:IMMediate][:AMPLitude]", set=cls._pow, query=cls._pow_q)
        r.command(":OUTPut[:STATe]", set=cls._outp, query=cls._outp_q)
        r.command(":OUTPut:MODulation[:STATe]", set=cls._mod, query=cls._mod_q)
        r.command("[:SOURce]:PHASe[:ADJust]", set=cls._phase, query=cls._phase_q)


# ============================================================================ coil load


class CoilLoad:
    """The magnet coil seen by a current source: R in series with L.

    The source forces the setpoint; when ``R i + L di/dt`` would exceed the compliance voltage,
    the voltage sits at the compliance and the current moves exponentially (tau = L/R) towards
    ``V_c/R``. A setpoint above ``V_c/R`` is never reached (the source stays in compliance).
    """

    def __init__(self, r_ohm: float = 2.0, l_h: float = 0.05):
        self.r = float(r_ohm)
        self.l = float(l_h)
        self.tau = self.l / self.r
        self._t0 = 0.0
        self._i0 = 0.0
        self._target = 0.0
        self._vc = 1.0
        self._t_hit = 0.0  # when the ramp reaches the target (inf when never)

    def command(self, t: float, target_a: float, compliance_v: float) -> float:
        """New setpoint at time t; returns when the ramp ends (inf when it stays in compliance)."""
        i_now = self.current(t)
        self._t0, self._i0, self._target, self._vc = t, i_now, float(target_a), abs(float(compliance_v))
        d = self._target - i_now
        if d == 0.0:
            self._t_hit = t
            return t
        sgn = 1.0 if d > 0 else -1.0
        asym = sgn * self._vc / self.r  # where the compliance-limited ramp would go
        if (asym - self._target) * sgn <= 0:  # target not reachable
            self._t_hit = math.inf
            return math.inf
        self._t_hit = t + self.tau * math.log((asym - i_now) / (asym - self._target))
        return self._t_hit

    def settle_now(self, t: float) -> None:
        """The current has reached its target already (a rig found with current flowing)."""
        self._i0 = self.final_current()
        self._target = self._i0
        self._t0 = self._t_hit = float(t)

    def final_current(self) -> float:
        if self._t_hit == math.inf:
            return math.copysign(self._vc / self.r, self._target - self._i0)
        return self._target

    def current(self, t: float) -> float:
        if t >= self._t_hit:
            return self._target
        sgn = 1.0 if self._target > self._i0 else -1.0
        asym = sgn * self._vc / self.r
        return asym + (self._i0 - asym) * math.exp(-(t - self._t0) / self.tau)

    def voltage(self, t: float) -> float:
        if t >= self._t_hit:
            return self.r * self._target
        return math.copysign(self._vc, self._target - self._i0)

    def in_compliance(self, t: float) -> bool:
        return t < self._t_hit


#: a magnet's field counts as settled within this of its target, Oe (~0.14 MHz of the ring's line)
FIELD_SETTLED_OE = 0.05


class _CurrentSourceBase(_RigDevice):
    """Shared by the simulated current sources: the coil, the ring's current, the settle."""

    I_MAX = 1.0
    V_MAX = 10.0

    def __init__(self, rig: SimRig, coil: CoilLoad | None = None):
        self.coil = coil if coil is not None else CoilLoad()
        #: (rig time, current driven into the coil) at every change, for tests: a ramp is a
        #: sequence of small steps, a jump is a safety fault (0 A while the output is off)
        self.drive_log: collections.deque = collections.deque(maxlen=1_000_000)
        super().__init__(rig)
        if rig.current_source is None:
            rig.current_source = self

    # subclasses keep: self.mode ("CURR"/"VOLT"), self.i_set, self.v_set, self.output,
    # and give the compliance voltage / current limit through _limits()
    def _limits(self):
        raise NotImplementedError

    def _apply(self):
        """Push the present setting to the coil and the ring; schedule the settle."""
        t = self.clock.now()
        if not self.output:
            target, vc = 0.0, self.V_MAX
        elif self.mode == "CURR":
            vc, _ = self._limits()
            target = self.i_set
        else:  # voltage mode into the coil: steady current V/R, limited by the current limit
            _, ilim = self._limits()
            target = max(-ilim, min(ilim, self.v_set / self.coil.r))
            vc = max(abs(self.v_set), 1e-3)
        t_end = self.coil.command(t, target, vc)
        self.drive_log.append((t, target))
        settle = t + 3.0 * self.rig.tau_coil_s
        if self.rig.current_source is self:
            ring = self.rig.ring
            field_before = ring.field_oe(t)
            ring.set_current(t, self.coil.final_current())
            # settled = the field within FIELD_SETTLED_OE of where it is heading (3 tau leaves 5 %
            # of a big step: 12 Oe, ~35 MHz, after a 0 -> 1.8 A ramp)
            field_target = ring.field_oe(math.inf)
            gap_oe = abs(field_target - field_before)
            if gap_oe > FIELD_SETTLED_OE:
                settle = max(settle, t + self.rig.tau_coil_s * math.log(gap_oe / FIELD_SETTLED_OE))
        self.pending_until = max(self.pending_until, settle if t_end == math.inf else max(t_end, settle))

    def measured_current(self) -> float:
        return self.coil.current(self.clock.now()) if self.output else 0.0

    def measured_voltage(self) -> float:
        return self.coil.voltage(self.clock.now()) if self.output else 0.0


# ============================================================================ Kepco BOP


class SimKepcoBOP(_CurrentSourceBase):
    """Kepco BOP 36-12 with a BIT 4886 interface card."""

    idn = f"KEPCO,BIT 4886 36-12,SIM0002,sim-{SIM_VERSION}"
    options = "0"
    I_MAX = 12.0
    V_MAX = 36.0

    def reset(self):
        self.mode = "VOLT"
        self.v_set = 0.0
        self.i_set = self.I_MAX  # in voltage mode CURR is the current limit
        self.output = False
        if hasattr(self, "rig"):
            self._apply()

    def _limits(self):
        if self.mode == "CURR":
            return abs(self.v_set), self.I_MAX
        return self.V_MAX, abs(self.i_set)

    def _func(self, p, s):
        self.mode = _FUNC_CHOICES(one(p))
        self._apply()

    def _func_q(self, p, s):
        none(p)
        return "1" if self.mode == "CURR" else "0"  # BOP answers numerically

    def _curr(self, p, s):
        self.i_set = number(one(p), "A", -self.I_MAX, self.I_MAX, default=0.0)
        self._apply()

    def _curr_q(self, p, s):
        if p:
            return _kepco(number(one(p), "A", -self.I_MAX, self.I_MAX))
        return _kepco(self.i_set)

    def _volt(self, p, s):
        self.v_set = number(one(p), "V", -self.V_MAX, self.V_MAX, default=0.0)
        self._apply()

    def _volt_q(self, p, s):
        if p:
            return _kepco(number(one(p), "V", -self.V_MAX, self.V_MAX))
        return _kepco(self.v_set)

    def _outp(self, p, s):
        self.output = boolean(one(p))
        self._apply()

    def _outp_q(self, p, s):
        none(p)
        return "1" if self.output else "0"

    def _meas_curr(self, p, s):
        none(p)
        return _kepco(self.measured_current())

    def _meas_volt(self, p, s):
        none(p)
        return _kepco(self.measured_voltage())

    @classmethod
    def _setup_commands(cls, r):
        super()._setup_commands(r)
        r.command("[:SOURce]:FUNCtion:MODE", set=cls._func, query=cls._func_q)
        r.command("[:SOURce]:CURRent[:LEVel][:IMMediate][:AMPLitude]", set=cls._curr, query=cls._curr_q)
        r.command("[:SOURce]:VOLTage[:LEVel][:IMMediate][:AMPLitude]", set=cls._volt, query=cls._volt_q)
        r.command(":OUTPut[:STATe]", set=cls._outp, query=cls._outp_q)
        r.command(":MEASure[:SCALar]:CURRent[:DC]", query=cls._meas_curr)
        r.command(":MEASure[:SCALar]:VOLTage[:DC]", query=cls._meas_volt)
        r.command(":SYSTem:BEEP", set=lambda self, p, s: None)


_FUNC_CHOICES = Choices("CURRent", "VOLTage")


def _kepco(v: float) -> str:
    return f"{v:.5E}"


# ============================================================================ Keithley 2400


class SimKeithley2400(_CurrentSourceBase):
    """Keithley 2400 SourceMeter sourcing current into the magnet coil.

    ``:MEASure:<function>?`` turns the output on (auto output-off disabled, the *RST default),
    as the 2400 manual says; ``:READ?`` with the output off is error 803 "Output not on"
    (code as shown by the 2400, not verified against its error list). Readings follow
    ``:FORMat:ELEMents`` (default VOLT,CURR,RES,TIME,STAT); RES is 9.91e37 (not measured);
    STAT bit 3 (8) is compliance [unverified bit].
    """

    idn = f"KEITHLEY INSTRUMENTS INC.,MODEL 2400,SIM0004,sim-{SIM_VERSION}"
    options = "0"
    I_MAX = 1.05
    V_MAX = 210.0
    ELEMENTS = Choices("VOLTage", "CURRent", "RESistance", "TIME", "STATus")

    def reset(self):
        self.mode = "VOLT"
        self.v_set = 0.0
        self.i_set = 0.0
        self.v_prot = 21.0
        self.i_prot = 105e-6
        self.output = False
        self.elements = ["VOLT", "CURR", "RES", "TIME", "STAT"]
        self.sense = "CURR"
        self.i_range = 1e-4
        self.i_range_auto = True
        if hasattr(self, "rig"):
            self._apply()

    def _limits(self):
        return abs(self.v_prot), abs(self.i_prot)

    def _func(self, p, s):
        self.mode = _FUNC_CHOICES(one(p))
        self._apply()

    def _func_q(self, p, s):
        none(p)
        return self.mode

    def _curr(self, p, s):
        value = number(one(p), "A", -self.I_MAX, self.I_MAX, default=0.0)
        if not self.i_range_auto and abs(value) > 1.05 * self.i_range * (1 + 1e-12):
            raise SCPIError(-222)  # a fixed source range holds 105 % of its value
        self.i_set = value
        self._apply()

    def _curr_q(self, p, s):
        if p:
            return nr3(number(one(p), "A", -self.I_MAX, self.I_MAX), 6)
        return nr3(self.i_set, 6)

    def _volt(self, p, s):
        self.v_set = number(one(p), "V", -self.V_MAX, self.V_MAX, default=0.0)
        self._apply()

    def _volt_q(self, p, s):
        if p:
            return nr3(number(one(p), "V", -self.V_MAX, self.V_MAX), 6)
        return nr3(self.v_set, 6)

    def _crang(self, p, s):
        self.i_range = number(one(p), "A", -self.I_MAX, self.I_MAX)
        self.i_range_auto = False

    def _crang_q(self, p, s):
        none(p)
        return nr3(self.i_range, 6)

    def _crang_auto(self, p, s):
        self.i_range_auto = boolean(one(p))

    def _crang_auto_q(self, p, s):
        none(p)
        return "1" if self.i_range_auto else "0"

    def _vprot(self, p, s):
        self.v_prot = number(one(p), "V", -self.V_MAX, self.V_MAX, default=21.0)
        self._apply()

    def _vprot_q(self, p, s):
        none(p)
        return nr3(self.v_prot, 6)

    def _iprot(self, p, s):
        self.i_prot = number(one(p), "A", -self.I_MAX, self.I_MAX, default=105e-6)
        self._apply()

    def _iprot_q(self, p, s):
        none(p)
        return nr3(self.i_prot, 6)

    def _outp(self, p, s):
        self.output = boolean(one(p))
        self._apply()

    def _outp_q(self, p, s):
        none(p)
        return "1" if self.output else "0"

    def _elem(self, p, s):
        if not p:
            raise SCPIError(-109)
        chosen = {self.ELEMENTS(x) for x in p}
        # the reading string keeps the 2400's fixed order, whatever the order asked for
        self.elements = [e for e in ("VOLT", "CURR", "RES", "TIME", "STAT") if e in chosen]

    def _elem_q(self, p, s):
        none(p)
        return ",".join(self.elements)

    def _sense_func(self, p, s):
        self.sense = _FUNC_CHOICES(unquote(one(p)).split(":")[0])

    def _sense_func_q(self, p, s):
        none(p)
        return f'"{self.sense}:DC"'

    def _reading(self) -> str:
        t = self.clock.now()
        values = {
            "VOLT": self.coil.voltage(t) if self.output else 0.0,
            "CURR": self.coil.current(t) if self.output else 0.0,
            "RES": NAN_REPLY,
            "TIME": t,
            "STAT": 8.0 if (self.output and self.coil.in_compliance(t)) else 0.0,
        }
        return ",".join(nr3(values[e], 6) for e in self.elements)

    def _read_q(self, p, s):
        none(p)
        if not self.output:
            raise SCPIError(803, "Output not on")
        return self._reading()

    def _meas_q(self, p, s):
        none(p)
        if not self.output:  # :MEASure? turns the source output on (manual, auto-off disabled)
            self.output = True
            self._apply()
        return self._reading()

    @classmethod
    def _setup_commands(cls, r):
        super()._setup_commands(r)
        r.command(":SOURce<n>:FUNCtion[:MODE]", set=cls._func, query=cls._func_q)
        r.command(":SOURce<n>:CURRent[:LEVel][:IMMediate][:AMPLitude]", set=cls._curr, query=cls._curr_q)
        r.command(":SOURce<n>:VOLTage[:LEVel][:IMMediate][:AMPLitude]", set=cls._volt, query=cls._volt_q)
        r.command(":SOURce<n>:CURRent:RANGe[:UPPer]", set=cls._crang, query=cls._crang_q)
        r.command(":SOURce<n>:CURRent:RANGe:AUTO", set=cls._crang_auto, query=cls._crang_auto_q)
        r.command(":SOURce<n>:CLEar:AUTO", set=cls._noop)
        r.command(":SOURce<n>:DELay", set=cls._noop)
        r.command(":SOURce<n>:DELay:AUTO", set=cls._noop)
        r.command("[:SENSe<n>]:VOLTage[:DC]:PROTection[:LEVel]", set=cls._vprot, query=cls._vprot_q)
        r.command("[:SENSe<n>]:CURRent[:DC]:PROTection[:LEVel]", set=cls._iprot, query=cls._iprot_q)
        r.command("[:SENSe<n>]:FUNCtion[:ON]", set=cls._sense_func, query=cls._sense_func_q)
        r.command("[:SENSe<n>]:VOLTage[:DC]:NPLCycles", set=cls._noop)
        r.command("[:SENSe<n>]:CURRent[:DC]:NPLCycles", set=cls._noop)
        r.command("[:SENSe<n>]:VOLTage[:DC]:RANGe:AUTO", set=cls._noop)
        r.command(":OUTPut<n>[:STATe]", set=cls._outp, query=cls._outp_q)
        r.command(":OUTPut<n>:SMODe", set=cls._noop)
        r.command(":FORMat:ELEMents[:SENSe<n>]", set=cls._elem, query=cls._elem_q)
        r.command(":READ", query=cls._read_q)
        r.command(":MEASure[:VOLTage|CURRent|RESistance]", query=cls._meas_q)
        r.command(":SYSTem:AZERo[:STATe]", set=cls._noop)
        r.command(":SYSTem:BEEPer[:STATe]", set=cls._noop)


# ============================================================================ spectrum analyzers


def _seq_125(x: float) -> float:
    """Largest value of the 1-3-10 sequence not above x (auto RBW)."""
    if x <= 0:
        return 1.0
    e = math.floor(math.log10(x))
    for m in (10.0, 3.0, 1.0):
        v = m * 10.0 ** e
        if v <= x * (1 + 1e-12):
            return v
    return 10.0 ** e


def _setting_query(attribute: str):
    """A handler answering one analyzer setting in the instrument's own number format."""
    def handler(self, p, s):
        none(p)
        value = getattr(self, attribute)
        return self.number_format(value() if callable(value) else value)
    return handler


class _Analyzer(_RigDevice):
    """Shared swept-analyzer behaviour: coupled frequencies, sweeps on the rig's clock, traces."""

    F_MIN, F_MAX = 0.0, 7e9
    RBW_MIN, RBW_MAX = 1.0, 10e6
    VBW_MIN, VBW_MAX = 1.0, 10e6
    RBW_AUTO_MAX = 3e6
    SPAN_RBW_RATIO = 100.0
    POINTS_MIN, POINTS_MAX, POINTS_PRESET = 101, 10001, 691
    REF_MIN, REF_MAX = -130.0, 30.0
    LITTLE_ENDIAN_ON_NORM = False
    SWEEP_K = 2.5  # swept analyzer: t = k span / RBW^2 (ring-physics.md, Timing)
    SWEEP_MIN_S = 1e-3
    TRACE_MODES = Choices("WRITe", "AVERage", "MAXHold", "MINHold", "VIEW", "BLANk")

    def reset(self):
        self.start = self.F_MIN
        self.stop = self.F_MAX
        self.rbw = 3e6
        self.rbw_auto = True
        self.vbw = 3e6
        self.vbw_auto = True
        self.ref_level = 0.0
        self.attenuation = 10.0
        self.attenuation_auto = True
        self.points = self.POINTS_PRESET
        self.sweep_time_manual = 1e-3
        self.sweep_time_auto = True
        self.continuous = True
        self.count = 0
        self.trace_mode = "WRIT"
        self.detector = "NORM"
        self.format = "ASC"
        self.little_endian = self.LITTLE_ENDIAN_ON_NORM
        self.markers: dict[int, float | None] = {}
        self.excursion_db = 6.0
        self.overload = False
        self.overload_event = False
        self._forced_overload = False  # a fault (sim.faults "overload"): the next sweep overloads
        self._sweep = None  # pending single sweep: (t0, t1, settings)
        self._trace = None  # last completed trace (float64 dBm)
        self._trace_freqs = None
        self._freqs_key = None  # (start, stop, points) of the cached frequency points
        self._couple()

    # --- coupled frequencies
    @property
    def center(self) -> float:
        return 0.5 * (self.start + self.stop)

    @property
    def span(self) -> float:
        return self.stop - self.start

    def _set_center_span(self, c: float, s: float):
        s = min(s, 2 * (c - self.F_MIN), 2 * (self.F_MAX - c))  # the span shrinks to stay inside
        self.start, self.stop = c - s / 2, c + s / 2
        self._couple()

    def _couple(self):
        if self.rbw_auto:
            self.rbw = min(self.RBW_AUTO_MAX, max(self.RBW_MIN, _seq_125(self.span / self.SPAN_RBW_RATIO)))
        if self.vbw_auto:
            self.vbw = self.rbw

    def sweep_time(self) -> float:
        if not self.sweep_time_auto:
            return self.sweep_time_manual
        if self.span <= 0:
            return self.SWEEP_MIN_S
        t = self.SWEEP_K * self.span / (self.rbw * self.rbw) * max(1.0, self.rbw / self.vbw)
        return max(self.SWEEP_MIN_S, t)

    def sweeps_per_acquisition(self) -> int:
        return 1

    def freqs(self) -> np.ndarray:
        """The sweep's frequency points (read-only; the same array while start, stop and points stay)."""
        key = (self.start, self.stop, self.points)
        if self._freqs_key != key:
            freqs = np.linspace(self.start, self.stop, self.points)
            freqs.flags.writeable = False  # shared by every trace of this setting
            self._freqs, self._freqs_key = freqs, key
        return self._freqs

    # --- sweeping
    def _snapshot(self):
        return (self.freqs(), self.rbw, self.rig.drive(), self.ref_level, self.trace_mode,
                self.sweeps_per_acquisition())

    def _compute(self, t: float, snap) -> None:
        freqs, rbw, (f_d, p_d), ref, mode, n = snap
        ring = self.rig.ring
        if mode in ("MAXH", "MINH") and n > 1:
            traces, overload = [], False
            for k in range(n):
                tr, ov = ring.spectrum(t, freqs, rbw, f_d, p_d, averages=1, ref_level_dbm=ref)
                traces.append(tr)
                overload |= bool(ov)
            trace = np.max(traces, axis=0) if mode == "MAXH" else np.min(traces, axis=0)
        else:
            trace, overload = ring.spectrum(t, freqs, rbw, f_d, p_d,
                                            averages=n if mode == "AVER" else 1, ref_level_dbm=ref)
        self._trace = np.asarray(trace, dtype=np.float64)
        self._trace_freqs = freqs
        self.overload = bool(overload) or self._forced_overload
        self._forced_overload = False
        if self.overload:
            self.overload_event = True
            self._report_overload()

    def _report_overload(self):
        pass

    def force_overload(self) -> None:
        """Fault injection: the next sweep computed is overloaded (reported as the model does)."""
        self._forced_overload = True

    def _materialize(self):
        """Finish the pending sweep if its time has come."""
        if self._sweep is not None and self.clock.now() >= self._sweep[1]:
            t0, _t1, snap = self._sweep
            self._sweep = None
            self._compute(t0, snap)

    def complete(self):
        if self.clock.realtime and self._sweep is not None and self.pending_until > self.clock.now():
            # real time: the trace is computed while the sweep's time runs, as a real analyzer's
            # trace is ready when its sweep ends -- the simulator's own compute time must not
            # lengthen every sweep. Nothing can read it early: this instrument is busy waiting.
            # Virtual time is unchanged (bit-exact runs and resumes).
            t0, _t1, snap = self._sweep
            self._sweep = None
            self._compute(t0, snap)
        super().complete()
        self._materialize()

    def _init(self, p, s):
        none(p)
        self._materialize()
        t0 = max(self.clock.now(), self.pending_until)
        t1 = t0 + self.sweep_time() * self.sweeps_per_acquisition()
        self._sweep = (t0, t1, self._snapshot())
        self.pending_until = t1

    def pending_sweep_start_s(self) -> float | None:
        """Rig time of the sweep begun and not computed yet (its trace needs the field then), else None."""
        return self._sweep[0] if self._sweep is not None else None

    def _abort(self, p, s):
        none(p)
        self._sweep = None
        self.pending_until = self.clock.now()

    def trace(self) -> np.ndarray:
        """The trace a data query returns now."""
        self._materialize()
        if self.continuous and self._sweep is None:
            self._compute(self.clock.now(), self._snapshot())
        elif self._trace is None:
            snap = self._sweep[2] if self._sweep is not None else self._snapshot()
            self._compute(self._sweep[0] if self._sweep is not None else self.clock.now(), snap)
        return self._trace

    def _encode(self, values: np.ndarray) -> bytes:
        if self.format == "ASC":
            # the analyzer keeps float32: nine digits of it read back to the same float32
            return ",".join(f"{v:.8E}" for v in values.astype(np.float32).tolist()).encode()
        bits = 4 if self.format == "REAL32" else 8
        dtype = ("<f" if self.little_endian else ">f") + str(bits)
        return block(values.astype(dtype).tobytes())

    def _trace_q(self, p, s):
        name = one(p).strip().upper() if p else "TRACE1"
        if name not in ("TRACE1", "TRACE", "TRAC1", "TRAC"):
            raise SCPIError(-224)
        return self._encode(self.trace())

    # --- markers
    def _marker_peak(self, n: int):
        tr = self.trace()
        k = int(np.argmax(tr))
        self.markers[n] = float(self._trace_freqs[k])

    def _marker_value(self, n: int):
        x = self.markers.get(n)
        if x is None:
            return None, None
        tr = self.trace()
        f = self._trace_freqs
        if len(f) > 1 and f[-1] > f[0]:
            k = int(round((x - f[0]) / (f[-1] - f[0]) * (len(f) - 1)))
        else:
            k = 0
        if k < 0 or k >= len(tr):
            return x, None
        return x, float(tr[k])

    # --- generic handlers (units per command)
    def _center(self, p, s):
        c = number(one(p), "HZ", self.F_MIN, self.F_MAX)
        self._set_center_span(c, self.span)

    def _span(self, p, s):
        sp = number(one(p), "HZ", 0.0, self.F_MAX - self.F_MIN)
        self._set_center_span(self.center, sp)

    def _start(self, p, s):
        a = number(one(p), "HZ", self.F_MIN, self.F_MAX)
        self.start = a
        if self.stop < a:
            self.stop = a
        self._couple()

    def _stop(self, p, s):
        b = number(one(p), "HZ", self.F_MIN, self.F_MAX)
        self.stop = b
        if self.start > b:
            self.start = b
        self._couple()

    def _rbw(self, p, s):
        self.rbw = number(one(p), "HZ", self.RBW_MIN, self.RBW_MAX)
        self.rbw_auto = False
        self._couple()

    def _rbw_auto(self, p, s):
        self.rbw_auto = boolean(one(p))
        self._couple()

    def _rbw_auto_q(self, p, s):
        none(p)
        return "1" if self.rbw_auto else "0"

    def _vbw(self, p, s):
        self.vbw = number(one(p), "HZ", self.VBW_MIN, self.VBW_MAX)
        self.vbw_auto = False

    def _vbw_auto(self, p, s):
        self.vbw_auto = boolean(one(p))
        self._couple()

    def _vbw_auto_q(self, p, s):
        none(p)
        return "1" if self.vbw_auto else "0"

    def _rlev(self, p, s):
        self.ref_level = number(one(p), "DBM", self.REF_MIN, self.REF_MAX)

    def _att(self, p, s):
        self.attenuation = number(one(p), "DB", 0.0, 70.0)
        self.attenuation_auto = False

    def _att_auto(self, p, s):
        self.attenuation_auto = boolean(one(p))

    def _att_auto_q(self, p, s):
        none(p)
        return "1" if self.attenuation_auto else "0"

    def _points(self, p, s):
        self.points = int(number(one(p), None, self.POINTS_MIN, self.POINTS_MAX, integer=True))

    def _points_q(self, p, s):
        none(p)
        return nr1(self.points)

    def _swt(self, p, s):
        self.sweep_time_manual = number(one(p), "S", 1e-6, 16000.0)
        self.sweep_time_auto = False

    def _swt_auto(self, p, s):
        self.sweep_time_auto = boolean(one(p))

    def _swt_auto_q(self, p, s):
        none(p)
        return "1" if self.sweep_time_auto else "0"

    def _cont(self, p, s):
        self._materialize()
        self.continuous = boolean(one(p))

    def _cont_q(self, p, s):
        none(p)
        return "1" if self.continuous else "0"

    # setting queries answer in the vendor's number format
    _center_q = _setting_query("center")
    _span_q = _setting_query("span")
    _start_q = _setting_query("start")
    _stop_q = _setting_query("stop")
    _rbw_q = _setting_query("rbw")
    _vbw_q = _setting_query("vbw")
    _rlev_q = _setting_query("ref_level")
    _att_q = _setting_query("attenuation")
    _swt_q = _setting_query("sweep_time")

    # detector, data format and application: the same handlers, vendor tables as class attributes
    def _det(self, p, s):
        self.detector = self.DETECTORS(one(p))

    def _det_q(self, p, s):
        none(p)
        return self.detector

    def _form(self, p, s):
        if not p or len(p) > 2:
            raise SCPIError(-109 if not p else -108)
        kind = p[0].strip().upper()
        if kind in ("ASC", "ASCII"):
            self.format = "ASC"
        elif kind == "REAL":
            bits = int(number(p[1], None, integer=True)) if len(p) > 1 else 32
            if bits not in self.REAL_BITS:
                raise SCPIError(-224)
            self.format = f"REAL{bits}"
        elif kind in ("INT", "INTEGER"):
            raise SCPIError(*[v for v in self.INTEGER_FORMAT_ERROR if v is not None])
        else:
            raise SCPIError(-224)

    def _form_q(self, p, s):
        none(p)
        return self.FORMAT_REPLIES[self.format]

    def _inst(self, p, s):
        if unquote(one(p)).upper() not in self.MODES:
            raise SCPIError(-224)

    def _inst_q(self, p, s):
        none(p)
        return self.MODE_REPLY

    def _bord(self, p, s):
        word = _BORDER(one(p))
        norm = word == "NORM"
        self.little_endian = self.LITTLE_ENDIAN_ON_NORM if norm else not self.LITTLE_ENDIAN_ON_NORM

    def _bord_q(self, p, s):
        none(p)
        return "NORM" if self.little_endian == self.LITTLE_ENDIAN_ON_NORM else "SWAP"


_BORDER = Choices("NORMal", "SWAPped")
_DETECTORS_KS = Choices("NORMal", "AVERage", "POSitive", "SAMPle", "NEGative", "QPEak", "EAVerage", "RAVerage")
_DETECTORS_RS = Choices("APEak", "POSitive", "NEGative", "SAMPle", "RMS", "AVERage", "QPEak", "CAVerage", "CRMS")


def _ks(v: float) -> str:
    return nr3(v, 11, 3)


# ---------------------------------------------------------------------------- Keysight X


class SimKeysightXSA(_Analyzer):
    """Keysight N9020A MXA (option 526), Spectrum Analyzer mode, Swept SA measurement."""

    idn = f"Keysight Technologies,N9020A,SIM0003,sim-{SIM_VERSION}"
    options = "526,P26,EA3"
    plus_sign_errors = True
    F_MIN, F_MAX = -80e6, 26.5e9
    RBW_MIN, RBW_MAX = 1.0, 8e6
    VBW_MIN, VBW_MAX = 1.0, 50e6
    RBW_AUTO_MAX = 3e6
    SPAN_RBW_RATIO = 106.0
    POINTS_MIN, POINTS_MAX, POINTS_PRESET = 1, 20001, 1001
    REF_MIN, REF_MAX = -170.0, 30.0
    LITTLE_ENDIAN_ON_NORM = False  # Keysight: NORMal = MSB first (big endian)
    number_format = staticmethod(_ks)
    DETECTORS = _DETECTORS_KS
    REAL_BITS = (32, 64)
    INTEGER_FORMAT_ERROR = (-221, "Settings conflict")  # FORM INT exists but not for traces
    FORMAT_REPLIES = {"ASC": "ASC,8", "REAL32": "REAL,32", "REAL64": "REAL,64"}
    MODES, MODE_REPLY = ("SA",), "SA"
    TRACE_TYPES = Choices("WRITe", "AVERage", "MAXHold", "MINHold")
    MARKER_MODES = Choices("POSition", "DELTa", "FIXed", "OFF")

    def reset(self):
        super().reset()
        self.start, self.stop = 10.0, self.F_MAX
        self.count = 100
        self.marker_modes: dict[int, str] = {}
        self._couple()

    def sweeps_per_acquisition(self) -> int:
        return self.count if self.trace_mode in ("AVER", "MAXH", "MINH") else 1

    def _report_overload(self):
        self.push_error(-300, "Device-specific error;Final IF Overload")

    def _aver_coun(self, p, s):
        self.count = int(number(one(p), None, 1, 10000, integer=True))

    def _aver_coun_q(self, p, s):
        none(p)
        return nr1(self.count)

    def _trace_type(self, p, s):
        if s.get("TRACE", 1) != 1:
            raise SCPIError(-114)
        self.trace_mode = self.TRACE_TYPES(one(p))

    def _trace_type_q(self, p, s):
        none(p)
        return self.trace_mode

    def _conf_san(self, p, s):
        none(p)

    def _conf_q(self, p, s):
        none(p)
        return "SAN"

    def _mark_max(self, p, s):
        none(p)
        n = s.get("MARKER", 1)
        self._marker_peak(n)  # Keysight: the highest point, marker turned on if off
        self.marker_modes[n] = "POS"

    def _mark_x(self, p, s):
        n = s.get("MARKER", 1)
        self.markers[n] = number(one(p), "HZ")
        if self.marker_modes.get(n, "OFF") == "OFF":
            self.marker_modes[n] = "POS"

    def _mark_x_q(self, p, s):
        none(p)
        n = s.get("MARKER", 1)
        x = self.markers.get(n)
        if x is None or self.marker_modes.get(n, "OFF") == "OFF":
            return _ks(NAN_REPLY)
        return _ks(x)

    def _mark_y_q(self, p, s):
        none(p)
        n = s.get("MARKER", 1)
        if self.marker_modes.get(n, "OFF") == "OFF":
            return _ks(NAN_REPLY)
        _x, y = self._marker_value(n)
        return _ks(NAN_REPLY if y is None else y)

    def _mark_mode(self, p, s):
        n = s.get("MARKER", 1)
        mode = self.MARKER_MODES(one(p))
        self.marker_modes[n] = mode
        if mode != "OFF" and self.markers.get(n) is None:
            self.markers[n] = self.center

    def _mark_mode_q(self, p, s):
        none(p)
        return self.marker_modes.get(s.get("MARKER", 1), "OFF")

    def _mark_exc(self, p, s):
        self.excursion_db = number(one(p), "DB", 0.0, 100.0)

    @classmethod
    def _setup_commands(cls, r):
        super()._setup_commands(r)
        r.command(":INSTrument[:SELect]", set=cls._inst, query=cls._inst_q)
        r.command(":CONFigure:SANalyzer", set=cls._conf_san)
        r.command(":CONFigure", query=cls._conf_q)
        r.command("[:SENSe]:FREQuency:CENTer", set=cls._center, query=cls._center_q)
        r.command("[:SENSe]:FREQuency:SPAN", set=cls._span, query=cls._span_q)
        r.command("[:SENSe]:FREQuency:STARt", set=cls._start, query=cls._start_q)
        r.command("[:SENSe]:FREQuency:STOP", set=cls._stop, query=cls._stop_q)
        r.command("[:SENSe]:BANDwidth|BWIDth[:RESolution]", set=cls._rbw, query=cls._rbw_q)
        r.command("[:SENSe]:BANDwidth|BWIDth[:RESolution]:AUTO", set=cls._rbw_auto, query=cls._rbw_auto_q)
        r.command("[:SENSe]:BANDwidth|BWIDth:VIDeo", set=cls._vbw, query=cls._vbw_q)
        r.command("[:SENSe]:BANDwidth|BWIDth:VIDeo:AUTO", set=cls._vbw_auto, query=cls._vbw_auto_q)
        r.command(":DISPlay:WINDow<n>:TRACe<n>:Y[:SCALe]:RLEVel", set=cls._rlev, query=cls._rlev_q)
        r.command("[:SENSe]:POWer[:RF]:ATTenuation", set=cls._att, query=cls._att_q)
        r.command("[:SENSe]:POWer[:RF]:ATTenuation:AUTO", set=cls._att_auto, query=cls._att_auto_q)
        r.command("[:SENSe]:SWEep:POINts", set=cls._points, query=cls._points_q)
        r.command("[:SENSe]:SWEep:TIME", set=cls._swt, query=cls._swt_q)
        r.command("[:SENSe]:SWEep:TIME:AUTO", set=cls._swt_auto, query=cls._swt_auto_q)
        r.command("[:SENSe]:AVERage:COUNt", set=cls._aver_coun, query=cls._aver_coun_q)
        r.command("[:SENSe]:AVERage:CLEar", set=cls._noop)
        r.command("[:SENSe]:DETector:TRACe<n>[:FUNCtion]", set=cls._det, query=cls._det_q)
        r.command(":TRACe<n>:TYPE", set=cls._trace_type, query=cls._trace_type_q)
        r.command(":TRACe<n>[:DATA]", query=cls._trace_q)
        r.command(":INITiate:CONTinuous", set=cls._cont, query=cls._cont_q)
        r.command(":INITiate[:IMMediate]", set=cls._init)
        r.command(":INITiate:RESTart", set=cls._init)
        r.command(":ABORt", set=cls._abort)
        r.command(":FORMat[:TRACe][:DATA]", set=cls._form, query=cls._form_q)
        r.command(":FORMat:BORDer", set=cls._bord, query=cls._bord_q)
        r.command(":CALCulate:MARKer<n>:MAXimum[:PEAK]", set=cls._mark_max)
        r.command(":CALCulate:MARKer<n>:X", set=cls._mark_x, query=cls._mark_x_q)
        r.command(":CALCulate:MARKer<n>:Y", query=cls._mark_y_q)
        r.command(":CALCulate:MARKer<n>:MODE", set=cls._mark_mode, query=cls._mark_mode_q)
        r.command(":CALCulate:MARKer:PEAK:EXCursion", set=cls._mark_exc)
        r.command(":CALCulate:MARKer:PEAK:THReshold", set=cls._noop)


# ---------------------------------------------------------------------------- R&S FSV


def _rs(v: float) -> str:
    return f"{v:.12g}"


class SimRohdeFSV(_Analyzer):
    """Rohde & Schwarz FSV-7 (9 Hz..7 GHz), spectrum application."""

    idn = f"Rohde&Schwarz,FSV-7,SIM0005,sim-{SIM_VERSION}"
    options = "0"
    plus_sign_errors = False
    F_MIN, F_MAX = 0.0, 7e9
    RBW_MIN, RBW_MAX = 1.0, 10e6
    VBW_MIN, VBW_MAX = 1.0, 10e6
    POINTS_MIN, POINTS_MAX, POINTS_PRESET = 101, 10001, 691
    REF_MIN, REF_MAX = -130.0, 30.0
    LITTLE_ENDIAN_ON_NORM = True  # R&S: NORMal = LSB first (little endian)
    number_format = staticmethod(_rs)
    DETECTORS = _DETECTORS_RS
    REAL_BITS = (32,)
    INTEGER_FORMAT_ERROR = (-224, None)
    FORMAT_REPLIES = {"ASC": "ASC,0", "REAL32": "REAL,32"}
    MODES, MODE_REPLY = ("SAN", "SANALYZER", "SPECTRUM"), "SAN"
    TRACE_MODES = Choices("WRITe", "AVERage", "MAXHold", "MINHold", "VIEW", "BLANk")

    def reset(self):
        super().reset()
        self.ref_level = -10.0
        self.marker_on: dict[int, bool] = {}
        self._couple()

    def sweeps_per_acquisition(self) -> int:
        return max(1, self.count)

    def _swe_coun(self, p, s):
        self.count = int(number(one(p), None, 0, 32767, integer=True))

    def _swe_coun_q(self, p, s):
        none(p)
        return nr1(self.count)

    def _trace_mode(self, p, s):
        self.trace_mode = self.TRACE_MODES(one(p))

    def _trace_mode_q(self, p, s):
        none(p)
        return self.trace_mode

    def _mark_state(self, p, s):
        n = s.get("MARKER", 1)
        on = boolean(one(p))
        self.marker_on[n] = on
        if on and self.markers.get(n) is None:
            self.markers[n] = self.center

    def _mark_state_q(self, p, s):
        none(p)
        return "1" if self.marker_on.get(s.get("MARKER", 1)) else "0"

    def _mark_max(self, p, s):
        none(p)
        n = s.get("MARKER", 1)
        tr = self.trace()
        k = int(np.argmax(tr))
        if tr[k] - float(np.min(tr)) < self.excursion_db:
            raise SCPIError(-200, "Execution error;no peak found")
        self.markers[n] = float(self._trace_freqs[k])
        self.marker_on[n] = True

    def _mark_x(self, p, s):
        n = s.get("MARKER", 1)
        self.markers[n] = number(one(p), "HZ")
        self.marker_on[n] = True

    def _mark_x_q(self, p, s):
        none(p)
        n = s.get("MARKER", 1)
        if not self.marker_on.get(n):
            raise SCPIError(-221, "Settings conflict;marker not active")
        return _rs(self.markers[n])

    def _mark_y_q(self, p, s):
        none(p)
        n = s.get("MARKER", 1)
        if not self.marker_on.get(n):
            raise SCPIError(-221, "Settings conflict;marker not active")
        _x, y = self._marker_value(n)
        if y is None:
            raise SCPIError(-221, "Settings conflict;marker outside the trace")
        return _rs(round(y, 4))

    def _pexc(self, p, s):
        self.excursion_db = number(one(p), "DB", 0.0, 80.0)

    def _pexc_q(self, p, s):
        none(p)
        return _rs(self.excursion_db)

    def _ques_pow_cond_q(self, p, s):
        none(p)
        return "1" if self.overload else "0"

    def _ques_pow_event_q(self, p, s):
        none(p)
        v, self.overload_event = self.overload_event, False
        return "1" if v else "0"

    @classmethod
    def _setup_commands(cls, r):
        super()._setup_commands(r)
        r.command(":INSTrument[:SELect]", set=cls._inst, query=cls._inst_q)
        r.command("[:SENSe]:FREQuency:CENTer", set=cls._center, query=cls._center_q)
        r.command("[:SENSe]:FREQuency:SPAN", set=cls._span, query=cls._span_q)
        r.command("[:SENSe]:FREQuency:STARt", set=cls._start, query=cls._start_q)
        r.command("[:SENSe]:FREQuency:STOP", set=cls._stop, query=cls._stop_q)
        r.command("[:SENSe]:BANDwidth|BWIDth[:RESolution]", set=cls._rbw, query=cls._rbw_q)
        r.command("[:SENSe]:BANDwidth|BWIDth[:RESolution]:AUTO", set=cls._rbw_auto, query=cls._rbw_auto_q)
        r.command("[:SENSe]:BANDwidth|BWIDth:VIDeo", set=cls._vbw, query=cls._vbw_q)
        r.command("[:SENSe]:BANDwidth|BWIDth:VIDeo:AUTO", set=cls._vbw_auto, query=cls._vbw_auto_q)
        r.command(":DISPlay[:WINDow<n>]:TRACe<n>:Y[:SCALe]:RLEVel", set=cls._rlev, query=cls._rlev_q)
        r.command(":DISPlay[:WINDow<n>]:TRACe<n>:MODE", set=cls._trace_mode, query=cls._trace_mode_q)
        r.command(":INPut:ATTenuation", set=cls._att, query=cls._att_q)
        r.command(":INPut:ATTenuation:AUTO", set=cls._att_auto, query=cls._att_auto_q)
        r.command("[:SENSe]:SWEep:POINts", set=cls._points, query=cls._points_q)
        r.command("[:SENSe]:SWEep:COUNt", set=cls._swe_coun, query=cls._swe_coun_q)
        r.command("[:SENSe]:SWEep:TIME", set=cls._swt, query=cls._swt_q)
        r.command("[:SENSe]:SWEep:TIME:AUTO", set=cls._swt_auto, query=cls._swt_auto_q)
        r.command("[:SENSe]:DETector<n>[:FUNCtion]", set=cls._det, query=cls._det_q)
        r.command(":INITiate<n>:CONTinuous", set=cls._cont, query=cls._cont_q)
        r.command(":INITiate<n>[:IMMediate]", set=cls._init)
        r.command(":ABORt", set=cls._abort)
        r.command(":FORMat[:DATA]", set=cls._form, query=cls._form_q)
        r.command(":FORMat:BORDer", set=cls._bord, query=cls._bord_q)
        r.command(":TRACe<n>[:DATA]", query=cls._trace_q)
        r.command(":CALCulate<n>:MARKer<n>[:STATe]", set=cls._mark_state, query=cls._mark_state_q)
        r.command(":CALCulate<n>:MARKer<n>:MAXimum[:PEAK]", set=cls._mark_max)
        r.command(":CALCulate<n>:MARKer<n>:X", set=cls._mark_x, query=cls._mark_x_q)
        r.command(":CALCulate<n>:MARKer<n>:Y", query=cls._mark_y_q)
        r.command(":CALCulate<n>:MARKer<n>:PEXCursion", set=cls._pexc, query=cls._pexc_q)
        r.command(":CALCulate<n>:MARKer<n>:FUNCtion:ZOOM", set=cls._noop)
        r.command(":STATus:QUEStionable:POWer:CONDition", query=cls._ques_pow_cond_q)
        r.command(":STATus:QUEStionable:POWer[:EVENt]", query=cls._ques_pow_event_q)
        r.command(":SYSTem:DISPlay:UPDate", set=cls._noop)
        r.command(":SYSTem:PRESet", set=lambda self, p, s: self.reset())


# ============================================================================ Windfreak SynthHD


class _SynthChannel:
    __slots__ = ("freq_mhz", "power", "h", "E", "r", "phase", "locked_at")

    def __init__(self):
        self.freq_mhz = 2000.0
        self.power = -10.0
        self.h = 0  # RF output (mute control): off at power-on in the simulator
        self.E = 1  # PLL power
        self.r = 1  # PA power
        self.phase = 0.0
        self.locked_at = 0.0


class SimWindfreakSynthHD:
    """Windfreak SynthHD v2 (two channels), its serial API: no SCPI, no error queue.

    ``handle(data: bytes) -> bytes``: a chunk of the byte stream (commands concatenated without
    terminators, e.g. ``C0f2070.00000000W-10.000h1E1r1``) in, the reply lines (``\\n`` after
    each) out. A chunk is a packet: a number that runs to the end of the chunk ends there.
    Unknown commands are ignored, as the device does; an out-of-range frequency or power is
    ignored too (the previous value stays) [device behaviour not documented, a choice].
    Channel A (``C0``) feeds the ring.
    """

    F_MIN_MHZ, F_MAX_MHZ = 10.0, 15000.0
    P_MIN, P_MAX = -70.0, 20.0
    MODEL = "SynthHD"
    SERIAL = "9990006"
    FIRMWARE = f"Firmware Version 3.22 sim-{SIM_VERSION} (simulated)"
    HARDWARE = "Hardware Version 2.06"
    SUB_VERSION = "HD"

    _TOKEN = re.compile(rb"v[0-9]?|[A-Za-z~*^@\[\]<>,;/:](?:\?|[-+]?[0-9]*\.?[0-9]*)|[+\-]|[\s\x00]+|.", re.S)

    def __init__(self, rig: SimRig):
        self.rig = rig
        self.clock = rig.clock
        self.lock = rig.lock
        from sim.faults import Faults
        self.faults = Faults()
        self.channels = [_SynthChannel(), _SynthChannel()]
        self.selected = 0
        self.other: dict[tuple[int, str], str] = {}
        self.reference_mode = 1
        self.temperature_c = 32.5
        if rig.generator is None:
            rig.generator = self

    def drive(self):
        ch = self.channels[0]
        if ch.h and ch.E and ch.r:
            return ch.freq_mhz * 1e6, ch.power
        return None, None

    def locked(self, ch: _SynthChannel) -> bool:
        return bool(ch.E) and self.clock.now() >= ch.locked_at

    def handle(self, data) -> bytes | None:
        if isinstance(data, str):
            data = data.encode("latin-1")
        # a serial port cannot be unplugged here: a "disconnect" loses the packet
        out = handle_with_faults(self, data, lambda d: self._execute(d) or None, None)
        return out or None

    def force_unlock(self, seconds: float) -> None:
        """Fault injection: channel A's PLL reads unlocked for ``seconds`` of rig time, or until
        a new frequency makes it lock again."""
        self.channels[0].locked_at = self.clock.now() + float(seconds)

    def _execute(self, data: bytes) -> bytes:
        out = []
        for m in self._TOKEN.finditer(data):
            tok = m.group(0)
            c = tok[:1]
            if c in b" \t\r\n\x00":
                continue
            try:
                reply = self._command(tok.decode("latin-1"))
            except ValueError:
                reply = None  # malformed number: ignored
            if reply is not None:
                self.clock.advance(SERIAL_QUERY_S, release=self.lock)
                out.append(reply.encode("latin-1") + b"\n")
        return b"".join(out)

    def _command(self, tok: str) -> str | None:
        c, arg = tok[0], tok[1:]
        ch = self.channels[self.selected]
        q = arg == "?"
        if c == "v":
            return {"0": self.FIRMWARE, "1": self.HARDWARE, "2": self.SUB_VERSION}.get(arg or "0")
        if c == "+":
            return self.MODEL
        if c == "-":
            return self.SERIAL
        if c == "p":
            return "1" if self.locked(ch) else "0"
        if c == "z":
            return f"{self.temperature_c:.2f}"
        if c == "C":
            if q:
                return str(self.selected)
            if arg in ("0", "1"):
                self.selected = int(arg)
            return None
        if c == "f":
            if q:
                return f"{ch.freq_mhz:.8f}"
            if arg:
                f = float(arg)
                if self.F_MIN_MHZ <= f <= self.F_MAX_MHZ:
                    ch.freq_mhz = f
                    ch.locked_at = self.clock.now() + SYNTH_LOCK_S
            return None
        if c == "W":
            if q:
                return f"{ch.power:.3f}"
            if arg:
                p = float(arg)
                if self.P_MIN <= p <= self.P_MAX:
                    ch.power = p
            return None
        if c in "hEr":
            if q:
                return str(getattr(ch, c))
            if arg in ("0", "1"):
                was = getattr(ch, c)
                setattr(ch, c, int(arg))
                if c == "E" and arg == "1" and not was:
                    ch.locked_at = self.clock.now() + SYNTH_LOCK_S
            return None
        if c == "~":
            if q:
                return f"{ch.phase:.3f}"
            if arg:
                v = float(arg)
                if 0.0 <= v <= 360.0:
                    ch.phase = v
            return None
        if c == "x":
            if q:
                return str(self.reference_mode)
            if arg in ("0", "1", "2"):
                self.reference_mode = int(arg)
            return None
        if c.isalpha() or c in "~*^@[]<>,;/:":
            key = (self.selected, c)
            if q:
                return self.other.get(key, "0")
            if arg:
                self.other[key] = arg
            return None
        return None  # anything else: ignored, as the device does
