"""Issue 16 item 3: the stand-ins that replace the ring in the ablation."""
import numpy as np
import pytest

from labpgt.reservoirs.stand_ins import PassThroughReservoir, make_stand_in


@pytest.mark.parametrize("kind,features", [("ring", 3 * 7), ("noiseless", 3 * 7), ("random", 3 * 7), ("none", 3 * 2)])
def test_stand_ins_count_one_measurement_per_sample_and_node(kind, features):
    res = make_stand_in(kind, seed=0, n_nodes=3, readout={"n_bands": 7})
    u = np.linspace(-0.8, 0.8, 4 * res.n_inputs).reshape(4, res.n_inputs)
    f = res.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(4))
    assert f.shape == (4, features) and np.all(np.isfinite(f))
    assert res.measurements == 4 * 3


def test_noiseless_ring_repeats_itself_and_the_pass_through_returns_the_knobs():
    res = make_stand_in("noiseless", seed=0, n_nodes=1, readout={"n_bands": 5})
    u = np.array([[0.3, -0.2]])
    first = res.measure(u, current_a=1.8, kind="train", step=0, sample_index=np.arange(1))
    again = res.measure(u, current_a=1.8, kind="train", step=1, sample_index=np.arange(1))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(PassThroughReservoir(1).measure(u, current_a=1.8, kind="train", step=0,
                                                                  sample_index=np.arange(1)), u)
    with pytest.raises(ValueError, match="outside the allowed range"):
        PassThroughReservoir(1).measure(np.array([[1.5, 0.0]]), current_a=1.8, kind="train", step=0,
                                        sample_index=np.arange(1))
