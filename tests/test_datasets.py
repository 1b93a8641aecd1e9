import subprocess
from importlib import resources
import sys
from pathlib import Path

import numpy as np
import pytest

from labpgt.data.datasets import load


@pytest.mark.parametrize("name,n_train,n_test,n_features,n_classes", [
    ("iris", 120, 30, 4, 3),
    ("digits", 1437, 360, 64, 10),
])
def test_shapes_split_and_standardisation(name, n_train, n_test, n_features, n_classes):
    ds = load(name)
    assert ds.x_train.shape == (n_train, n_features) and ds.x_test.shape == (n_test, n_features)
    assert ds.y_train.shape == (n_train,) and ds.y_test.shape == (n_test,)
    assert ds.n_classes == n_classes and ds.name == name
    # stratified: every class in the test split, in proportion within one sample
    counts = np.bincount(ds.y_test, minlength=n_classes)
    total = np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=n_classes)
    assert np.all(np.abs(counts - total * n_test / (n_train + n_test)) <= 1)
    # standardised on the train split only
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-12)
    std = ds.x_train.std(axis=0)
    assert np.all((np.abs(std - 1) < 1e-12) | (std == 0))
    assert abs(ds.x_test.mean()) > 1e-6  # the test split is not re-centred


def test_split_is_fixed_and_disjoint():
    a, b = load("iris"), load("iris")
    np.testing.assert_array_equal(a.x_train, b.x_train)
    with resources.files("labpgt.data").joinpath("iris.npz").open("rb") as fh, np.load(fh) as npz:
        train, test = npz["train_index"], npz["test_index"]
        assert len(np.intersect1d(train, test)) == 0
        assert len(np.union1d(train, test)) == len(npz["labels"]) == 150


def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match="iris, digits"):
        load("mnist")


def test_runtime_does_not_import_sklearn():
    code = "import sys; from labpgt.data.datasets import load; load('digits'); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"
