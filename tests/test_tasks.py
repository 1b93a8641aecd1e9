"""Sequence tasks: digits as rows, NARMA10 windows; shapes, fixed splits, what the target depends on."""
import numpy as np
import pytest

from labpgt.data.datasets import Dataset, load
from labpgt.data.tasks import TASKS, SequenceDataset, load_task, narma10_series


def test_tasks_tuple_names_every_loadable_task():
    assert TASKS == ("digits-seq", "narma10")
    for name in TASKS:
        ds = load_task(name)
        assert isinstance(ds, Dataset) and isinstance(ds, SequenceDataset)
        assert ds.name == name
        assert ds.n_features == ds.n_tokens * ds.token_features
    with pytest.raises(ValueError, match="allowed: digits-seq, narma10"):
        load_task("mnist")


def test_digits_seq_is_the_bundled_digits_read_row_by_row():
    ds, flat = load_task("digits-seq"), load("digits")
    assert (ds.n_tokens, ds.token_features, ds.n_classes, ds.n_outputs, ds.kind) == (8, 8, 10, 10, "classification")
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    np.testing.assert_array_equal(ds.y_train, flat.y_train)
    np.testing.assert_array_equal(ds.y_test, flat.y_test)
    # token t of a sample is pixel row t of its image
    image = flat.x_train[17].reshape(8, 8)
    tokens = ds.x_train[17].reshape(ds.n_tokens, ds.token_features)
    np.testing.assert_array_equal(tokens[3], image[3])
    np.testing.assert_array_equal(tokens, image)


def test_narma10_series_follows_the_recurrence():
    u, y = narma10_series(400, seed=0)
    assert u.min() >= 0.0 and u.max() <= 0.5
    t = 250
    expected = 0.3 * y[t] + 0.05 * y[t] * y[t - 9 : t + 1].sum() + 1.5 * u[t - 9] * u[t] + 0.1
    assert y[t + 1] == pytest.approx(expected)
    u2, y2 = narma10_series(400, seed=0)
    np.testing.assert_array_equal(y, y2)  # generated, but fixed


def test_narma10_task_layout_split_and_standardisation():
    ds = load_task("narma10")
    assert (ds.n_tokens, ds.token_features, ds.kind, ds.n_classes, ds.n_outputs) == (10, 2, "regression", 0, 1)
    assert ds.x_train.shape == (1500, 20) and ds.x_test.shape == (500, 20)
    assert ds.y_train.dtype == np.float64
    assert ds.y_train.mean() == pytest.approx(0.0, abs=1e-12) and ds.y_train.std() == pytest.approx(1.0)
    channels = ds.x_train.reshape(-1, 10, 2)
    np.testing.assert_allclose(channels.mean(axis=(0, 1)), 0.0, atol=1e-12)
    # consecutive windows overlap by 9 tokens (one step later): the windows are a sliding view
    np.testing.assert_array_equal(channels[1, :-1], channels[0, 1:])
    again = load_task("narma10")
    np.testing.assert_array_equal(ds.x_test, again.x_test)
    np.testing.assert_array_equal(ds.y_test, again.y_test)
    # no test window shares a step with a train window
    test_first = ds.x_test.reshape(-1, 10, 2)[0]
    for window in channels[-10:]:
        assert not np.any(np.all(np.isclose(window[:, None, :], test_first[None, :, :]), axis=2))


def test_narma10_target_needs_the_product_of_the_first_and_last_token():
    ds = load_task("narma10")

    def nmse(extra_train, extra_test):
        a = np.c_[ds.x_train, np.ones(1500), extra_train]
        b = np.c_[ds.x_test, np.ones(500), extra_test]
        w = np.linalg.lstsq(a, ds.y_train, rcond=None)[0]
        return float(np.mean((b @ w - ds.y_test) ** 2) / ds.target_variance)

    linear = nmse(np.zeros(1500), np.zeros(500))
    with_product = nmse(ds.x_train[:, 0] * ds.x_train[:, 18], ds.x_test[:, 0] * ds.x_test[:, 18])
    assert 0.03 < linear < 0.2  # a linear read of the window is decent, not perfect
    assert with_product < 0.01  # u(t-9) u(t) is the missing piece
