"""The training loop: batch -> estimator -> optimizer -> record -> evaluate -> checkpoint.

Budgets are in measurements (one per sample per virtual node). Training measurements and
evaluation measurements are counted separately; the loop stops once the training
measurements reach ``budget`` (the last step may overshoot it by less than one step's cost).

Resumability: ``state_dict()`` holds everything that changes during a run (parameters,
optimizer state, estimator state, the generator's ``bit_generator.state``, step, counters,
and the reservoir's measurement counter, which keys the simulated noise). A new Trainer on the
same configuration that loads it continues bit for bit.

Optimisation happens in scaled coordinates params / model.param_scale(), so the bias current
(A, scale ~1 mA) and the weights (scale 1) take comparable steps under one learning rate.
"""
from __future__ import annotations

import json
import time
from typing import Callable

import numpy as np

from labpgt.contracts import Estimator, NullRecorder, Recorder, Reservoir, Transformation


class Trainer:
    """Train ``model`` through ``reservoir`` on ``dataset`` with ``estimator`` and ``optimizer``.

    batch_size: samples per step; budget: training measurements to spend; eval_every: steps
    between evaluations on the test split (0 = only at the end); checkpoint_every: steps
    between checkpoints (0 = only at the end); seed: seeds the generator for batches and
    perturbations; recorder: a Recorder (run file) or None; progress: callable(record) called
    after every step and evaluation (record["kind"] is "step" or "eval").
    Set ``stop_requested = True`` (e.g. from a signal handler) to stop after the current step;
    ``run()`` then writes a checkpoint and returns "aborted".
    """

    def __init__(
        self,
        model,
        reservoir: Reservoir,
        estimator: Estimator,
        dataset,
        optimizer: Transformation,
        *,
        batch_size: int = 16,
        budget: int = 30_000,
        eval_every: int = 25,
        checkpoint_every: int = 100,
        seed: int = 0,
        eval_batch_size: int = 64,
        recorder: Recorder | None = None,
        progress: Callable[[dict], None] | None = None,
    ):
        if batch_size < 1 or batch_size > len(dataset.y_train):
            raise ValueError(f"batch_size must be in [1, {len(dataset.y_train)}], got {batch_size}")
        self.model, self.reservoir, self.estimator, self.optimizer = model, reservoir, estimator, optimizer
        self.dataset = dataset
        self.batch_size, self.budget = int(batch_size), int(budget)
        self.eval_every, self.checkpoint_every = int(eval_every), int(checkpoint_every)
        self.eval_batch_size = int(eval_batch_size)
        self.recorder = recorder if recorder is not None else NullRecorder()
        self.progress = progress
        self.stop_requested = False
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.scale = model.param_scale()
        self.trainable = model.trainable_mask()
        self.opt_state = optimizer.init_state(model.params() / self.scale)
        self.step = 0
        self.train_measurements = 0
        self.eval_measurements = 0
        self.evaluations: list[dict] = []  # every evaluation record, in order
        self.status = "created"

    # ------------------------------------------------------------------ the loop
    def run(self) -> str:
        """Train until the budget is spent; returns "completed", "aborted" or "diverged"."""
        self.status = "running"
        while self.train_measurements < self.budget:
            if self.stop_requested:
                return self._finish("aborted")
            start = self._step_start()
            try:
                x, y, index = self.next_batch()
                est = self.estimator.estimate(self.model, self.reservoir, x, y, index, self.step, self.rng)
            except Exception as exc:  # an instrument that could not be recovered, ...
                self._fail(start, exc)
                raise
            self.train_measurements += est.measurements_spent
            if not (np.all(np.isfinite(est.grad)) and np.isfinite(est.loss)):
                return self._finish("diverged")
            self.apply(est.grad)
            self.step += 1
            self.record_step(est)
            if self.eval_every and self.step % self.eval_every == 0:
                self.evaluate()
            if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                self.checkpoint()
        if not self.evaluations or self.evaluations[-1]["step"] != self.step:
            self.evaluate()
        return self._finish("completed")

    # ------------------------------------------------------------------ the pieces
    def next_batch(self):
        index = self.rng.choice(len(self.dataset.y_train), size=self.batch_size, replace=False)
        return self.dataset.x_train[index], self.dataset.y_train[index], index

    def apply(self, grad: np.ndarray) -> None:
        """One optimizer update in scaled coordinates; frozen parameters never move."""
        grad_scaled = np.where(self.trainable, grad, 0.0) * self.scale
        scaled, self.opt_state = self.optimizer.update(grad_scaled, self.opt_state, self.model.params() / self.scale)
        new = np.where(self.trainable, scaled * self.scale, self.model.params())
        self.model.set_params(self.project(new))

    def project(self, params: np.ndarray) -> np.ndarray:
        """Keep the bias current inside ``model.current_bounds_a`` (A), if the model has bounds.

        A deliberate constraint of the optimisation (projected gradient descent), not a silent
        clamp of an instrument value: the bounds sit inside the station's limits with room for
        the estimators' perturbations, so no request ever leaves the limits.
        """
        bounds = self.model.current_bounds_a
        if bounds is None or "physical.current_a" not in self.model.slots:
            return params
        where = self.model.slots["physical.current_a"].slice
        params = params.copy()
        params[where] = np.clip(params[where], bounds[0], bounds[1])
        return params

    def record_step(self, est) -> None:
        record = {
            "kind": "step",
            "step": self.step,
            "loss": est.loss,
            "accuracy": est.accuracy,
            "grad_norm": float(np.linalg.norm(est.grad)),
            "measurements_spent": int(est.measurements_spent),
            "measurements": self.train_measurements,
            "current_a": self.model.current_a(),
            "time_s": time.time(),  # wall clock, for the run file; not part of the state
            **{k: v for k, v in est.extra.items() if np.isscalar(v)},
        }
        self.recorder.step(record)
        if self.progress:
            self.progress(record)

    def evaluate(self) -> dict | None:
        """Loss and accuracy on the test split, measured (kind "eval", counted separately)."""
        x, y = self.dataset.x_test, self.dataset.y_test
        start = self.reservoir.measurements
        loss, accuracy = self.test_loss_and_accuracy(x, y)
        self.eval_measurements += self.reservoir.measurements - start
        record = {
            "kind": "eval",
            "step": self.step,
            "loss": loss,
            "accuracy": accuracy,
            "test_loss": loss,  # the run file's column names
            "test_accuracy": accuracy,
            "measurements": self.train_measurements,
            "eval_measurements": self.eval_measurements,
            "time_s": time.time(),
        }
        self.evaluations.append(record)
        self.recorder.evaluation(record)
        if self.progress:
            self.progress(record)
        return record

    def test_loss_and_accuracy(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Measure the test split through the reservoir (kind "eval"): (mean loss, accuracy).

        Models that pass through the ring more than once override this (labpgt/models/deep.py).
        """
        features = []
        for lo in range(0, len(y), self.eval_batch_size):
            # no early exit on stop_requested here: a half-done evaluation would leave the
            # simulated world's noise stream where an uninterrupted run never is, and a
            # resumed run would no longer end bit-identical
            u, _ = self.model.encode(x[lo : lo + self.eval_batch_size])
            features.append(
                self.reservoir.measure(
                    u, current_a=self.model.current_a(), kind="eval", step=self.step,
                    sample_index=np.arange(lo, lo + len(u)),
                )
            )
        return self.model.loss_and_accuracy(np.concatenate(features), y)

    def checkpoint(self) -> None:
        self.recorder.checkpoint(self.state_dict())

    def _step_start(self) -> tuple:
        """What a step changes before it is applied (to checkpoint a failed step as never begun)."""
        rows = self.recorder.n_measurements
        return (self.rng.bit_generator.state, self.reservoir.measurements,
                json.dumps(self.estimator.state_dict()), rows)

    def _fail(self, start: tuple, exc: BaseException) -> None:
        """A step failed: checkpoint the state at its start (marked failed) so --resume redoes it."""
        rng_state, measurements, estimator_state, rows = start
        try:
            self.rng.bit_generator.state = rng_state
            self.reservoir.measurements = measurements
            self.estimator.load_state_dict(json.loads(estimator_state))
            self.status = "failed"
            state = self.state_dict()
            state["measurement_rows"] = int(rows)  # the failed step's rows are abandoned on resume
            self.recorder.checkpoint(state)
        except Exception as ckpt_exc:
            if ckpt_exc.__cause__ is not exc:  # not merely the recorder that failed with the step, once more
                exc.add_note(f"the checkpoint of the failed step could not be written either: {ckpt_exc!r}")

    def _finish(self, status: str) -> str:
        self.status = status
        self.checkpoint()
        return status

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to continue bit for bit, in the run file's checkpoint layout.

        params (float64 [n_params]), optimizer ({name: array}), step, measurements (training
        measurements so far), rng_state (JSON of ``bit_generator.state``: PCG64 holds 128-bit
        integers, which JSON keeps exact) and extra (JSON: estimator state, evaluation count,
        the reservoir's counter, status).
        """
        return {
            "params": self.model.params(),
            "optimizer": {k: np.array(v, copy=True) for k, v in self.opt_state.items()},
            "step": self.step,
            "measurements": self.train_measurements,
            "rng_state": json.dumps(self.rng.bit_generator.state),
            "extra": json.dumps({
                "estimator": self.estimator.state_dict(),
                "eval_measurements": self.eval_measurements,
                "reservoir_measurements": int(self.reservoir.measurements),
                "status": self.status,
            }),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from state_dict() or from a run file's checkpoint (same keys)."""
        extra = json.loads(state["extra"])
        self.model.set_params(np.asarray(state["params"], dtype=np.float64))
        # the run file stores every optimizer array as float64; keep each array's own dtype here
        template = self.optimizer.init_state(self.model.params() / self.scale)
        self.opt_state = {k: np.array(state["optimizer"][k], dtype=np.asarray(v).dtype) for k, v in template.items()}
        self.estimator.load_state_dict(extra["estimator"])
        self.rng.bit_generator.state = json.loads(state["rng_state"])
        self.step = int(state["step"])
        self.train_measurements = int(state["measurements"])
        self.eval_measurements = int(extra["eval_measurements"])
        # the simulated noise is keyed by this counter; a station just continues its count
        self.reservoir.measurements = int(extra["reservoir_measurements"])
