"""Property tests: parallel output equals the serial call, for any split."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _helpers import assert_same_output
from hypothesis import given
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.ensemble import (
    HistGradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
)
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeRegressor

from sklearn_parpredict import ParallelPredictor, parallel_predict

N_FEATURES = 4
_rng = np.random.default_rng(0)
X_TRAIN = _rng.normal(size=(120, N_FEATURES))
Y_CLASS = (X_TRAIN[:, 0] + X_TRAIN[:, 1] > 0).astype(int) + (X_TRAIN[:, 2] > 1)
Y_REG = X_TRAIN @ np.arange(1, N_FEATURES + 1) + _rng.normal(size=120)
Y_MULTI = np.column_stack([Y_CLASS, X_TRAIN[:, 3] > 0])
WORDS = np.array(["red", "green", "blue", "book", "story", "novel", "poem", "page"])


def _frame(X):
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(N_FEATURES)])
    df["colour"] = np.where(X[:, 0] > 0, "warm", "cold")
    return df


def _texts(X):
    idx = (np.abs(X) * 3).astype(int) % len(WORDS)
    return [" ".join(WORDS[row]) for row in idx]


def _column_pipeline():
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), [f"x{i}" for i in range(N_FEATURES)]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["colour"]),
        ]
    )
    return make_pipeline(pre, LogisticRegression())


# name -> (estimator, training input maker, y, input kind)
FAMILIES = {
    "logistic": (LogisticRegression(), None, Y_CLASS, "dense"),
    "forest-multioutput": (
        RandomForestClassifier(n_estimators=5, random_state=0),
        None,
        Y_MULTI,
        "dense",
    ),
    "tree-regressor": (DecisionTreeRegressor(random_state=0), None, Y_REG, "dense"),
    "knn": (KNeighborsClassifier(n_neighbors=3), None, Y_CLASS, "dense"),
    "svc": (SVC(random_state=0), None, Y_CLASS, "dense"),
    "gaussian-nb": (GaussianNB(), None, Y_CLASS, "dense"),
    "ridge-sparse": (Ridge(), None, Y_REG, "sparse"),
    "scaler-pca": (
        make_pipeline(StandardScaler(), PCA(n_components=2)),
        None,
        None,
        "dense",
    ),
    "kmeans": (KMeans(n_clusters=3, n_init=1, random_state=0), None, None, "dense"),
    "isolation-forest": (
        IsolationForest(n_estimators=5, random_state=0),
        None,
        None,
        "dense",
    ),
    "hist-gradient-boosting": (
        HistGradientBoostingRegressor(max_iter=10, random_state=0),
        None,
        Y_REG,
        "dense",
    ),
    "column-transformer-pipeline": (_column_pipeline(), _frame, Y_CLASS, "frame"),
    "text-tfidf": (
        make_pipeline(TfidfVectorizer(), LogisticRegression()),
        _texts,
        Y_CLASS,
        "text",
    ),
}
METHODS = [
    "predict",
    "predict_proba",
    "predict_log_proba",
    "decision_function",
    "transform",
    "score_samples",
]
_fitted = {}


def fitted(name):
    if name not in _fitted:
        estimator, make_input, y, _ = FAMILIES[name]
        X = make_input(X_TRAIN) if make_input else X_TRAIN
        _fitted[name] = estimator.fit(X, y) if y is not None else estimator.fit(X)
    return _fitted[name]


def make_input(kind, X, container):
    """X in the container the family takes, in the drawn variant."""
    if kind == "frame":
        return _frame(X)
    if kind == "text":
        return _texts(X)
    if kind == "sparse":
        return {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "coo": sp.coo_matrix}[
            container
        ](X)
    return {
        "C": np.ascontiguousarray,
        "F": np.asfortranarray,
        "float32": lambda a: a.astype(np.float32),
        "list": lambda a: a.tolist(),
        "frame": lambda a: pd.DataFrame(a, index=np.arange(len(a))[::-1] * 7),
    }[container](X)


def serial_or_error(estimator, method, X):
    try:
        return getattr(estimator, method)(X), None
    except Exception as exc:  # the parallel call must raise the same type
        return None, exc


@st.composite
def family_rows(draw, max_rows=60):
    """A family, its input kind, rows for it, and a container to give them in."""
    name = draw(st.sampled_from(sorted(FAMILIES)))
    kind = FAMILIES[name][3]
    containers = {
        "dense": ["C", "F", "float32", "list", "frame"],
        "sparse": ["csr", "csc", "coo"],
    }.get(kind, [None])
    n_rows = draw(st.integers(0, max_rows))
    seed = draw(st.integers(0, 2**16))
    X = np.random.default_rng(seed).normal(size=(n_rows, N_FEATURES))
    if name in ("forest-multioutput", "knn"):
        X = X.round(1)  # ties are part of the tested space
    return name, kind, X, draw(st.sampled_from(containers))


@st.composite
def scenarios(draw):
    name, kind, X, container = draw(family_rows())
    return {
        "name": name,
        "X": make_input(kind, X, container),
        "chunk_size": draw(st.one_of(st.integers(1, 70), st.just("auto"))),
        "n_jobs": draw(st.sampled_from([1, 2, -1])),
        "backend": draw(st.sampled_from(["loky", "threading"])),
    }


def _check(scenario, run):
    estimator = fitted(scenario["name"])
    X = scenario["X"]
    methods = [m for m in METHODS if hasattr(estimator, m)]
    assert methods
    for method in methods:
        expected, error = serial_or_error(estimator, method, X)
        if error is not None:
            with pytest.raises(type(error)):
                run(estimator, method, X, scenario)
        else:
            assert_same_output(run(estimator, method, X, scenario), expected)


def _wrapper(estimator, method, X, s):
    model = ParallelPredictor(
        estimator, n_jobs=s["n_jobs"], backend=s["backend"], chunk_size=s["chunk_size"]
    )
    return getattr(model, method)(X)


def _function(estimator, method, X, s):
    return parallel_predict(
        estimator,
        X,
        method=method,
        n_jobs=s["n_jobs"],
        backend=s["backend"],
        chunk_size=s["chunk_size"],
    )


@given(scenarios())
def test_wrapper_equals_serial(scenario):
    _check(scenario, _wrapper)


@given(scenarios())
def test_function_equals_serial(scenario):
    _check(scenario, _function)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_every_family_every_method_in_workers(name, backend):
    # Deterministic companion of the properties: every family and method,
    # forced through the workers with more chunks than workers.
    kind = FAMILIES[name][3]
    X = make_input(
        kind,
        np.random.default_rng(1).normal(size=(37, N_FEATURES)),
        "C" if kind == "dense" else "csr",
    )
    _check(
        {"name": name, "X": X, "chunk_size": 5, "n_jobs": 2, "backend": backend},
        _wrapper,
    )


@given(
    n_rows=st.integers(1, 30),
    chunk_size=st.integers(1, 40),
    as_frame=st.booleans(),
)
def test_pandas_output_keeps_input_index(n_rows, chunk_size, as_frame):
    scaler = StandardScaler().set_output(transform="pandas").fit(X_TRAIN)
    X = np.random.default_rng(n_rows).normal(size=(n_rows, N_FEATURES))
    if as_frame:
        X = pd.DataFrame(
            X,
            columns=scaler.feature_names_in_
            if hasattr(scaler, "feature_names_in_")
            else None,
            index=np.arange(n_rows) * 3 + 10,
        )
    model = ParallelPredictor(
        scaler, n_jobs=2, backend="threading", chunk_size=chunk_size
    )
    assert_same_output(model.transform(X), scaler.transform(X))
