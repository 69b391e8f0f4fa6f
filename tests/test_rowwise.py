"""Calls split by rows give the serial output, or are not split: parameters
with a value per row, outputs that are not one row per row, estimators and
parameters whose output couples the rows."""

import time
from collections import namedtuple

import numpy as np
import pandas as pd
import pytest
from _helpers import assert_same_output
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin, clone
from sklearn.cluster import DBSCAN, KMeans
from sklearn.decomposition import NMF, MiniBatchNMF
from sklearn.dummy import DummyClassifier
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.multioutput import MultiOutputClassifier
from sklearn.neural_network import BernoulliRBM
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from sklearn_parpredict import ParallelPredictor, parallel_predict
from sklearn_parpredict._chunking import NotPerRow, concatenate, split_bounds
from sklearn_parpredict._rowwise import params_for_rows, splittable

X = np.random.default_rng(0).normal(size=(60, 3))
Y = (X[:, 0] > 0).astype(int)
BACKENDS = ["loky", "threading"]


class _Offset(RegressorMixin, BaseEstimator):
    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X, offset=0.0, scale=1.0):
        return X.sum(axis=1) * scale + offset


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk_size", [1, 7, 20])
def test_a_parameter_with_a_value_per_row_is_cut_with_the_rows(backend, chunk_size):
    model = _Offset().fit(X)
    params = {"offset": np.arange(60.0), "scale": 2.0}
    got = ParallelPredictor(model, n_jobs=2, backend=backend, chunk_size=chunk_size)
    assert_same_output(got.predict(X, **params), model.predict(X, **params))
    # A list and a Series of one value per row too.
    offset = pd.Series(np.arange(60.0), index=range(100, 160))
    assert_same_output(
        parallel_predict(
            model,
            X,
            params={"offset": offset},
            n_jobs=2,
            backend=backend,
            chunk_size=chunk_size,
        ),
        model.predict(X, offset=offset),
    )


def test_params_for_rows_cuts_only_what_has_a_value_per_row():
    params = {
        "per_row": np.arange(6),
        "listed": list("abcdef"),
        "other_length": np.arange(4),
        "scalar": np.float64(2.0),
        "text": "abcdef",
        "mapping": dict.fromkeys("abcdef"),
    }
    cut = params_for_rows(params, 6, 2, 4)
    np.testing.assert_array_equal(cut["per_row"], [2, 3])
    assert cut["listed"] == ["c", "d"]
    for name in ("other_length", "scalar", "text", "mapping"):
        assert cut[name] is params[name]
    # All rows: the parameters as given.
    assert params_for_rows(params, 6, 0, 6) is params


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_covariance_between_all_rows_is_not_split(backend):
    gpr = GaussianProcessRegressor(alpha=0.1).fit(X, X[:, 0])
    assert not splittable(gpr, "predict", {"return_cov": True})
    assert splittable(gpr, "predict", {"return_std": True})
    wrapper = ParallelPredictor(gpr, n_jobs=2, backend=backend, chunk_size=10)
    mean, cov = wrapper.predict(X, return_cov=True)
    assert cov.shape == (60, 60)
    assert_same_output((mean, cov), gpr.predict(X, return_cov=True))
    assert_same_output(
        wrapper.predict(X, return_std=True), gpr.predict(X, return_std=True)
    )


class _PerRowArrays(TransformerMixin, BaseEstimator):
    """One array per row, of a length that varies with the row."""

    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        return [np.arange(int(abs(row[0]) * 3) + 1) for row in X]


class _BatchSum(TransformerMixin, BaseEstimator):
    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        return float(X.sum())


class _Dummies(TransformerMixin, BaseEstimator):
    """One column per value seen in the batch (as pandas.get_dummies)."""

    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        return pd.get_dummies(pd.Series(np.sign(X[:, 0]).astype(int)), dtype=int)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", [_PerRowArrays(), _BatchSum(), _Dummies()])
def test_outputs_that_are_not_one_row_per_row_are_the_serial_call(model, backend):
    model.fit(X)
    data = np.sort(X, axis=0)  # every chunk of _Dummies sees one sign
    got = parallel_predict(
        model, data, method="transform", n_jobs=2, backend=backend, chunk_size=10
    )
    expected = model.transform(data)
    if isinstance(expected, float):
        assert type(got) is float and got == expected
    else:
        assert_same_output(got, expected)


_Prediction = namedtuple("_Prediction", ["mean", "std"])


class _WithStd(RegressorMixin, BaseEstimator):
    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X, return_std=False):
        mean = X.sum(axis=1)
        return _Prediction(mean, np.abs(X[:, 0])) if return_std else mean


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", [*BACKENDS, "multiprocessing"])
def test_a_named_tuple_of_outputs_comes_back_as_itself(backend):
    model = _WithStd().fit(X)
    expected = model.predict(X, return_std=True)
    wrapper = ParallelPredictor(model, n_jobs=2, backend=backend, chunk_size=7)
    got = wrapper.predict(X, return_std=True)
    assert type(got) is _Prediction
    assert_same_output(got.mean, expected.mean)
    assert_same_output(got.std, expected.std)


def test_concatenate_refuses_what_is_not_one_row_per_row():
    a = np.zeros((3, 2))
    assert concatenate([a, a], [3, 3]).shape == (6, 2)
    with pytest.raises(NotPerRow, match="2 rows for 3"):
        concatenate([a, a[:2]], [3, 3])
    with pytest.raises(NotPerRow, match="different shapes"):
        concatenate([a, np.zeros((3, 1))], [3, 3])
    with pytest.raises(NotPerRow, match="float"):
        concatenate([1.0, 2.0], [3, 3])
    # One array per output, each of the chunk's rows; or one item per row.
    b = np.ones((3, 2))
    assert [p.shape for p in concatenate([[a, b], [b, a]], [3, 3])] == [(6, 2)] * 2
    ragged = [np.zeros(1), np.zeros(2), np.zeros(5)]
    assert len(concatenate([ragged, ragged], [3, 3])) == 6
    assert len(concatenate([list("ab"), list("cde")], [2, 3])) == 5


def test_split_bounds_never_cut_chunks_all_of_one_size():
    assert split_bounds(0, 4_000, 8)[:2] == [(0, 501), (501, 1_000)]
    assert {b - a for a, b in split_bounds(0, 4_000, 8)} == {499, 500, 501}
    assert split_bounds(0, 3, 3) == [(0, 2), (2, 3)]
    assert split_bounds(10, 17, 2) == [(10, 14), (14, 17)]
    assert split_bounds(0, 5, 1) == [(0, 5)]
    # chunk_size rows at most: the last row on its own.
    assert split_bounds(0, 30, 3, most=10) == [(0, 10), (10, 20), (20, 29), (29, 30)]
    assert split_bounds(0, 30, 3, most=11) == [(0, 11), (11, 20), (20, 30)]
    assert split_bounds(0, 3, 3, most=1) == [(0, 1), (1, 2), (2, 3)]
    # Equal chunks whose outputs have as many columns as rows (a Gram
    # matrix of the batch, or not) are not joined.
    k = np.zeros((4, 4))
    with pytest.raises(NotPerRow, match="as many columns as rows") as caught:
        concatenate([k, k], [4, 4])
    assert not caught.value.lasting


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_columns_that_are_the_batchs_rows_are_the_serial_calls(backend):
    from sklearn.metrics.pairwise import rbf_kernel
    from sklearn.preprocessing import FunctionTransformer

    data = np.random.RandomState(0).randn(1_000, 5)
    gram = FunctionTransformer(rbf_kernel).fit(data)
    expected = gram.transform(data)
    for chunk_size in (125, 250):
        got = parallel_predict(
            gram,
            data,
            method="transform",
            n_jobs=2,
            backend=backend,
            chunk_size=chunk_size,
        )
        assert_same_output(got, expected)


@pytest.mark.timeout(120)
def test_a_method_whose_outputs_are_not_rows_is_not_split_again(monkeypatch):
    from sklearn.preprocessing import FunctionTransformer

    from sklearn_parpredict import _costs, _running

    def slow_gram(rows):
        time.sleep(2e-4 * len(rows))  # worth splitting by its rows
        return rows @ rows.T

    data = np.random.RandomState(0).randn(2_000, 2)
    gram = FunctionTransformer(slow_gram).fit(data)
    expected = gram.transform(data)
    assert_same_output(parallel_predict(gram, data, method="transform"), expected)
    # Its probe's pieces told it: the later calls run in one piece.
    assert _costs.remembered_cost(gram, "transform").whole
    plans = []
    real = _running._run_tasks
    monkeypatch.setattr(
        _running, "_run_tasks", lambda *a, **k: plans.append(a[1]) or real(*a, **k)
    )
    for _ in range(2):
        got = parallel_predict(gram, data, method="transform", backend="threading")
        assert_same_output(got, expected)
    assert plans == []


def test_categories_of_types_that_do_not_sort_are_the_serial_calls():
    from sklearn.preprocessing import FunctionTransformer

    # pandas infers 1, 2.5, 'a' from all rows; chunks 1 1 'a', 'a' 2.5 2.5
    # give 1, 'a' and 2.5, 'a'.
    values = pd.Series([1, 1, "a", "a", 2.5, 2.5], dtype=object)
    chunks = [values[:3].astype("category"), values[3:].astype("category")]
    with pytest.raises(NotPerRow, match="categories") as caught:
        concatenate(chunks, [3, 3])
    assert not caught.value.lasting
    got = parallel_predict(
        FunctionTransformer(lambda d: d.astype("category")).fit(values.to_frame()),
        values.to_frame(),
        method="transform",
        n_jobs=2,
        backend="threading",
        chunk_size=3,
    )
    assert list(got.iloc[:, 0].cat.categories) == [1, 2.5, "a"]


def test_concatenate_keeps_the_byte_order_of_every_kind_of_output():
    # Big-endian data (np.fromfile, FITS): pandas and np.ma join it native.
    frame = pd.DataFrame({"a": np.arange(4.0), "b": np.arange(4.0).astype(">f8")})
    got = concatenate([frame[:1], frame[1:]], [1, 3])
    assert list(got.dtypes) == [np.dtype("float64"), np.dtype(">f8")]
    series = pd.Series(np.arange(4, dtype=">i4"))
    assert concatenate([series[:1], series[1:]], [1, 3]).dtype == np.dtype(">i4")
    masked = np.ma.masked_array(np.arange(4.0, dtype=">f8"), mask=[0, 1, 0, 0])
    got = concatenate([masked[:1], masked[1:]], [1, 3])
    assert got.dtype == np.dtype(">f8") and got.mask.tolist() == [0, 1, 0, 0]


class _UnitFrame(pd.DataFrame):
    """A DataFrame subclass with an attribute of its own, as pandas documents
    subclassing (``_metadata``)."""

    _metadata = ["unit"]

    @property
    def _constructor(self):
        return _UnitFrame


class _UnitSeries(pd.Series):
    _metadata = ["unit"]

    @property
    def _constructor(self):
        return _UnitSeries


def _as_it_is(frame):
    return frame


def test_concatenate_keeps_the_metadata_of_a_pandas_subclass():
    # pd.concat leaves a subclass's _metadata unset: the serial call's
    # output has the unit of its input, the joined chunks had None.
    frame = _UnitFrame({"a": np.arange(4.0)})
    series = _UnitSeries(np.arange(4.0))
    frame.unit = series.unit = "cm"
    for out in (frame, series):
        got = concatenate([out[:1], out[1:]], [1, 3])
        assert type(got) is type(out) and got.unit == "cm"
    other = frame[1:].copy()
    other.unit = "mm"
    assert getattr(concatenate([frame[:1], other], [1, 3]), "unit", None) is None
    # From worker processes each chunk has its own copy of the unit.
    model = FunctionTransformer(_as_it_is).fit(frame)
    wrapper = ParallelPredictor(model, n_jobs=2, backend="loky", chunk_size=2)
    got = wrapper.transform(frame)
    assert type(got) is _UnitFrame and got.unit == "cm"


def test_concatenate_refuses_outputs_that_read_two_ways():
    a, b = np.zeros((2, 3)), np.ones((2, 3))
    # Two arrays per chunk of two rows: two outputs, or one array per row.
    with pytest.raises(NotPerRow, match="as many arrays as rows"):
        concatenate([[a, b], [b, a]], [2, 2])
    # An item the same in chunks of equal rows: maybe not rows at all.
    offsets = np.arange(3)
    with pytest.raises(NotPerRow, match="same for every chunk"):
        concatenate([(a.T, offsets), (b.T, offsets)], [3, 3])
    # Chunks of other rows tell them apart.
    assert len(concatenate([[a, b], [b, a], [a[:1]]], [2, 2, 1])) == 5
    got = concatenate([(a.T, offsets), (b.T[:1], offsets[:1])], [3, 1])
    assert [p.shape for p in got] == [(4, 2), (4,)]


class _TopK(BaseEstimator):
    """The positions of each row's 4 largest values: one array per row."""

    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):
        return [np.argsort(-row)[:4] for row in np.asarray(X)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_that_read_as_per_output_or_per_row_are_the_serial_call(backend):
    from sklearn.ensemble import RandomForestClassifier

    data = np.random.default_rng(0).normal(size=(44, 10))
    engine = {"n_jobs": 2, "backend": backend}
    top = _TopK().fit(data)
    got = ParallelPredictor(top, chunk_size=4, **engine).predict(data[:16])
    assert_same_output(got, top.predict(data[:16]))
    # A forest's node offsets, 11 of them, in chunks of 11 rows.
    forest = RandomForestClassifier(10, random_state=0).fit(data, data[:, 0] > 0)
    assert not splittable(forest, "decision_path", {})
    got = parallel_predict(
        forest, data, method="decision_path", chunk_size=11, **engine
    )
    assert_same_output(got, forest.decision_path(data))
    chunks = [forest.decision_path(data[i : i + 11]) for i in range(0, 44, 11)]
    with pytest.raises(NotPerRow):
        concatenate(chunks, [11] * 4)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_probabilities_of_several_outputs_are_joined_from_chunks(backend, caplog):
    from sklearn.ensemble import RandomForestClassifier

    # The last output has one class: its probabilities, 1 for every row, are
    # the same in every chunk of equal rows, and still rows.
    targets = np.column_stack([Y, X[:, 1] > 0, X[:, 2] > 0.5, np.zeros_like(Y)])
    forest = RandomForestClassifier(10, random_state=0).fit(X, targets)
    wrapper = ParallelPredictor(forest, n_jobs=2, backend=backend, chunk_size=10)
    with caplog.at_level("DEBUG", logger="sklearn_parpredict"):
        got = wrapper.predict_proba(X)
    assert_same_output(got, forest.predict_proba(X))
    messages = [record.getMessage() for record in caplog.records]
    # Six chunks of 10 rows, the last row on its own (chunks all of one
    # size are never cut).
    assert any("7 tasks on 2" in message for message in messages), messages
    assert not any("again in-process" in message for message in messages)


def _random_labels():
    return DummyClassifier(strategy="stratified", random_state=0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "model, y",
    [
        (GridSearchCV(_random_labels(), {"constant": [None]}, cv=2), Y),
        (MultiOutputClassifier(_random_labels()), np.column_stack([Y, 1 - Y])),
        (ParallelPredictor(_random_labels(), n_jobs=1), Y),
    ],
    ids=["grid-search", "multi-output", "wrapper"],
)
def test_random_predictions_inside_a_meta_estimator_are_not_split(model, y, backend):
    model = clone(model).fit(X, y)
    assert not splittable(model, "predict", {})
    got = parallel_predict(model, X, n_jobs=2, backend=backend, chunk_size=10)
    assert_same_output(got, model.predict(X))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "make",
    [
        lambda docs: (doc for doc in docs),
        lambda docs: map(str, docs),
        lambda docs: dict(enumerate(docs)).values(),
    ],
    ids=["generator", "map", "dict-values"],
)
def test_an_input_that_cannot_be_cut_goes_whole_to_the_estimator(make, backend):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    docs = [f"w{i % 7} x{i % 3}" for i in range(100)]
    model = make_pipeline(TfidfVectorizer(), LogisticRegression())
    model.fit(docs, np.arange(100) % 2)
    got = ParallelPredictor(model, n_jobs=2, backend=backend, chunk_size=25)
    assert_same_output(got.predict(make(docs)), model.predict(make(docs)))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_rows", [400, 40_000], ids=["pickled", "shared"])
def test_array_subclasses_and_byte_orders_come_back_as_given(n_rows, backend):
    from sklearn.preprocessing import FunctionTransformer

    data = np.random.default_rng(0).normal(size=(n_rows, 8))
    engine = {"n_jobs": 2, "backend": backend, "chunk_size": n_rows // 4}
    identity = FunctionTransformer().fit(data)
    records = np.rec.fromarrays([data[:, 0], data[:, 1]], names="a,b")
    for given in (
        np.ma.masked_greater(data, 1.0),
        np.ma.masked_array(data, mask=data > 1.0, fill_value=-99.0),
        np.ma.masked_array(data, mask=data > 1.0, fill_value=np.nan),
        records,
        data.astype(">f8"),
        data.astype(">i4"),
    ):
        got = parallel_predict(identity, given, method="transform", **engine)
        assert type(got) is type(given) and got.dtype == given.dtype
        np.testing.assert_array_equal(got, given)
        if isinstance(given, np.ma.MaskedArray):
            np.testing.assert_array_equal(got.mask, given.mask)
            np.testing.assert_array_equal(got.fill_value, given.fill_value)
    # np.matrix, which estimators refuse, is refused as the serial call does.
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(data[:100], data[:100, 0] > 0)
    with pytest.raises(TypeError, match="matrix"):
        model.predict(np.asmatrix(data))
    with pytest.raises(TypeError, match="matrix"):
        parallel_predict(model, np.asmatrix(data), **engine)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", [*BACKENDS, "multiprocessing"])
@pytest.mark.parametrize("fmt", ["coo", "dok", "bsr", "dia"])
def test_sparse_rows_are_given_in_the_callers_format(fmt, backend):
    import scipy.sparse as sp
    from sklearn.preprocessing import FunctionTransformer

    matrix = sp.random(100, 5, density=0.3, format=fmt, random_state=0)
    for given in (matrix, sp.coo_array(matrix).asformat(fmt)):
        identity = FunctionTransformer(accept_sparse=True).fit(given)
        expected = identity.transform(given)
        assert type(expected) is type(given)
        # Cut in chunks, and whole on one worker.
        for n_jobs in (2, 1):
            wrapper = ParallelPredictor(
                identity, n_jobs=n_jobs, backend=backend, chunk_size=25
            )
            got = wrapper.transform(given)
            assert type(got) is type(expected)
            assert_same_output(got, expected)


def _stored(matrix):
    """What a sparse matrix stores, explicit zeros and order included."""
    csr = matrix.tocsr() if matrix.format != "csr" else matrix
    return csr.nnz, csr.indptr.tolist(), csr.indices.tolist(), csr.data.tolist()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["matrix", "array"])
def test_bsr_rows_store_what_the_callers_blocks_store(kind, backend):
    import scipy.sparse as sp
    from sklearn.preprocessing import MaxAbsScaler

    dense = sp.random(60, 6, density=0.4, random_state=0).toarray()
    given = getattr(sp, f"bsr_{kind}")(dense, blocksize=(2, 3))
    scaler = MaxAbsScaler().fit(given)
    expected = scaler.transform(given)
    # The zeros of the 2x3 blocks are stored in the serial call's output;
    # chunks of 7 rows in blocks of SciPy's choosing stored 6 more.
    assert expected.nnz > sp.csr_matrix(dense).nnz
    wrapper = ParallelPredictor(scaler, n_jobs=2, backend=backend, chunk_size=7)
    got = wrapper.transform(given)
    assert_same_output(got, expected)
    assert _stored(got) == _stored(expected)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["matrix", "array"])
def test_bsr_outputs_keep_their_blocks(kind, backend):
    import scipy.sparse as sp
    from sklearn.preprocessing import FunctionTransformer

    dense = sp.random(60, 6, density=0.4, random_state=0).toarray()
    bsr = getattr(sp, f"bsr_{kind}")
    given = bsr(dense, blocksize=(1, 3))
    identity = FunctionTransformer(accept_sparse=True).fit(given)
    wrapper = ParallelPredictor(identity, n_jobs=2, backend=backend, chunk_size=7)
    got = wrapper.transform(given)
    # SciPy stacked the chunks in 6x6 blocks: 360 values for 348.
    assert_same_output(got, given)
    assert got.blocksize == given.blocksize
    assert _stored(got) == _stored(given)
    # Parts in blocks of two rows keep them too.
    given = bsr(dense, blocksize=(2, 3))
    rows = given.tocsr()
    parts = [bsr(rows[a:b], blocksize=(2, 3)) for a, b in [(0, 8), (8, 20), (20, 60)]]
    got = concatenate(parts, [8, 12, 40])
    assert type(got) is type(given)
    assert got.blocksize == given.blocksize
    assert _stored(got) == _stored(given)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["matrix", "array"])
def test_coo_outputs_keep_the_serial_calls_canonical_flag(kind, backend):
    import scipy.sparse as sp
    from sklearn.preprocessing import FunctionTransformer

    from sklearn_parpredict._sparse import _canonical_by_rows

    coo = sp.random(60, 6, density=0.4, format="coo", random_state=0)
    coo_type = getattr(sp, f"coo_{kind}")
    unflagged = coo_type((coo.data, (coo.row, coo.col)), shape=coo.shape)
    canonical = coo_type((coo.data, (coo.row, coo.col)), shape=coo.shape)
    canonical.sum_duplicates()
    for given in (unflagged, canonical):
        identity = FunctionTransformer(accept_sparse=True).fit(given)
        expected = identity.transform(given)
        wrapper = ParallelPredictor(identity, n_jobs=2, backend=backend, chunk_size=7)
        got = wrapper.transform(given)
        assert_same_output(got, expected)
        if _canonical_by_rows():
            # The joined COO was never flagged canonical.
            assert got.has_canonical_format == expected.has_canonical_format
        else:
            # SciPy < 1.13 sorts a canonical COO by columns: rows stacked
            # are not.
            assert not got.has_canonical_format


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["matrix", "array"])
def test_coo_rows_keep_their_duplicate_entries(kind, backend):
    import scipy.sparse as sp
    from sklearn.preprocessing import FunctionTransformer

    coo = sp.random(60, 6, density=0.4, format="coo", random_state=0)
    # Every tenth entry twice, the second after all others.
    row, col, data = (np.r_[a, a[::10]] for a in (coo.row, coo.col, coo.data))
    given = getattr(sp, f"coo_{kind}")((data, (row, col)), shape=coo.shape)
    identity = FunctionTransformer(accept_sparse=True).fit(given)
    wrapper = ParallelPredictor(identity, n_jobs=2, backend=backend, chunk_size=7)
    got = wrapper.transform(given)
    assert_same_output(got, given)
    # The entries themselves, in rows: the chunks held them summed.
    assert got.nnz == given.nnz
    assert sorted(zip(got.row, got.col, got.data)) == sorted(zip(row, col, data))


@pytest.mark.parametrize("fmt", ["coo", "bsr"])
def test_a_call_on_all_rows_is_given_the_callers_sparse_input(fmt):
    import scipy.sparse as sp
    from sklearn.preprocessing import FunctionTransformer

    dense = sp.random(40, 6, density=0.4, random_state=0).toarray()
    given = sp.bsr_matrix(dense, blocksize=(2, 3))
    if fmt == "coo":
        # A duplicate entry, which converting to CSR sums.
        coo = sp.coo_matrix(dense)
        given = sp.coo_matrix(
            (np.r_[coo.data, 1.0], (np.r_[coo.row, 0], np.r_[coo.col, 0])),
            shape=coo.shape,
        )
    identity = FunctionTransformer(accept_sparse=True).fit(given)
    got = ParallelPredictor(identity, n_jobs=1).transform(given)
    assert got is identity.transform(given)


def _widened(matrix):
    """``matrix`` with int64 index arrays, which SciPy's conversions and
    slicing narrow to int32 where the values fit."""
    if hasattr(matrix, "coords"):  # a COO, SciPy >= 1.13
        matrix.coords = tuple(index.astype(np.int64) for index in matrix.coords)
        return matrix
    for name in ("indices", "indptr", "offsets", "row", "col"):
        if isinstance(getattr(matrix, name, None), np.ndarray):
            setattr(matrix, name, getattr(matrix, name).astype(np.int64))
    return matrix


@pytest.mark.parametrize("fmt", ["csr", "csc", "bsr", "dia", "coo"])
def test_concatenate_keeps_the_index_dtype_of_sparse_outputs(fmt):
    import scipy.sparse as sp

    matrix = sp.random(10, 4, density=0.5, format="csr", random_state=0)
    parts = [_widened(matrix[:3].asformat(fmt)), _widened(matrix[3:].asformat(fmt))]
    names = {"dia": ["offsets"], "coo": ["row", "col"]}.get(fmt, ["indices", "indptr"])
    got = concatenate(parts, [3, 7])
    assert got.format == fmt
    assert [getattr(got, name).dtype for name in names] == [np.int64] * len(names)
    np.testing.assert_array_equal(got.toarray(), matrix.toarray())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "dia"])
def test_sparse_rows_keep_the_callers_index_dtype(fmt, backend):
    import scipy.sparse as sp
    from sklearn.preprocessing import FunctionTransformer, PolynomialFeatures

    matrix = sp.random(40, 4, density=0.5, format=fmt, random_state=0)
    identity = FunctionTransformer(accept_sparse=True)
    models = [identity, PolynomialFeatures(2)] if fmt == "csr" else [identity]
    for given in (_widened(matrix), _widened(sp.coo_array(matrix).asformat(fmt))):
        for model in models:
            model.fit(given)
            expected = model.transform(given)
            wrapper = ParallelPredictor(model, n_jobs=2, backend=backend, chunk_size=7)
            got = wrapper.transform(given)
            assert_same_output(got, expected)
            # SciPy slices int64 indices into int32 ones: the chunks'
            # outputs had them.
            for name in ("indices", "indptr", "offsets", "row", "col"):
                if hasattr(expected, name):
                    dtype = getattr(expected, name).dtype
                    assert getattr(got, name).dtype == dtype, name


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_int64_sparse_indices_fail_as_in_the_serial_call(backend):
    import scipy.sparse as sp
    from sklearn.svm import SVC

    matrix = sp.random(40, 4, density=0.5, format="csr", random_state=0)
    model = SVC().fit(matrix, np.arange(40) % 2)
    given = _widened(matrix)
    # libsvm takes int32 indices only; the chunks' int32 ones passed.
    with pytest.raises(ValueError, match="32-bit integer indices"):
        model.predict(given)
    wrapper = ParallelPredictor(model, n_jobs=2, backend=backend, chunk_size=7)
    with pytest.raises(ValueError, match="32-bit integer indices"):
        wrapper.predict(given)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_chunks_of_other_dtypes_join_as_the_serial_call(backend):
    import scipy.sparse as sp
    from sklearn.preprocessing import FunctionTransformer

    # A list's rows of ints, then of floats: the serial call's are floats.
    rows = [[1, 0, 2]] * 10 + [[0.5, 0, 1.5]] * 10
    to_sparse = FunctionTransformer(sp.csr_matrix, validate=True, accept_sparse=True)
    to_sparse.fit(rows)
    expected = to_sparse.transform(rows)
    assert expected.dtype == np.float64
    wrapper = ParallelPredictor(to_sparse, n_jobs=2, backend=backend, chunk_size=7)
    assert_same_output(wrapper.transform(rows), expected)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_outputs_keep_the_serial_calls_index_dtype(backend):
    from sklearn.neighbors import NearestNeighbors

    # scikit-learn builds the graph with int64 indices (SciPy 1.17).
    neighbors = NearestNeighbors(n_neighbors=3).fit(X[:20])
    expected = neighbors.kneighbors_graph(X)
    got = parallel_predict(
        neighbors,
        X,
        method="kneighbors_graph",
        n_jobs=2,
        backend=backend,
        chunk_size=7,
    )
    assert_same_output(got, expected)
    assert got.indices.dtype == expected.indices.dtype
    assert got.indptr.dtype == expected.indptr.dtype


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pyarrow_record_batch_is_cut_as_a_table(backend):
    pa = pytest.importorskip("pyarrow")
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(pd.DataFrame(X, columns=list("abc")), Y)
    batch = pa.RecordBatch.from_pydict({name: X[:, i] for i, name in enumerate("abc")})
    try:
        expected = model.predict(batch)
    except ValueError:
        # Older scikit-learn reads a batch as its columns' arrays: the
        # chunks fail as the whole does.
        with pytest.raises(ValueError):
            parallel_predict(model, batch, n_jobs=2, backend=backend, chunk_size=10)
        return
    got = parallel_predict(model, batch, n_jobs=2, backend=backend, chunk_size=10)
    assert_same_output(got, expected)


def _signs(frame):
    return frame.assign(sign=pd.Categorical(np.where(frame["a"] > 0, "pos", "neg")))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_categories_inferred_per_chunk_are_joined_as_the_serial_call_infers(backend):
    from sklearn.preprocessing import FunctionTransformer

    frame = pd.DataFrame(np.sort(X, axis=0), columns=list("abc"))
    engine = {"n_jobs": 2, "backend": backend, "chunk_size": 10}
    for func in (_signs, lambda frame: _signs(frame)["sign"]):
        model = FunctionTransformer(func).fit(frame)
        got = parallel_predict(model, frame, method="transform", **engine)
        expected = model.transform(frame)
        assert_same_output(got, expected)
        sign = got["sign"] if isinstance(got, pd.DataFrame) else got
        assert list(sign.cat.categories) == ["neg", "pos"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["str", "datetime", "period"])
def test_dtypes_inferred_per_chunk_from_objects_are_the_serial_calls(kind, backend):
    # pandas infers a column's dtype from its objects (str in pandas 3,
    # datetimes, periods) but none from missing values alone: a chunk of
    # only None was joined with the others' dtype as objects (pandas 1.5
    # ignores such chunks in a DataFrame, not in a Series).
    import datetime

    from sklearn.preprocessing import FunctionTransformer

    values = {
        "str": ["a", "b", "c"],
        "datetime": [datetime.datetime(2020, 1, day) for day in (1, 2, 3)],
        "period": [pd.Period("2020-01", "M") + i for i in range(3)],
    }[kind]
    column = np.array([None] * 10 + values * 4, dtype=object)[:, None]
    engine = {"n_jobs": 2, "backend": backend, "chunk_size": 10}
    frame = FunctionTransformer(pd.DataFrame)
    series = FunctionTransformer(lambda rows: pd.Series(rows[:, 0], name="x"))
    # set_output(transform="pandas") builds a DataFrame of the array so.
    output = FunctionTransformer(feature_names_out="one-to-one")
    for model in (frame, series, output.set_output(transform="pandas")):
        model.fit(column)
        expected = model.transform(column)
        got = parallel_predict(model, column, method="transform", **engine)
        if isinstance(expected, pd.Series):
            pd.testing.assert_series_equal(got, expected)
        else:
            pd.testing.assert_frame_equal(got, expected)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["int", "str", "datetime"])
def test_an_index_of_objects_is_kept_as_objects(kind, backend):
    # pandas infers a dtype for the objects of the indexes it joins: int64,
    # str (pandas 3), datetime64, where the serial call keeps the input's.
    import datetime

    from sklearn.preprocessing import FunctionTransformer

    labels = {
        "int": list(range(30)),
        "str": [f"row{i}" for i in range(30)],
        "datetime": [datetime.datetime(2020, 1, day) for day in range(1, 31)],
    }[kind]
    index = pd.Index(labels, dtype=object, name="key")
    frame = pd.DataFrame({"a": np.arange(30.0)}).set_axis(index)
    assert frame.index.dtype == np.dtype(object)
    engine = {"n_jobs": 2, "backend": backend, "chunk_size": 10}
    model = FunctionTransformer().fit(frame)
    for rows in (frame, frame["a"]):
        if kind == "datetime" and rows.ndim == 1 and pd.__version__ < "2":
            # pandas 1.5 makes any index of datetimes set on a Series a
            # DatetimeIndex: only slicing keeps it of objects.
            continue
        got = parallel_predict(model, rows, method="transform", **engine)
        pd.testing.assert_index_equal(got.index, rows.index, exact=True)
        assert list(map(type, got.index)) == list(map(type, rows.index))


class _Apply(TransformerMixin, BaseEstimator):
    """A function applied as it is (FunctionTransformer checks the column
    names, which may not repeat)."""

    def __init__(self, func=None):
        self.func = func

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return self.func(X)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "case", ["ordered", "repeated-names", "unsortable", "index", "named-range"]
)
def test_categories_the_chunks_cannot_agree_on_are_the_serial_calls(case, backend):
    # Each chunk infers its own categories; where the serial call's cannot
    # be told from them, the call runs whole.
    from sklearn.preprocessing import FunctionTransformer

    letters = pd.DataFrame({"k": list("aaaaaaaaaabbbbbbbbbbcccccccccc")})
    given, func = letters, None
    if case == "ordered":
        func = lambda d: d.astype(pd.CategoricalDtype(ordered=True))  # noqa: E731
    elif case == "repeated-names":
        given = pd.concat([letters, letters], axis=1)
        func = lambda d: d.astype("category")  # noqa: E731
    elif case == "unsortable":
        mixed = [1] * 10 + ["a"] * 10 + [2.5] * 10
        given = pd.DataFrame({"k": pd.Series(mixed, dtype=object)})
        func = lambda d: d.astype("category")  # noqa: E731
    elif case == "index":
        func = lambda d: d.set_index(pd.CategoricalIndex(d["k"]))  # noqa: E731
    else:
        func = lambda d: d.set_axis(pd.RangeIndex(len(d), name="row"))  # noqa: E731
    model = _Apply(func) if case == "repeated-names" else FunctionTransformer(func)
    model.fit(given)
    engine = {"n_jobs": 2, "backend": backend, "chunk_size": 10}
    got = parallel_predict(model, given, method="transform", **engine)
    expected = model.transform(given)
    pd.testing.assert_frame_equal(got, expected)
    assert list(got.dtypes) == list(expected.dtypes)


def _nonnegative():
    return np.abs(X) + 0.1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "make, method",
    [
        (lambda: NMF(n_components=2, max_iter=500, random_state=0), "transform"),
        (lambda: MiniBatchNMF(n_components=2, random_state=0), "transform"),
        (lambda: BernoulliRBM(n_components=3, random_state=0), "score_samples"),
        (
            lambda: make_pipeline(
                NMF(n_components=2, max_iter=500, random_state=0),
                LogisticRegression(),
            ),
            "predict_proba",
        ),
    ],
    ids=["nmf", "minibatch-nmf", "rbm-score-samples", "nmf-pipeline"],
)
def test_methods_that_fit_the_whole_batch_are_not_split(make, method, backend):
    # Their output for a row changes with the other rows of the call.
    model = make().fit(_nonnegative(), Y)
    assert not splittable(model, method, {})
    got = parallel_predict(
        model, _nonnegative(), method=method, n_jobs=2, backend=backend, chunk_size=10
    )
    assert_same_output(got, getattr(model, method)(_nonnegative()))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "make, method",
    [
        (StandardScaler, "fit_transform"),
        (lambda: KMeans(n_clusters=3, n_init=1, random_state=0), "fit_predict"),
        (lambda: DBSCAN(eps=2.0), "fit_predict"),
        (StandardScaler, "partial_fit"),
        (LogisticRegression, "score"),
    ],
    ids=["fit-transform", "kmeans-fit-predict", "dbscan", "partial-fit", "score"],
)
def test_methods_that_fit_or_sum_over_the_batch_run_whole(make, method, backend):
    # The function form takes any method's name: one that fits the estimator
    # to the batch fits it to all the rows, once, as the serial call does.
    X, y = _nonnegative(), Y
    args = (y,) if method == "score" else ()
    fitted, given = make(), make()
    if method == "score":
        fitted.fit(X, y)
        given.fit(X, y)
    assert not splittable(given, method, {})
    expected = getattr(fitted, method)(X, *args)
    params = {"y": y} if method == "score" else {}
    got = parallel_predict(
        given, X, method=method, n_jobs=2, backend=backend, chunk_size=10, params=params
    )
    if method == "score":
        assert got == expected
    elif method == "partial_fit":
        assert got is given
        np.testing.assert_array_equal(given.mean_, fitted.mean_)
        assert given.n_samples_seen_ == fitted.n_samples_seen_ == len(X)
    else:
        assert_same_output(got, expected)
    if method == "fit_transform":
        assert given.n_samples_seen_ == len(X)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chosen", ["nmf", "stratified"])
def test_the_fitted_estimators_of_a_search_are_looked_into(chosen, backend):
    # A search's parameters name its template (PCA, the dummy's default
    # strategy); what predicts is its best estimator.
    from sklearn.decomposition import PCA

    if chosen == "nmf":
        template = make_pipeline(PCA(n_components=2), LogisticRegression())
        grid = {"pca": [NMF(n_components=2, max_iter=500, random_state=0)]}
    else:
        template = DummyClassifier(random_state=0)
        grid = {"strategy": ["stratified"]}
    search = GridSearchCV(template, grid, cv=2).fit(_nonnegative(), Y)
    assert not splittable(search, "predict_proba", {})
    got = ParallelPredictor(
        search, n_jobs=2, backend=backend, chunk_size=10
    ).predict_proba(_nonnegative())
    assert_same_output(got, search.predict_proba(_nonnegative()))
    # The members of an ensemble are looked into too.
    from sklearn.ensemble import BaggingClassifier

    bagging = BaggingClassifier(DummyClassifier(), n_estimators=20, random_state=0)
    bagging.fit(_nonnegative(), Y)
    assert splittable(bagging, "predict", {})
    for member in bagging.estimators_:
        member.strategy = "uniform"
    assert not splittable(bagging, "predict", {})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_step_of_a_long_pipeline_is_looked_into(backend):
    from sklearn.compose import ColumnTransformer
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    # More steps than an ensemble's members of one type looked at once.
    steps = [(f"s{i}", FunctionTransformer()) for i in range(17)]
    pipe = Pipeline([*steps, ("dummy", DummyClassifier(strategy="stratified"))])
    pipe.fit(X, Y)
    assert not splittable(pipe, "predict", {})
    columns = ColumnTransformer(
        [(f"c{i}", "passthrough", [0]) for i in range(17)]
        + [("imp", IterativeImputer(sample_posterior=True, random_state=0), [1, 2])]
    ).fit(X)
    assert not splittable(columns, "transform", {}, X)


def test_the_candidates_a_search_did_not_choose_are_not_looked_into():
    from sklearn.decomposition import PCA
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    # cv_results_ holds NMF, which the search did not choose.
    template = make_pipeline(PCA(n_components=2), LogisticRegression())
    grid = {"pca": [PCA(n_components=2), NMF(n_components=2, max_iter=500)]}
    search = GridSearchCV(template, grid, cv=2).fit(_nonnegative(), Y)
    assert isinstance(search.best_estimator_[0], PCA)
    assert splittable(search, "predict", {})
    # A search's template and best estimator are both given its input: an
    # imputer first in them is told by the input's rows.
    pipe = make_pipeline(IterativeImputer(random_state=0), LogisticRegression())
    search = GridSearchCV(pipe, {"logisticregression__C": [1.0]}, cv=2).fit(X, Y)
    assert splittable(search, "predict", {}, X)


def test_estimators_held_by_other_objects_and_given_other_columns():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_selection import RFE

    from sklearn_parpredict._rowwise import _given_the_input

    # Calibrated classifiers are not estimators; they hold fitted clones.
    dummy = DummyClassifier(strategy="stratified", random_state=0)
    calibrated = CalibratedClassifierCV(dummy, cv=2).fit(X, Y)
    assert not splittable(calibrated, "predict_proba", {})
    # RFE gives its estimator the columns it selected, not its input.
    rfe = RFE(LogisticRegression(), n_features_to_select=2).fit(X, Y)
    assert not any(e is rfe.estimator_ for e in _given_the_input(rfe))


def test_values_held_in_large_sequences_are_not_walked():
    from sklearn_parpredict._rowwise import _held_estimators

    class Holder(RegressorMixin, BaseEstimator):
        def fit(self, X, y=None):
            self.self_ = self
            self.history_ = [float(i) for i in range(100_000)]
            self.nested_ = [[i, [i]] for i in range(100_000)]
            self.inner_ = [("scale", StandardScaler())]
            return self

    holder = Holder().fit(X)
    held = _held_estimators(holder)
    assert [type(e) for e in held] == [StandardScaler]


class _Noisy(RegressorMixin, BaseEstimator):
    """Draws noise per call when ``noise`` is set, and declares it."""

    def __init__(self, noise=0.0):
        self.noise = noise

    def fit(self, X, y=None):
        self.n_features_in_ = np.shape(X)[1]
        return self

    def predict(self, X):
        rng = np.random.default_rng(0)
        return np.asarray(X)[:, 0] + self.noise * rng.normal(size=len(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.noise > 0
        return tags


def test_a_tag_that_follows_the_parameters_is_read_each_time():
    model = _Noisy().fit(X)
    assert splittable(model, "predict", {})
    model.set_params(noise=1.0)
    assert not splittable(model, "predict", {})
    assert splittable(_Noisy().fit(X), "predict", {})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_imputer_given_some_columns_is_not_split_by_the_rows_of_all(backend):
    from sklearn.compose import ColumnTransformer
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    from sklearn_parpredict import MultiModelPredictor

    rng = np.random.RandomState(0)
    a = rng.rand(300)
    data = np.c_[a, 3 * a + 0.1 * rng.rand(300), rng.rand(300)]
    data[::5, 0] = np.nan
    data[2::7, 1] = np.nan
    query = rng.rand(100, 3)
    # No row is all missing, but rows 50 to 59 are for the imputer.
    query[50:60, :2] = np.nan
    imputer = IterativeImputer(random_state=0)
    columns = ColumnTransformer([("imp", imputer, [0, 1])], remainder="passthrough")
    columns.fit(data)
    assert not splittable(columns, "transform", {}, query)
    engine = {"n_jobs": 2, "backend": backend, "chunk_size": 10}
    got = ParallelPredictor(columns, **engine).transform(query)
    assert_same_output(got, columns.transform(query))
    # A model of several on the same rows is given its columns alone.
    from sklearn.linear_model import LinearRegression

    fitted = make_pipeline(clone(imputer), LinearRegression())
    fitted.fit(data[:, :2], data[:, 2])
    assert not splittable(fitted, "predict", {}, query, [0, 1])
    assert splittable(fitted, "predict", {}, query[:50], [0, 1])
    multi = MultiModelPredictor([(fitted, [0, 1], "y")], **engine)
    assert_same_output(multi.predict(query)[:, 0], fitted.predict(query[:, :2]))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sample_posterior", [True, False])
def test_an_iterative_imputer_is_split_where_rows_are_imputed_alone(
    sample_posterior, backend
):
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    data = X.copy()
    data[np.random.default_rng(1).random(X.shape) < 0.2] = np.nan
    # A row of no values alone in its chunk gets only the first guess.
    data[5] = np.nan

    def fitted():
        # Each transform with sample_posterior draws from the fitted
        # generator: one model for each call.
        imputer = IterativeImputer(sample_posterior=sample_posterior, random_state=0)
        return imputer.fit(data)

    assert not splittable(fitted(), "transform", {})
    assert not splittable(fitted(), "transform", {}, data)
    got = parallel_predict(
        fitted(), data, method="transform", n_jobs=2, backend=backend, chunk_size=1
    )
    assert_same_output(got, fitted().transform(data))
    # Without sample_posterior and a row of no values, rows are imputed
    # alone: split, inside a pipeline too.
    complete = np.delete(data, 5, axis=0)
    assert splittable(fitted(), "transform", {}, complete) != sample_posterior
    pipe = make_pipeline(fitted(), LogisticRegression()).fit(data, Y)
    assert splittable(pipe, "predict", {}, complete) != sample_posterior
    got = parallel_predict(
        fitted(), complete, method="transform", n_jobs=2, backend=backend, chunk_size=7
    )
    assert_same_output(got, fitted().transform(complete))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_samples_drawn_jointly_for_all_rows_are_not_split(backend):
    gpr = GaussianProcessRegressor(alpha=0.1).fit(X, X[:, 0])
    assert not splittable(gpr, "sample_y", {})
    data = X + 0.5
    got = parallel_predict(
        gpr, data, method="sample_y", n_jobs=2, backend=backend, chunk_size=10
    )
    assert_same_output(got, gpr.sample_y(data))


def test_the_row_wise_methods_of_such_estimators_are_split():
    rbm = BernoulliRBM(n_components=3, random_state=0).fit(_nonnegative())
    assert splittable(rbm, "transform", {})
    # Its Gibbs sampling draws from the model's own generator.
    assert not splittable(rbm, "gibbs", {})
    nmf = NMF(n_components=2, max_iter=500, random_state=0).fit(_nonnegative())
    assert splittable(nmf, "inverse_transform", {})
    # A pipeline's last step meets only the method of its name.
    pipe = make_pipeline(StandardScaler(), rbm)
    assert splittable(pipe, "transform", {})
    assert not splittable(pipe, "score_samples", {})
    gpr = GaussianProcessRegressor(alpha=0.1).fit(X, X[:, 0])
    assert splittable(gpr, "predict", {})


def test_a_frame_is_told_from_a_vector_without_looking_up_its_columns():
    # A DataFrame asked for an attribute it lacks looks for a column of that
    # name: a third of the wrapper's own time on a call of a few rows.
    from sklearn_parpredict import _chunking

    asked = []

    class Frame(pd.DataFrame):
        def __getattr__(self, name):
            asked.append(name)
            return super().__getattr__(name)

    frame = Frame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    assert not _chunking.is_vector(frame)
    assert "dtype" not in asked
    assert _chunking.is_vector(pd.Series([1.0, 2.0]))
    assert _chunking.is_vector(np.arange(3))
    assert not _chunking.is_vector(pd.Series(["a", "b"]))
    assert not _chunking.is_vector(np.ones((2, 2)))
