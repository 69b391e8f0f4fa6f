"""Estimators that report what happened to them in the process they ran in.

Cluster workers import this module by name (pytest puts ``tests/`` on the
path, and Dask's worker processes start with the parent's path), so its
counters can be read back from every worker with ``client.run``.
"""

import os
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

# Per process: unpickled models by name, and rows predicted.
LOADS: dict[str, int] = {}
ROWS: list[int] = []


def loads() -> dict[str, int]:
    return dict(LOADS)


def rows() -> int:
    return sum(ROWS)


def reset() -> None:
    LOADS.clear()
    ROWS.clear()


class Counting(ClassifierMixin, BaseEstimator):
    """A linear classifier that counts its unpickling, per process and name.

    ``delay`` is seconds of (sleeping) work per row.
    """

    def __init__(self, name="model", delay=0.0):
        self.name = name
        self.delay = delay

    def fit(self, X, y):
        X = np.asarray(X, dtype=float)
        self.classes_ = np.unique(y)
        self.coef_ = np.linspace(1.0, 2.0, X.shape[1])
        return self

    def decision_function(self, X):
        ROWS.append(len(X))
        if self.delay:
            time.sleep(self.delay * len(X))
        return np.asarray(X, dtype=float) @ self.coef_

    def predict(self, X):
        return self.classes_[(self.decision_function(X) > 0).astype(int)]

    def __setstate__(self, state):
        name = state.get("name", "model")
        LOADS[name] = LOADS.get(name, 0) + 1
        self.__dict__.update(state)


def pid() -> int:
    return os.getpid()


class Offset(BaseEstimator):
    """A regressor whose ``predict`` takes one offset per row."""

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X, offset=None):
        out = np.asarray(X, dtype=float).sum(axis=1)
        return out if offset is None else out + np.asarray(offset)
