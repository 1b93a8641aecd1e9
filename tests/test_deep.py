"""Deep physical networks (labpgt/models/deep.py) and physical local learning (labpgt/estimators/phyll.py)."""
from __future__ import annotations

import numpy as np
import pytest

from labpgt.cli import main
from labpgt.contracts import Perturbation
from labpgt.estimators.phyll import PhysicalLocalLearning, contrastive_loss, goodness, label_scores, overlay_label
from labpgt.models.deep import DeepPhysicalModel, DeepTrainer, block_of_node
from labpgt.models.dense import softmax_cross_entropy
from labpgt.reservoirs.direct import ToyReservoir
from labpgt.runfile import RunReader


# --------------------------------------------------------------------------- the pieces
def test_overlay_puts_the_one_hot_label_scaled_to_max_abs_x_first():
    x = np.array([[0.5, -2.0, 1.0, 0.1], [3.0, 0.0, -1.0, 0.2]])
    out = overlay_label(x, np.array([2, 0]), 3, "prepend")
    assert out.shape == (2, 7)
    assert np.array_equal(out[:, :3], [[0.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    assert np.array_equal(out[:, 3:], x)
    replaced = overlay_label(x, np.array([1, 2]), 3, "replace")
    assert np.array_equal(replaced, [[0.0, 2.0, 0.0, 0.1], [0.0, 0.0, 3.0, 0.2]])
    with pytest.raises(ValueError, match="labels must be 2 integers in \\[0, 3\\)"):
        overlay_label(x, np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="allowed: prepend, replace"):
        overlay_label(x, np.array([0, 1]), 3, "append")


def test_goodness_is_the_cosine_of_abs_h_with_the_direction_and_its_gradient_is_exact():
    rng = np.random.default_rng(1)
    h = rng.normal(size=(5, 6))
    r = rng.normal(size=6)
    r /= np.linalg.norm(r)
    g, grad = goodness(h, r)
    a = np.abs(h)
    assert np.allclose(g, (a @ r) / np.linalg.norm(a, axis=1), rtol=1e-12)
    assert np.all(np.abs(g) <= 1.0)
    step = 1e-6
    for i, j in [(0, 0), (2, 3), (4, 5)]:
        up, down = h.copy(), h.copy()
        up[i, j] += step
        down[i, j] -= step
        fd = (goodness(up, r)[0][i] - goodness(down, r)[0][i]) / (2 * step)
        assert grad[i, j] == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_contrastive_loss_is_softplus_of_the_scaled_margin():
    loss, dloss = contrastive_loss(np.array([0.9, 0.1]), np.array([0.1, 0.9]), 4.0)
    assert loss == pytest.approx(np.log1p(np.exp(-4.0 * np.array([0.8, -0.8]))), rel=1e-12)
    assert dloss == pytest.approx(-4.0 / (1.0 + np.exp(4.0 * np.array([0.8, -0.8]))), rel=1e-12)


def _goodness_model(blocks=2, seed=3):
    reservoir = ToyReservoir(n_nodes=1, features_per_node=6, noise_std=0.05, seed=seed)
    model = DeepPhysicalModel(4, reservoir.n_inputs, reservoir.n_features, 3, n_blocks=blocks, width=5,
                              head="goodness", n_label_inputs=3, train_current=False, train_knob_maps=False,
                              seed=seed)
    return model, reservoir


def test_phyll_gradient_is_the_exact_gradient_of_the_summed_local_losses():
    """Finite differences of sum_k mean_i softplus(-theta (g_k+ - g_k-)) over each linear layer,
    the measured features and every block's input held fixed (nothing flows through the ring)."""
    model, reservoir = _goodness_model()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 4)), rng.integers(0, 3, size=7)
    est = PhysicalLocalLearning()
    e = est.estimate(model, reservoir, x, y, np.arange(7), 0, np.random.default_rng(5))
    assert e.measurements_spent == 2 * 2 * 7  # positive and negative pass through both blocks
    # the same passes, kept for the finite differences
    wrong = (y + np.random.default_rng(5).integers(1, 3, size=7)) % 3
    reservoir.measurements = 0
    _, (pos, neg) = model.forward_passes(reservoir, [overlay_label(x, y, 3), overlay_label(x, wrong, 3)],
                                         [Perturbation(0, 1), Perturbation(0, -1)], kind="train", step=0,
                                         sample_index=np.arange(7))

    def local_loss(params):
        total = 0.0
        for k in range(model.n_blocks):
            h_pos, _ = model.linear(k, pos[k].features, pos[k].a_in, params)
            h_neg, _ = model.linear(k, neg[k].features, neg[k].a_in, params)
            r = model.goodness_directions[k]
            total += contrastive_loss(goodness(h_pos, r)[0], goodness(h_neg, r)[0], est.theta)[0].mean()
        return total

    theta = model.params()
    assert e.loss == pytest.approx(local_loss(theta), rel=1e-12)
    trained = np.flatnonzero(model.trainable_mask())
    assert np.array_equal(np.flatnonzero(e.grad), trained[e.grad[trained] != 0])  # only the linear layers
    assert not model.trainable_mask()[model.group_mask("before", "physical")].any()
    step = 1e-6
    for i in trained[:: max(1, len(trained) // 25)]:
        up, down = theta.copy(), theta.copy()
        up[i] += step
        down[i] -= step
        assert e.grad[i] == pytest.approx((local_loss(up) - local_loss(down)) / (2 * step), rel=1e-5, abs=1e-9)


def test_label_scores_take_one_pass_per_candidate_label_and_block():
    model, reservoir = _goodness_model()
    x = np.random.default_rng(2).normal(size=(4, 4))
    scores = label_scores(model, reservoir, x, overlay="prepend", kind="eval", step=0, sample_index=np.arange(4))
    assert scores.shape == (4, 3)
    assert reservoir.measurements == 3 * 2 * 4
    assert np.all(np.abs(scores) <= model.n_blocks)


def test_deep_backward_with_exact_knob_gradients_is_the_exact_gradient():
    """model.backward, given the true dL/du_k of every block, equals the finite-difference gradient
    of the whole network through a noiseless reservoir: the digital chain rule across blocks is right."""
    reservoir = ToyReservoir(n_nodes=2, features_per_node=4, noise_std=0.0, seed=1)
    model = DeepPhysicalModel(3, reservoir.n_inputs, reservoir.n_features, 3, n_blocks=3, width=4, seed=2,
                              train_current=False)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.integers(0, 3, size=5)

    def loss(params=None, offsets=None):
        tops, traces = model.forward_passes(reservoir, [x], [Perturbation()], kind="train", step=0,
                                            sample_index=np.arange(5), params=params,
                                            knob_offsets=None if offsets is None else [offsets])
        return model.per_sample_loss(tops[0], y, params).mean(), tops[0], traces[0]

    _, top, passes = loss()
    zero = [np.zeros((5, model.n_knobs)) for _ in range(model.n_blocks)]
    step = 1e-6
    grad_u = []
    for k in range(model.n_blocks):
        g = np.zeros((5, model.n_knobs))
        for i in range(5):
            for j in range(model.n_knobs):
                up = [o.copy() for o in zero]
                down = [o.copy() for o in zero]
                up[k][i, j] += step
                down[k][i, j] -= step
                g[i, j] = (loss(offsets=up)[0] - loss(offsets=down)[0]) / (2 * step)
        grad_u.append(g)
    _, grad_logits = softmax_cross_entropy(model.logits(top), y)
    grad = model.backward(passes, top, grad_logits / 5, grad_u)
    theta = model.params()
    for i in np.flatnonzero(model.trainable_mask())[::7]:
        up, down = theta.copy(), theta.copy()
        up[i] += step
        down[i] -= step
        assert grad[i] == pytest.approx((loss(up)[0] - loss(down)[0]) / (2 * step), rel=1e-4, abs=1e-8)


def test_block_of_node_undoes_the_run_files_encoding():
    block, node = block_of_node(np.array([0, 1, 2, 3, 4, 5]), 2)
    assert block.tolist() == [0, 0, 1, 1, 2, 2] and node.tolist() == [0, 1, 0, 1, 0, 1]


# --------------------------------------------------------------------------- end to end
def _stop_after_step(monkeypatch, at_step):
    """A SIGTERM-like stop request once the trainer has completed ``at_step`` steps."""
    real = DeepTrainer.record_step

    def record_step(self, est):
        real(self, est)
        if self.step == at_step:
            self.stop_requested = True

    monkeypatch.setattr(DeepTrainer, "record_step", record_step)


def _final_params(path):
    with RunReader(path) as r:
        return r.last_checkpoint()["params"]


def test_phyll_two_blocks_records_replays_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    argv = ["train", "--estimator", "phyll", "--blocks", "2", "--budget", "640", "--seed", "3", "--no-progress",
            "--eval-every", "4", "--checkpoint-every", "3"]
    straight = tmp_path / "straight.h5"
    assert main([*argv, "--out", str(straight)]) == 0
    with RunReader(straight) as r:
        m = r.measurements
        node, kind = m.column("node"), m.column("kind")
        sign, direction = m.column("perturbation_sign"), m.column("perturbation_direction")
        steps = r.steps()
        evaluations = r.evaluations()
    block, _ = block_of_node(node, 1)
    train = kind == 0
    # every training step: 8 samples (phyll's batch) x (positive, negative) x 2 blocks, block by block
    assert steps["measurements"][-1] == 640 and train.sum() == 640
    assert np.bincount(block[train]).tolist() == [320, 320]
    assert sorted(set(sign[train].tolist())) == [-1, 1]
    first_step = np.flatnonzero(train)[:32]
    assert block[first_step].tolist() == [0] * 16 + [1] * 16
    assert sign[first_step].tolist() == ([1] * 8 + [-1] * 8) * 2
    # evaluation: one pass per candidate label (3) and block (2) for each of Iris's 30 test samples
    evals = ~train
    assert evals.sum() == 3 * 2 * 30 * len(evaluations["step"])
    assert sorted(set(direction[evals].tolist())) == [0, 1, 2] and set(sign[evals].tolist()) == {0}
    assert main(["replay", str(straight)]) == 0

    broken = tmp_path / "broken.h5"
    with monkeypatch.context() as mp:
        _stop_after_step(mp, 5)
        assert main([*argv, "--out", str(broken)]) == 130
    with RunReader(broken) as r:
        assert r.status == "aborted"
    assert main(["train", "--resume", str(broken), "--no-progress"]) == 0
    assert _final_params(broken).tobytes() == _final_params(straight).tobytes()
    assert main(["replay", str(broken)]) == 0


def test_node_through_two_blocks_records_and_replays(tmp_path):
    run = tmp_path / "node.h5"
    assert main(["train", "--blocks", "2", "--budget", "256", "--seed", "1", "--no-progress", "--eval-every", "2",
                 "--out", str(run)]) == 0
    with RunReader(run) as r:
        block, _ = block_of_node(r.measurements.column("node"), 1)
        train = r.measurements.column("kind") == 0
        assert np.bincount(block[train]).tolist() == [128, 128]  # 2 steps x 32 samples x (+, -) per block
        assert np.bincount(block[~train]).tolist() == [30, 30]  # one evaluation (step 2, the end) of 30 samples
    assert main(["replay", str(run)]) == 0


@pytest.mark.parametrize("argv, words", [
    (["--blocks", "2", "--estimator", "twin"], ["'twin'", "allowed for the deep model: node, pgt, phyll"]),
    (["--estimator", "phyll", "--model", "transformer"], ["'phyll'", "exists only for the deep model"]),
    (["--estimator", "phyll"], ["'phyll'", "exists only for the deep model", "allowed for the dense model"]),
    (["--blocks", "2", "--model", "transformer"], ["'blocks' = 2 applies to the deep model only"]),
    (["--width", "8"], ["'width' = 8 applies to the deep model only"]),
    (["--blocks", "2", "--hidden", "4"], ["'hidden' = 4 applies to the dense model only"]),
    (["--blocks", "2", "--estimator", "pgt", "--one-sided"], ["'one_sided' does not apply to estimator 'pgt' on the "
                                                              "deep model", "--epsilon, --directions, --distribution"]),
    (["--estimator", "phyll", "--blocks", "2", "--epsilon", "0.05"],
     ["'epsilon' does not apply to estimator 'phyll'", "its options: none"]),
    (["--ring-step-kelvin", "-1"], ["ring_step_kelvin", "set ring_step_at_s too"]),
    (["--ring-step-at-s", "5", "--station", "lab.toml"], ["ring_step_at_s", "embedded simulated ring only"]),
    (["--ring-step-at-s", "5", "--model", "transformer"], ["ring_step_at_s", "applies to the dense and deep models only"]),
])
def test_deep_options_that_do_not_fit_are_refused(argv, words, capsys, tmp_path):
    assert main(["train", *argv, "--budget", "64", "--out", str(tmp_path / "x.h5"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not (tmp_path / "x.h5").exists()


def test_a_scheduled_ring_step_changes_nothing_before_it_and_moves_the_line_after():
    from sim.ring import Ring, RingParams

    field = 140.0 * 1.8 + 3.0
    plain = Ring(RingParams(drift_enabled=False), seed=0)
    stepped = Ring(RingParams(drift_enabled=False, step_at_s=10.0, step_temperature_k=2.0, step_gain_db=-0.5), seed=0)
    freqs = np.linspace(2.080e9, 2.090e9, 201)
    drive = np.array([2.0854e9, np.nan])
    before = [r.spectra(freqs, 1e4, field, drive, np.array([-20.0, -20.0]), None, t_s=9.99) for r in (plain, stepped)]
    assert before[0].tobytes() == before[1].tobytes()
    assert plain.free_running(field, 20.0) == plain.free_running(field, 0.0)
    line_before, line_after = stepped.free_running(field, 9.99), stepped.free_running(field, 10.0)
    assert line_after[0] < line_before[0] - 1e6  # Ms falls with temperature: the line moves down by MHz
    assert stepped.step_change(10.0) == (2.0, -0.5) and stepped.step_change(9.99) == (0.0, 0.0)


def test_ring_step_options_reach_the_embedded_rings_parameters():
    from labpgt.experiment.options import OPTIONS
    from labpgt.experiment.run import ring_step
    from labpgt.reservoirs.direct import simulated_ring_params

    config = {name: opt.default for name, opt in OPTIONS.items()}
    assert ring_step(config) is None
    plain = simulated_ring_params(1.0, step=ring_step(config))
    assert plain.step_at_s is None
    step = ring_step({**config, "ring_step_at_s": 30.0, "ring_step_kelvin": -1.5, "ring_step_gain_db": -0.5})
    stepped = simulated_ring_params(1.0, step=step)
    assert (stepped.step_at_s, stepped.step_temperature_k, stepped.step_gain_db) == (30.0, -1.5, -0.5)


def test_the_deep_model_builds_through_the_one_builder_and_records_its_options(tmp_path):
    """--blocks > 1 selects the registry's deep model; phyll's tuning gives it the goodness head."""
    import json

    from labpgt.experiment.builder import make_trainer
    from labpgt.data.datasets import load
    from labpgt.estimators import DeepNodePerturbation

    trainer = make_trainer(load("iris"), "phyll", ToyReservoir(n_nodes=1, features_per_node=6, seed=0), model="deep",
                           model_options={"n_blocks": 3, "width": 5}, budget=64)
    assert isinstance(trainer, DeepTrainer) and isinstance(trainer.estimator, PhysicalLocalLearning)
    assert trainer.model.head == "goodness" and trainer.model.n_blocks == 3 and trainer.batch_size == 8
    assert not trainer.model.trainable_mask()[trainer.model.group_mask("before", "physical")].any()
    run = tmp_path / "pgt.h5"
    assert main(["train", "--blocks", "2", "--estimator", "pgt", "--directions", "2", "--batch-size", "4",
                 "--budget", "64", "--no-progress", "--out", str(run)]) == 0
    with RunReader(run) as r:
        assert json.loads(r.metadata["estimator_options"])["n_directions"] == 2
        assert 'model = "deep"' in r.metadata["experiment_toml"] and "blocks = 2" in r.metadata["experiment_toml"]
    assert isinstance(make_trainer(load("iris"), "node", ToyReservoir(seed=0), model="deep").estimator,
                      DeepNodePerturbation)
