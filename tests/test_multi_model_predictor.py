"""MultiModelPredictor: several models on the same rows, as the serial loop."""

import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
from _helpers import ByItsMethods
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import BaseEstimator, ClassifierMixin, clone, is_classifier
from sklearn.compose import make_column_selector
from sklearn.exceptions import NotFittedError
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import (
    LinearRegression,
    LogisticRegression,
    Ridge,
    RidgeClassifier,
)
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import (
    DecisionTreeClassifier,
    DecisionTreeRegressor,
    ExtraTreeRegressor,
)
from sklearn.utils import _safe_indexing, estimator_html_repr, get_tags
from sklearn.utils.estimator_checks import parametrize_with_checks

import sklearn_parpredict._multi_model_predictor as mmp_module
from sklearn_parpredict import MultiModelPredictor
from sklearn_parpredict.datasets import (
    GENRE_FEATURES,
    LANGUAGE_FEATURES,
    NUMERIC_FEATURES,
    make_books,
)

RTOL = 1e-9
N_FEATURES = 6
FEATURE_NAMES = [f"f{i}" for i in range(N_FEATURES)]


def _books_models():
    return [
        (DecisionTreeClassifier(max_depth=5, random_state=0), GENRE_FEATURES, "genre"),
        (LogisticRegression(max_iter=500), LANGUAGE_FEATURES, "language"),
    ]


@pytest.fixture(scope="module")
def books():
    return make_books(600, random_state=0)


# ---------------------------------------------------------------------------
# Serial reference: what the issue calls the serial loop, assembled the same way
# ---------------------------------------------------------------------------


def _serial_predict(models, X, method="predict"):
    outputs = [
        getattr(m, method)(X if f is None else _safe_indexing(X, f, axis=1))
        for m, f, _ in models
    ]
    if method != "predict":
        return outputs
    targets = [t for _, _, t in models]
    columns = [np.asarray(out) for out in outputs]
    if isinstance(X, pd.DataFrame):
        return pd.DataFrame(dict(zip(targets, columns)), index=X.index)
    kinds = {c.dtype.kind for c in columns}
    if len({c.dtype for c in columns}) == 1 or (
        len(kinds) == 1 and kinds <= set("biufcUS")
    ):
        return np.column_stack(columns)
    out = np.empty((len(columns[0]), len(columns)), dtype=object)
    for j, c in enumerate(columns):
        out[:, j] = c
    return out


def _assert_column(parallel, serial):
    parallel, serial = np.asarray(parallel), np.asarray(serial)
    assert parallel.dtype == serial.dtype
    if serial.dtype.kind == "f":
        np.testing.assert_allclose(parallel, serial, rtol=RTOL, atol=1e-12)
    elif serial.dtype == object and any(isinstance(v, float) for v in serial):
        np.testing.assert_allclose(
            parallel.astype(float), serial.astype(float), rtol=RTOL, atol=1e-12
        )
    else:
        np.testing.assert_array_equal(parallel, serial)


def _assert_table(parallel, serial):
    assert type(parallel) is type(serial)
    assert parallel.shape == serial.shape
    if isinstance(serial, pd.DataFrame):
        assert parallel.index.equals(serial.index)
        assert list(parallel.columns) == list(serial.columns)
        for column in serial.columns:
            _assert_column(parallel[column], serial[column])
    else:
        assert parallel.dtype == serial.dtype
        for j in range(serial.shape[1]):
            _assert_column(parallel[:, j], serial[:, j])


# ---------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------

# kind -> (estimator maker, column of the base target table it learns)
MODEL_KINDS = {
    "tree_classifier": (
        lambda: DecisionTreeClassifier(max_depth=4, random_state=0),
        "label_str",
    ),
    "logistic": (lambda: LogisticRegression(max_iter=300), "label_int"),
    "knn": (lambda: KNeighborsClassifier(n_neighbors=3), "label_str"),
    "ridge": (lambda: Ridge(alpha=0.5), "value"),
    "extra_tree": (lambda: ExtraTreeRegressor(max_depth=4, random_state=0), "value"),
    # Takes a 1-D X: the model of every single-column selector.
    "isotonic": (lambda: IsotonicRegression(out_of_bounds="clip"), "value"),
}
# The kinds that take a 2-D X, drawn for every other selector.
TABLE_KINDS = sorted(set(MODEL_KINDS) - {"isotonic"})

# Selectors valid on both containers, and those that need column names.
POSITIONAL = [
    None,
    [0, 2, 4],
    [5, 1],
    3,
    slice(1, 4),
    np.array([True, False, True, True, False, True]),
]
BY_NAME = [
    ["f1", "f3"],
    "f0",
    ["f5", "f4", "f2", "f0"],
    make_column_selector(pattern="^f[0-2]$"),
]


def _data(seed, n_rows):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n_rows, N_FEATURES)), columns=FEATURE_NAMES)
    X.index = rng.permutation(np.arange(100, 100 + n_rows))
    score = X["f0"] - X["f2"] + 0.5 * X["f4"]
    label = np.digitize(score, [-0.5, 0.5])
    # Every class present, whatever the row count.
    label[:3] = [0, 1, 2][: len(label)]
    targets = pd.DataFrame(
        {
            "label_int": label,
            "label_str": np.array(["low", "mid", "high"])[label],
            "value": 2 * X["f1"].to_numpy() - X["f3"].to_numpy() + score.to_numpy(),
        },
        index=X.index,
    )
    return X, targets


@st.composite
def model_sets(draw):
    frame = draw(st.booleans())
    selectors = POSITIONAL + (BY_NAME if frame else [])
    n_models = draw(st.integers(1, 5))
    kinds = draw(
        st.lists(st.sampled_from(TABLE_KINDS), min_size=n_models, max_size=n_models)
    )
    features = [
        selectors[i]
        for i in draw(
            st.lists(
                st.sampled_from(range(len(selectors))),
                min_size=n_models,
                max_size=n_models,
            )
        )
    ]
    # One name or position selects a 1-D column: a model that takes one.
    kinds = [
        "isotonic" if isinstance(f, str | int) else kind
        for kind, f in zip(kinds, features)
    ]
    targets = draw(
        st.sampled_from([[f"t{i}" for i in range(n_models)], list(range(n_models))])
    )
    return frame, kinds, features, targets


ENGINES = st.fixed_dictionaries(
    {
        "n_jobs": st.sampled_from([1, 2]),
        "backend": st.sampled_from(["loky", "threading"]),
        "chunk_size": st.one_of(st.integers(1, 40), st.just("auto")),
    }
)


@settings(deadline=None, max_examples=15)
@given(
    spec=model_sets(),
    engine=ENGINES,
    seed=st.integers(0, 2**16),
    n_rows=st.integers(10, 80),
    n_predict=st.integers(1, 120),
)
def test_fit_and_predict_equal_the_serial_loop(spec, engine, seed, n_rows, n_predict):
    frame, kinds, features, targets = spec
    X, base = _data(seed, n_rows)
    X_new, _ = _data(seed + 1, n_predict)
    if not frame:
        X, X_new = X.to_numpy(), X_new.to_numpy()
    y = pd.DataFrame(
        {t: base[MODEL_KINDS[k][1]].to_numpy() for k, t in zip(kinds, targets)}
    )
    models = [(MODEL_KINDS[k][0](), f, t) for k, f, t in zip(kinds, features, targets)]

    # Serial: each model fitted on its own columns against its own target.
    fitted = []
    for estimator, f, t in models:
        if callable(f):
            f = f(X)
        X_i = X if f is None else _safe_indexing(X, f, axis=1)
        fitted.append((clone(estimator).fit(X_i, y[t]), f, t))
    serial_fitted = fitted

    model = MultiModelPredictor(models, **engine).fit(X, y)
    assert model.targets_ == targets
    assert len(model.estimators_) == len(models)
    expected = _serial_predict(serial_fitted, X_new)
    # Fitted in parallel = fitted serially (seeded models).
    _assert_table(model.predict(X_new), expected)
    for ours, (theirs, f, _) in zip(model.estimators_, serial_fitted):
        X_i = X_new if f is None else _safe_indexing(X_new, f, axis=1)
        _assert_column(ours.predict(X_i), theirs.predict(X_i))

    # Given fitted, the models predict without fit: the same table.
    prefitted = MultiModelPredictor(serial_fitted, **engine)
    _assert_table(prefitted.predict(X_new), expected)

    if all(hasattr(m, "predict_proba") for m, _, _ in serial_fitted):
        proba = model.predict_proba(X_new)
        assert isinstance(proba, list)
        for ours, theirs in zip(
            proba, _serial_predict(serial_fitted, X_new, "predict_proba")
        ):
            np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=1e-12)


@settings(deadline=None, max_examples=10)
@given(
    n_models=st.integers(1, 4),
    chunk_size=st.integers(1, 30),
    n_jobs=st.sampled_from([1, 2]),
    backend=st.sampled_from(["loky", "threading"]),
)
def test_books_frame_matches_serial(books, n_models, chunk_size, n_jobs, backend):
    # Targets taken from X (y is None); X at predict time lacks them.
    pool = [
        (DecisionTreeClassifier(max_depth=4, random_state=0), GENRE_FEATURES, "genre"),
        (LogisticRegression(max_iter=300), LANGUAGE_FEATURES, "language"),
        (Ridge(), ["pages", "rating"], "price"),
        (DecisionTreeRegressor(max_depth=3, random_state=0), [0, 2], "n_reviews"),
    ][:n_models]
    model = MultiModelPredictor(
        pool, n_jobs=n_jobs, backend=backend, chunk_size=chunk_size
    ).fit(books)
    X_new = books[NUMERIC_FEATURES].iloc[::3]
    fitted = [
        (m, [books.columns[i] for i in f] if isinstance(f[0], int) else f, t)
        for m, (_, f, t) in zip(model.estimators_, pool)
    ]
    _assert_table(model.predict(X_new), _serial_predict(fitted, X_new))


# ---------------------------------------------------------------------------
# Behaviour
# ---------------------------------------------------------------------------


def test_one_engine_call_for_all_models(books, monkeypatch):
    calls = []
    real = mmp_module.run_jobs

    def spy(jobs, **kwargs):
        calls.append([(type(j.estimator).__name__, j.method) for j in jobs])
        return real(jobs, **kwargs)

    monkeypatch.setattr(mmp_module, "run_jobs", spy)
    model = MultiModelPredictor(_books_models(), n_jobs=2, backend="threading")
    model.fit(books).predict(books)
    assert calls == [
        [("DecisionTreeClassifier", "predict"), ("LogisticRegression", "predict")]
    ]


def test_frame_output_keeps_index_and_targets(books):
    model = MultiModelPredictor(_books_models(), n_jobs=1).fit(books)
    X = books.iloc[[5, 2, 9]]
    out = model.predict(X)
    assert list(out.columns) == ["genre", "language"]
    assert out.index.equals(X.index)
    assert model.n_features_in_ == books.shape[1]
    np.testing.assert_array_equal(model.feature_names_in_, books.columns)


class _PandasLabels(ClassifierMixin, BaseEstimator):
    """Predicts a Series of a pandas extension dtype, indexed afresh."""

    def __init__(self, dtype="Int64"):
        self.dtype = dtype

    def fit(self, X, y=None):
        self.n_features_in_ = np.shape(X)[1]
        return self

    def predict(self, X):
        sign = np.asarray(X)[:, 0] > 0
        if self.dtype == "category":
            values = pd.Categorical(np.where(sign, "pos", "neg"))
        else:
            values = pd.array(sign.astype(int), dtype=self.dtype)
            values[~np.isfinite(np.asarray(X)[:, 0])] = pd.NA
        return pd.Series(values)


def test_frame_output_keeps_pandas_dtypes_of_predictions():
    # Through np.asarray, Int64 and boolean predictions with a missing value
    # came back as objects and categorical ones as text; the frame keeps the
    # models' dtypes, each column by position (the Series' own index is not
    # X's).
    X = pd.DataFrame(
        {"a": np.linspace(-1, 1, 40), "b": np.linspace(1, -1, 40)},
        index=np.arange(40) * 3,
    )
    X.iloc[5, 0] = X.iloc[7, 1] = np.nan
    models = [
        (_PandasLabels("Int64").fit(X), ["a"], "i"),
        (_PandasLabels("boolean").fit(X), ["b"], "b"),
        (_PandasLabels("category").fit(X), ["a"], "c"),
    ]
    serial = pd.DataFrame(
        {t: m.predict(X[f]).array for m, f, t in models}, index=X.index
    )
    for n_jobs, chunk_size in [(1, "auto"), (2, 7)]:
        out = MultiModelPredictor(
            models, n_jobs=n_jobs, backend="threading", chunk_size=chunk_size
        ).predict(X)
        pd.testing.assert_frame_equal(out, serial)
    assert list(serial.dtypes) == ["Int64", "boolean", "category"]


def test_array_output_dtypes():
    X, base = _data(0, 40)
    A = X.to_numpy()
    same = MultiModelPredictor(
        [(Ridge(), [0, 1], 0), (LinearRegression(), None, 1)], n_jobs=1
    ).fit(A, base["value"])
    assert same.predict(A).dtype == np.float64
    assert same.predict(A).shape == (40, 2)
    mixed = MultiModelPredictor(
        [(LogisticRegression(), [0, 2], "c"), (Ridge(), None, "r")], n_jobs=1
    ).fit(A, base[["label_int", "value"]].set_axis(["c", "r"], axis=1))
    out = mixed.predict(A)
    assert out.dtype == object
    assert out[:, 0].tolist() == mixed.estimators_[0].predict(A[:, [0, 2]]).tolist()


def test_y_forms(books):
    X = books[NUMERIC_FEATURES]
    models = [(Ridge(), ["pages"], "a"), (Ridge(), ["rating"], "b")]
    y2 = books[["price", "year"]].to_numpy()
    # A 2-D array: string targets take the column of their model's rank.
    by_rank = MultiModelPredictor(models, n_jobs=1).fit(X, y2)
    np.testing.assert_allclose(
        by_rank.estimators_[1].coef_,
        Ridge().fit(X[["rating"]], y2[:, 1]).coef_,
    )
    # Integer targets are positions.
    by_position = MultiModelPredictor(
        [(Ridge(), ["pages"], 1), (Ridge(), ["rating"], 0)], n_jobs=1
    ).fit(X, y2)
    np.testing.assert_allclose(
        by_position.estimators_[0].coef_, Ridge().fit(X[["pages"]], y2[:, 1]).coef_
    )
    # A 1-D y is every model's target.
    shared = MultiModelPredictor(models, n_jobs=1).fit(X, books["price"])
    np.testing.assert_allclose(
        shared.estimators_[1].coef_, Ridge().fit(X[["rating"]], books["price"]).coef_
    )


def test_callable_features_are_resolved_at_fit(books):
    selector = make_column_selector(pattern="^(?:pages|price)$")
    model = MultiModelPredictor([(Ridge(), selector, "rating")], n_jobs=1)
    model.fit(books)
    # A new frame with other columns (that the selector would also match).
    X = books[["price", "pages"]].assign(prices=1.0)
    expected = model.estimators_[0].predict(books[["pages", "price"]])
    np.testing.assert_allclose(model.predict(X)["rating"], expected)


def _titles(n_rows, seed):
    rng = np.random.default_rng(seed)
    words = np.array(
        "magic dragon spell clue murder alibi kiss heart star atom".split()
    )
    titles = [" ".join(rng.choice(words, 3)) for _ in range(n_rows)]
    X = pd.DataFrame({"title": titles, "pages": rng.integers(50, 900, n_rows)})
    y = pd.DataFrame(
        {
            "genre": ["fantasy" if "magic" in t else "other" for t in titles],
            "price": 0.02 * X["pages"] + rng.normal(size=n_rows),
        }
    )
    return X, y


def _text_model():
    return make_pipeline(TfidfVectorizer(), LogisticRegression())


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_one_column_name_gives_the_model_a_1d_column(backend):
    # As X["title"] and ColumnTransformer give it: a text pipeline takes the
    # column of strings, which a list ["title"] (a one-column frame) is not.
    X, y = _titles(600, seed=0)
    X_new, _ = _titles(301, seed=1)
    model = MultiModelPredictor(
        [
            (_text_model(), "title", "genre"),
            (IsotonicRegression(out_of_bounds="clip"), "pages", "price"),
        ],
        n_jobs=2,
        backend=backend,
        chunk_size=40,
    ).fit(X, y)
    text = _text_model().fit(X["title"], y["genre"])
    iso = IsotonicRegression(out_of_bounds="clip").fit(X["pages"], y["price"])
    out = model.predict(X_new)
    np.testing.assert_array_equal(out["genre"], text.predict(X_new["title"]))
    np.testing.assert_array_equal(out["price"], iso.predict(X_new["pages"]))
    proba = MultiModelPredictor(
        [(text, "title", "genre")], n_jobs=2, backend=backend, chunk_size=40
    ).predict_proba(X_new)
    np.testing.assert_array_equal(proba[0], text.predict_proba(X_new["title"]))
    # Matched by name: other column order, other columns.
    shuffled = X_new[["pages", "title"]].assign(extra=1)
    pd.testing.assert_frame_equal(model.predict(shuffled), out)
    # Given fitted, the same.
    fitted = MultiModelPredictor(
        [(text, "title", "genre"), (iso, "pages", "price")], n_jobs=2, chunk_size=40
    )
    pd.testing.assert_frame_equal(fitted.predict(X_new), out)
    # A list of one name is a one-column frame, as X[["pages"]] is.
    table = MultiModelPredictor([(Ridge(), ["pages"], "price")]).fit(X, y)
    np.testing.assert_array_equal(
        table.predict(X_new)["price"],
        Ridge().fit(X[["pages"]], y["price"]).predict(X_new[["pages"]]),
    )


@pytest.mark.parametrize("backend", ["loky", "multiprocessing", "threading"])
@pytest.mark.parametrize("container", ["frame", "array"])
def test_a_missing_document_fails_the_fit_as_the_serial_fit(backend, container):
    # A text vectorizer tells np.nan by identity: the rows reach worker
    # processes holding np.nan itself, not another NaN ('float' object has
    # no attribute 'lower').
    X, y = _titles(60, seed=0)
    X["title"] = X["title"].astype(object)
    X.loc[25, "title"] = np.nan
    invalid = "np.nan is an invalid document"
    with pytest.raises(ValueError, match=invalid):
        _text_model().fit(X["title"], y["genre"])
    models = [(_text_model(), "title", "genre"), (Ridge(), ["pages"], "price")]
    if container == "array":
        X = X.to_numpy(dtype=object)
        models = [(_text_model(), 0, "genre"), (Ridge(), [1], "price")]
    model = MultiModelPredictor(models, n_jobs=2, backend=backend)
    with pytest.raises(ValueError, match=invalid):
        model.fit(X, y)


@pytest.mark.parametrize("backend", ["loky", "multiprocessing", "threading"])
def test_models_fitted_on_workers_keep_nan_itself(backend):
    from sklearn.preprocessing import OrdinalEncoder

    rng = np.random.default_rng(0)
    colour = rng.choice(np.array(["red", "blue", np.nan], dtype=object), 80)
    X = pd.DataFrame({"colour": colour, "size": rng.normal(size=80)})
    y = rng.normal(size=80)
    encoded = make_pipeline(OrdinalEncoder(), DecisionTreeRegressor(random_state=0))
    models = [(encoded, ["colour"], "a"), (Ridge(), ["size"], "b")]
    serial = clone(encoded).fit(X[["colour"]], y)[0].categories_[0]
    assert serial[-1] is np.nan
    model = MultiModelPredictor(models, n_jobs=2, backend=backend).fit(X, y)
    categories = model.estimators_[0][0].categories_[0]
    assert categories[:-1].tolist() == serial[:-1].tolist()
    assert categories[-1] is np.nan


def test_one_column_position_gives_the_model_a_1d_column():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = 2 * X[:, 1] + rng.normal(size=200)
    model = MultiModelPredictor(
        [(IsotonicRegression(out_of_bounds="clip"), 1, "y")], n_jobs=2, chunk_size=30
    ).fit(X, y)
    serial = IsotonicRegression(out_of_bounds="clip").fit(X[:, 1], y)
    X_new = rng.normal(size=(97, 3))
    np.testing.assert_array_equal(
        model.predict(X_new)[:, 0], serial.predict(X_new[:, 1])
    )
    # A model that needs 2-D input gets the serial call's error.
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        MultiModelPredictor([(Ridge(), 1, "y")]).fit(X, y)


@pytest.mark.parametrize("step", [None, 2, -1])
def test_a_slice_without_bounds_selects_columns(books, step):
    # scikit-learn finds no key type in slice(None): no longer "select no
    # columns".
    X = books[["pages", "price", "year"]]
    y = books["rating"]
    model = MultiModelPredictor([(Ridge(), slice(None, None, step), "r")]).fit(X, y)
    serial = Ridge().fit(X.iloc[:, ::step], y)
    expected = serial.predict(X.iloc[:, ::step])
    np.testing.assert_allclose(model.predict(X)["r"], expected)
    array = MultiModelPredictor([(Ridge(), slice(None, None, step), "r")])
    np.testing.assert_allclose(
        array.fit(X.to_numpy(), y).predict(X.to_numpy())[:, 0], expected
    )


def test_pyarrow_table_columns_by_name(books):
    pa = pytest.importorskip("pyarrow")
    X = books[["pages", "price", "year"]]
    table = pa.Table.from_pandas(X, preserve_index=False)
    try:
        _safe_indexing(table, ["pages"], axis=1)
    except TypeError as exc:  # scikit-learn < 1.7
        pytest.skip(f"this scikit-learn cannot select a Table's columns: {exc}")
    expected = (
        Ridge().fit(X[["pages", "year"]], books["rating"]).predict(X[["pages", "year"]])
    )
    fitted = MultiModelPredictor([(Ridge(), ["pages", "year"], "r")]).fit(
        table, books["rating"]
    )
    np.testing.assert_allclose(fitted.predict(table)[:, 0], expected)
    # Fitted on pandas, predicting a table: its columns matched by name.
    model = MultiModelPredictor([(Ridge(), ["pages", "year"], "r")])
    model.fit(X, books["rating"])
    np.testing.assert_allclose(model.predict(table)[:, 0], expected)


def test_a_column_named_column_names_is_a_column(books):
    # pandas gives a column as an attribute: it is not the frame's names.
    X = books[["pages", "price"]].assign(column_names=1.0)
    model = MultiModelPredictor([(Ridge(), ["price"], "r")]).fit(X, books["rating"])
    expected = Ridge().fit(X[["price"]], books["rating"]).predict(X[["price"]])
    np.testing.assert_allclose(model.predict(X)["r"], expected)
    reordered = X[["column_names", "price", "pages"]]
    np.testing.assert_allclose(model.predict(reordered)["r"], expected)


def test_fit_on_a_dask_collection_fits_on_it_computed(books):
    dd = pytest.importorskip("dask.dataframe")
    frame = books[["pages", "price", "rating"]]
    lazy = dd.from_pandas(frame, npartitions=3)
    model = MultiModelPredictor([(Ridge(), ["pages", "price"], "rating")]).fit(lazy)
    serial = Ridge().fit(frame[["pages", "price"]], frame["rating"])
    np.testing.assert_allclose(model.estimators_[0].coef_, serial.coef_)


def test_one_column_that_is_the_target_is_refused():
    X, _ = _titles(50, seed=0)
    X["genre"] = "x"
    with pytest.raises(ValueError, match="fitted on its own target"):
        MultiModelPredictor([(_text_model(), "genre", "genre")]).fit(X)


def test_score_is_mean_of_model_scores(books):
    model = MultiModelPredictor(
        [
            (DecisionTreeClassifier(max_depth=3, random_state=0), GENRE_FEATURES, "g"),
            (Ridge(), ["pages", "year"], "p"),
        ],
        n_jobs=2,
        backend="threading",
        chunk_size=50,
    )
    y = books[["genre", "price"]].set_axis(["g", "p"], axis=1)
    model.fit(books, y)
    tree, ridge = model.estimators_
    expected = np.mean(
        [
            tree.score(books[GENRE_FEATURES], y["g"]),
            ridge.score(books[["pages", "year"]], y["p"]),
        ]
    )
    assert model.score(books, y) == pytest.approx(expected, rel=1e-12)


def test_a_frozen_models_score_is_its_models(books):
    from sklearn.frozen import FrozenEstimator

    tree = DecisionTreeClassifier(max_depth=3, random_state=0)
    tree.fit(books[GENRE_FEATURES], books["genre"])
    model = MultiModelPredictor(
        [(FrozenEstimator(tree), GENRE_FEATURES, "genre")], n_jobs=2, chunk_size=50
    )
    expected = tree.score(books[GENRE_FEATURES], books["genre"])
    assert model.score(books) == expected


def test_pre_fitted_models_and_not_fitted(books):
    fitted = [(clone(m).fit(books[f], books[t]), f, t) for m, f, t in _books_models()]
    model = MultiModelPredictor(fitted, n_jobs=1)
    out = model.predict(books)
    assert (out["genre"] == fitted[0][0].predict(books[GENRE_FEATURES])).all()
    assert model.estimators_[0] is fitted[0][0]
    assert model.targets_ == ["genre", "language"]

    with pytest.raises(NotFittedError, match="'language'"):
        MultiModelPredictor([fitted[0], _books_models()[1]]).predict(books)
    with pytest.raises(NotFittedError):
        MultiModelPredictor(_books_models()).predict(books)
    assert not hasattr(MultiModelPredictor(_books_models()), "estimators_")


def test_nested_params(books):
    model = MultiModelPredictor(_books_models())
    params = model.get_params(deep=True)
    assert params["genre__max_depth"] == 5
    assert params["language__C"] == 1.0
    assert "genre__max_depth" not in model.get_params(deep=False)
    model.set_params(genre__max_depth=3, language=LogisticRegression(C=0.1))
    assert model.models[0][0].max_depth == 3
    estimator, features, target = model.models[1]
    assert (estimator.C, features, target) == (0.1, LANGUAGE_FEATURES, "language")
    # Integer targets are named by their string form.
    numbered = MultiModelPredictor([(Ridge(), None, 0), (Ridge(), None, 1)])
    numbered.set_params(**{"1__alpha": 3.0})
    assert numbered.models[1][0].alpha == 3.0
    assert numbered.models[1][2] == 1


def test_new_models_take_the_nested_params_set_with_them(books):
    # As Pipeline(...).set_params(steps=new, clf__C=...): the models are
    # replaced first, then the new ones take their parameters.
    replaced = DecisionTreeClassifier(max_depth=5)
    model = MultiModelPredictor([(replaced, GENRE_FEATURES, "genre")])
    new = [
        (DecisionTreeClassifier(max_depth=5), GENRE_FEATURES, "genre"),
        (LogisticRegression(), LANGUAGE_FEATURES, "language"),
    ]
    model.set_params(models=new, genre__max_depth=3, language=Ridge())
    assert model.models[0][0] is new[0][0]
    assert model.models[0][0].max_depth == 3
    assert replaced.max_depth == 5
    assert isinstance(model.models[1][0], Ridge)
    # GridSearchCV sets both at once (sorted: the nested parameter first).
    search = GridSearchCV(
        MultiModelPredictor([(Ridge(), ["pages"], "genre")], n_jobs=1),
        {"models": [new[:1]], "genre__max_depth": [1, 6]},
        cv=2,
    ).fit(books)
    depths = [params["genre__max_depth"] for params in search.cv_results_["params"]]
    assert depths == [1, 6]
    assert len(set(search.cv_results_["mean_test_score"])) == 2
    assert search.best_estimator_.estimators_[0].max_depth == 6


def test_clone_pickle_and_dump(books, tmp_path):
    model = MultiModelPredictor(_books_models(), n_jobs=2, backend="threading")
    cloned = clone(model)
    assert cloned.get_params(deep=False).keys() == model.get_params(deep=False).keys()
    assert cloned.models[0][0] is not model.models[0][0]
    model.fit(books)
    expected = model.predict(books)
    pd.testing.assert_frame_equal(
        pickle.loads(pickle.dumps(model)).predict(books), expected
    )
    joblib.dump(model, tmp_path / "model.joblib")
    pd.testing.assert_frame_equal(
        joblib.load(tmp_path / "model.joblib").predict(books), expected
    )


def test_html_repr_shows_each_model():
    html = estimator_html_repr(MultiModelPredictor(_books_models()))
    for text in ("genre", "language", "DecisionTreeClassifier", "LogisticRegression"):
        assert text in html


def test_tags():
    tags = get_tags(MultiModelPredictor(_books_models()))
    assert tags.estimator_type is None
    assert not tags.target_tags.required
    assert tags.target_tags.multi_output
    # Sparse input when every model takes it (scikit-learn 1.6.0 does not yet
    # declare it for trees and linear models).
    inner = [get_tags(estimator).input_tags.sparse for estimator, *_ in _books_models()]
    assert tags.input_tags.sparse is all(inner)
    assert not is_classifier(MultiModelPredictor(_books_models()))
    knn = MultiModelPredictor([(KNeighborsClassifier(), None, "a")])
    assert get_tags(knn).input_tags.allow_nan is False


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_a_coo_with_duplicate_entries_reaches_the_models_summed(backend):
    import scipy.sparse as sp
    from sklearn.preprocessing import Normalizer

    coo = sp.random(60, 6, density=0.4, format="coo", random_state=0)
    row, col, data = (np.r_[a, a[::3]] for a in (coo.row, coo.col, coo.data))
    X = sp.coo_matrix((data, (row, col)), shape=coo.shape)
    y = np.arange(60) % 2
    model = make_pipeline(Normalizer(), LogisticRegression()).fit(X, y)
    # The models are given CSR, whose duplicates a Normalizer squares each,
    # where its own conversion of the COO sums them.
    wrapper = MultiModelPredictor(
        [(model, None, "t")], n_jobs=2, backend=backend, chunk_size=7
    )
    np.testing.assert_allclose(
        wrapper.predict_proba(X)[0], model.predict_proba(X), rtol=1e-9
    )


def test_a_model_that_is_not_a_scikit_learn_estimator():
    # scikit-learn 1.7 on raises AttributeError for its tags: predict, the
    # tags and the HTML repr failed.
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "t": [0.0, 1.0, 1.0]})
    fitted = ByItsMethods().fit(frame[["a"]], frame["t"])
    model = MultiModelPredictor([(fitted, ["a"], "t")], n_jobs=1)
    np.testing.assert_array_equal(
        model.predict(frame[["a"]])["t"], fitted.predict(frame)
    )
    assert get_tags(model).requires_fit
    assert "ByItsMethods" in estimator_html_repr(model)


def test_pipeline_after_pandas_transformer(books):
    X = books[NUMERIC_FEATURES]
    y = books[["genre", "language"]]
    pipe = make_pipeline(
        StandardScaler().set_output(transform="pandas"),
        MultiModelPredictor(_books_models(), n_jobs=2, chunk_size=100),
    ).fit(X, y)
    out = pipe.predict(X)
    scaled = pipe[0].transform(X)
    tree, logistic = pipe[-1].estimators_
    assert (out["genre"] == tree.predict(scaled[GENRE_FEATURES])).all()
    assert (out["language"] == logistic.predict(scaled[LANGUAGE_FEATURES])).all()
    assert 0.5 < pipe.score(X, y) <= 1


def test_grid_search_over_nested_parameter(books):
    search = GridSearchCV(
        MultiModelPredictor(_books_models(), n_jobs=2),
        {"genre__max_depth": [1, 6]},
        cv=2,
        n_jobs=2,
    ).fit(books)  # targets taken from X in every split
    assert search.best_params_ == {"genre__max_depth": 6}
    assert search.best_estimator_.estimators_[0].max_depth == 6
    assert search.predict(books).shape == (len(books), 2)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "models, match",
    [
        ([(Ridge(), None, "a"), (Ridge(), None, "a")], "unique.*'a'"),
        ([(Ridge(), None, 1), (Ridge(), None, "1")], "unique.*'1'"),
        ([(Ridge(), None, "a__b")], "'__'.*'a__b'"),
        ([(Ridge(), None, "n_jobs")], "parameters.*'n_jobs'"),
        ([(Ridge(), None, "models")], "parameters.*'models'"),
        ([], "non-empty"),
        ([(Ridge(), None)], r"\(estimator, features, target\)"),
    ],
)
def test_invalid_models(models, match):
    X, base = _data(0, 20)
    with pytest.raises(ValueError, match=match):
        MultiModelPredictor(models).fit(X, base["value"])


def test_invalid_target_type():
    X, base = _data(0, 20)
    with pytest.raises(TypeError, match="string or an integer"):
        MultiModelPredictor([(Ridge(), None, 1.5)]).fit(X, base["value"])


def test_missing_feature_column(books):
    models = _books_models()
    with pytest.raises(ValueError, match="'pages'.*'genre'"):
        MultiModelPredictor(models).fit(books.drop(columns="pages"))
    model = MultiModelPredictor(models, n_jobs=1).fit(books)
    with pytest.raises(ValueError, match="model 'genre' needs 'pages'"):
        model.predict(books.drop(columns=["pages", "genre"]))
    # Pre-fitted models: checked on predict's X.
    with pytest.raises(ValueError, match="'accent_rate'.*'language'"):
        MultiModelPredictor(
            [(m, f, t) for m, (_, f, t) in zip(model.estimators_, models)]
        ).predict(books.drop(columns="accent_rate"))


def test_missing_target_column(books):
    X = books[NUMERIC_FEATURES]
    with pytest.raises(ValueError, match="Target column 'genre' not found in X"):
        MultiModelPredictor(_books_models()).fit(X)
    with pytest.raises(ValueError, match="Target column 'language' not found in y"):
        MultiModelPredictor(_books_models()).fit(X, books[["genre"]])


def test_names_on_array_and_positions_out_of_range(books):
    A = books[NUMERIC_FEATURES].to_numpy()
    y = np.zeros(len(A))
    with pytest.raises(ValueError, match="by name.*'pages'.*no column names"):
        MultiModelPredictor([(Ridge(), ["pages"], "a")]).fit(A, y)
    with pytest.raises(ValueError, match=r"position\(s\) 12 .*'a'.*9 columns"):
        MultiModelPredictor([(Ridge(), [0, 12], "a")]).fit(A, y)
    with pytest.raises(ValueError, match="boolean mask.*2 entries"):
        MultiModelPredictor([(Ridge(), [True, False], "a")]).fit(A, y)
    model = MultiModelPredictor([(Ridge(), [0, 1], "a")], n_jobs=1).fit(A, y)
    with pytest.raises(ValueError, match="X has 3 features, but .* expecting 9"):
        model.predict(A[:, :3])


def test_two_targets_taking_one_column_of_y_are_refused():
    X, base = _data(0, 20)
    Y = base[["value", "label_int"]]
    # An integer target is a position; another takes its model's rank (an
    # array) or its label (a DataFrame): here both column 1, column 0 unused.
    clash = [(Ridge(), None, 1), (Ridge(), None, "q")]
    with pytest.raises(ValueError, match="Targets 1 and 'q' both take column 1"):
        MultiModelPredictor(clash).fit(X, Y.to_numpy())
    clash = [(Ridge(), None, 0), (Ridge(), None, "value")]
    with pytest.raises(ValueError, match="Targets 0 and 'value' both take column 0"):
        MultiModelPredictor(clash).fit(X, Y)
    apart = [(Ridge(), None, 1), (Ridge(), None, "value")]
    fitted = MultiModelPredictor(apart, n_jobs=1).fit(X, Y)
    # score reads y as fit does.
    with pytest.raises(ValueError, match="both take column 1"):
        fitted.score(X, Y.rename(columns={"label_int": "x"}).iloc[:, ::-1])
    # A 1-D y is every model's target.
    MultiModelPredictor(clash, n_jobs=1).fit(X, base["value"])


def test_a_dict_of_targets_is_refused_naming_the_way_out():
    X, base = _data(0, 20)
    y = {"value": base["value"], "q": base["label_int"]}
    with pytest.raises(TypeError, match="not a dict.*pandas.DataFrame"):
        MultiModelPredictor([(Ridge(), None, "value")]).fit(X, y)


def test_model_fitted_on_its_own_target(books):
    with pytest.raises(ValueError, match="'price' would be fitted on its own target"):
        MultiModelPredictor([(Ridge(), ["pages", "price"], "price")]).fit(books)


def test_multi_output_model_is_refused():
    X, base = _data(0, 30)
    two = Ridge().fit(X, base[["value", "label_int"]])
    with pytest.raises(ValueError, match="'both'.*shape \\(30, 2\\)"):
        MultiModelPredictor([(two, None, "both")], n_jobs=1).predict(X)


class ChunkError(Exception):
    """Raised by :class:`FailsOnNegativeId`."""


class FailsOnNegativeId(ClassifierMixin, BaseEstimator):
    """Predicts 0, and raises its own error on a row whose first value is < -99."""

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        if (np.asarray(X)[:, 0] < -99).any():
            raise ChunkError("row with a negative id")
        return np.zeros(len(X), dtype=int)


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_model_failing_in_one_chunk_raises_its_own_error(backend):
    X, base = _data(0, 60)
    X.iloc[47, 0] = -1000
    model = MultiModelPredictor(
        [(FailsOnNegativeId(), ["f0"], "bad"), (Ridge(), None, "ok")],
        n_jobs=2,
        backend=backend,
        chunk_size=10,
    ).fit(X, base["label_int"])
    with pytest.raises(ChunkError, match="negative id"):
        model.predict(X)


# ---------------------------------------------------------------------------
# scikit-learn's estimator checks
# ---------------------------------------------------------------------------

# The checks pass numpy arrays and a 1-D (or column) y, every model's target.
# The two-model instances run in tiny chunks on threads so that every check
# also exercises the models x chunks path (processes are covered above).
CHECKED = [
    MultiModelPredictor([(LogisticRegression(), None, "a")]),
    MultiModelPredictor([(RidgeClassifier(), None, "a")]),
    MultiModelPredictor(
        [
            (DecisionTreeRegressor(max_depth=3, random_state=0), [0], "a"),
            (Ridge(), None, "b"),
        ],
        n_jobs=2,
        backend="threading",
        chunk_size=7,
    ),
]

_PROBA_IS_A_LIST = (
    "predict_proba returns a list of arrays, one per model (DESIGN.md); the "
    "check indexes it as a single array"
)
_TWO_OUTPUTS = (
    "the check expects predict to return one column per column of y; two "
    "models on the same 1-column y return two columns, by design"
)


def _expected_failed_checks(estimator):
    if estimator is CHECKED[0]:
        return {
            "check_methods_sample_order_invariance": _PROBA_IS_A_LIST,
            "check_estimator_sparse_array": _PROBA_IS_A_LIST,
            "check_estimator_sparse_matrix": _PROBA_IS_A_LIST,
        }
    if estimator is CHECKED[2]:
        return {
            "check_estimator_sparse_array": _TWO_OUTPUTS,
            "check_estimator_sparse_matrix": _TWO_OUTPUTS,
        }
    return {}


@parametrize_with_checks(CHECKED, expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_column_positions_are_remembered_by_all_that_decides_them(monkeypatch):
    from sklearn_parpredict import _columns

    found = []
    find = _columns._find_positions

    def counting(X, features, target):
        found.append(features)
        return find(X, features, target)

    monkeypatch.setattr(_columns, "_find_positions", counting)
    positions = _columns.column_positions
    frame = pd.DataFrame(np.zeros((2, 3)), columns=["a", "b", "c"])
    assert positions(frame, ["a", "c"], "m") == [0, 2]
    assert positions(frame.iloc[1:], ["a", "c"], "m") == [0, 2]
    assert len(found) == 1, "the same names in the same columns were looked up again"
    # Other column order, other features, features changed in place.
    assert positions(frame[["c", "b", "a"]], ["a", "c"], "m") == [2, 0]
    # One name (a 1-D column) is not a list of one name (a table).
    assert positions(frame, "b", "m") == 1
    assert positions(frame, ["b"], "m") == [1]
    assert positions(frame, "b", "m") == 1
    assert positions(X := np.zeros((2, 3)), 2, "m") == 2
    assert positions(X, [2], "m") == [2]
    features = ["b"]
    assert positions(frame, features, "m") == [1]
    features.append("a")
    assert positions(frame, features, "m") == [1, 0]
    # A mask and positions that compare equal select different columns.
    X = np.zeros((2, 3))
    assert positions(X, [True, False, True], "m") == [0, 2]
    assert positions(X, [1, 0, 1], "m") == [1, 0, 1]
    assert positions(X, np.array([True, False, True]), "m") == [0, 2]
    assert positions(X, np.array([1, 0, 1]), "m") == [1, 0, 1]
    # A callable may answer differently for any X: asked every time.
    calls = []

    def first(X):
        calls.append(X)
        return [X.columns[0]]

    assert positions(frame, first, "m") == [0]
    assert positions(frame[["b", "a"]], first, "m") == [0]
    assert len(calls) == 2
    with pytest.raises(ValueError, match="'z'.*not found"):
        positions(frame, ["a", "z"], "m")
