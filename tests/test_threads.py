"""The BLAS thread count is controllable from Python (edgetrain.set_num_threads)."""
import numpy as np
import pytest

import edgetrain
from edgetrain.measure import _openblas_threads


def test_set_num_threads_round_trips():
    before = _openblas_threads()
    if before is None:
        pytest.skip("NumPy's BLAS is not OpenBLAS here")
    try:
        assert edgetrain.set_num_threads(1) == 1
        a = np.ones((64, 64), np.float32)
        assert (a @ a)[0, 0] == 64  # still computes
    finally:
        edgetrain.set_num_threads(before)
    assert _openblas_threads() == before
    with pytest.raises(ValueError):
        edgetrain.set_num_threads(0)
