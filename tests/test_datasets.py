import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import cross_val_score
from sklearn.utils._param_validation import InvalidParameterError
from threadpoolctl import threadpool_limits

from sklearn_parpredict.datasets import (
    CATEGORICAL_FEATURES,
    GENRE_FEATURES,
    GENRES,
    LANGUAGE_FEATURES,
    LANGUAGES,
    NUMERIC_FEATURES,
    TARGETS,
    make_books,
)

COLUMNS = NUMERIC_FEATURES + CATEGORICAL_FEATURES + TARGETS


@pytest.fixture(scope="module")
def books():
    return make_books(3_000, random_state=0)


def test_columns_and_dtypes(books):
    assert books.shape == (3_000, len(COLUMNS))
    assert books.columns.tolist() == COLUMNS
    assert isinstance(books.index, pd.RangeIndex)
    for column in NUMERIC_FEATURES:
        assert books[column].dtype.kind in "if", column
        assert np.isfinite(books[column]).all(), column
    for column in ["pages", "year", "n_reviews", "illustrations"]:
        assert books[column].dtype == np.int64, column
    for column in CATEGORICAL_FEATURES + TARGETS:
        assert isinstance(books[column].dtype, pd.CategoricalDtype), column
        assert books[column].notna().all(), column
    assert books["genre"].cat.categories.tolist() == list(GENRES)
    assert books["language"].cat.categories.tolist() == list(LANGUAGES)
    assert set(books["cover"]) == {"hardcover", "paperback", "ebook"}


def test_feature_lists_are_disjoint_columns():
    assert not set(GENRE_FEATURES) & set(LANGUAGE_FEATURES)
    assert set(GENRE_FEATURES) | set(LANGUAGE_FEATURES) == set(NUMERIC_FEATURES)


def test_values_are_plausible(books):
    assert (books["pages"] >= 8).all()
    assert books["year"].between(1900, 2024).all()
    assert books["rating"].between(1, 5).all()
    assert (books["n_reviews"] >= 0).all()
    assert (books["illustrations"] >= 0).all()
    assert (books["price"] > 0).all()
    cents = np.round(books["price"] * 100).astype(int) % 100
    assert (cents == 99).all()
    assert (books["word_length"] > 0).all()
    assert (books["sentence_length"] >= 3).all()
    assert (books["accent_rate"] > 0).all()
    # Every class occurs in a table of this size.
    assert set(books["genre"]) == set(GENRES)
    assert set(books["language"]) == set(LANGUAGES)


def test_deterministic_for_a_seed(books):
    pd.testing.assert_frame_equal(make_books(3_000, random_state=0), books)
    other = make_books(3_000, random_state=1)
    assert not other["pages"].equals(books["pages"])
    assert not other["language"].equals(books["language"])


def test_random_state_instances():
    a = make_books(50, random_state=np.random.RandomState(3))
    b = make_books(50, random_state=np.random.RandomState(3))
    pd.testing.assert_frame_equal(a, b)
    c = make_books(50, random_state=np.random.default_rng(3))
    d = make_books(50, random_state=np.random.default_rng(3))
    pd.testing.assert_frame_equal(c, d)


def test_default_size():
    assert make_books().shape == (10_000, len(COLUMNS))


@pytest.mark.parametrize("n_rows", [0, 1])
def test_tiny_tables(n_rows, books):
    tiny = make_books(n_rows, random_state=0)
    assert tiny.shape == (n_rows, len(COLUMNS))
    pd.testing.assert_series_equal(tiny.dtypes, books.dtypes)
    # Categories do not depend on which values occur.
    assert tiny["country"].cat.categories.equals(books["country"].cat.categories)


@pytest.mark.parametrize("n_rows", [-1, 2.5, "10"])
def test_invalid_n_rows(n_rows):
    with pytest.raises(InvalidParameterError):
        make_books(n_rows)


def _cv_accuracy(books, features, target):
    model = HistGradientBoostingClassifier(
        max_iter=30, categorical_features="from_dtype", random_state=0
    )
    # One OpenMP thread: spinning threads make this slow on a busy machine.
    with threadpool_limits(limits=1):
        return cross_val_score(model, books[features], books[target], cv=3).mean()


@pytest.mark.parametrize(
    "target, own, other",
    [
        ("genre", GENRE_FEATURES, LANGUAGE_FEATURES),
        ("language", LANGUAGE_FEATURES, GENRE_FEATURES),
    ],
)
def test_each_target_is_learnable_from_its_own_features(books, target, own, other):
    majority = books[target].value_counts(normalize=True).max()
    own_accuracy = _cv_accuracy(books, own, target)
    other_accuracy = _cv_accuracy(books, other, target)
    assert own_accuracy > majority + 0.3
    # Learnable, but not perfectly: the labels are noisy.
    assert own_accuracy < 0.97
    # The other model's columns carry (almost) nothing about this target.
    assert other_accuracy < majority + 0.05


def test_country_helps_the_language_model(books):
    without = _cv_accuracy(books, LANGUAGE_FEATURES, "language")
    with_country = _cv_accuracy(books, LANGUAGE_FEATURES + ["country"], "language")
    assert with_country > without + 0.02
