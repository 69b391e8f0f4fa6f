"""Comparison of parallel outputs with the serial call, as DESIGN.md says."""

import os

import numpy as np
import scipy.sparse as sp

RTOL = 1e-9
ATOL = 1e-12


class ByItsMethods:
    """A model by its methods alone: no BaseEstimator, no tags."""

    def fit(self, X, y):
        self.mean_ = float(np.mean(y))
        return self

    def predict(self, X):
        return np.full(len(X), self.mean_)

    def score(self, X, y):
        return float(np.mean(self.predict(X) == y))


def assert_same_output(parallel, serial, *, order: bool = True):
    """Same container, dtype, shape, index and memory order (unless
    ``order=False``); equal values.

    Discrete values must be exactly equal; floats equal to rounding, because
    BLAS may block rows differently for different batch sizes.
    """
    assert type(parallel) is type(serial), (type(parallel), type(serial))
    if isinstance(serial, list | tuple):
        assert len(parallel) == len(serial)
        for p, s in zip(parallel, serial):
            assert_same_output(p, s, order=order)
        return
    if sp.issparse(serial):
        assert parallel.format == serial.format
        assert parallel.dtype == serial.dtype
        assert parallel.shape == serial.shape
        _assert_values(parallel.toarray(), serial.toarray())
        return
    if hasattr(serial, "iloc"):
        import pandas as pd

        assert parallel.index.equals(serial.index)
        assert type(parallel.index) is type(serial.index)
        if isinstance(serial, pd.DataFrame):
            assert parallel.columns.equals(serial.columns)
            assert (parallel.dtypes == serial.dtypes).all()
        else:
            assert parallel.name == serial.name
            assert parallel.dtype == serial.dtype
        _assert_values(parallel.to_numpy(), serial.to_numpy())
        return
    assert isinstance(serial, np.ndarray), type(serial)
    assert parallel.dtype == serial.dtype
    assert parallel.shape == serial.shape
    assert not order or memory_order(parallel) == memory_order(serial)
    _assert_values(parallel, serial)


def memory_order(array: np.ndarray) -> str:
    """``"F"`` where a copy of ``array`` is Fortran-ordered only, else ``"C"``."""
    flags = np.array(array, order="K").flags
    return "F" if flags.f_contiguous and not flags.c_contiguous else "C"


def _assert_values(parallel, serial):
    if np.issubdtype(serial.dtype, np.inexact):
        np.testing.assert_allclose(parallel, serial, rtol=RTOL, atol=ATOL)
    else:
        np.testing.assert_array_equal(parallel, serial)


def in_child(function) -> int:
    """Run ``function`` in a child forked now; 0 if it returned true, else 1
    (also if it raised)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = 0 if function() else 1
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
