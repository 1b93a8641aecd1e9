"""Physics model of the magnonic auto-oscillation ring (YIG MSSW delay line + amplifier loop).

Implements ``shared/reference/ring-physics.md``. Every assumption marked [A] there is a field of
:class:`RingParams` with the reference's default. Frequencies are in Hz, fields in Oe,
magnetisation as 4*pi*Ms in gauss, powers in dBm at the interfaces and in mW inside.

Signal path round the loop (one choice, documented so the numbers can be traced):
amplifier -> analyzer coupler (tap to the analyzer) -> attenuator -> YIG delay line (transducers,
propagation loss, nonlinear damping) -> injection coupler (the drive enters here) -> amplifier.

Speed: everything that depends only on the bias field and Ms (the eigenmodes, the winner mode,
the dispersion sampled on an analyzer grid) is cached by a quantised (field, Ms) key; small
departures from the key are applied as a first-order frequency shift of the whole structure.
Per call, only scalar power balances and a vectorised render of a few lines remain.

Choices where the reference leaves room (all visible in the numbers, see tests/test_ring_physics.py):
- propagation loss is 8.686*tau_DL*(gamma'*dH/2) with gamma' = 2.8 MHz/Oe, literally as written
  (~0.6 dB at the winner; the angular-rate reading would be 2*pi larger and put the threshold
  at ~26 dB). Threshold at 1.8 A: ~28.9 dB of attenuation.
- Adler: tau_g is the delay line's group delay at the winner, P_inj and P_osc are taken at the
  amplifier input (the injection point). With K = 3 this gives +-5.5 MHz at -10 dBm and
  +-0.18 MHz at -40 dBm while the line sits at -9 dBm at the analyzer; the reference's own
  +-7.5 MHz / -5..-10 dBm cannot both hold with its other defaults (raise adler_k to ~4 for 7.5).
- Params that shape the dispersion are cached: after changing any of them call clear_cache().
  attenuation_db, gains, powers, noise and drift settings are read on every call.

Only numpy and the standard library may be imported here (``sim`` is the far side of the wire).
"""
from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

__all__ = ["RingParams", "Ring", "dbm_to_mw", "mw_to_dbm"]

_KB = 1.380649e-23  # J/K
_LN10_10 = math.log(10.0) / 10.0
_FOUR_LN2 = 4.0 * math.log(2.0)
_TINY_MW = 1e-30  # power floor inside (never log 0)


def dbm_to_mw(p_dbm):
    return 10.0 ** (np.asarray(p_dbm, dtype=float) / 10.0)


def mw_to_dbm(p_mw):
    return 10.0 * np.log10(np.maximum(np.asarray(p_mw, dtype=float), _TINY_MW))


def _mw_to_dbm_in_place(p_mw: np.ndarray) -> np.ndarray:
    """mw_to_dbm into the float64 array it is given (a sweep's own buffer): the same numbers."""
    np.maximum(p_mw, _TINY_MW, out=p_mw)
    np.log10(p_mw, out=p_mw)
    return np.multiply(p_mw, 10.0, out=p_mw)


def _db(x: float) -> float:
    return 10.0 * math.log10(max(x, _TINY_MW))


def _lin(db: float) -> float:
    return math.exp(db * _LN10_10)


def _smooth_relu(v: float, w: float) -> float:
    """max(v, 0) with the corner rounded over |v| < w (C1, exactly 0 below -w)."""
    if v <= -w:
        return 0.0
    if v >= w:
        return v
    return (v + w) * (v + w) / (4.0 * w)


@dataclass
class RingParams:
    """Model parameters. Defaults are the [A] values of ring-physics.md unless noted as added here."""

    # --- bias magnet [A] ---
    coil_oe_per_a: float = 140.0
    remanence_oe: float = 3.0
    coil_tau_s: float = 0.3
    hysteresis_oe: float = 0.0  # optional +-1 Oe [A]; 0 disables
    # --- YIG film ---
    gamma_hz_per_oe: float = 2.8e6  # gamma' [T]
    film_thickness_m: float = 5e-6
    ms_4pi_gauss: float = 1750.0
    linewidth_oe: float = 0.5
    # --- loop [A] ---
    amp_gain_db: float = 40.0
    amp_saturation_dbm: float = 15.0  # saturated output power of a Rapp-type soft limiter
    amp_rapp_p: float = 0.5  # smoothness of the Rapp limiter (added here); 0.5 puts the line near -9 dBm
    noise_figure_db: float = 5.0
    noise_temperature_k: float = 290.0
    attenuation_db: float = 20.0
    electronic_delay_s: float = 30e-9
    line_length_m: float = 8e-3
    transducer_loss_db: float = 10.0  # both transducers together
    transducer_k_low_rad_m: float = 500.0  # low-k roll-off of the antennas (added here): +10log10(1+(k0/k)^2) dB
    mode_k_max_rad_m: float = 1.0e5  # modes listed / spin-wave band rendered up to this wavenumber (added here)
    leakage_db: float = -60.0  # direct electromagnetic leakage through the line, out of band
    injection_coupler_db: float = -10.0
    analyzer_coupler_db: float = -20.0
    # --- nonlinearity [A] ---
    yig_threshold_dbm: float = 0.0  # nonlinear damping threshold at the line's input
    nonlinear_shift_hz: float = -0.5e6  # frequency shift of the oscillation with line input at threshold
    # --- injection [A] ---
    adler_k: float = 3.0
    lock_softness: float = 0.3  # lock/unlock edge rounded over |delta^2/df_L^2 - 1| < this (added)
    n_sidebands: int = 3  # beat sidebands rendered on the far side of the pulled line (added)
    # --- analyzer [A] ---
    analyzer_floor_dbm_hz: float = -160.0
    amplitude_jitter_db: float = 0.05
    overload_margin_db: float = 5.0
    min_noise_bw_hz: float = 1e3  # regulariser for the regenerative noise peak (added)
    noise_scale: float = 1.0  # multiplies all random noise (0 = noiseless, 3 = three times the noise)
    # --- drift [A] ---
    drift_enabled: bool = True
    ms_temp_coeff_gauss_per_k: float = -3.5
    temp_walk_k_per_sqrt_h: float = 0.5
    gain_walk_db_per_sqrt_h: float = 0.2
    drift_grid_s: float = 120.0  # walk sampled on this grid and linearly interpolated (smooth over seconds)


@dataclass
class _Structure:
    """What depends only on (field, Ms): dispersion constants, eigenmodes, the winner."""

    key: tuple
    f_h: float
    f_m: float
    f0: float
    f_kmax: float
    modes_hz: np.ndarray
    mode_loss_db: np.ndarray  # passive loss of each mode (line + couplers), dB
    winner: int  # -1 if no mode
    f_w: float
    loss_w_db: float
    tau_dl_w: float  # delay-line group delay at the winner, s
    tau_loop_w: float  # loop group delay at the winner, s
    df_dh: float  # winner's frequency shift per Oe of bias field, Hz/Oe
    df_dms: float  # per gauss of 4*pi*Ms, Hz/G
    phase_w: float = 0.0  # loop phase of the winner (2*pi*n), rad


@dataclass
class _State:
    """Solved steady state for one drive (powers at the amplifier output, mW)."""

    oscillating: bool
    f_free: float
    p_out_free: float
    f_lines: list
    p_lines: list  # amplifier-output mW, same length as f_lines
    gain_c: float  # compressed amplifier gain (linear)
    h_scale: float  # factor on small-signal loop amplitude from compression and damping
    lock_hw_hz: float
    p_osc_out: float = 0.0  # power in the oscillation (all its lines), mW at the amplifier output


class Ring:
    """The ring and its bias magnet on a virtual time axis. Deterministic given ``seed``."""

    _N_LINES_MAX = 16

    def __init__(self, params: RingParams | None = None, seed: int = 0):
        self.params = params if params is not None else RingParams()
        self.seed = int(seed)
        self._rng = np.random.default_rng([self.seed, 0x0A11])  # sweep noise stream
        self._struct_cache: OrderedDict = OrderedDict()
        self._grid_cache: OrderedDict = OrderedDict()
        self._walk_blocks: list[np.ndarray] = []
        self._walk_values: list[list[tuple[float, float]]] = []  # _walk_blocks as floats
        # coil: piecewise first-order lag, segments (t0, field at t0, target)
        h0 = self.params.remanence_oe
        self._coil_t: list[float] = [-math.inf]
        self._coil_seg: list[tuple[float, float, float]] = [(-math.inf, h0, h0)]
        self._current_a = 0.0

    # ------------------------------------------------------------------ housekeeping
    def clear_cache(self) -> None:
        """Forget cached dispersion (call after changing dispersion-related params)."""
        self._struct_cache.clear()
        self._grid_cache.clear()

    # ------------------------------------------------------------------ world state
    def get_state(self, needed_from_s: float | None = None) -> dict:
        """What changes as the ring is used: the sweep-noise stream and the coil's history.

        JSON-able, so a checkpoint of a simulated run can hold it and a resumed run continue
        with the very noise an uninterrupted one would have seen. ``needed_from_s``: the
        earliest time the field will still be asked for; the coil's history before it is
        forgotten first (:meth:`prune_coil_history`), so the state stays a few numbers
        however long the ring has run.
        """
        if needed_from_s is not None:
            self.prune_coil_history(needed_from_s)
        return {"rng": self._rng.bit_generator.state, "coil_t": list(self._coil_t),
                "coil_seg": [list(seg) for seg in self._coil_seg], "current_a": self._current_a}

    def set_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state["rng"]
        self._coil_t = [float(t) for t in state["coil_t"]]
        self._coil_seg = [tuple(float(v) for v in seg) for seg in state["coil_seg"]]
        self._current_a = float(state["current_a"])

    # ------------------------------------------------------------------ the coil
    def set_current(self, t_s: float, current_a: float) -> None:
        """New current setpoint at virtual time t_s; the field follows with tau = coil_tau_s."""
        p = self.params
        h_now = self.field_oe(t_s)
        target = p.coil_oe_per_a * current_a + p.remanence_oe
        if p.hysteresis_oe and current_a != self._current_a:
            # the core lags: coming from below the field is lower, from above higher
            target -= math.copysign(p.hysteresis_oe, current_a - self._current_a)
        self._current_a = float(current_a)
        t_s = float(t_s)
        # drop segments that start later than this one (a setpoint rewrites the future)
        i = bisect.bisect_right(self._coil_t, t_s)
        del self._coil_t[i:], self._coil_seg[i:]
        self._coil_t.append(t_s)
        self._coil_seg.append((t_s, h_now, target))

    def prune_coil_history(self, needed_from_s: float) -> None:
        """Forget the coil segments no ``field_oe(t)`` with ``t >= needed_from_s`` can reach.

        The segment in force at ``needed_from_s`` and every later one stay, so the field at
        those times is computed from the very same numbers (bit for bit); only the list that
        would otherwise grow with every current change for the whole run gets shorter.
        """
        i = bisect.bisect_right(self._coil_t, needed_from_s) - 1
        if i > 0:
            del self._coil_t[:i], self._coil_seg[:i]

    def field_oe(self, t_s: float) -> float:
        """Bias field at virtual time t_s, Oe."""
        i = bisect.bisect_right(self._coil_t, t_s) - 1
        t0, h0, target = self._coil_seg[max(i, 0)]
        if not math.isfinite(t0):
            return target
        tau = self.params.coil_tau_s
        if tau <= 0:
            return target
        return target + (h0 - target) * math.exp(-(t_s - t0) / tau)

    # ------------------------------------------------------------------ drift
    def _walk_value(self, j: int) -> tuple[float, float]:
        """Cumulative (temperature K, gain dB) of the seeded walk at grid index j >= 0."""
        B = 1024
        b, r = divmod(j, B)
        if b < len(self._walk_values):
            return self._walk_values[b][r]
        p = self.params
        step_h = p.drift_grid_s / 3600.0
        sig = np.array([p.temp_walk_k_per_sqrt_h, p.gain_walk_db_per_sqrt_h]) * math.sqrt(step_h)
        while len(self._walk_blocks) <= b:
            nb = len(self._walk_blocks)
            steps = np.random.default_rng([self.seed, 0xD21F, nb]).standard_normal((B, 2)) * sig
            if nb == 0:
                steps[0] = 0.0  # the walk starts at the nominal values at t = 0
                start = np.zeros(2)
            else:
                start = self._walk_blocks[-1][-1]
            self._walk_blocks.append(start + np.cumsum(steps, axis=0))
            # the same numbers as Python floats: read once per sweep, a list is ~10x cheaper to index
            self._walk_values.append([(float(v[0]), float(v[1])) for v in self._walk_blocks[-1]])
        return self._walk_values[b][r]

    def drift(self, t_s: float) -> tuple[float, float]:
        """(temperature offset K, amplifier gain offset dB) at t_s; a function of (seed, t_s) only."""
        p = self.params
        if not p.drift_enabled or t_s <= 0 or not math.isfinite(t_s):
            return 0.0, 0.0
        x = t_s / p.drift_grid_s
        j = int(x)
        a = x - j
        t0, g0 = self._walk_value(j)
        t1, g1 = self._walk_value(j + 1)
        return t0 + a * (t1 - t0), g0 + a * (g1 - g0)

    def _ms_gain(self, t_s: float) -> tuple[float, float]:
        dT, dg = self.drift(t_s)
        p = self.params
        return p.ms_4pi_gauss + p.ms_temp_coeff_gauss_per_k * dT, dg

    # ------------------------------------------------------------------ dispersion
    def _consts(self, field_oe: float, ms_g: float) -> tuple[float, float, float]:
        g = self.params.gamma_hz_per_oe
        f_h = g * max(abs(field_oe), 1e-3)  # the MSSW band only knows |H|; keep f_H > 0
        f_m = g * max(ms_g, 1.0)
        return f_h, f_m, math.sqrt(f_h * (f_h + f_m))

    def _k_of_f(self, f, f0, f_m):
        """MSSW wavenumber (rad/m) for frequency f inside the band; NaN-free (clipped)."""
        d = self.params.film_thickness_m
        u = 4.0 * (np.square(f) - f0 * f0) / (f_m * f_m)
        u = np.clip(u, 0.0, 1.0 - 1e-15)
        return -np.log1p(-u) / (2.0 * d)

    def _f_of_k(self, k, f0, f_m):
        d = self.params.film_thickness_m
        return np.sqrt(f0 * f0 + 0.25 * f_m * f_m * (-np.expm1(-2.0 * d * k)))

    def _line_terms(self, f, f_h, f_m, f0, kmax):
        """(passive loss dB of spin-wave path incl. couplers, loop phase rad, dphi/df s, tau_DL s) vs f."""
        p = self.params
        d, L = p.film_thickness_m, p.line_length_m
        k = np.minimum(self._k_of_f(f, f0, f_m), kmax)
        e2 = np.exp(-2.0 * d * k)
        fk = np.maximum(self._f_of_k(k, f0, f_m), 1.0)
        vg = 0.5 * math.pi * f_m * f_m * d * e2 / fk  # group velocity, m/s
        tau_dl = L / vg
        # propagation loss exactly as ring-physics.md writes it: 8.686 * tau_DL * (gamma' dH / 2)
        prop_db = 8.686 * tau_dl * (p.gamma_hz_per_oe * p.linewidth_oe / 2.0)
        k0 = p.transducer_k_low_rad_m
        roll_db = 10.0 * np.log10(1.0 + (k0 / np.maximum(k, 1e-9)) ** 2)
        loss_db = p.transducer_loss_db + prop_db + roll_db + self._coupler_through_db
        phase = 2.0 * math.pi * f * p.electronic_delay_s + k * L
        dphi_df = 2.0 * math.pi * (p.electronic_delay_s + tau_dl)
        return loss_db, phase, dphi_df, tau_dl

    @property
    def _coupler_through_db(self) -> float:
        p = self.params
        return -_db(1.0 - _lin(p.injection_coupler_db)) - _db(1.0 - _lin(p.analyzer_coupler_db))

    def _passive_power(self, f, f0, f_kmax, loss_db):
        """Passive power transmission of the line path: spin waves in band plus leakage."""
        inband = (f > f0) & (f < f_kmax)
        sw = np.where(inband, 10.0 ** (-np.asarray(loss_db) / 10.0), 0.0)
        return sw + 10.0 ** (self.params.leakage_db / 10.0)

    def _structure(self, field_oe: float, ms_g: float, exact: bool = False) -> tuple[_Structure, float]:
        """Cached structure for a quantised (|H|, Ms) key, and the frequency shift to apply (Hz)."""
        hq = abs(field_oe) if exact else math.floor(abs(field_oe) * 100.0 + 0.5) / 100.0
        mq = ms_g if exact else math.floor(ms_g * 10.0 + 0.5) / 10.0
        key = (hq, mq)
        st = self._struct_cache.get(key)
        if st is None:
            st = self._build_structure(key)
            if not exact:
                self._struct_cache[key] = st
                if len(self._struct_cache) > 256:
                    self._struct_cache.popitem(last=False)
        shift = st.df_dh * (abs(field_oe) - hq) + st.df_dms * (ms_g - mq)
        return st, shift

    def _build_structure(self, key) -> _Structure:
        p = self.params
        hq, mq = key
        f_h, f_m, f0 = self._consts(hq, mq)
        kmax = p.mode_k_max_rad_m
        f_kmax = float(self._f_of_k(kmax, f0, f_m))
        d, L, te = p.film_thickness_m, p.line_length_m, p.electronic_delay_s
        # eigenmodes: loop phase 2*pi*f*tau_e + k*L = 2*pi*n, monotonic in k -> interpolate, polish by Newton
        kg = np.linspace(0.0, kmax, 2048)
        fg = self._f_of_k(kg, f0, f_m)
        phg = 2 * math.pi * te * fg + kg * L
        n = np.arange(math.ceil(phg[0] / (2 * math.pi) + 1e-12), math.floor(phg[-1] / (2 * math.pi)) + 1)
        target = 2 * math.pi * n
        k = np.interp(target, phg, kg)
        for _ in range(3):
            fk = self._f_of_k(k, f0, f_m)
            dfdk = f_m * f_m * d * np.exp(-2 * d * k) / (4 * fk)
            k = k - (2 * math.pi * te * fk + k * L - target) / (2 * math.pi * te * dfdk + L)
        k = np.clip(k, 1e-9, kmax)
        modes = self._f_of_k(k, f0, f_m)
        if modes.size == 0:
            return _Structure(key, f_h, f_m, f0, f_kmax, modes, modes, -1, math.nan, math.inf, 0, 0, 0, 0)
        loss, _, _, tau_dl = self._line_terms(modes, f_h, f_m, f0, kmax)
        w = int(np.argmax(-loss))
        fw, kw = float(modes[w]), float(k[w])
        # first-order sensitivities of the winner (implicit differentiation of the phase condition)
        u = 4 * (fw * fw - f0 * f0) / (f_m * f_m)
        k_u = 1.0 / (2 * d * (1 - u))
        u_f = 8 * fw / (f_m * f_m)
        u_h = -4 * (2 * f_h + f_m) / (f_m * f_m)
        u_m = -4 * f_h / (f_m * f_m) - 2 * u / f_m
        den = 2 * math.pi * te + L * k_u * u_f
        g = p.gamma_hz_per_oe
        df_dh = -L * k_u * u_h * g / den
        df_dms = -L * k_u * u_m * g / den
        return _Structure(key, f_h, f_m, f0, f_kmax, modes, loss, w, fw, float(loss[w]),
                          float(tau_dl[w]), te + float(tau_dl[w]), df_dh, df_dms,
                          2 * math.pi * te * fw + kw * L)

    def _grid(self, st: _Structure, freqs: np.ndarray):
        """(|h| passive loop amplitude without amp/attenuator, phase, dphase/df) on an analyzer grid, cached."""
        gkey = (st.key, freqs.size, hash(freqs.tobytes()))
        g = self._grid_cache.get(gkey)
        if g is None:
            loss, phase, dphi, _ = self._line_terms(freqs, st.f_h, st.f_m, st.f0, self.params.mode_k_max_rad_m)
            pw = self._passive_power(freqs, st.f0, st.f_kmax, loss)
            g = (np.sqrt(pw), pw, np.mod(phase, 2.0 * math.pi), dphi)  # mod 2pi: cheaper cos
            self._grid_cache[gkey] = g
            if len(self._grid_cache) > 64:
                self._grid_cache.popitem(last=False)
        return g

    def _point(self, st: _Structure, f: float) -> tuple[float, float]:
        """(passive power transmission, loop phase) at one frequency (structure frame).

        Scalar twin of _line_terms + _passive_power (math instead of numpy: ~20x faster for one
        point); tests check that both agree."""
        p = self.params
        d, L = p.film_thickness_m, p.line_length_m
        f0, f_m, kmax = st.f0, st.f_m, p.mode_k_max_rad_m
        u = min(max(4.0 * (f * f - f0 * f0) / (f_m * f_m), 0.0), 1.0 - 1e-15)
        k = min(-math.log1p(-u) / (2.0 * d), kmax)
        e2 = math.exp(-2.0 * d * k)
        fk = max(math.sqrt(f0 * f0 + 0.25 * f_m * f_m * (1.0 - e2)), 1.0)
        tau_dl = L / (0.5 * math.pi * f_m * f_m * d * e2 / fk)
        prop_db = 8.686 * tau_dl * (p.gamma_hz_per_oe * p.linewidth_oe / 2.0)
        roll_db = 10.0 * math.log10(1.0 + (p.transducer_k_low_rad_m / max(k, 1e-9)) ** 2)
        loss_db = p.transducer_loss_db + prop_db + roll_db + self._coupler_through_db
        t = _lin(-loss_db) if f0 < f < st.f_kmax else 0.0
        t += _lin(p.leakage_db)
        return t, 2.0 * math.pi * f * p.electronic_delay_s + k * L

    # ------------------------------------------------------------------ power balance
    def _comp(self, x: float) -> float:
        """Rapp compression factor G_c/G at normalised drive x = G*P_in/P_sat."""
        pr = self.params.amp_rapp_p
        return (1.0 + x ** pr) ** (-1.0 / pr) if x > 0 else 1.0

    def _damp(self, x: float, comp: float, a_line_sat: float) -> float:
        """YIG nonlinear damping factor (power) for line input a_line*P_out, P_out = P_sat*x*comp."""
        return 1.0 / (1.0 + a_line_sat * x * comp)

    def _free_running_x(self, e_small: float, a_line_sat: float) -> float:
        """Solve E*c(x)*D(x) = 1 for the normalised amp drive x (0 if below threshold).

        F(y) = ln E + ln c + ln D with y = ln x decreases monotonically; safeguarded Newton."""
        if e_small <= 1.0:
            return 0.0
        pr = self.params.amp_rapp_p
        lne = math.log(e_small)
        lo, hi = -60.0, 60.0
        # start from the limiter alone: c = 1/E
        y = math.log((e_small ** pr - 1.0) ** (1.0 / pr))
        for _ in range(60):
            x = math.exp(y)
            xp = x ** pr
            c = (1.0 + xp) ** (-1.0 / pr)
            bxc = a_line_sat * x * c
            F = lne + math.log(c) - math.log1p(bxc)
            if F > 0:
                lo = y
            else:
                hi = y
            s = xp / (1.0 + xp)
            dF = -s - bxc / (1.0 + bxc) * (1.0 - s)
            step = F / dF
            y_new = y - step
            if not (lo < y_new < hi):
                y_new = 0.5 * (lo + hi)
            if abs(y_new - y) < 1e-13 or hi - lo < 1e-13:
                y = y_new
                break
            y = y_new
        return math.exp(y)

    def _solve(self, st: _Structure, shift: float, gain_db: float,
               drive_hz: float | None, drive_dbm: float | None) -> _State:
        p = self.params
        g_lin = _lin(p.amp_gain_db + gain_db)
        p_sat = _lin(p.amp_saturation_dbm)
        a_line = _lin(-p.attenuation_db) * (1.0 - _lin(p.analyzer_coupler_db))
        a_line_sat = a_line * p_sat / _lin(p.yig_threshold_dbm)
        att = _lin(-p.attenuation_db)
        osc = st.winner >= 0
        x_star = 0.0
        if osc:
            e_small = g_lin * att * _lin(-st.loss_w_db)
            x_star = self._free_running_x(e_small, a_line_sat)
            osc = x_star > 0.0
        if osc:
            c_star = self._comp(x_star)
            d_star = self._damp(x_star, c_star, a_line_sat)
            p_out_free = p_sat * x_star * c_star
            p_in_star = x_star * p_sat / g_lin
            z = a_line * p_out_free / _lin(p.yig_threshold_dbm)
            f_free = st.f_w + shift + p.nonlinear_shift_hz * z
        else:
            c_star, d_star, p_out_free, p_in_star, f_free = 1.0, 1.0, 0.0, 0.0, math.nan

        rf_on = drive_hz is not None and drive_dbm is not None and math.isfinite(drive_hz) \
            and math.isfinite(drive_dbm)
        if not rf_on:
            if osc:
                return _State(True, f_free, p_out_free, [f_free], [p_out_free], g_lin * c_star,
                              math.sqrt(c_star * d_star), 0.0, p_out_free)
            return _State(False, f_free, 0.0, [], [], g_lin, 1.0, 0.0)

        f_s = float(drive_hz)
        p_inj = _lin(drive_dbm + p.injection_coupler_db)
        t_pass, phi = self._point(st, f_s - shift)
        h0 = math.sqrt(g_lin * att * t_pass)  # small-signal loop amplitude at the drive
        if osc:
            lock_hw = p.adler_k / (2 * math.pi * st.tau_dl_w) * math.sqrt(p_inj / p_in_star)
            # Inside the winner's own resonance the tone is the locked (or pulling) oscillation, not a
            # separately regenerated signal: its phase offset from the winner is kept at least about
            # the locking phase 2*pi*tau*df_L (soft clamp, fading out at the basin edge |dphi| = pi).
            dphi = phi - st.phase_w
            if abs(dphi) < math.pi:
                dphi_l = min(2 * math.pi * st.tau_loop_w * lock_hw, math.pi)
                wgt = 1.0 - (dphi / math.pi) ** 2
                phi = math.sqrt(dphi * dphi + (dphi_l * wgt) ** 2)
        else:
            lock_hw = 0.0
        cphi = math.cos(phi)

        def p_tone_in(x: float) -> tuple[float, float, float]:
            c = self._comp(x)
            dmp = self._damp(x, c, a_line_sat)
            h = h0 * math.sqrt(c * dmp)
            den = max(1.0 - 2.0 * h * cphi + h * h, 1e-12)
            return p_inj / den, c, dmp

        p_osc_in = 0.0
        if osc:
            pt, c, dmp = p_tone_in(x_star)
            if pt < p_in_star:
                p_osc_in = p_in_star - pt
        if p_osc_in <= 0.0:
            # tone alone sets the compression: solve ln(P_in) = ln(P_tone(P_in)) on ln x (regula falsi)
            def F(y):
                xx = math.exp(y)
                pt_, _, _ = p_tone_in(xx)
                return y + math.log(p_sat / g_lin) - math.log(pt_)
            lo = math.log(x_star) if osc else math.log(p_inj / (1.0 + h0) ** 2 * g_lin / p_sat) - 0.1
            # at P_in >= 4*att*T*P_sat the compressed loop amplitude is <= 1/2 (Rapp c(x) <= 1/x), so
            # P_tone <= 4*P_inj <= P_in there: F(hi) > 0 brackets the root
            hi = math.log(max(4.0 * p_inj, 4.0 * t_pass * att * p_sat, p_in_star) * 1.01 * g_lin / p_sat) + 0.1
            flo, fhi = F(lo), F(hi)
            if flo >= 0:
                y = lo
            elif fhi <= 0:
                y = hi
            else:
                side = 0
                y = lo
                for _ in range(60):
                    y = (lo * fhi - hi * flo) / (fhi - flo)
                    fy = F(y)
                    if abs(fy) < 1e-11 or hi - lo < 1e-11:
                        break
                    if fy > 0:
                        hi, fhi = y, fy
                        if side == 1:
                            flo *= 0.5
                        side = 1
                    else:
                        lo, flo = y, fy
                        if side == -1:
                            fhi *= 0.5
                        side = -1
            x = math.exp(y)
            pt, c, dmp = p_tone_in(x)
        g_c = g_lin * c
        f_lines = [f_s]
        p_lines = [g_c * pt]
        if p_osc_in > 0.0:
            p_osc_out = g_c * p_osc_in
            delta = f_s - f_free
            w = max(p.lock_softness, 1e-6)
            uu = (delta * delta - lock_hw * lock_hw) / (lock_hw * lock_hw)
            fb = lock_hw * math.sqrt(_smooth_relu(uu, w))  # beat frequency, softened at the lock edge
            r2 = (lock_hw / (math.sqrt(fb * fb + lock_hw * lock_hw) + fb)) ** 2
            s = math.tanh(delta / (w * lock_hw))
            js = range(-1, p.n_sidebands + 2)  # -1: near side, 0: at the drive, 1: pulled line, >1 far side
            wts = [r2 ** abs(j - 1) for j in js]
            tot = sum(wts)
            for j, wt in zip(js, wts):
                f_lines.append(f_s - s * j * fb)
                p_lines.append(p_osc_out * wt / tot)
        return _State(osc, f_free, p_out_free, f_lines, p_lines, g_c, math.sqrt(c * dmp), lock_hw,
                      g_c * p_osc_in)

    # ------------------------------------------------------------------ public physics
    def _prepare(self, field_oe: float, t_s: float):
        ms, dg = self._ms_gain(t_s)
        st, shift = self._structure(field_oe, ms)
        return st, shift, dg

    def state(self, field_oe: float, drive_hz: float | None, drive_dbm: float | None, t_s: float = 0.0) -> _State:
        st, shift, dg = self._prepare(field_oe, t_s)
        return self._solve(st, shift, dg, drive_hz, drive_dbm)

    def free_running(self, field_oe: float, t_s: float = 0.0) -> tuple[float, float] | None:
        """(Hz, dBm at the analyzer) of the auto-oscillation, None below threshold."""
        s = self.state(field_oe, None, None, t_s)
        if not s.oscillating:
            return None
        return s.f_free, _db(s.p_out_free * _lin(self.params.analyzer_coupler_db))

    def locking_half_width_hz(self, field_oe: float, drive_dbm: float, t_s: float = 0.0) -> float:
        """Adler half-width of the locking range for a drive of drive_dbm (0 below threshold)."""
        s = self.free_running(field_oe, t_s)
        if s is None:
            return 0.0
        return self.state(field_oe, s[0], drive_dbm, t_s).lock_hw_hz

    def lines(self, field_oe: float, drive_hz: float | None, drive_dbm: float | None,
              t_s: float = 0.0) -> list[tuple[float, float]]:
        """Noiseless spectral lines (Hz, dBm at the analyzer), sorted by frequency; lines closer
        than 1 kHz are merged (power-weighted)."""
        s = self.state(field_oe, drive_hz, drive_dbm, t_s)
        c = _lin(self.params.analyzer_coupler_db)
        items = sorted((f, pw * c) for f, pw in zip(s.f_lines, s.p_lines) if pw * c > 1e-25)
        merged: list[list[float]] = []
        for f, pw in items:
            if merged and f - merged[-1][0] < 1e3:
                m = merged[-1]
                m[0] = (m[0] * m[1] + f * pw) / (m[1] + pw)
                m[1] += pw
            else:
                merged.append([f, pw])
        return [(f, _db(pw)) for f, pw in merged]

    def mode_frequencies(self, field_oe: float, t_s: float = 0.0) -> np.ndarray:
        """Ring eigenmode frequencies (Hz) in the spin-wave band, up to mode_k_max_rad_m."""
        ms, _ = self._ms_gain(t_s)
        st, _ = self._structure(field_oe, ms, exact=True)
        return st.modes_hz.copy()

    def threshold_attenuation_db(self, field_oe: float, t_s: float = 0.0) -> float:
        """Attenuator setting at which the best mode's small-signal loop gain is exactly 1."""
        st, _, dg = self._prepare(field_oe, t_s)
        if st.winner < 0:
            return -math.inf
        return self.params.amp_gain_db + dg - st.loss_w_db

    # ------------------------------------------------------------------ rendering
    def _render(self, st: _Structure, shift: float, freqs: np.ndarray, rbw_hz: float,
                states: list[_State]) -> tuple[np.ndarray, np.ndarray]:
        """Noiseless analyzer powers split in (lines [n, P], noise-like background [n, P]), mW."""
        p = self.params
        n, npts = len(states), freqs.size
        c_an = _lin(p.analyzer_coupler_db)
        rbw = max(float(rbw_hz), 1e-3)
        # ---- regenerative amplifier noise kT F G B / |1 - H|^2 (the comb) + analyzer floor
        amp, amp2, phase, dphi = self._grid(st, freqs)
        cosph = np.cos(phase - dphi * shift)
        att = _lin(-p.attenuation_db)
        # |1-H|^2 + (pi tau B)^2: the second term stands for the RBW averaging of a peak narrower than B
        reg = (math.pi * st.tau_loop_w * max(rbw, p.min_noise_bw_hz)) ** 2 if st.winner >= 0 else 1e-12
        ktfb = _KB * p.noise_temperature_k * 1e3 * _lin(p.noise_figure_db) * rbw * c_an
        floor = _lin(p.analyzer_floor_dbm_hz) * rbw
        if n == 1:
            s0 = states[0]
            a = s0.h_scale * math.sqrt(s0.gain_c * att)
            # ((ktfb g) / ((1 + reg) + a^2 |h|^2 - 2a |h| cos) + floor), the same operations in the same
            # order as one expression would do them, in two buffers instead of seven temporaries
            bg = np.multiply(amp2, a * a)
            np.add(bg, 1.0 + reg, out=bg)
            np.multiply(amp, cosph, out=cosph)
            np.multiply(cosph, 2.0 * a, out=cosph)
            np.subtract(bg, cosph, out=bg)
            np.divide(ktfb * s0.gain_c, bg, out=bg)
            np.add(bg, floor, out=bg)
            bg = bg[None, :]
        else:
            gains = np.array([s.gain_c for s in states])
            hsc = np.array([s.h_scale for s in states]) * np.sqrt(gains * att)
            den = (1.0 + reg) + np.square(hsc)[:, None] * amp2 - (2.0 * hsc)[:, None] * (amp * cosph)
            bg = (ktfb * gains)[:, None] / den + floor
        # ---- lines: Gaussian RBW peaks as a peak detector sees them on this grid (bucket-wide top)
        nl = max((len(s.f_lines) for s in states), default=0)
        if not nl or not npts:
            return np.zeros((n, npts)), bg
        if n == 1:
            lf = np.array(states[0].f_lines)[None, :]
            lp = np.array(states[0].p_lines)[None, :]
        else:
            lf = np.zeros((n, nl))
            lp = np.zeros((n, nl))
            for i, s in enumerate(states):
                m = len(s.f_lines)
                if m:
                    lf[i, :m] = s.f_lines
                    lp[i, :m] = s.p_lines
        bucket = abs(float(freqs[-1]) - float(freqs[0])) / (npts - 1) if npts > 1 else 0.0
        # +-3.6 RBW covers the Gaussian down to -156 dB
        half = int(math.ceil((3.6 * rbw + 0.5 * bucket) / bucket)) if bucket > 0 else npts
        W = min(2 * half + 1, npts)
        idx = np.minimum(np.maximum(np.searchsorted(freqs, lf) - (W // 2), 0), max(npts - W, 0))[..., None] + np.arange(W)
        dist = np.maximum(np.abs(freqs[idx] - lf[..., None]) - 0.5 * bucket, 0.0)
        contrib = (lp * c_an)[..., None] * np.exp(dist * dist * (-_FOUR_LN2 / (rbw * rbw)))
        if n > 1:
            idx = idx + (np.arange(n) * npts)[:, None, None]
        lines_mw = np.bincount(idx.ravel(), weights=contrib.ravel(), minlength=n * npts).reshape(n, npts)
        return lines_mw, bg

    def _render_any(self, st, shift, freqs_hz, rbw_hz, states):
        """_render for any monotonic grid (the line windows need ascending frequencies)."""
        freqs = np.asarray(freqs_hz, dtype=float).ravel()
        if freqs.size > 1 and freqs[0] > freqs[-1]:
            lines_mw, bg = self._render(st, shift, np.ascontiguousarray(freqs[::-1]), rbw_hz, states)
            return lines_mw[:, ::-1], bg[:, ::-1]
        return self._render(st, shift, freqs, rbw_hz, states)

    def _noisy(self, lines_mw, bg, rng, averages: int):
        """Sweep noise: exponential (chi-square for averages) on the noise-like part, jitter on lines."""
        s = self.params.noise_scale
        if rng is None or s <= 0:
            return lines_mw + bg
        n = max(int(averages), 1)
        if n == 1:
            e = rng.standard_exponential(bg.shape)
        else:
            e = rng.gamma(n, 1.0 / n, bg.shape)
        if s != 1.0:
            # keep the mean power, scale the spread
            e = e ** s * math.exp(math.lgamma(n) + s * math.log(n) - math.lgamma(n + s))
        jit = rng.standard_normal((bg.shape[0], 1)) * (self.params.amplitude_jitter_db * s / math.sqrt(n))
        # lines_mw * 10^(jit/10) + bg * e, into the buffers of this sweep (lines_mw and e are its own)
        np.multiply(lines_mw, np.exp(jit * _LN10_10), out=lines_mw)
        np.multiply(bg, e, out=e)
        return np.add(lines_mw, e, out=lines_mw)

    def spectrum(self, t_s: float, freqs_hz: np.ndarray, rbw_hz: float,
                 drive_hz: float | None, drive_dbm: float | None,
                 averages: int = 1, ref_level_dbm: float = 0.0) -> tuple[np.ndarray, bool]:
        """One analyzer sweep at t_s (mean of `averages` sweeps in linear power): (trace dBm, overload)."""
        field = self.field_oe(t_s)
        st, shift, dg = self._prepare(field, t_s)
        s = self._solve(st, shift, dg, drive_hz, drive_dbm)
        lines_mw, bg = self._render_any(st, shift, freqs_hz, rbw_hz, [s])
        trace = _mw_to_dbm_in_place(self._noisy(lines_mw, bg, self._rng, averages))[0]
        limit = ref_level_dbm + self.params.overload_margin_db
        total_in = sum(s.p_lines) * _lin(self.params.analyzer_coupler_db)
        overload = _db(total_in) > limit or (trace.size > 0 and float(trace.max()) > limit)
        if overload:
            np.minimum(trace, limit, out=trace)
        return trace, bool(overload)

    def spectra(self, freqs_hz: np.ndarray, rbw_hz: float, field_oe: float,
                drive_hz: np.ndarray, drive_dbm: np.ndarray, rng: np.random.Generator | None,
                t_s: float = 0.0) -> np.ndarray:
        """Vectorised direct mode: one trace per drive at one field, [n, points] dBm.

        rng=None is noiseless and deterministic. A non-finite drive_hz or drive_dbm means RF off.
        No reference level, no clipping.
        """
        st, shift, dg = self._prepare(field_oe, t_s)
        fs = np.atleast_1d(np.asarray(drive_hz, dtype=float))
        ps = np.broadcast_to(np.atleast_1d(np.asarray(drive_dbm, dtype=float)), fs.shape)
        states = [self._solve(st, shift, dg, float(f), float(pw)) for f, pw in zip(fs.ravel(), ps.ravel())]
        lines_mw, bg = self._render_any(st, shift, freqs_hz, rbw_hz, states)
        return mw_to_dbm(self._noisy(lines_mw, bg, rng, 1))
