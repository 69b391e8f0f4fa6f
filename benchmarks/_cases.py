"""The benchmark cases: fitted estimators, the rows they predict, our wrapper.

Every case is built from fixed seeds, so a run is reproducible on a machine.
Models are fitted on rows that are not predicted; the rows predicted come
from the same distribution. Fitting uses every core where the estimator can
(it is not timed); ``n_jobs`` is then set back to 1 so that the serial
baseline predicts on one core, as the benchmark intends.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.compose import make_column_transformer
from sklearn.datasets import make_classification
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC

from sklearn_parpredict import ParallelPredictor

# Row counts of the suites; each case caps them at its own limit, which is
# then measured too, and adds the sizes its targets are stated for.
FULL_ROWS = (1, 100, 1_000, 10_000, 100_000, 1_000_000)
QUICK_ROWS = (1, 1_000, 100_000)
N_FEATURES = 20
SEED = 0


class CaseSkipped(Exception):
    """A case that cannot run here (a missing optional part); the reason."""


@dataclass
class Workload:
    """A fitted case: what to predict with, on which rows, and our wrapper.

    ``models`` holds ``(fitted estimator, columns)`` pairs; a plain case has
    one pair with ``columns=None``. The serial answer is every model's
    ``method`` on its columns of the same rows, stacked as columns when there
    are several models (what ``MultiModelPredictor`` returns).
    """

    models: list[tuple[Any, Any]]
    X: Any
    ours: Any
    method: str = "predict"
    model_bytes: int = field(init=False)

    def __post_init__(self):
        self.model_bytes = sum(
            len(pickle.dumps(est, protocol=pickle.HIGHEST_PROTOCOL))
            for est, _ in self.models
        )

    def rows(self, n: int):
        """The first ``n`` rows to predict (a view, not a copy)."""
        return self.X.iloc[:n] if hasattr(self.X, "iloc") else self.X[:n]

    def serial(self, X):
        return combine(
            [predict_part(est, cols, X, self.method) for est, cols in self.models]
        )


def predict_part(estimator, columns, X, method="predict"):
    """One model's method on its columns of ``X`` (the unit of every peer)."""
    if columns is not None:
        X = X[columns]
    return getattr(estimator, method)(X)


def combine(outputs: list):
    """Join per-model outputs as the serial answer: one column per model."""
    if len(outputs) == 1:
        return outputs[0]
    return np.column_stack([np.asarray(out) for out in outputs])


@dataclass(frozen=True)
class Case:
    """A named benchmark case and the row counts it is measured at."""

    name: str
    description: str
    build: Callable[[int], Workload]
    # The largest row count the full suite measures; quick uses quick_max.
    max_rows: int
    quick_max: int
    # Row counts a target is stated for; always measured.
    target_rows: tuple[int, ...] = ()

    def sizes(self, quick: bool, only: Iterable[int] | None = None) -> list[int]:
        """The row counts measured; ``only`` replaces the suite's grid (each
        count up to the case's full row limit), for a run that must be short.
        """
        if only is not None:
            return sorted({n for n in only if 1 <= n <= self.max_rows})
        grid, cap = (
            (QUICK_ROWS, self.quick_max) if quick else (FULL_ROWS, self.max_rows)
        )
        sizes = {n for n in grid if n <= cap} | {cap} | set(self.target_rows)
        return sorted(sizes)


def _classification(n_train: int, n_rows: int):
    X, y = make_classification(
        n_samples=n_train + n_rows,
        n_features=N_FEATURES,
        n_informative=10,
        n_redundant=4,
        random_state=SEED,
    )
    return X[:n_train], y[:n_train], np.ascontiguousarray(X[n_train:])


def _numeric(estimator, n_train: int) -> Callable[[int], Workload]:
    def build(n_rows: int) -> Workload:
        X_train, y_train, X = _classification(n_train, n_rows)
        fitted = _fit_single_core(clone(estimator), X_train, y_train)
        return Workload([(fitted, None)], X, ParallelPredictor(fitted, n_jobs=-1))

    return build


def _fit_single_core(estimator, X, y):
    # Fit forests on all cores (not timed), predict on one: the serial
    # baseline. Other estimators' n_jobs does not change predict.
    parallel = isinstance(estimator, RandomForestClassifier)
    if parallel:
        estimator.set_params(n_jobs=-1)
    estimator.fit(X, y)
    if parallel:
        estimator.set_params(n_jobs=1)
    return estimator


def forest(n_estimators: int = 100) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=n_estimators, random_state=SEED)


def build_repeated_forest(n_rows: int):
    """The fitted 300-tree forest of the repeated-call and memory cases."""
    X_train, y_train, X = _classification(10_000, n_rows)
    return _fit_single_core(forest(300), X_train, y_train), X


def _mixed_frame(n: int, rng: np.random.Generator) -> pd.DataFrame:
    cities = np.array([f"city_{i:02d}" for i in range(40)])
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, n).astype(float),
            "income": rng.lognormal(10, 1, n),
            "score": rng.normal(0, 1, n),
            "tenure": rng.exponential(5, n),
            "plan": rng.choice(["basic", "plus", "pro", "team"], n),
            "channel": rng.choice(["web", "store", "phone"], n),
            "city": rng.choice(cities, n),
        }
    )


def _build_pipeline(n_rows: int) -> Workload:
    rng = np.random.default_rng(SEED)
    train = _mixed_frame(10_000, rng)
    logit = (
        0.04 * (train["age"] - 50)
        + 0.8 * train["score"]
        + (train["plan"] == "pro")
        - (train["channel"] == "phone")
    )
    y = (logit + rng.normal(0, 1, len(train)) > 0).astype(int)
    model = make_pipeline(
        make_column_transformer(
            (StandardScaler(), ["age", "income", "score", "tenure"]),
            (OneHotEncoder(handle_unknown="ignore"), ["plan", "channel", "city"]),
        ),
        LogisticRegression(max_iter=1_000),
    ).fit(train, y)
    X = _mixed_frame(n_rows, rng)
    return Workload([(model, None)], X, ParallelPredictor(model, n_jobs=-1))


def _book_model(frame: pd.DataFrame):
    """The tutorial's per-target model: a forest, one-hot for text columns."""
    text = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if not text:
        return forest()
    return make_pipeline(
        make_column_transformer(
            (OneHotEncoder(handle_unknown="ignore"), text), remainder="passthrough"
        ),
        forest(),
    )


def _build_books(n_rows: int) -> Workload:
    try:
        from sklearn_parpredict import MultiModelPredictor
    except ImportError as exc:
        raise CaseSkipped("sklearn_parpredict.MultiModelPredictor missing") from exc
    try:
        from sklearn_parpredict.datasets import (
            GENRE_FEATURES,
            LANGUAGE_FEATURES,
            make_books,
        )
    except ImportError as exc:
        raise CaseSkipped("sklearn_parpredict.datasets.make_books missing") from exc
    n_train = 10_000
    books = make_books(n_train + n_rows, random_state=SEED)
    specs = [
        ("genre", list(GENRE_FEATURES)),
        ("language", list(LANGUAGE_FEATURES)),
    ]
    missing = [t for t, _ in specs if t not in books.columns]
    if missing:
        raise CaseSkipped(f"make_books() has no target column(s) {missing}")
    train = books.iloc[:n_train]
    models = []
    for target, features in specs:
        model = _book_model(train[features])
        models.append(
            (_fit_single_core(model, train[features], train[target]), features)
        )
    X = books.iloc[n_train:].drop(columns=[t for t, _ in specs])
    X = X.reset_index(drop=True)
    ours = MultiModelPredictor(
        [(est, cols, target) for (est, cols), (target, _) in zip(models, specs)],
        n_jobs=-1,
    )
    return Workload(models, X, ours)


CASES = {
    case.name: case
    for case in [
        Case(
            "rf",
            "RandomForestClassifier(n_estimators=100, n_jobs=1), 20 features",
            _numeric(forest(), n_train=10_000),
            max_rows=1_000_000,
            quick_max=500_000,
            target_rows=(500_000,),
        ),
        Case(
            "gb",
            "GradientBoostingClassifier(n_estimators=100, max_depth=3)",
            _numeric(GradientBoostingClassifier(random_state=SEED), n_train=5_000),
            max_rows=1_000_000,
            quick_max=100_000,
        ),
        Case(
            "svc",
            "SVC(kernel='rbf'), 5,000 training rows",
            _numeric(SVC(random_state=SEED), n_train=5_000),
            max_rows=100_000,
            quick_max=20_000,
            target_rows=(20_000,),
        ),
        Case(
            "knn",
            "KNeighborsClassifier(n_neighbors=5), 20,000 training rows",
            _numeric(KNeighborsClassifier(), n_train=20_000),
            max_rows=100_000,
            quick_max=10_000,
        ),
        Case(
            "hgb",
            "HistGradientBoostingClassifier(max_iter=100) (OpenMP-threaded)",
            _numeric(HistGradientBoostingClassifier(random_state=SEED), n_train=10_000),
            max_rows=1_000_000,
            quick_max=100_000,
        ),
        Case(
            "logreg",
            "LogisticRegression (BLAS; too cheap to parallelise)",
            _numeric(LogisticRegression(max_iter=1_000), n_train=10_000),
            max_rows=1_000_000,
            quick_max=100_000,
        ),
        Case(
            "pipeline",
            "Pipeline(ColumnTransformer(scale 4 numeric, one-hot 3 text), "
            "LogisticRegression) on a DataFrame",
            _build_pipeline,
            max_rows=1_000_000,
            quick_max=100_000,
        ),
        Case(
            "multi",
            "MultiModelPredictor: book genre + language forests (make_books)",
            _build_books,
            max_rows=1_000_000,
            quick_max=100_000,
        ),
    ]
}
