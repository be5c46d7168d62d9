"""Fixtures for the bnext tests; the shared helpers are in bn_helpers.py."""

import numpy as np
import pytest

import bnext
from bn_helpers import DTYPE_IDS, FLOAT_DTYPES


# ----------------------------------------------------------------- fixtures

@pytest.fixture
def rng(request):
    """A generator seeded from the test id, so every test is reproducible alone."""
    seed = sum(request.node.nodeid.encode()) * 7919 + len(request.node.nodeid)
    return np.random.default_rng(seed)


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"threads{n}")
def n_threads(request):
    """Run the test with the kernels' thread count set to 1, 2 and 3."""
    old = bnext.get_num_threads()
    bnext.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        bnext.set_num_threads(old)


@pytest.fixture(params=FLOAT_DTYPES, ids=lambda d: DTYPE_IDS[d])
def dtype(request):
    return np.dtype(request.param)
