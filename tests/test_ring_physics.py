"""Sanity checks of the ring model (shared/reference/ring-physics.md), one test per check."""
import math

import numpy as np
import pytest

from sim.ring import Ring, RingParams

CURRENT_A = 1.8
FIELD_OE = 140.0 * CURRENT_A + 3.0
RBW = 50e3


def floor_dbm(rbw=RBW):
    return -160.0 + 10 * math.log10(rbw)


def ring_at(att_db=20.0, seed=0, **kw):
    return Ring(RingParams(attenuation_db=att_db, **kw), seed=seed)


def rf_off(n=1):
    return np.full(n, np.nan), np.full(n, np.nan)


# ---------------------------------------------------------------- threshold and levels
def test_threshold_between_26_and_30_db():
    assert ring_at(26.0).free_running(FIELD_OE) is not None
    assert ring_at(30.0).free_running(FIELD_OE) is None
    thr = ring_at().threshold_attenuation_db(FIELD_OE)
    assert 26.5 < thr < 29.5


def test_below_threshold_only_the_comb_above_the_floor():
    r = ring_at(30.0)
    fm = r.mode_frequencies(FIELD_OE)
    fw = fm[np.argmin(np.abs(fm - 2.085e9))]
    fr = np.linspace(fw - 20e6, fw + 20e6, 2001)
    tr = r.spectra(fr, RBW, FIELD_OE, *rf_off(), rng=None)[0]
    assert tr.max() < -60.0  # no line
    assert tr.min() > floor_dbm() - 0.01  # nothing below the analyzer floor
    assert tr.max() > floor_dbm() + 15.0  # the comb stands out
    # peaks at the eigenmodes, deep valleys between them
    peaks = [i for i in range(1, fr.size - 1) if tr[i] >= tr[i - 1] and tr[i] >= tr[i + 1] and tr[i] > tr.min() + 10]
    pf = fr[peaks]
    inside = fm[(fm > fr[0] + 1e5) & (fm < fr[-1] - 1e5)]
    assert len(pf) == len(inside) >= 4
    assert np.max(np.abs(pf - inside)) < 50e3
    assert tr.max() - np.median(tr) > 10.0


def test_line_at_minus_5_to_minus_10_dbm_above_threshold():
    r = ring_at(20.0)
    f, p = r.free_running(FIELD_OE)
    assert -10.0 <= p <= -5.0
    assert 2.0e9 < f < 2.15e9  # near the lab code's 2068 MHz
    fr = np.linspace(f - 10e6, f + 10e6, 1001)
    tr = r.spectra(fr, RBW, FIELD_OE, *rf_off(), rng=None)[0]
    assert abs(fr[tr.argmax()] - f) <= 20e3
    assert abs(tr.max() - p) < 0.5
    # far from the line (and from the neighbouring modes at +-8 MHz) the trace is near the floor
    assert np.median(tr) < floor_dbm() + 6


# ---------------------------------------------------------------- modes and tuning
def test_mode_spacing_about_8_mhz_shrinking_slowly():
    fm = ring_at().mode_frequencies(FIELD_OE)
    sp = np.diff(fm)
    assert 6e6 < sp[0] < 10e6
    low = sp[:20]
    assert np.all(np.diff(low) < 0)  # shrinks with frequency ...
    assert np.all(low[1:] / low[:-1] > 0.98)  # ... slowly: under 2 % per mode
    assert low[-1] / low[0] > 0.8  # and under 20 % over the lowest ~160 MHz


def test_oscillation_frequency_rises_monotonically_with_current():
    r = ring_at()
    currents = np.arange(1.6, 2.0 + 1e-9, 0.002)
    f = np.array([r.free_running(140.0 * i + 3.0)[0] for i in currents])
    assert np.all(np.diff(f) > 0)
    slope = (f[-1] - f[0]) / (currents[-1] - currents[0])
    assert 0.5e9 < slope < 0.75e9  # df/dI ~ 0.6 GHz/A


# ---------------------------------------------------------------- injection locking
def _locked(r, f_free, det, dbm):
    """Locked: the ring still oscillates (not quenched) and 90 % of the power sits at the drive."""
    f_s = f_free + det
    if r.state(FIELD_OE, f_s, dbm).p_osc_out <= 0:
        return False
    ls = r.lines(FIELD_OE, f_s, dbm)
    p = np.array([10 ** (x[1] / 10) for x in ls])
    at = np.array([abs(x[0] - f_s) < 1e3 for x in ls])
    return p[at].sum() > 0.9 * p.sum()


def _lock_edge(r, f_free, dbm, sign):
    lo, hi = 0.0, 50e6
    assert _locked(r, f_free, 0.0, dbm)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if _locked(r, f_free, sign * mid, dbm):
            lo = mid
        else:
            hi = mid
    return lo


@pytest.mark.parametrize("dbm, lo, hi", [(-10.0, 4.5e6, 10e6), (-40.0, 0.12e6, 0.4e6)])
def test_injection_locking_range(dbm, lo, hi):
    r = ring_at()
    f_free, _ = r.free_running(FIELD_OE)
    up = _lock_edge(r, f_free, dbm, +1)
    down = _lock_edge(r, f_free, dbm, -1)
    assert lo < up < hi and lo < down < hi
    assert abs(up - down) / up < 0.1
    # the Adler half-width the model reports matches the observed edge (the soft edge starts
    # at sqrt(1 - lock_softness) of it)
    hw = r.locking_half_width_hz(FIELD_OE, dbm)
    assert math.sqrt(1 - r.params.lock_softness) * hw * 0.99 < up < 1.01 * hw


def test_unlocked_line_is_pulled_with_beat_sidebands():
    r = ring_at()
    f_free, _ = r.free_running(FIELD_OE)
    hw = r.locking_half_width_hz(FIELD_OE, -20.0)
    det = 2.0 * hw
    ls = r.lines(FIELD_OE, f_free + det, -20.0)
    fb = math.sqrt(det * det - hw * hw)
    freqs = np.array([x[0] for x in ls])
    # the strongest oscillation line sits at f_s - f_b, pulled towards the drive
    pulled = f_free + det - fb
    assert np.min(np.abs(freqs - pulled)) < 1e3
    assert f_free < pulled < f_free + det
    # sidebands spaced by the beat frequency on the far side
    assert np.min(np.abs(freqs - (pulled - fb))) < 1e3


def test_below_threshold_tone_gain_is_mode_selective():
    r = ring_at(30.0)
    fm = r.mode_frequencies(FIELD_OE)
    fw = fm[np.argmin(np.abs(fm - 2.085e9))]
    on = max(p for _, p in r.lines(FIELD_OE, fw, -40.0))
    off = max(p for _, p in r.lines(FIELD_OE, fw + 4e6, -40.0))
    assert on - off > 10.0


def test_strong_detuned_tone_quenches_the_oscillation():
    r = ring_at()
    f_free, _ = r.free_running(FIELD_OE)
    weak = r.state(FIELD_OE, f_free + 4e6, -40.0)
    strong = r.state(FIELD_OE, f_free + 8e6, -10.0)  # near the next mode, outside the lock range
    assert weak.p_osc_out > 0.5 * weak.p_out_free and len(weak.f_lines) > 1  # oscillation + tone
    assert strong.p_osc_out == 0.0 and len(strong.f_lines) == 1  # only the tone is left
    assert 8e6 > r.locking_half_width_hz(FIELD_OE, -10.0)


# ---------------------------------------------------------------- noise, seeds, drift
def _trace(seed, t=1.0, n=3):
    r = ring_at(seed=seed)
    r.set_current(0.0, CURRENT_A)
    f, _ = r.free_running(FIELD_OE)
    fr = np.linspace(f - 10e6, f + 10e6, 401)
    return [r.spectrum(t + i * 0.02, fr, RBW, f + 2e6, -20.0)[0] for i in range(n)]


def test_same_seed_same_trace_different_seed_different():
    a, b, c = _trace(7), _trace(7), _trace(8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[0], c[0])
    assert not np.allclose(a[0], a[1])  # successive sweeps are fresh noise


def test_single_sweep_noise_is_exponential_and_averaging_shrinks_it():
    r = ring_at(30.0, seed=1)
    r.set_current(0.0, CURRENT_A)
    fr = np.linspace(2.2e9, 2.21e9, 1001)  # noise only (comb + floor)
    mean = r.spectra(fr, RBW, r.field_oe(10.0), *rf_off(), rng=None, t_s=10.0)[0]
    one = r.spectrum(10.0, fr, RBW, None, None)[0] - mean
    avg = r.spectrum(10.0, fr, RBW, None, None, averages=16)[0] - mean
    s1, s16 = np.std(one), np.std(avg)
    assert np.mean(10 ** (one / 10)) == pytest.approx(1.0, abs=0.1)  # unbiased in linear power
    assert 4.5 < s1 < 6.5  # exponential power: 5.57 dB spread in dB
    assert s16 < s1 / 2.5


def test_drift_seconds_agree_hours_drift_by_mhz():
    for seed in range(4):
        r = ring_at(seed=seed)
        f1, p1 = r.free_running(FIELD_OE, t_s=100.0)
        f2, p2 = r.free_running(FIELD_OE, t_s=101.0)
        assert abs(f2 - f1) < 10e3 and abs(p2 - p1) < 0.05
        far = [r.free_running(FIELD_OE, t_s=h * 3600.0)[0] for h in (2, 4, 6, 8)]
        assert max(abs(x - f1) for x in far) > 1e6
    # noiseless traces one second apart agree within the sweep noise scale
    r = ring_at(seed=0)
    f, _ = r.free_running(FIELD_OE, t_s=100.0)
    fr = np.linspace(f - 10e6, f + 10e6, 401)
    a = r.spectra(fr, RBW, FIELD_OE, np.array([f + 3e6]), np.array([-20.0]), None, t_s=100.0)
    b = r.spectra(fr, RBW, FIELD_OE, np.array([f + 3e6]), np.array([-20.0]), None, t_s=101.0)
    band_max = lambda tr: tr[0, :400].reshape(16, 25).max(axis=1)
    assert np.max(np.abs(band_max(a) - band_max(b))) < 0.5  # sweep-to-sweep jitter is ~0.05 dB


def test_drift_is_a_function_of_time_not_of_call_order():
    a, b = ring_at(seed=3), ring_at(seed=3)
    times = [10.0, 7200.0, 50.0, 90000.0, 3.0]
    ra = {t: a.drift(t) for t in times}
    rb = {t: b.drift(t) for t in reversed(times)}
    assert ra == rb
    assert a.drift(0.0) == (0.0, 0.0)


def test_no_drift_when_disabled():
    r = ring_at(drift_enabled=False)
    assert r.free_running(FIELD_OE, 0.0) == r.free_running(FIELD_OE, 36000.0)


# ---------------------------------------------------------------- coil
def test_coil_first_order_lag():
    r = ring_at()
    tau = r.params.coil_tau_s
    h_start = r.field_oe(0.0)
    r.set_current(1.0, CURRENT_A)
    assert r.field_oe(1.0) == pytest.approx(h_start)
    assert r.field_oe(1.0 + tau) == pytest.approx(FIELD_OE - (FIELD_OE - h_start) / math.e)
    assert abs(r.field_oe(1.0 + 3 * tau) - FIELD_OE) < 0.05 * (FIELD_OE - h_start)
    # a new setpoint mid-way starts from where the field is
    h_mid = r.field_oe(1.2)
    r.set_current(1.2, 0.0)
    assert r.field_oe(1.2) == pytest.approx(h_mid)
    assert r.field_oe(100.0) == pytest.approx(r.params.remanence_oe)


def test_spectrum_uses_the_field_at_the_sweep_time():
    r = ring_at(drift_enabled=False, noise_scale=0.0)
    r.set_current(0.0, CURRENT_A)
    f_settled, _ = r.free_running(FIELD_OE)
    fr = np.linspace(f_settled - 10e6, f_settled + 10e6, 1001)
    early, _ = r.spectrum(0.05, fr, RBW, None, None)  # field still far from its target: no line here
    late, _ = r.spectrum(5.0, fr, RBW, None, None)
    assert early.max() < -60.0
    assert abs(fr[late.argmax()] - f_settled) <= 20e3


# ---------------------------------------------------------------- direct mode, finiteness, overload
def test_noiseless_spectra_deterministic_and_finite():
    r = ring_at()
    f, _ = r.free_running(FIELD_OE)
    rng = np.random.default_rng(5)
    dh = np.concatenate([f + rng.uniform(-10e6, 10e6, 60), [np.nan, f, 1e9, 5e9, f + 1.0]])
    dp = np.concatenate([rng.uniform(-40, -5, 60), [np.nan, -200.0, 10.0, 0.0, 30.0]])
    fr = np.linspace(f - 10e6, f + 10e6, 401)
    a = r.spectra(fr, RBW, FIELD_OE, dh, dp, None)
    b = ring_at().spectra(fr, RBW, FIELD_OE, dh, dp, None)
    assert a.shape == (65, 401)
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert a.min() >= floor_dbm() - 1e-6
    noisy = r.spectra(fr, RBW, FIELD_OE, dh, dp, np.random.default_rng(1))
    assert np.all(np.isfinite(noisy))
    # extreme fields and grids stay finite too
    for field in (0.0, -50.0, 3.0, 2000.0):
        for f_grid in (np.linspace(1e6, 20e9, 501), np.linspace(2.0e9, 2.001e9, 11)):
            out = r.spectra(f_grid, 1e3, field, np.array([2.05e9, np.nan]), np.array([-10.0, np.nan]),
                            np.random.default_rng(0))
            assert np.all(np.isfinite(out))


def test_single_and_batch_paths_agree():
    r = ring_at(noise_scale=0.0, drift_enabled=True)
    r.set_current(0.0, CURRENT_A)
    t = 30.0
    field = r.field_oe(t)
    f, _ = r.free_running(field, t)
    fr = np.linspace(f - 10e6, f + 10e6, 501)
    drives = [(f + 0.1e6, -40.0), (f + 3e6, -20.0), (f - 8e6, -5.0), (None, None)]
    batch = r.spectra(fr, RBW, field, np.array([d[0] if d[0] else np.nan for d in drives]),
                      np.array([d[1] if d[1] else np.nan for d in drives]), None, t_s=t)
    for row, (dh, dp) in zip(batch, drives):
        single, _ = r.spectrum(t, fr, RBW, dh, dp, ref_level_dbm=30.0)
        np.testing.assert_allclose(single, row, atol=1e-9)
    # the scalar dispersion twin agrees with the vectorised one
    st, _, _ = r._prepare(field, t)
    grid = r._grid(st, fr)
    for i in (0, 123, 400):
        tp, ph = r._point(st, fr[i])
        assert tp == pytest.approx(grid[1][i], rel=1e-9)
        assert math.remainder(ph - grid[2][i], 2 * math.pi) == pytest.approx(0.0, abs=1e-6)


def test_overload_flag_and_clipping():
    r = ring_at(seed=2)
    r.set_current(0.0, CURRENT_A)
    f, _ = r.free_running(FIELD_OE)
    fr = np.linspace(f - 10e6, f + 10e6, 401)
    tr, ov = r.spectrum(5.0, fr, RBW, None, None, ref_level_dbm=0.0)
    assert not ov
    tr, ov = r.spectrum(5.1, fr, RBW, None, None, ref_level_dbm=-30.0)
    assert ov
    assert tr.max() <= -25.0 + 1e-9


def test_lock_edge_is_soft():
    """No step at the lock edge: lines move continuously and the band features change gradually."""
    r = ring_at()
    f, _ = r.free_running(FIELD_OE)
    hw = r.locking_half_width_hz(FIELD_OE, -20.0)
    det = np.linspace(0.7 * hw, 1.3 * hw, 241)
    step = det[1] - det[0]
    centroid = []
    for d in det:
        s = r.state(FIELD_OE, f + d, -20.0)
        fl, pl = np.array(s.f_lines), np.array(s.p_lines)
        centroid.append((fl * pl).sum() / pl.sum())
    assert np.max(np.abs(np.diff(centroid))) < 2.0 * step  # no faster than twice the drive
    fr = np.linspace(f - 10e6, f + 10e6, 401)
    tr = r.spectra(fr, RBW, FIELD_OE, f + det, np.full(det.size, -20.0), None)
    band = 10 ** (tr[:, :400].reshape(det.size, 16, 25).max(axis=2) / 10)  # 16 band maxima, mW
    rel = np.abs(np.diff(band, axis=0)) / band.sum(axis=1)[:-1, None]
    assert rel.max() < 0.3


def test_descending_grid_is_the_mirror_image():
    r = ring_at()
    f, _ = r.free_running(FIELD_OE)
    fr = np.linspace(f - 5e6, f + 5e6, 201)
    a = r.spectra(fr, RBW, FIELD_OE, np.array([f + 1e6]), np.array([-30.0]), None)
    b = r.spectra(fr[::-1], RBW, FIELD_OE, np.array([f + 1e6]), np.array([-30.0]), None)
    np.testing.assert_allclose(a[:, ::-1], b, rtol=0, atol=1e-9)
