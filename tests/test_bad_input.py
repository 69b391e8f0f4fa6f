"""Bad input: each case fails as the serial call does, or returns what it does.

Every case of the catalogue goes through both wrappers on processes and on
threads, in about six chunks so that the rows really are split
(:func:`parallel_predict` is the same engine call as
:class:`ParallelPredictor`; its own parameter checks are tested below). The
reference is the serial call: the estimator's own ``predict``, or a
``MultiModelPredictor`` with ``n_jobs=1``.
"""

import functools
import warnings

import numpy as np
import pandas as pd
import pytest
from _helpers import assert_same_output
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from sklearn_parpredict import MultiModelPredictor, ParallelPredictor, parallel_predict

X, Y = make_classification(n_samples=240, n_features=5, random_state=0)
COLUMNS = [f"f{i}" for i in range(5)]
FRAME = pd.DataFrame(X, columns=COLUMNS)
CATEGORIES = pd.DataFrame(
    {"colour": np.where(X[:, 0] > 0, "red", "blue"), "size": np.where(Y, "S", "L")}
)
FITTED = {
    "array": LogisticRegression().fit(X, Y),
    "frame": LogisticRegression().fit(FRAME, Y),
    "nan-tolerant": HistGradientBoostingClassifier(max_iter=5).fit(X, Y),
    "categories": make_pipeline(OneHotEncoder(), LogisticRegression()).fit(
        CATEGORIES, Y
    ),
}


def _with(value, row=100, column=2):
    bad = X.copy()
    bad[row, column] = value
    return bad


def _with_string():
    bad = X.astype(object)
    bad[100, 1] = "abc"
    return bad


def _read_only(array):
    array = array.copy()
    array.setflags(write=False)
    return array


def _mixed_dtypes():
    frame = FRAME.copy()
    frame["f1"] = frame["f1"].astype(np.float32)
    frame["f2"] = (frame["f2"] > 0).astype(int)
    return frame


def _string_column():
    frame = FRAME.copy()
    frame["f3"] = np.where(frame["f3"] > 0, "up", "down")
    return frame


def _text_in_two_columns():
    # Converted column by column: the serial call quotes the first column's
    # text, the first rows quote another.
    frame = FRAME.astype(object)
    frame.loc[200, "f0"] = "late, in the first column"
    frame.loc[3, "f3"] = "early, in the last column"
    return frame


def _unseen_categories():
    # The serial call names the first column with categories not seen in
    # fit, and all of them; the first rows another column.
    frame = CATEGORIES.copy()
    frame.loc[[150, 230], "colour"] = ["green", "black"]
    frame.loc[3, "size"] = "XL"
    return frame


# name -> (fitted estimator, input maker)
CATALOGUE = {
    "wrong-feature-count": ("array", lambda: np.hstack([X, X])),
    "renamed-columns": ("frame", lambda: FRAME.rename(columns={"f0": "other"})),
    "reordered-columns": ("frame", lambda: FRAME[COLUMNS[::-1]]),
    "missing-column": ("frame", lambda: FRAME.drop(columns="f0")),
    "missing-names": ("frame", lambda: X),
    "unexpected-names": ("array", lambda: FRAME),
    "nan-rejected": ("array", lambda: _with(np.nan)),
    "inf-rejected": ("array", lambda: _with(np.inf)),
    "nan-accepted": ("nan-tolerant", lambda: _with(np.nan)),
    "object-numbers": ("array", lambda: X.astype(object)),
    "object-strings": ("array", _with_string),
    "mixed-dtypes-frame": ("frame", _mixed_dtypes),
    "string-column-frame": ("frame", _string_column),
    "empty": ("array", lambda: X[:0]),
    "empty-frame": ("frame", lambda: FRAME.iloc[:0]),
    "one-dimensional": ("array", lambda: X[:, 0]),
    "one-dimensional-list": ("array", lambda: X[:, 0].tolist()),
    "one-dimensional-series": ("frame", lambda: FRAME["f0"]),
    "string": ("array", lambda: "abc"),
    "fortran-order": ("array", lambda: np.asfortranarray(X)),
    "strided-rows": ("array", lambda: np.repeat(X, 2, axis=0)[::2]),
    "strided-columns": ("array", lambda: np.repeat(X, 2, axis=1)[:, ::2]),
    "read-only": ("array", lambda: _read_only(X)),
    # Large enough to be memory-mapped into the workers rather than pickled.
    "read-only-shared": ("array", lambda: _read_only(np.tile(X, (120, 1)))),
    "list-of-lists": ("array", lambda: X.tolist()),
    # Messages that quote the whole input, or its first failing column.
    "no-columns": ("array", lambda: X[:, :0]),
    "text-in-two-columns": ("frame", _text_in_two_columns),
    "unseen-categories": ("categories", _unseen_categories),
}


def _run(entry, estimator, X, **engine):
    if entry == "ParallelPredictor":
        return ParallelPredictor(estimator, **engine).predict(X)
    if entry == "parallel_predict":
        return parallel_predict(estimator, X, **engine)
    return MultiModelPredictor([(estimator, None, "y")], **engine).predict(X)


def _fails_as_serial(serial_call, parallel_call):
    """Both calls raise a ValueError, with the same message word for word."""
    with pytest.raises(ValueError) as serial:
        serial_call()
    with pytest.raises(ValueError) as raised:
        parallel_call()
    assert str(raised.value) == str(serial.value)


def _serial(entry, estimator, X):
    """The serial call's output or exception, and its warnings' categories."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if entry == "MultiModelPredictor":
                out = _run(entry, estimator, X, n_jobs=1)
            else:
                out = estimator.predict(X)
        except Exception as exc:
            out = exc
    return out, {w.category for w in caught}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["loky", "threading"])
@pytest.mark.parametrize("entry", ["ParallelPredictor", "MultiModelPredictor"])
@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_bad_input_fails_or_equals_the_serial_call(case, entry, backend):
    name, make_input = CATALOGUE[case]
    estimator, X_bad = FITTED[name], make_input()
    expected, expected_warnings = _serial(entry, estimator, X_bad)
    n_rows = len(X_bad)
    engine = {"n_jobs": 2, "backend": backend, "chunk_size": max(1, -(-n_rows // 6))}
    if isinstance(expected, Exception):
        # The same error, word for word: a message that quotes the input
        # quotes all of it, not one chunk's part.
        with pytest.raises(type(expected)) as raised:
            _run(entry, estimator, X_bad, **engine)
        assert str(raised.value) == str(expected)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _run(entry, estimator, X_bad, **engine)
    assert_same_output(out, expected)
    # The serial call's warnings reach the caller too.
    assert {w.category for w in caught} >= expected_warnings


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunk_size", [10**12, 241, 240])
def test_chunks_larger_than_the_input(chunk_size):
    estimator = FITTED["array"]
    for entry in ("ParallelPredictor", "parallel_predict"):
        out = _run(entry, estimator, X, n_jobs=2, chunk_size=chunk_size)
        assert_same_output(out, estimator.predict(X))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "setting, match",
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": -5}, "chunk_size"),
        ({"chunk_size": 2.5}, "chunk_size"),
        ({"chunk_size": "big"}, "chunk_size"),
        ({"n_jobs": 0}, "n_jobs"),
        ({"n_jobs": 1.5}, "n_jobs"),
        ({"n_jobs": "2"}, "n_jobs"),
        ({"backend": 3}, "backend"),
        ({"backend": "nope"}, "nope"),
    ],
)
@pytest.mark.parametrize(
    "entry", ["ParallelPredictor", "parallel_predict", "MultiModelPredictor"]
)
def test_invalid_settings_are_refused_even_for_a_small_batch(entry, setting, match):
    # Ten rows stay in-process under chunk_size="auto": the settings are
    # still checked.
    with pytest.raises(ValueError, match=match):
        _run(entry, FITTED["array"], X[:10], **setting)


@pytest.mark.parametrize(
    "entry", ["ParallelPredictor", "parallel_predict", "MultiModelPredictor"]
)
@pytest.mark.parametrize(
    "valid, invalid",
    [
        ({"n_jobs": 2}, {"n_jobs": 2.0}),
        ({"chunk_size": 5}, {"chunk_size": 5.0}),
    ],
)
def test_settings_that_passed_do_not_let_equal_values_of_another_type_pass(
    entry, valid, invalid
):
    # Validation is remembered per set of values, and 2.0 == 2: the types
    # are part of what is remembered.
    _run(entry, FITTED["array"], X[:10], **valid)
    with pytest.raises(ValueError, match=next(iter(invalid))):
        _run(entry, FITTED["array"], X[:10], **invalid)


def test_parallel_predict_checks_settings_once_then_remembers(monkeypatch):
    from sklearn_parpredict import _validation

    checked = []
    real = _validation.validate_parameter_constraints

    def spy(constraints, params, caller_name):
        checked.append(caller_name)
        return real(constraints, params, caller_name=caller_name)

    monkeypatch.setattr(_validation, "validate_parameter_constraints", spy)
    monkeypatch.setattr(_validation, "_valid", set())
    for _ in range(3):
        parallel_predict(FITTED["array"], X[:10], n_jobs=2)
    assert checked == ["parallel_predict"]
    # The input is the estimator's to check, as in the serial call: another
    # type of input checks no setting again, and fails as serial does.
    _fails_as_serial(
        lambda: FITTED["array"].predict("not an array"),
        lambda: parallel_predict(FITTED["array"], "not an array", n_jobs=2),
    )
    parallel_predict(FITTED["array"], X[:10].tolist(), n_jobs=2)
    assert checked == ["parallel_predict"]
    # Another type of setting is checked again.
    parallel_predict(FITTED["array"], X[:10], n_jobs=np.int64(2))
    assert checked == ["parallel_predict"] * 2


def test_multi_model_predictor_checks_its_settings_once(monkeypatch):
    from sklearn.utils._param_validation import InvalidParameterError

    from sklearn_parpredict import _validation

    checked = []
    real = _validation.validate_parameter_constraints

    def spy(constraints, params, caller_name):
        checked.append(sorted(params))
        return real(constraints, params, caller_name=caller_name)

    monkeypatch.setattr(_validation, "validate_parameter_constraints", spy)
    monkeypatch.setattr(_validation, "_valid", set())
    models = [(FITTED["array"], None, "a")]
    model = MultiModelPredictor(models, n_jobs=2)
    for _ in range(3):
        model.predict(X[:10])
    # The models are a list (no key): their type is.
    assert checked == [["models"], ["backend", "chunk_size", "n_jobs", "verbose"]]
    with pytest.raises(InvalidParameterError, match="'models' parameter"):
        model.set_params(models=tuple(models)).predict(X[:10])


def test_skip_parameter_validation_is_honoured(monkeypatch):
    from sklearn import config_context

    from sklearn_parpredict import _validation

    checked = []
    monkeypatch.setattr(
        _validation, "validate_parameter_constraints", lambda *a, **k: checked.append(1)
    )
    monkeypatch.setattr(_validation, "_valid", set())
    with config_context(skip_parameter_validation=True):
        out = parallel_predict(FITTED["array"], X[:10], n_jobs=1, chunk_size=3)
        ParallelPredictor(FITTED["array"], n_jobs=1).predict(X[:10])
    assert checked == []
    assert_same_output(out, FITTED["array"].predict(X[:10]))
    parallel_predict(FITTED["array"], X[:10], n_jobs=1, chunk_size=3)
    assert checked == [1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["loky", "threading"])
@pytest.mark.parametrize("chunk_size", ["auto", 40])
def test_none_goes_to_the_estimator_as_it_is(chunk_size, backend):
    from sklearn.neighbors import KNeighborsClassifier

    engine = {"n_jobs": 2, "backend": backend, "chunk_size": chunk_size}
    # A neighbors estimator's samples each without itself among its neighbors.
    knn = KNeighborsClassifier().fit(X, Y)
    assert_same_output(
        ParallelPredictor(knn, **engine).predict(None), knn.predict(None)
    )
    assert_same_output(parallel_predict(knn, None, **engine), knn.predict(None))
    # Others fail as the serial call does.
    model = FITTED["array"]
    _fails_as_serial(
        lambda: model.predict(None),
        lambda: ParallelPredictor(model, **engine).predict(None),
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["loky", "threading"])
@pytest.mark.parametrize("chunk_size", ["auto", 10])
def test_a_mapping_is_one_sample(chunk_size, backend):
    from types import MappingProxyType

    from sklearn.feature_extraction import DictVectorizer

    engine = {"n_jobs": 2, "backend": backend, "chunk_size": chunk_size}
    # Keys enough for the engine to consider cutting it.
    sample = {f"k{i}": float(i) for i in range(100)}
    vectorizer = DictVectorizer().fit([sample])
    for given in (sample, MappingProxyType(sample)):
        expected = vectorizer.transform(given)
        assert expected.shape == (1, 100)
        got = ParallelPredictor(vectorizer, **engine).transform(given)
        assert_same_output(got, expected)
        assert_same_output(
            parallel_predict(vectorizer, given, method="transform", **engine),
            expected,
        )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["loky", "threading"])
@pytest.mark.parametrize("chunk_size", ["auto", 2])
def test_an_iterable_without_a_length_goes_to_the_estimator_whole(chunk_size, backend):
    from sklearn.feature_extraction.text import HashingVectorizer

    engine = {"n_jobs": 2, "backend": backend, "chunk_size": chunk_size}
    # A vectorizer takes any iterable of texts, one pass over it.
    docs = ["red apple", "green pear", "red pear", "blue plum", "apple"]
    vectorizer = HashingVectorizer(n_features=16)
    expected = vectorizer.transform(docs)
    for run in (
        # Fitted: scikit-learn 1.6 does not tag it as needing no fit.
        lambda given: (
            ParallelPredictor(vectorizer, **engine).fit(docs).transform(given)
        ),
        lambda given: parallel_predict(vectorizer, given, method="transform", **engine),
    ):
        assert_same_output(run(doc for doc in docs), expected)
        assert_same_output(run(iter(docs)), expected)


# The vectorizer tells np.nan by identity, which pickling does not keep: in
# an array, a list, a tuple (``zip(*pairs)``'s), pandas' objects (pandas < 3's
# for text, ``read_csv(dtype=object)``'s).
DOCUMENTS = {
    "array": np.asarray,
    "list": list,
    "tuple": tuple,
    "Series": functools.partial(pd.Series, dtype=object),
    "Index": functools.partial(pd.Index, dtype=object),
    "pandas array": functools.partial(pd.array, dtype=object),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["loky", "multiprocessing", "threading"])
@pytest.mark.parametrize("container", DOCUMENTS)
def test_a_missing_document_fails_as_in_the_serial_call(container, backend):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    docs = ["red apple", "green pear", "red pear", "blue plum"] * 10
    model = make_pipeline(TfidfVectorizer(), LogisticRegression())
    model.fit(docs, [0, 1] * 20)
    engine = {"n_jobs": 2, "backend": backend, "chunk_size": 10}
    bad = DOCUMENTS[container](np.array(docs + [np.nan], dtype=object))
    _fails_as_serial(
        functools.partial(model.predict, bad),
        functools.partial(ParallelPredictor(model, **engine).predict, bad),
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_a_missing_document_in_a_column_of_objects_fails_as_in_the_serial_call(
    backend,
):
    from sklearn.compose import make_column_transformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    docs = ["red apple", "green pear", "red pear", "blue plum"] * 10
    # A column of objects: pandas < 3's for text, ``read_csv(dtype=object)``'s.
    shelf = pd.DataFrame(
        {
            "title": pd.Series(docs, dtype=object),
            "pages": np.arange(40.0),
            "genre": [0, 1] * 20,
            "price": np.linspace(5.0, 25.0, 40),
        }
    )
    model = make_pipeline(
        make_column_transformer(
            (TfidfVectorizer(), "title"), (StandardScaler(), ["pages"])
        ),
        LogisticRegression(),
    ).fit(shelf, shelf["genre"])
    engine = {"n_jobs": 2, "backend": backend, "chunk_size": 10}
    bad = shelf.assign(title=pd.Series(docs[:25] + [np.nan] + docs[26:], dtype=object))
    _fails_as_serial(
        functools.partial(model.predict, bad),
        functools.partial(ParallelPredictor(model, **engine).predict, bad),
    )
    models = [
        (make_pipeline(TfidfVectorizer(), LogisticRegression()), "title", "genre"),
        (Ridge(), ["pages"], "price"),
    ]
    serial, parallel = (
        MultiModelPredictor(models, **settings).fit(shelf)
        for settings in ({"n_jobs": 1}, engine)
    )
    _fails_as_serial(
        functools.partial(serial.predict, bad),
        functools.partial(parallel.predict, bad),
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_array_subclasses_of_another_byte_order_reach_workers_as_given(
    backend, tmp_path
):
    from sklearn.preprocessing import StandardScaler

    values = np.random.default_rng(0).normal(size=(300, 4)) * 1000 + 12345.678
    mapped = np.memmap(tmp_path / "rows.dat", dtype=">f4", mode="w+", shape=(300, 4))
    mapped[:] = values
    scaler = StandardScaler().fit(values)
    engine = {"n_jobs": 2, "backend": backend, "chunk_size": 100}
    # scikit-learn converts >f4 to float64 (it keeps native float32): NumPy
    # pickled these subclasses as native float32.
    for given in (mapped, np.ma.masked_array(np.array(mapped))):
        expected = scaler.transform(given)
        assert expected.dtype == np.float64
        got = ParallelPredictor(scaler, **engine).transform(given)
        assert_same_output(got, expected)
