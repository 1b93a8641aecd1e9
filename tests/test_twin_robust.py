"""The dense model's twin under a changed ring: mismatch detection, its float32 buffer, and runs recorded
before either replaying with the options they recorded."""
from __future__ import annotations

import json

import numpy as np
import pytest

from labpgt.experiment.registry import make_estimator
from labpgt.models.dense import HybridModel
from labpgt.reservoirs.direct import ToyReservoir

N_NODES, BATCH = 2, 8
OLD_OPTIONS = {"hidden", "buffer_size", "fit_iters", "fit_lr", "first_fit_iters", "warmup_steps", "warmup_epsilon",
               "current_dither"}
SMALL = dict(warmup_steps=2, first_fit_iters=60, fit_iters=10, buffer_size=400)


def setup(seed=0):
    res = ToyReservoir(n_nodes=N_NODES, features_per_node=6, noise_std=0.05, seed=seed)
    model = HybridModel(4, res.n_inputs, res.n_features, 3, hidden_before=(5,), seed=seed)
    return model, res


def feed(est, model, res, steps, *, start=0, rng=None, shift_at=None):
    """Run the twin on fresh random batches; at step ``shift_at`` the toy's response moves (a step change).
    Returns the measurements each step spent, whether it flagged a mismatch, and the generator."""
    rng = rng or np.random.default_rng(3)
    data = np.random.default_rng(100 + start)
    spent, flagged = [], []
    for step in range(start, start + steps):
        if step == shift_at:
            res.bias = res.bias + 1.5  # every feature moves: the ring's line jumped
        xb, yb = data.normal(size=(BATCH, 4)), data.integers(0, 3, BATCH)
        e = est.estimate(model, res, xb, yb, np.arange(BATCH), step, rng)
        spent.append(e.measurements_spent)
        flagged.append(bool(e.extra.get("mismatch", 0)))
    return spent, flagged, rng


def test_the_twin_as_recorded_before_records_the_same_options():
    # a run recorded before mismatch detection and the float32 buffer lists exactly these options;
    # rebuilt from them (labpgt/experiment/registry.py recorded_options), the twin is the old one
    old = make_estimator("twin")
    assert set(old.options()) == OLD_OPTIONS
    assert old.mismatch_factor == 0 and old.buffer_dtype == "f8"
    new = make_estimator("twin", mismatch_factor=2.0, buffer_dtype="f4")
    assert set(new.options()) == OLD_OPTIONS | {"mismatch_factor", "mismatch_decay", "mismatch_fast", "buffer_dtype"}
    assert make_estimator("twin", **new.options()).options() == new.options()


@pytest.mark.parametrize("bad", [dict(mismatch_factor=0.5), dict(mismatch_factor=-1.0), dict(mismatch_decay=1.0),
                                 dict(mismatch_fast=-0.1), dict(buffer_dtype="f2")])
def test_bad_mismatch_and_buffer_options_are_refused(bad):
    with pytest.raises(ValueError):
        make_estimator("twin", **bad)


def test_a_step_change_is_flagged_once_and_the_twin_rewarms_on_fresh_rows():
    model, res = setup()
    est = make_estimator("twin", mismatch_factor=2.0, **SMALL)
    spent, flagged, _ = feed(est, model, res, 60, shift_at=40)
    clean, pairs = BATCH * N_NODES, 2 * BATCH * N_NODES
    assert not any(flagged[:40]), "no mismatch while the ring holds still"
    assert flagged[40] and sum(flagged) == 1, flagged
    # the step that flagged it measured its clean pass; the next warmup_steps steps are node perturbation
    assert spent[:2] == [pairs, pairs] and spent[40] == clean and spent[41:43] == [pairs, pairs]
    assert spent[43:] == [clean] * 17
    assert est.mismatches == 1
    # the buffer was emptied at the step: it holds the 17 clean passes and 2 +/- steps after it, plus the step's own
    assert len(est.buffer) == (1 + 2 * 2 + 17) * BATCH * N_NODES


def test_without_mismatch_detection_the_old_rows_stay():
    model, res = setup()
    est = make_estimator("twin", **SMALL)
    spent, flagged, _ = feed(est, model, res, 60, shift_at=40)
    assert not any(flagged) and est.mismatches == 0
    assert spent[2:] == [BATCH * N_NODES] * 58
    assert len(est.buffer) == SMALL["buffer_size"]  # full: pre-step rows still in it


def test_after_a_step_the_rewarmed_twin_predicts_the_new_ring_better():
    errors = {}
    for factor in (0.0, 2.0):
        model, res = setup()
        est = make_estimator("twin", mismatch_factor=factor, **SMALL)
        feed(est, model, res, 46, shift_at=40)
        probe = np.random.default_rng(7).uniform(-0.9, 0.9, (200, est.net["W1"].shape[0]))
        probe[:, -1] = 0.0  # at the reference current
        truth = res.noiseless(probe[:, :-1].reshape(-1, N_NODES * (probe.shape[1] - 1)), res.current_ref_a)
        errors[factor] = float(np.sqrt(np.mean((est.forward(probe)[0] - truth.reshape(200, -1)) ** 2)))
    assert errors[2.0] < 0.5 * errors[0.0], errors


@pytest.mark.parametrize("dtype", ["f8", "f4"])
def test_state_round_trip_across_a_mismatch_continues_bit_for_bit(dtype):
    model, res = setup()
    options = dict(mismatch_factor=2.0, buffer_dtype=dtype, **SMALL)
    est = make_estimator("twin", **options)
    _, flagged, rng = feed(est, model, res, 41, shift_at=40)  # the checkpoint falls inside the re-warm
    assert flagged[40] and est.rewarm == 2
    state = json.loads(json.dumps(est.state_dict()))
    rng_state, counter, bias = rng.bit_generator.state, res.measurements, res.bias.copy()
    twin = make_estimator("twin", **options)
    twin.load_state_dict(state)
    res_b = ToyReservoir(n_nodes=N_NODES, features_per_node=6, noise_std=0.05, seed=0)
    res_b.measurements, res_b.bias = counter, bias
    rng_b = np.random.default_rng()
    rng_b.bit_generator.state = rng_state
    a, _, _ = feed(est, model, res, 8, start=41, rng=rng)
    b, _, _ = feed(twin, model, res_b, 8, start=41, rng=rng_b)
    assert a == b
    for k in est.net:
        assert est.net[k].tobytes() == twin.net[k].tobytes()
    assert est.buffer.dtype == twin.buffer.dtype == np.dtype("<" + dtype)
    assert est.buffer.tobytes() == twin.buffer.tobytes()
    assert est.residual == twin.residual and est.mismatches == twin.mismatches == 1


def test_the_float32_buffer_halves_the_buffer_in_the_checkpoint():
    sizes = {}
    for dtype in ("f8", "f4"):
        model, res = setup()
        est = make_estimator("twin", buffer_dtype=dtype, **SMALL)
        feed(est, model, res, 20)
        sizes[dtype] = len(json.dumps(est.state_dict()["buffer"]))
    assert sizes["f4"] < 0.55 * sizes["f8"], sizes


# --------------------------------------------------------------------------- recorded runs, end to end
def _tuned_twin(monkeypatch, options: dict):
    """The registry's twin tuned with ``options`` (as a release before or after this one had it)."""
    import dataclasses

    from labpgt.experiment import registry

    spec = registry.ESTIMATORS["twin"]
    tuning = dataclasses.replace(spec.tuning["dense"], options=options)
    monkeypatch.setitem(registry.ESTIMATORS, "twin", dataclasses.replace(spec, tuning={**spec.tuning, "dense": tuning}))


def _estimator_state(path):
    from labpgt.runfile import RunReader

    with RunReader(path) as r:
        state = r.last_checkpoint()
        return json.loads(state["extra"])["estimator"], state["params"], json.loads(r.metadata["estimator_options"])


def test_a_twin_run_recorded_with_other_options_replays_and_resumes_with_its_own(tmp_path, monkeypatch):
    from labpgt.cli import main

    argv = ["train", "--estimator", "twin", "--budget", "400", "--seed", "1", "--no-progress",
            "--checkpoint-every", "10"]
    straight, broken = tmp_path / "straight.h5", tmp_path / "broken.h5"
    with monkeypatch.context() as mp:
        _tuned_twin(mp, {})  # the twin as every run before mismatch detection recorded it
        assert main([*argv, "--out", str(straight)]) == 0
        _stop_after_step(mp, 20)
        assert main([*argv, "--out", str(broken)]) == 130
    _, params, options = _estimator_state(straight)
    assert set(options) == OLD_OPTIONS
    # today's tuning differs; the recorded options rebuild the twin the run had
    _tuned_twin(monkeypatch, {"mismatch_factor": 2.0, "buffer_size": 300, "buffer_dtype": "f4"})
    assert main(["replay", str(straight)]) == 0
    assert main(["train", "--resume", str(broken), "--no-progress"]) == 0
    assert _estimator_state(broken)[1].tobytes() == params.tobytes()
    assert main(["replay", str(broken)]) == 0


def test_a_twin_meeting_a_step_change_replays_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    from labpgt.cli import main

    _tuned_twin(monkeypatch, {"mismatch_factor": 2.0, "buffer_size": 500, "buffer_dtype": "f4"})
    # the embedded ring warms 2 K at 80 s of its virtual clock, about half way through this run
    argv = ["train", "--estimator", "twin", "--budget", "1200", "--seed", "1", "--no-progress",
            "--checkpoint-every", "10", "--ring-step-at-s", "80"]
    straight, broken = tmp_path / "straight.h5", tmp_path / "broken.h5"
    assert main([*argv, "--out", str(straight)]) == 0
    state, params, options = _estimator_state(straight)
    assert options["mismatch_factor"] == 2.0 and options["buffer_dtype"] == "f4"
    assert state["mismatches"] >= 1 and "f4" in state["buffer"]
    assert main(["replay", str(straight)]) == 0
    with monkeypatch.context() as mp:
        _stop_after_step(mp, STOP_AFTER_MISMATCH)
        assert main([*argv, "--out", str(broken)]) == 130
    assert _estimator_state(broken)[0]["mismatches"] >= 1  # the resume starts from a twin that has re-warmed
    assert main(["train", "--resume", str(broken), "--no-progress"]) == 0
    assert _estimator_state(broken)[1].tobytes() == params.tobytes()
    assert main(["replay", str(broken)]) == 0


STOP_AFTER_MISMATCH = 120


def _stop_after_step(monkeypatch, at_step):
    """A SIGTERM-like stop request once the trainer has completed ``at_step`` steps."""
    from labpgt.training.trainer import Trainer

    real = Trainer.record_step

    def record_step(self, est):
        real(self, est)
        if self.step == at_step:
            self.stop_requested = True

    monkeypatch.setattr(Trainer, "record_step", record_step)
