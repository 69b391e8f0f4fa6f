"""Synthetic data for the examples, the demo and the benchmarks.

:func:`make_books` builds the table of books that the usual tutorial on
parallel scikit-learn starts from: numeric and categorical features, and two
targets, ``genre`` and ``language``, each learnable from its own columns.
"""

from __future__ import annotations

from numbers import Integral
from typing import TYPE_CHECKING

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, validate_params

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CATEGORICAL_FEATURES",
    "GENRES",
    "GENRE_FEATURES",
    "LANGUAGES",
    "LANGUAGE_FEATURES",
    "NUMERIC_FEATURES",
    "TARGETS",
    "make_books",
]

#: The values of the ``genre`` target.
GENRES = ("children", "fantasy", "mystery", "romance", "science")
#: The values of the ``language`` target.
LANGUAGES = ("english", "french", "german", "spanish")

#: Numeric columns driven by the genre.
GENRE_FEATURES = ["pages", "price", "year", "rating", "n_reviews", "illustrations"]
#: Numeric columns driven by the language.
LANGUAGE_FEATURES = ["word_length", "sentence_length", "accent_rate"]
#: Every numeric column: the genre's, then the language's.
NUMERIC_FEATURES = GENRE_FEATURES + LANGUAGE_FEATURES
#: String columns, stored with the pandas ``category`` dtype.
CATEGORICAL_FEATURES = ["publisher", "cover", "country"]
#: The two target columns.
TARGETS = ["genre", "language"]

# Fraction of rows whose recorded label is redrawn at random, so that no model
# can be perfect.
_LABEL_NOISE = 0.05

_GENRE_PRIOR = np.array([0.15, 0.25, 0.20, 0.22, 0.18])
# Per genre, in the order of GENRES.
_PAGES_MEDIAN = np.array([48.0, 480.0, 320.0, 300.0, 360.0])
_YEAR_SCALE = np.array([15.0, 10.0, 25.0, 6.0, 20.0])
_RATING_MEAN = np.array([4.3, 4.1, 3.8, 3.9, 3.6])
_REVIEWS_MEDIAN = np.array([40.0, 250.0, 120.0, 600.0, 15.0])
_ILLUSTRATIONS_MEAN = np.array([25.0, 2.0, 0.2, 0.1, 12.0])
_PRICE_BASE = np.array([6.0, 11.0, 9.0, 7.0, 32.0])

_PUBLISHERS = (
    "Hachette",
    "HarperCollins",
    "Macmillan",
    "Penguin",
    "Scholastic",
    "Springer",
)
_PUBLISHER_GIVEN_GENRE = np.array(
    [
        [0.10, 0.10, 0.10, 0.20, 0.50, 0.00],
        [0.25, 0.25, 0.20, 0.30, 0.00, 0.00],
        [0.30, 0.25, 0.20, 0.25, 0.00, 0.00],
        [0.20, 0.40, 0.15, 0.25, 0.00, 0.00],
        [0.05, 0.05, 0.20, 0.10, 0.00, 0.60],
    ]
)

_COVERS = ("ebook", "hardcover", "paperback")
_COVER_PRIOR = np.array([0.30, 0.25, 0.45])
_COVER_PRICE_FACTOR = np.array([0.6, 1.6, 1.0])

_LANGUAGE_PRIOR = np.array([0.45, 0.20, 0.15, 0.20])
# Per language, in the order of LANGUAGES.
_WORD_LENGTH_MEAN = np.array([4.6, 4.9, 5.9, 5.0])
_SENTENCE_LENGTH_MEAN = np.array([16.0, 21.0, 14.0, 24.0])
_ACCENT_RATE_MEDIAN = np.array([0.3, 18.0, 9.0, 7.0])
_ACCENT_RATE_SIGMA = np.array([1.0, 0.5, 0.5, 0.5])

_COUNTRIES = (
    "Argentina",
    "Australia",
    "Austria",
    "Belgium",
    "Canada",
    "France",
    "Germany",
    "Mexico",
    "Spain",
    "Switzerland",
    "UK",
    "USA",
)
_COUNTRY_GIVEN_LANGUAGE = np.array(
    [
        [0.00, 0.10, 0.00, 0.00, 0.10, 0.00, 0.00, 0.00, 0.00, 0.00, 0.30, 0.50],
        [0.00, 0.00, 0.00, 0.10, 0.15, 0.70, 0.00, 0.00, 0.00, 0.05, 0.00, 0.00],
        [0.00, 0.00, 0.15, 0.00, 0.00, 0.00, 0.75, 0.00, 0.00, 0.10, 0.00, 0.00],
        [0.20, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.30, 0.45, 0.00, 0.00, 0.05],
    ]
)
# Some books are printed abroad: mix a little of the uniform distribution into
# the country and publisher tables, so that neither identifies a class.
_COUNTRY_GIVEN_LANGUAGE = 0.95 * _COUNTRY_GIVEN_LANGUAGE + 0.05 / len(_COUNTRIES)
_PUBLISHER_GIVEN_GENRE = 0.95 * _PUBLISHER_GIVEN_GENRE + 0.05 / len(_PUBLISHERS)


def _generator(random_state) -> np.random.Generator:
    """A numpy Generator from any scikit-learn style ``random_state``."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None or isinstance(random_state, Integral):
        return np.random.default_rng(
            None if random_state is None else int(random_state)
        )
    # A RandomState instance: seed from it, advancing it as sklearn does.
    seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
    return np.random.default_rng(seed)


def _sample_given(rng, labels, table):
    """Draw one category code per row from ``table[labels[i]]``."""
    cumulative = np.cumsum(table, axis=1)
    u = rng.random(labels.shape[0])
    codes = np.empty(labels.shape[0], dtype=np.intp)
    for label, cum in enumerate(cumulative):
        rows = labels == label
        codes[rows] = np.searchsorted(cum, u[rows], side="right")
    # Guard against the last cumulative sum rounding to just below 1.
    return np.minimum(codes, table.shape[1] - 1)


def _noisy_labels(rng, latent, prior):
    """The recorded labels: ``latent`` with a fraction redrawn from ``prior``."""
    n = latent.shape[0]
    redraw = rng.random(n) < _LABEL_NOISE
    labels = latent.copy()
    labels[redraw] = rng.choice(len(prior), size=int(redraw.sum()), p=prior)
    return labels


def _categorical(codes, categories):
    import pandas as pd

    return pd.Categorical.from_codes(codes, categories=list(categories))


@validate_params(
    {
        "n_rows": [Interval(Integral, 0, None, closed="left")],
        "random_state": ["random_state", np.random.Generator],
    },
    prefer_skip_nested_validation=True,
)
def make_books(
    n_rows: int = 10_000,
    *,
    random_state: int | np.random.RandomState | np.random.Generator | None = None,
) -> pd.DataFrame:
    """Generate a synthetic table of books with a genre and a language.

    Each book has a hidden genre and a hidden language, drawn independently.
    The genre drives ``pages``, ``price``, ``year``, ``rating``,
    ``n_reviews``, ``illustrations`` and the ``publisher``; the language
    drives ``word_length``, ``sentence_length``, ``accent_rate`` and the
    ``country``; the ``cover`` is independent of both (it changes the price).
    The class-conditional distributions overlap, and 5% of the recorded
    labels are redrawn at random, so a model of ``genre`` on
    :data:`GENRE_FEATURES` and a model of ``language`` on
    :data:`LANGUAGE_FEATURES` are both good but not perfect, while each
    model's columns say almost nothing about the other target.

    Parameters
    ----------
    n_rows : int, default=10_000
        Number of books (rows).

    random_state : int, RandomState instance, Generator or None, default=None
        Determines the random numbers. Pass an int for the same table across
        calls. See ``random_state`` in the scikit-learn glossary.

    Returns
    -------
    books : pandas.DataFrame of shape (n_rows, 14)
        One row per book, with a ``RangeIndex`` and the columns:

        - ``pages`` (int64): number of pages.
        - ``price`` (float64): price, ending in .99.
        - ``year`` (int64): publication year, 1900 to 2024.
        - ``rating`` (float64): average reader rating, 1 to 5.
        - ``n_reviews`` (int64): number of reader reviews.
        - ``illustrations`` (int64): number of illustrations.
        - ``word_length`` (float64): mean letters per word.
        - ``sentence_length`` (float64): mean words per sentence.
        - ``accent_rate`` (float64): accented letters per 1,000 letters.
        - ``publisher``, ``cover``, ``country`` (category): string features.
        - ``genre`` (category): target, one of :data:`GENRES`.
        - ``language`` (category): target, one of :data:`LANGUAGES`.

        The categorical columns always have all their categories, even when
        some do not occur in the rows.

    See Also
    --------
    sklearn.datasets.make_classification : Generic synthetic classification.

    Examples
    --------
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> from sklearn_parpredict.datasets import GENRE_FEATURES, make_books
    >>> books = make_books(1_000, random_state=0)
    >>> books.shape
    (1000, 14)
    >>> books["genre"].cat.categories.tolist()
    ['children', 'fantasy', 'mystery', 'romance', 'science']
    >>> books["language"].cat.categories.tolist()
    ['english', 'french', 'german', 'spanish']
    >>> genre_model = RandomForestClassifier(n_estimators=20, random_state=0)
    >>> genre_model.fit(books[GENRE_FEATURES], books["genre"])
    RandomForestClassifier(n_estimators=20, random_state=0)
    >>> genre_model.classes_.tolist()
    ['children', 'fantasy', 'mystery', 'romance', 'science']
    """
    import pandas as pd

    rng = _generator(random_state)
    n = int(n_rows)

    # Hidden classes drive the features; the recorded labels are noisy.
    genre = rng.choice(len(GENRES), size=n, p=_GENRE_PRIOR)
    language = rng.choice(len(LANGUAGES), size=n, p=_LANGUAGE_PRIOR)

    pages = np.clip(np.rint(rng.lognormal(np.log(_PAGES_MEDIAN[genre]), 0.35)), 8, 3000)
    cover = rng.choice(len(_COVERS), size=n, p=_COVER_PRIOR)
    price = (
        (_PRICE_BASE[genre] + 0.015 * pages)
        * _COVER_PRICE_FACTOR[cover]
        * rng.lognormal(0.0, 0.15, size=n)
    )
    price = np.maximum(np.rint(price), 1.0) - 0.01
    year = np.maximum(2024 - np.floor(rng.exponential(_YEAR_SCALE[genre])), 1900)
    rating = np.round(np.clip(rng.normal(_RATING_MEAN[genre], 0.35), 1.0, 5.0), 2)
    n_reviews = np.rint(rng.lognormal(np.log(_REVIEWS_MEDIAN[genre]), 0.9))
    illustrations = rng.poisson(_ILLUSTRATIONS_MEAN[genre])
    publisher = _sample_given(rng, genre, _PUBLISHER_GIVEN_GENRE)

    word_length = np.round(rng.normal(_WORD_LENGTH_MEAN[language], 0.3), 2)
    sentence_length = np.round(
        np.maximum(rng.normal(_SENTENCE_LENGTH_MEAN[language], 3.5), 3.0), 1
    )
    accent_rate = np.round(
        rng.lognormal(
            np.log(_ACCENT_RATE_MEDIAN[language]), _ACCENT_RATE_SIGMA[language]
        ),
        2,
    )
    country = _sample_given(rng, language, _COUNTRY_GIVEN_LANGUAGE)

    genre = _noisy_labels(rng, genre, _GENRE_PRIOR)
    language = _noisy_labels(rng, language, _LANGUAGE_PRIOR)

    return pd.DataFrame(
        {
            "pages": pages.astype(np.int64),
            "price": price,
            "year": year.astype(np.int64),
            "rating": rating,
            "n_reviews": n_reviews.astype(np.int64),
            "illustrations": illustrations.astype(np.int64),
            "word_length": word_length,
            "sentence_length": sentence_length,
            "accent_rate": accent_rate,
            "publisher": _categorical(publisher, _PUBLISHERS),
            "cover": _categorical(cover, _COVERS),
            "country": _categorical(country, _COUNTRIES),
            "genre": _categorical(genre, GENRES),
            "language": _categorical(language, LANGUAGES),
        }
    )
