"""Scaling out on Dask: a real two-process LocalCluster on 127.0.0.1.

Outputs equal the serial call, for both wrappers and the function, with
numpy, pandas and Dask inputs; the model reaches each worker once per fitted
state; a worker killed mid-call neither loses nor corrupts rows.
"""

import copy
import os
import signal
import threading
import time
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest

da = pytest.importorskip("dask.array", reason="dask is not installed (extra [dask])")
dd = pytest.importorskip("dask.dataframe", reason="dask[dataframe] is not installed")
distributed = pytest.importorskip("distributed", reason="distributed is not installed")

import _cluster_estimators as ce  # noqa: E402
import dask  # noqa: E402
from _helpers import assert_same_output  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.tree import DecisionTreeClassifier  # noqa: E402

from sklearn_parpredict import (  # noqa: E402
    MultiModelPredictor,
    ParallelPredictor,
    _rows,
    _sharing,
    parallel_predict,
)
from sklearn_parpredict._engine import _backend  # noqa: E402

rng = np.random.default_rng(0)
X = rng.normal(size=(600, 6))
Y = (X[:, 0] + X[:, 1] > 0).astype(int)
COLUMNS = [f"f{i}" for i in range(X.shape[1])]
FRAME = pd.DataFrame(X, columns=COLUMNS, index=np.arange(len(X)) * 3 + 7)


@pytest.fixture(scope="module")
def client():
    with (
        # Dask's active memory manager drops extra copies of data every 2 s:
        # at every few ms, a model copied to more than one worker is dropped
        # from all but one before the next task.
        dask.config.set(
            {"distributed.scheduler.active-memory-manager.interval": "5ms"}
        ),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=50,  # the worker-kill test makes the scheduler log errors
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _fitted(estimator, frame=False):
    return estimator.fit(FRAME if frame else X, Y)


ESTIMATORS = {
    "forest": (
        lambda: RandomForestClassifier(n_estimators=8, random_state=0),
        ("predict", "predict_proba"),
    ),
    "logistic": (LogisticRegression, ("predict_proba", "decision_function")),
    "scaled_ridge": (lambda: make_pipeline(StandardScaler(), Ridge()), ("predict",)),
    "kmeans": (lambda: KMeans(3, n_init=1, random_state=0), ("predict", "transform")),
}


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("frame", [False, True], ids=["numpy", "pandas"])
def test_parallel_predictor_on_cluster_equals_serial(client, name, frame):
    make, methods = ESTIMATORS[name]
    estimator = _fitted(make(), frame)
    data = FRAME if frame else X
    with joblib.parallel_config(backend="dask"):
        wrapper = ParallelPredictor(estimator, chunk_size=70)
        for method in methods:
            assert_same_output(
                getattr(wrapper, method)(data), getattr(estimator, method)(data)
            )


def test_backend_parameter_and_function(client):
    estimator = _fitted(RandomForestClassifier(n_estimators=5, random_state=0))
    wrapper = ParallelPredictor(estimator, backend="dask", chunk_size=50)
    assert_same_output(wrapper.predict_proba(X), estimator.predict_proba(X))
    assert_same_output(
        parallel_predict(estimator, FRAME.to_numpy(), backend="dask", chunk_size=33),
        estimator.predict(X),
    )


def test_fortran_ordered_rows_reach_the_workers_in_fortran_order(client):
    X_f = np.asfortranarray(X)
    # StandardScaler copies its input as it is laid out.
    fitted = StandardScaler().fit(X_f)
    out = ParallelPredictor(fitted, backend="dask", chunk_size=70).transform(X_f)
    assert out.flags.f_contiguous
    assert_same_output(out, fitted.transform(X_f))


def _books_model():
    from sklearn_parpredict.datasets import (
        GENRE_FEATURES,
        LANGUAGE_FEATURES,
        make_books,
    )

    books = make_books(500, random_state=0)
    model = MultiModelPredictor(
        [
            (DecisionTreeClassifier(random_state=0), GENRE_FEATURES, "genre"),
            (DecisionTreeClassifier(random_state=1), LANGUAGE_FEATURES, "language"),
        ],
        chunk_size=60,
    ).fit(books)
    return model, books[GENRE_FEATURES + LANGUAGE_FEATURES]


def test_multi_model_predictor_on_cluster_equals_serial(client):
    model, books = _books_model()
    serial = model.set_params(n_jobs=1).predict(books)
    with joblib.parallel_config(backend="dask"):
        assert_same_output(model.set_params(n_jobs=-1).predict(books), serial)
    array_model = MultiModelPredictor(
        [(Ridge(), [0, 1, 2], "a"), (LogisticRegression(), [3, 4], "b")],
        backend="dask",
        chunk_size=45,
    ).fit(X, np.column_stack([X[:, 5], Y]))
    assert_same_output(
        array_model.predict(X), array_model.set_params(n_jobs=1).predict(X)
    )


_FOREST = _fitted(RandomForestClassifier(n_estimators=4, random_state=0))


@settings(max_examples=8)
@given(
    n_rows=st.integers(1, 200),
    chunk_size=st.integers(1, 80),
    method=st.sampled_from(["predict", "predict_proba"]),
)
def test_any_rows_and_chunks_equal_serial(client, n_rows, chunk_size, method):
    out = parallel_predict(
        _FOREST, X[:n_rows], method=method, backend="dask", chunk_size=chunk_size
    )
    assert_same_output(out, getattr(_FOREST, method)(X[:n_rows]))


def test_model_sent_once_per_worker_per_fitted_model(client):
    client.run(ce.reset)
    models = [ce.Counting(name=f"m{i}").fit(X, Y) for i in range(2)]
    for _ in range(3):  # calls
        for model in models:
            out = ParallelPredictor(model, backend="dask", chunk_size=25).predict(X)
            assert_same_output(out, model.predict(X))  # 24 chunks per call
    per_worker = client.run(ce.loads)
    assert len(per_worker) == 2
    # One deserialisation per worker and fitted model: not per chunk or call.
    assert all(counts == {"m0": 1, "m1": 1} for counts in per_worker.values()), (
        per_worker
    )
    # A refitted model is a new fitted state, sent once more.
    models[0].fit(X[:, ::-1], Y)
    ParallelPredictor(models[0], backend="dask", chunk_size=25).predict(X)
    per_worker = client.run(ce.loads)
    assert all(counts == {"m0": 2, "m1": 1} for counts in per_worker.values()), (
        per_worker
    )


def test_no_local_shared_memory_files_on_a_cluster(client, monkeypatch):
    # Workers may be other machines: neither the model nor a large input may
    # go through this machine's files.
    def refuse(*args, **kwargs):
        raise AssertionError("a local file handle was pickled for a cluster")

    monkeypatch.setattr(_sharing.ModelHandle, "__reduce__", refuse)
    monkeypatch.setattr(_rows.SharedRows, "__reduce__", refuse)
    big = np.repeat(X, 40, axis=0)  # 1.1 MB: shared through a file on loky
    estimator = _fitted(LogisticRegression())
    out = parallel_predict(
        estimator, big, method="predict_proba", backend="dask", chunk_size=4000
    )
    assert_same_output(out, estimator.predict_proba(big))


def test_auto_fans_out_when_worthwhile_and_stays_in_process_when_not(client):
    client.run(ce.reset)
    ce.reset()
    slow = ce.Counting(name="slow", delay=2e-4).fit(X, Y)
    wrapper = ParallelPredictor(slow, backend="dask")
    tiny = X[:10]
    assert_same_output(wrapper.predict(tiny), slow.predict(tiny))
    assert sum(client.run(ce.rows).values()) == 0
    # Costly work (0.5 s serial): after the probe, the rest goes to the
    # cluster, now or on the next call.
    big = np.repeat(X, 4, axis=0)
    for _ in range(2):
        assert_same_output(wrapper.predict(big), slow.predict(big))
    assert sum(client.run(ce.rows).values()) > 0


def test_nested_in_a_dask_task_stays_in_process(client):
    def workers_seen():
        return _backend(-1, None)[1]

    assert client.submit(workers_seen, pure=False).result() == 1
    # From the client, the cluster's cores: asked each time, as workers come
    # and go.
    assert _backend(-1, "dask")[1] == 2


@pytest.mark.timeout(150)
def test_worker_killed_mid_call_is_retried_and_next_call_works(client):
    slow = ce.Counting(name="victim", delay=0.005).fit(X, Y)
    wrapper = ParallelPredictor(slow, backend="dask", chunk_size=20)  # 30 tasks
    expected = slow.predict(X)
    wrapper.predict(X[:40])  # the model is on both workers
    victim = next(iter(client.run(ce.pid).values()))
    killer = threading.Timer(0.8, os.kill, (victim, signal.SIGKILL))
    start = time.monotonic()
    killer.start()
    try:
        out = wrapper.predict(X)
    except Exception as exc:  # a clear error is acceptable, silence is not
        assert "worker" in str(exc).lower(), exc
    else:
        # Dask ran the lost tasks again: nothing dropped or duplicated.
        assert_same_output(out, expected)
    finally:
        killer.join()
    assert time.monotonic() - start < 60
    client.wait_for_workers(2, timeout=60)
    assert victim not in client.run(ce.pid).values()
    assert_same_output(wrapper.predict(X), expected)


# -- Dask collections in, lazy Dask collections out --------------------------


def test_dask_array_gives_lazy_array_with_right_chunks(client):
    # Blocks of 0 rows included.
    dX = da.concatenate(
        [da.from_array(X[:250], chunks=100), da.zeros((0, 6)), da.from_array(X[250:])]
    ).rechunk({1: 3})
    forest = _fitted(RandomForestClassifier(n_estimators=5, random_state=0))
    kmeans = _fitted(KMeans(3, n_init=1, random_state=0))
    wrapper = ParallelPredictor(forest)
    for estimator, method, width in [
        (forest, "predict", None),
        (forest, "predict_proba", 2),
        (kmeans, "transform", 3),
    ]:
        lazy = getattr(ParallelPredictor(estimator), method)(dX)
        assert isinstance(lazy, da.Array)
        expected = getattr(estimator, method)(X)
        assert lazy.dtype == expected.dtype
        if width is None:
            assert lazy.chunks == (dX.chunks[0],)
        else:
            assert lazy.chunks == (dX.chunks[0], (width,))
        assert_same_output(lazy.compute(), expected)
    assert_same_output(
        parallel_predict(forest, dX, method="predict_proba").compute(),
        wrapper.predict_proba(X),
    )


@settings(max_examples=8)
@given(
    sizes=st.lists(st.integers(0, 100), min_size=1, max_size=6).filter(any),
    method=st.sampled_from(["predict", "predict_proba"]),
)
def test_any_row_chunks_of_a_dask_array_equal_serial(client, sizes, method):
    n = sum(sizes)
    dX = da.from_array(X[:n], chunks=(tuple(sizes), (X.shape[1],)))
    lazy = getattr(ParallelPredictor(_FOREST), method)(dX)
    assert lazy.chunks[0] == dX.chunks[0]
    assert_same_output(lazy.compute(), getattr(_FOREST, method)(X[:n]))


def test_dask_dataframe_gives_lazy_output_and_keeps_the_index(client):
    forest = _fitted(RandomForestClassifier(n_estimators=5, random_state=0), True)
    ddf = dd.from_pandas(FRAME, npartitions=4)
    # A frame with empty partitions.
    pandas_filtered = pd.concat([FRAME.iloc[:250], FRAME.iloc[400:]])
    filtered = dd.concat(
        [
            dd.from_pandas(FRAME.iloc[:250], npartitions=2),
            dd.from_pandas(FRAME.iloc[:0], npartitions=1),
            dd.from_pandas(FRAME.iloc[400:], npartitions=2),
        ]
    )
    assert 0 in filtered.map_partitions(len).compute().tolist()
    for data, serial_input in [(ddf, FRAME), (filtered, pandas_filtered)]:
        lazy = ParallelPredictor(forest).predict_proba(data)
        assert isinstance(lazy, da.Array)
        assert_same_output(lazy.compute(), forest.predict_proba(serial_input))
    scaler = StandardScaler().set_output(transform="pandas").fit(FRAME)
    lazy = ParallelPredictor(scaler).transform(filtered)
    assert isinstance(lazy, dd.DataFrame)
    assert_same_output(lazy.compute(), scaler.transform(pandas_filtered))


def test_multi_model_predictor_with_dask_dataframe_is_lazy(client):
    model, books = _books_model()
    lazy = model.predict(dd.from_pandas(books, npartitions=3))
    assert isinstance(lazy, dd.DataFrame)
    assert list(lazy.columns) == ["genre", "language"]
    assert_same_output(lazy.compute(), model.predict(books))
    # The models go to the cluster once per fitted state, not per call.
    assert model._in_process() is model._in_process()
    positional = MultiModelPredictor(
        [(Ridge(), [0, 1], "a"), (DecisionTreeClassifier(), [2, 3], "b")]
    ).fit(X, np.column_stack([X[:, 5], Y]))
    dX = da.from_array(X, chunks=(250, 3))
    lazy = positional.predict(dX)
    assert lazy.chunks == ((250, 250, 100), (2,))
    assert_same_output(lazy.compute(), positional.predict(X))
    probas = model.predict_proba(dd.from_pandas(books, npartitions=3))
    for lazy, serial in zip(probas, model.predict_proba(books)):
        assert isinstance(lazy, da.Array)
        assert_same_output(lazy.compute(), serial)


def test_building_the_graph_computes_nothing(client):
    def refuse():
        raise AssertionError("the input was computed")

    dX = da.from_delayed(dask.delayed(refuse)(), shape=X.shape, dtype=X.dtype)
    lazy = ParallelPredictor(_FOREST).predict_proba(dX)
    assert lazy.shape == (len(X), 2)
    with pytest.raises(AssertionError, match="the input was computed"):
        lazy.compute()


def test_output_that_cannot_be_one_collection_is_a_clear_error():
    multi = RandomForestClassifier(n_estimators=3, random_state=0).fit(
        X, np.column_stack([Y, 1 - Y])
    )
    with pytest.raises(TypeError, match="one array per output"):
        ParallelPredictor(multi).predict_proba(da.from_array(X, chunks=100))


def test_scikit_learn_config_reaches_the_blocks(client):
    from sklearn import config_context

    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(400, 4)))
    frame.columns = list("abcd")
    scaler = StandardScaler().fit(frame)
    with_nan = frame.copy()
    with_nan.iloc[5, 1] = np.nan
    ridge = Ridge().fit(frame, frame["a"])
    for scheduler in ("threads", client):
        with dask.config.set(scheduler=scheduler):
            with config_context(transform_output="pandas"):
                lazy = ParallelPredictor(scaler).transform(dd.from_pandas(frame, 3))
                expected = scaler.transform(frame)
                assert_same_output(lazy.compute(), expected)
            with config_context(assume_finite=True):
                lazy = ParallelPredictor(ridge).predict(dd.from_pandas(with_nan, 3))
                assert_same_output(lazy.compute(), ridge.predict(with_nan))


def test_numpy_error_state_reaches_the_blocks_and_tasks(client):
    from sklearn.preprocessing import FunctionTransformer

    # Zeros past the first row: the sample of the output, computed in the
    # caller on the first row, takes no log(0); the blocks do.
    ones = np.ones((400, 3))
    ones[300:] = 0
    log = FunctionTransformer(np.log).fit(ones)
    for scheduler in ("threads", client):
        with dask.config.set(scheduler=scheduler), np.errstate(divide="raise"):
            with pytest.raises(FloatingPointError, match="divide by zero"):
                log.transform(ones)
            lazy = ParallelPredictor(log).transform(da.from_array(ones, chunks=100))
            # Not a silent -inf from Dask's threads and workers.
            with pytest.raises(FloatingPointError, match="divide by zero"):
                lazy.compute()
        with dask.config.set(scheduler=scheduler), np.errstate(divide="ignore"):
            lazy = ParallelPredictor(log).transform(da.from_array(ones, chunks=100))
            assert_same_output(lazy.compute(), log.transform(ones))
    # And to the tasks of joblib's Dask backend.
    eager = ParallelPredictor(log, n_jobs=2, chunk_size=100)
    with joblib.parallel_config(backend="dask"), np.errstate(divide="raise"):
        with pytest.raises(FloatingPointError, match="divide by zero"):
            eager.transform(ones)
    with joblib.parallel_config(backend="dask"), np.errstate(divide="ignore"):
        assert_same_output(eager.transform(ones), log.transform(ones))


def _iterative_imputer():
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    with_nan = X[:200, :4].copy()
    with_nan[np.random.default_rng(1).random(with_nan.shape) < 0.2] = np.nan
    return IterativeImputer(sample_posterior=True, random_state=0), with_nan


@pytest.mark.parametrize(
    "case", ["dummy", "dummy_frame", "unknown_chunks", "imputer", "nmf", "gpr"]
)
def test_calls_that_depend_on_the_batch_are_one_task_equal_serial(client, case):
    # Mapped over the blocks, each block would draw its own random numbers
    # or start from its own rows' mean.
    from sklearn.decomposition import NMF
    from sklearn.dummy import DummyClassifier
    from sklearn.gaussian_process import GaussianProcessRegressor

    data, method, params = X, "predict", {}
    if case.startswith("dummy") or case == "unknown_chunks":
        estimator = DummyClassifier(strategy="stratified", random_state=0)
    elif case == "imputer":
        estimator, data = _iterative_imputer()
        method = "transform"
    elif case == "nmf":
        estimator, data, method = (
            NMF(3, max_iter=2000, random_state=0),
            np.abs(X),
            "transform",
        )
    else:
        estimator, data = GaussianProcessRegressor(random_state=0), X[:60]
        method, params = "sample_y", {"n_samples": 2}
    estimator.fit(data, Y[: len(data)])
    # Copied before the parallel call: the imputer draws from a random
    # state it keeps, which every call moves on.
    expected = getattr(copy.deepcopy(estimator), method)(data, **params)
    lazy_input = da.from_array(data, chunks=25)
    if case == "dummy_frame":
        lazy_input = dd.from_pandas(pd.DataFrame(data), npartitions=4)
    elif case == "unknown_chunks":
        lazy_input = dd.from_pandas(pd.DataFrame(data), npartitions=4).to_dask_array()
    lazy = parallel_predict(estimator, lazy_input, method=method, params=params)
    assert isinstance(lazy, da.Array)
    assert lazy.numblocks[0] == 1
    # Dask lays out what it computes (its blocks joined in C order).
    assert_same_output(lazy.compute(), expected, order=False)


# scikit-learn's own check of a Dask input, in the serial call as well.
@pytest.mark.filterwarnings("ignore:The `numpy.may_share_memory`:FutureWarning")
def test_methods_that_fit_or_score_are_the_serial_call(client):
    dX = da.from_array(X, chunks=100)
    kmeans = KMeans(3, n_init=1, random_state=0)
    labels = parallel_predict(kmeans, dX, method="fit_predict")
    assert_same_output(labels, KMeans(3, n_init=1, random_state=0).fit_predict(X))
    # Fitted in this process, as by the serial call.
    assert_same_output(kmeans.predict(X), labels)
    scaled = parallel_predict(StandardScaler(), dX, method="fit_transform")
    assert_same_output(scaled, StandardScaler().fit_transform(X))
    logistic = _fitted(LogisticRegression())
    assert parallel_predict(
        logistic, dX, method="score", params={"y": Y}
    ) == logistic.score(X, Y)


def test_per_row_parameters_are_cut_with_the_blocks(client):
    offset = np.arange(len(X)) * 100.0
    model = ce.Offset().fit(X)
    expected = model.predict(X, offset=offset)
    for chunks in [1, (250, 0, 250, 100), len(X)]:
        dX = da.from_array(X, chunks=(chunks, 3))
        lazy = ParallelPredictor(model).predict(dX, offset=offset)
        assert_same_output(lazy.compute(), expected)
    # Not one value per row: the same to every block.
    whole = ParallelPredictor(model).predict(da.from_array(X, chunks=50), offset=[1.0])
    assert_same_output(whole.compute(), model.predict(X, offset=[1.0]))
    # Blocks of unknown sizes cannot be matched with the values.
    ddf = dd.from_pandas(pd.DataFrame(X), npartitions=3)
    for data in [ddf, ddf.to_dask_array()]:
        for per_row in (offset, offset.tolist()):
            with pytest.raises(ValueError, match=r"\['offset'\].*chunks are unknown"):
                ParallelPredictor(model).predict(data, offset=per_row)
        # A list or tuple is a setting (iteration_range=(0, 3)): whole.
        lazy = ParallelPredictor(model).predict(data, offset=(1.0,))
        assert_same_output(lazy.compute(), model.predict(X, offset=(1.0,)))


def test_estimator_rejecting_made_up_rows_with_empty_first_block(client):
    from sklearn.preprocessing import OneHotEncoder

    rng_ = np.random.default_rng(0)
    frame = pd.DataFrame({"s": rng_.choice(["p", "q"], 300)})
    # Dask's made-up strings are unknown categories.
    encoder = OneHotEncoder(sparse_output=False).fit(frame)
    ddf = dd.from_pandas(frame, npartitions=3)
    filtered = ddf[ddf.index.to_series() >= 150]
    expected = encoder.transform(frame.iloc[150:])
    lazy = ParallelPredictor(encoder).transform(filtered)
    assert_same_output(lazy.compute(), expected)
    # Arrays: made-up zeros are an unknown category of numbers.
    numbers = OneHotEncoder(sparse_output=False).fit(np.c_[rng_.integers(1, 3, 300)])
    values = numbers.categories_[0][rng_.integers(0, 2, 300)][:, None]
    known = da.concatenate([da.zeros((0, 1), dtype=int), da.from_array(values)])
    unknown = dd.from_pandas(pd.DataFrame(values), npartitions=3)
    unknown = unknown[unknown.index.to_series() >= 150].to_dask_array()
    for data, serial_input in [(known, values), (unknown, values[150:])]:
        lazy = ParallelPredictor(numbers).transform(data)
        assert_same_output(lazy.compute(), numbers.transform(serial_input))


def test_score_of_a_dask_input_equals_serial(client):
    logistic = _fitted(LogisticRegression(), frame=True)
    ridge = _fitted(Ridge())
    ddf = dd.from_pandas(FRAME, npartitions=3)
    assert ParallelPredictor(logistic).score(ddf, Y) == logistic.score(FRAME, Y)
    dX = da.from_array(X, chunks=100)
    assert ParallelPredictor(ridge).score(dX, X[:, 0]) == ridge.score(X, X[:, 0])


@pytest.mark.parametrize("shape", ["one_block", "empty_blocks", "frame"])
def test_input_without_rows_raises_as_serial(client, shape):
    logistic = _fitted(LogisticRegression())
    if shape == "one_block":
        data = da.from_array(X[:0])
    elif shape == "empty_blocks":
        data = da.concatenate([da.from_array(X[:0])] * 2)
    else:
        data = dd.from_pandas(pd.DataFrame(X[:0]), npartitions=1)
    with pytest.raises(ValueError, match="0 sample"):
        logistic.predict(X[:0])
    with pytest.raises(ValueError, match="0 sample"):
        ParallelPredictor(logistic).predict(data).compute()


def test_building_the_graph_warns_no_more_than_serial(client):
    from sklearn.preprocessing import OneHotEncoder

    frame = pd.DataFrame({"s": np.random.default_rng(0).choice(["p", "q"], 300)})
    # Dask's made-up strings are unknown categories, which it warns about.
    encoder = OneHotEncoder(handle_unknown="warn", sparse_output=False).fit(frame)
    ddf = dd.from_pandas(frame, npartitions=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expected = encoder.transform(frame)
        lazy = ParallelPredictor(encoder).transform(ddf)
        assert_same_output(lazy.compute(), expected)
    assert [str(warning.message) for warning in caught] == []
