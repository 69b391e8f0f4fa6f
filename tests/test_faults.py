"""Fault injection: errors, dead workers, interrupts, pickling, nesting, threads.

Every fault is injected where the work really runs in workers (two workers,
small explicit chunks), for both wrappers and the loky, threading and
multiprocessing backends. Every test has its own timeout: a hang fails the
test instead of stalling the suite.
"""

import _thread
import contextlib
import functools
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from pickle import PicklingError

import numpy as np
import pytest
from _faulty import (
    MARK,
    ChunkError,
    Faulty,
    TwoArgumentChunkError,
    TwoArgumentChunkInterrupt,
    TwoArgumentWarning,
    UnpicklableChunkError,
    Warns,
    done_calls,
    inject,
    max_overlap,
    running_calls,
)
from _helpers import assert_same_output
from hypothesis import given
from hypothesis import strategies as st
from sklearn.base import BaseEstimator
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from test_parallel_predictor_properties import (
    METHODS,
    family_rows,
    fitted,
    make_input,
    serial_or_error,
)

from sklearn_parpredict import (
    MultiModelPredictor,
    ParallelPredictor,
    _engine,
    _jobs,
    _warned,
    _watched_pool,
    parallel_predict,
)

BACKENDS = ["loky", "threading", "multiprocessing"]
PROCESS_BACKENDS = ["loky", "multiprocessing"]
WRAPPERS = ["ParallelPredictor", "MultiModelPredictor"]
X, Y = make_classification(n_samples=240, n_features=5, random_state=0)
ENGINE = {"n_jobs": 2, "chunk_size": 20}
# A failure must reach the caller within this many seconds.
PROMPT_S = 10
_BYSTANDER = LogisticRegression().fit(X, Y)


@pytest.fixture
def chunks_own_errors(monkeypatch):
    """A failing chunk's own error reaches the caller, as the worker sent it
    back: the engine makes no call on all rows for the serial call's error
    (see _engine._to_run_whole)."""
    monkeypatch.setattr(_engine, "WHOLE_CALL_S", -1.0)
    monkeypatch.setattr(_engine, "WHOLE_CALL_SHARE", 0.0)


def _marked(rows=(150,)):
    """X with the marker in ``rows``: the chunks holding them fail."""
    X_marked = X.copy()
    X_marked[list(rows), 0] = MARK
    return X_marked


def _wrap(wrapper, estimator, **engine):
    """``estimator`` in ``wrapper``; a MultiModelPredictor gets a bystander
    model, so that the faulty model's tasks run among healthy ones."""
    engine = {**ENGINE, **engine}
    if wrapper == "ParallelPredictor":
        return ParallelPredictor(estimator, **engine)
    return MultiModelPredictor(
        [(estimator, None, "faulty"), (_BYSTANDER, None, "bystander")], **engine
    )


def _assert_works(model, wrapper):
    """The wrapper predicts X exactly as its serial run does."""
    serial = _wrap(wrapper, model.get_params()[_estimator_param(wrapper)], n_jobs=1)
    assert_same_output(model.predict(X), serial.predict(X))


def _estimator_param(wrapper):
    return "estimator" if wrapper == "ParallelPredictor" else "faulty"


# ---------------------------------------------------------------------------
# An exception in one chunk
# ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("cheap", [True, False])
def test_exception_in_one_chunk_reaches_the_caller(wrapper, backend, cheap, request):
    # The serial call's error, word for word, where the call on all rows
    # that raises it is cheap: the chunk failed at once (see
    # _engine._to_run_whole). Else the chunk's own.
    if not cheap:
        request.getfixturevalue("chunks_own_errors")
    model = _wrap(wrapper, Faulty(LogisticRegression()).fit(X, Y), backend=backend)
    rows = len(X) if cheap else ENGINE["chunk_size"]
    message = f"^injected failure in a chunk of {rows} rows$"
    with pytest.raises(ChunkError, match=message):
        model.predict(_marked())
    _assert_works(model, wrapper)


class _FailsOnItsRows(BaseEstimator):
    """Fails after ``seconds``, quoting its rows; records them (on threads,
    this process's)."""

    def __init__(self, seconds=0.0):
        self.seconds = seconds

    def fit(self, X, y=None):
        self.rows_ = []
        return self

    def predict(self, X):
        self.rows_.append(len(X))
        time.sleep(self.seconds)
        raise ValueError(f"failed on {len(X)} rows")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seconds", [0.0, 0.3])
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_the_serial_error_is_looked_for_only_where_it_is_cheap(wrapper, seconds):
    # A chunk's error quoted the chunk where the serial call's quotes all the
    # rows. A chunk that fails at once is called again on all rows for the
    # serial call's error; one that fails late is not: that call could take
    # as long as the serial call.
    estimator = _FailsOnItsRows(seconds).fit(X)
    model = _wrap(wrapper, estimator, backend="threading")
    rows = len(X) if seconds == 0 else ENGINE["chunk_size"]
    with pytest.raises(ValueError, match=f"^failed on {rows} rows$") as raised:
        model.predict(X)
    assert (len(X) in estimator.rows_) == (seconds == 0)
    # The engine's mark of the failing piece does not reach the caller.
    assert not [k for k in vars(raised.value) if "sklearn_parpredict" in k]


class _FailsAfterAFixedCost(BaseEstimator):
    """Fails after 20 ms whatever its rows, quoting them: a check of the
    input with a fixed cost."""

    def fit(self, X, y=None):
        self.fitted_ = True
        return self

    def predict(self, X):
        time.sleep(0.02)
        raise ValueError(f"failed on {len(X)} rows")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_the_serial_error_of_a_model_whose_first_rows_fail_when_probed(wrapper):
    # chunk_size="auto" times a model's first rows before it knows its cost:
    # scaled by the rows, their failure in 20 ms foretold 6 s on 20,000
    # rows, and the probe's error quoted its 64 rows.
    X_big = np.zeros((20_000, 2))
    model = _wrap(wrapper, _FailsAfterAFixedCost().fit(X_big), chunk_size="auto")
    with pytest.raises(ValueError, match="^failed on 20000 rows$"):
        model.predict(X_big)


class _FailsLateOnFirstRows(BaseEstimator):
    """Predicts the first column; the chunk of the first marked row fails
    late, that of the last one at once."""

    def fit(self, X, y=None):
        self.fitted_ = True
        return self

    def predict(self, X):
        marked = X[:, 0] == MARK
        if marked.any() and marked[-1]:
            raise ValueError("the last rows' error")
        if marked.any():
            time.sleep(0.5)
            raise ValueError("the first rows' error")
        return X[:, 0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("verbose", [0, 1])
@pytest.mark.parametrize("backend", ["loky", "threading"])
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_the_first_rows_error_is_raised_when_a_later_chunk_fails_first(
    wrapper, backend, verbose
):
    # The serial call meets the first rows' error. joblib's own loop (with
    # verbose) raised the error of whichever task failed first.
    model = _wrap(
        wrapper, _FailsLateOnFirstRows().fit(X), backend=backend, verbose=verbose
    )
    with pytest.raises(ValueError, match="^the first rows' error$"):
        model.predict(_marked(rows=(5, 239)))
    _assert_works(model, wrapper)


class _FailsOnRow(BaseEstimator):
    """Predicts the first column in 10 µs a row; fails on rows that hold
    ``value``."""

    def __init__(self, value=MARK, message="failed"):
        self.value = value
        self.message = message

    def fit(self, X, y=None):
        self.fitted_ = True
        return self

    def predict(self, X):
        time.sleep(1e-5 * len(X))
        if (X[:, 0] == self.value).any():
            raise ValueError(self.message)
        return X[:, 0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", [None, "loky", "threading"])
def test_a_later_models_probe_does_not_fail_before_an_earlier_models_rows(backend):
    # chunk_size="auto" predicts each model's first rows in-process first:
    # the second model failed there, where the serial loop meets the first
    # model's error on its last rows.
    X_big = np.zeros((20_000, 2))
    X_big[-1, 0], X_big[3, 0] = MARK, MARK - 1
    models = [
        (_FailsOnRow(MARK, "the first model's error").fit(X_big), None, "a"),
        (_FailsOnRow(MARK - 1, "the second model's error").fit(X_big), None, "b"),
    ]
    with pytest.raises(ValueError, match="^the first model's error$"):
        MultiModelPredictor(models, n_jobs=1).predict(X_big)
    with pytest.raises(ValueError, match="^the first model's error$"):
        MultiModelPredictor(models, n_jobs=2, backend=backend).predict(X_big)


def _fails_after(place, seconds):
    time.sleep(seconds)
    if place is not None:
        raise ValueError(f"the error of the serial call's task {place}")
    return seconds


@pytest.mark.timeout(60)
@pytest.mark.parametrize("verbose", [0, 1])
@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_the_error_first_in_the_serial_order_is_raised_where_tasks_go_longest_first(
    backend, verbose
):
    # The engine sends the longest tasks first: a MultiModelPredictor's
    # slow model before the models the serial loop runs first, whose error
    # the serial loop meets first (it raised the slow model's).
    from sklearn_parpredict._fanout import fan_out

    tasks = [(None, 0.0), (2, 0.0), (0, 0.5), (None, 0.0)]
    engine = {"n_workers": 2, "backend": backend, "verbose": verbose}
    with pytest.raises(ValueError, match="task 0$"):
        fan_out(_fails_after, tasks, rank=[3, 2, 0, 1], **engine)
    # Without a rank, task order is the serial order.
    with pytest.raises(ValueError, match="task 2$"):
        fan_out(_fails_after, tasks, **engine)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
@pytest.mark.parametrize("pickles", [True, False])
@pytest.mark.usefixtures("chunks_own_errors")
def test_a_failing_chunks_warnings_reach_the_caller_before_its_error(backend, pickles):
    import warnings

    def warn_then_fail(X):
        warnings.warn("about to fail", UserWarning, stacklevel=2)
        if (X[:, 0] == MARK).any():
            raise ChunkError("failed") if pickles else UnpicklableChunkError("failed")
        return X

    model = FunctionTransformer(warn_then_fail).fit(X)
    expected = ChunkError if pickles else RuntimeError
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(expected, match="failed"):
            ParallelPredictor(model, backend=backend, **ENGINE).transform(_marked())
    assert "about to fail" in [str(w.message) for w in caught]


# The first column's value of the rows that :class:`_WarnsThenFails` warns of.
WARNED = 12345.0


class _WarnsThenFails(BaseEstimator):
    """Warns of rows holding :data:`WARNED`, fails on those holding
    :data:`MARK`."""

    def fit(self, X, y=None):
        self.fitted_ = True
        return self

    def predict(self, X):
        if (X[:, 0] == WARNED).any():
            warnings.warn("the first rows warn", UserWarning, stacklevel=2)
        if (X[:, 0] == MARK).any():
            raise ChunkError("failed")
        return X[:, 0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_warnings_of_the_rows_before_a_failing_chunk_reach_the_caller(wrapper):
    # The serial call warns of its first rows, then fails on later ones; the
    # chunks before the failing one warned in worker processes, and their
    # warnings were dropped with their outputs: only the error came back.
    # (Not on joblib's multiprocessing backend, which hands back no output
    # once a task failed.)
    data = _marked(rows=(200,))
    data[3, 0] = WARNED
    model = _WarnsThenFails().fit(X)
    wrapped = _wrap(wrapper, model, backend="loky")
    for run in (lambda: model.predict(data), lambda: wrapped.predict(data)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ChunkError, match="failed"):
                run()
        assert [str(w.message) for w in caught] == ["the first rows warn"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
@pytest.mark.parametrize("fails", [False, True])
def test_a_warning_class_defined_in_a_function_comes_back(backend, fails):
    import warnings

    class LocalWarning(UserWarning):
        pass

    def warn(X):
        warnings.warn("local", LocalWarning, stacklevel=2)
        if fails and (X[:, 0] == MARK).any():
            raise ChunkError("failed")
        return X

    # Plain pickle refuses the class: the output (or the error) must still
    # reach the caller, and the warning with it.
    model = FunctionTransformer(warn).fit(X)
    wrapper = ParallelPredictor(model, backend=backend, **ENGINE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if fails:
            with pytest.raises(ChunkError, match="failed"):
                wrapper.transform(_marked())
        else:
            assert_same_output(wrapper.transform(X), X)
    assert "local" in [str(w.message) for w in caught]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
@pytest.mark.usefixtures("chunks_own_errors")
def test_an_exception_class_defined_in_a_function_comes_back(backend):
    class LocalError(ValueError):
        pass

    def fail(X):
        warnings.warn("before the error", UserWarning, stacklevel=1)
        if (X[:, 0] == MARK).any():
            error = LocalError("local failure")
            error.rows = len(X)
            raise error
        return X

    # Plain pickle cannot name the class (nor one defined in a script that
    # the workers get by value): processes raised a RuntimeError naming it,
    # which the caller's ``except LocalError`` did not catch.
    model = FunctionTransformer(fail).fit(X)
    wrapper = ParallelPredictor(model, backend=backend, **ENGINE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(LocalError, match="local failure") as raised:
            wrapper.transform(_marked())
    assert raised.value.rows == ENGINE["chunk_size"]
    assert "before the error" in [str(w.message) for w in caught]


def _warns_two_arguments(X):
    warnings.warn(TwoArgumentWarning("a model", "kept"), stacklevel=1)
    return X


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("action", ["always", "ignore", "error"])
def test_a_workers_warning_comes_back_as_itself(action, backend):
    # Sent back as its text, it was raised again as category(text): a class
    # whose __init__ takes other arguments failed the call with a TypeError,
    # under every filter, and the others lost their attributes.
    model = FunctionTransformer(_warns_two_arguments).fit(X)
    wrapper = ParallelPredictor(model, backend=backend, **ENGINE)
    for call in (model.transform, wrapper.transform):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter(action)
            if action == "error":
                with pytest.raises(TwoArgumentWarning, match="kept of a model") as e:
                    call(X)
                assert e.value.model == "a model"
            else:
                assert_same_output(call(X), X)
        assert [(str(w.message), w.message.model) for w in caught] == (
            [("kept of a model", "a model")] if action == "always" else []
        )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_a_warning_of_a_function_sent_by_value_comes_from_its_file(backend):
    # A function defined in a function (or a script) goes to the workers by
    # value, which cloudpickle names "<dynamic-code>": its warnings came
    # back from that file, where the caller's filters on their module did
    # not match them.
    def warn(X):
        warnings.warn("from a function sent by value", UserWarning, stacklevel=1)
        return X

    model = FunctionTransformer(warn).fit(X)
    wrapper = ParallelPredictor(model, backend=backend, **ENGINE)
    where = []
    for call in (model.transform, wrapper.transform):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call(X)
        where.append([(w.filename, w.lineno) for w in caught])
    assert where[1] == where[0]
    assert where[0][0][0] == __file__
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", module=__name__)
        wrapper.transform(X)
    assert caught == []


def test_a_workers_warning_from_a_file_no_module_here_has_is_raised():
    import warnings

    # A module the worker alone imported, a function pickled by value
    # ("<dynamic-code>"): warn_explicit(module=None) drops a warning.
    for filename in ("/nowhere/imported_in_the_worker.py", "<dynamic-code>"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _warned.warn_again([[("from a worker", UserWarning, filename, 3)]])
        assert [(str(w.message), w.filename) for w in caught] == [
            ("from a worker", filename)
        ]


# Warning filters a caller may have in force, as ``simplefilter`` takes them.
WARNING_ACTIONS = ["always", "default", "once", "module", "ignore", "error"]


def _shown(call, action: str, message: str):
    """How many warnings with ``message`` in them ``call()`` shows under the
    filter ``action``, as a caller's ``catch_warnings`` sees them; or the
    category of the warning it raises as an error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter(action)
        try:
            call()
        except Warning as raised:
            assert message in str(raised)
            return type(raised)
    return sum(message in str(w.message) for w in caught)


def _raising_once_per_call(raiser: str):
    """A fitted model whose predict warns once per call, its input, and the
    warning's message."""
    if raiser == "its own":
        return Warns().fit(X), X, "raised once per call"
    import pandas as pd

    # Fitted on an array, given a DataFrame; scikit-learn's check of the
    # input also resets the registries of warnings shown once (its
    # catch_warnings), so that chunks on threads showed it under every
    # filter.
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    return LogisticRegression().fit(X, Y), frame, "X has feature names"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("action", WARNING_ACTIONS)
@pytest.mark.parametrize("backend", [*BACKENDS, None])
@pytest.mark.parametrize("raiser", ["its own", "scikit-learn's"])
def test_a_warning_raised_once_per_call_shows_as_in_the_serial_call(
    raiser, backend, action
):
    # Every chunk raises what the serial call raises once per call: shown
    # once per chunk on threads, it must show as often as in the serial
    # call, under every filter, and raise as the serial call does under
    # "error".
    model, data, message = _raising_once_per_call(raiser)
    hook = warnings._showwarnmsg  # type: ignore[attr-defined]
    serial = _shown(lambda: model.predict(data), action, message)
    assert serial == {"error": UserWarning, "ignore": 0}.get(action, 1)
    wrapper = ParallelPredictor(model, backend=backend, **ENGINE)
    assert _shown(lambda: wrapper.predict(data), action, message) == serial
    assert warnings._showwarnmsg is hook  # type: ignore[attr-defined]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", [*BACKENDS, None])
def test_each_model_shows_a_warning_as_often_as_its_serial_call_does(backend):
    # Two models raise the same warning twice per call (a loop over their
    # parts): each serial call shows it twice, once per chunk no more, and
    # one model's warnings do not hide the other's. (Processes showed it
    # once, whatever the models and their calls raised.)
    models = [(Warns(2, in_fit=True), None, target) for target in ("a", "b")]
    wrapper = MultiModelPredictor(models, backend=backend, **ENGINE)
    # Each model's fit warns, as each serial fit does.
    assert _shown(lambda: wrapper.fit(X, Y), "always", "fit: raised") == 2
    message = "raised once per call"
    serial = [model.predict for model in wrapper.estimators_]
    assert _shown(lambda: [predict(X) for predict in serial], "always", message) == 4
    assert _shown(lambda: wrapper.predict(X), "always", message) == 4


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["threading", "loky", None])
def test_the_rows_probed_in_process_and_the_tasks_after_them_show_it_once(backend):
    # With chunk_size="auto" a model not seen yet is probed on its first rows
    # in this process (64, then 256, ...), maybe timed on two threads, then
    # planned: each step showed the warning again.
    model = Warns(row_s=2e-5).fit(X)
    data = np.zeros((20_000, X.shape[1]))
    wrapper = ParallelPredictor(model, n_jobs=2, backend=backend)
    for _ in range(2):  # probed, then planned on what the probe taught
        assert _shown(lambda: wrapper.predict(data), "always", model.message) == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", [*BACKENDS, None])
def test_a_warning_the_serial_call_showed_once_is_not_shown_again(backend):
    # Under "default", Python shows a warning once per location, and keeps
    # the locations in the module of the code that raised it: the serial
    # call's and the wrapper's calls share them. (Processes kept their own,
    # and showed it again.)
    model = Warns(message="shown once per location").fit(X)
    wrapper = ParallelPredictor(model, backend=backend, **ENGINE)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        model.predict(X)
        wrapper.predict(X)
        wrapper.predict(X)
    assert [str(w.message) for w in shown] == [model.message]


class _SumWarns(BaseEstimator):
    """Transforms a batch into one number, and warns once per call."""

    def __sklearn_is_fitted__(self):
        return True

    def transform(self, X):
        warnings.warn("raised once per call", UserWarning, stacklevel=1)
        return float(np.sum(X))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", [*BACKENDS, None])
def test_a_call_run_again_whole_shows_a_warning_as_the_serial_call(backend):
    # An output that is not one row per row (a number for the whole batch)
    # cannot be joined: the call runs again on all rows, after its chunks
    # showed their warnings. The call again showed them a second time.
    model = _SumWarns()
    message = "raised once per call"
    assert _shown(lambda: model.transform(X), "always", message) == 1
    wrapper = ParallelPredictor(model, backend=backend, **ENGINE)
    for _ in range(2):
        assert _shown(lambda: wrapper.transform(X), "always", message) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert wrapper.transform(X) == model.transform(X)


class _RecordsItsOwnWarnings(BaseEstimator):
    """Predicts how many warnings it recorded itself while predicting."""

    def __sklearn_is_fitted__(self):
        return True

    def predict(self, X):
        with warnings.catch_warnings(record=True) as own:
            warnings.simplefilter("always")
            warnings.warn("recorded by the estimator", UserWarning, stacklevel=1)
        return np.full(len(X), len(own))


def test_an_estimator_that_records_its_own_warnings_still_sees_them():
    # The pieces of a call in this process (a probe's rows) show a warning
    # once between them, but a warning an estimator records itself goes to
    # the estimator, not to the caller: each piece must still see its own.
    job = _jobs.Job(_RecordsItsOwnWarnings(), "predict", X)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs = [job.call(0, 10), job.call(10, 20), job.call(20, 30)]
    assert [out.tolist() for out in outputs] == [[1] * 10] * 3
    assert caught == []


def test_a_tally_shows_each_warning_as_often_as_the_piece_that_raised_it_most():
    tally = _warned.Tally()
    late = ("late", UserWarning, "m.py", 2)
    pieces = [
        [("w", UserWarning, "m.py", 1)] * 2,
        [("w", UserWarning, "m.py", 1)] * 3 + [late],
        [("w", UserWarning, "m.py", 1)],
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warned.warn_again(pieces, [tally] * 3)
    assert [str(w.message) for w in caught] == ["w", "w", "w", "late"]
    # Each a call of its own (a model's fit): all of them.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warned.warn_again(pieces)
    assert len(caught) == 7


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("cheap", [True, False])
def test_an_exception_that_cannot_be_unpickled_is_named_promptly(
    wrapper, backend, cheap, request
):
    if not cheap:
        request.getfixturevalue("chunks_own_errors")
    faulty = Faulty(LogisticRegression(), fault="raise-unpicklable").fit(X, Y)
    model = _wrap(wrapper, faulty, backend=backend)
    # Threads raise it as it is; processes, which cannot send it back (the
    # multiprocessing pool waited forever), raise an error that names it,
    # and the call on all rows, made here where it is cheap, raises it
    # itself (the serial call's error).
    expected = (
        UnpicklableChunkError if backend == "threading" or cheap else RuntimeError
    )
    start = time.monotonic()
    with pytest.raises(expected, match="injected failure") as caught:
        model.predict(_marked())
    assert time.monotonic() - start < PROMPT_S
    if expected is RuntimeError:
        assert "UnpicklableChunkError: injected failure" in str(caught.value)
        assert "_inject" in str(caught.value)  # the worker's traceback
    _assert_works(model, wrapper)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "fault, error",
    [
        ("raise-two-arguments", TwoArgumentChunkError),
        ("interrupt-two-arguments", TwoArgumentChunkInterrupt),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.usefixtures("chunks_own_errors")
def test_an_exception_whose_init_takes_other_arguments_comes_back(
    wrapper, backend, fault, error
):
    # Pickle rebuilds an exception by calling its class with its args, which
    # failed in the caller for this one: processes raised a RuntimeError
    # naming it, not the serial call's error; one that is no Exception broke
    # loky's pool and left a multiprocessing call waiting for ever.
    faulty = Faulty(LogisticRegression(), fault=fault).fit(X, Y)
    model = _wrap(wrapper, faulty, backend=backend)
    start = time.monotonic()
    with pytest.raises(error, match="injected failure") as caught:
        model.predict(_marked())
    assert time.monotonic() - start < PROMPT_S
    assert caught.value.rows == ENGINE["chunk_size"]
    assert caught.value.args == (
        f"injected failure in a chunk of {caught.value.rows} rows",
    )
    _assert_works(model, wrapper)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("verbose", [0, 1])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_a_stop_iteration_reaches_the_caller_as_it_is(wrapper, backend, verbose):
    # joblib's Parallel yields its outputs from a generator, which turned a
    # task's StopIteration into "RuntimeError: generator raised
    # StopIteration" (multiprocessing, and any backend with verbose).
    faulty = Faulty(LogisticRegression(), fault="stop-iteration").fit(X, Y)
    model = _wrap(wrapper, faulty, backend=backend, verbose=verbose)
    with pytest.raises(StopIteration, match="injected failure"):
        model.predict(_marked())
    _assert_works(model, wrapper)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
def test_exception_in_one_fit_reaches_the_caller(backend):
    # MultiModelPredictor fits its models in parallel too.
    model = MultiModelPredictor(
        [(Faulty(LogisticRegression()), None, "a"), (LogisticRegression(), None, "b")],
        n_jobs=2,
        backend=backend,
    )
    with pytest.raises(ChunkError, match="injected failure"):
        model.fit(_marked(), Y)
    assert_same_output(
        model.fit(X, Y).predict(X), model.set_params(n_jobs=1).fit(X, Y).predict(X)
    )


class _FailsFirstSleepsAfter(BaseEstimator):
    """Raises on a chunk holding :data:`MARK`, sleeps on any other: a call
    that fails while every worker is busy."""

    def __sklearn_is_fitted__(self):
        return True

    def predict(self, X):
        if (X[:, 0] == MARK).any():
            raise ChunkError("injected failure")
        time.sleep(30)
        return np.zeros(len(X))


@pytest.mark.timeout(30)
def test_failed_multiprocessing_call_survives_a_worker_killed_holding_a_lock(
    monkeypatch,
):
    # Pool.terminate kills the busy workers, then waits for the pool's task
    # handler, whose last write takes the results queue's lock: a worker
    # killed while writing its result holds it forever (about 1 in 1,000
    # failed calls hung). Here the lock is taken for good as the first worker
    # is killed, and the task handler, slowed, writes after that.
    kills = []
    configure = _watched_pool.WatchedMultiprocessingBackend.configure

    def instrumented(self, *args, **kwargs):
        n_jobs = configure(self, *args, **kwargs)
        pool, put = self._pool, self._pool._outqueue.put

        def slow_put(obj):
            if threading.current_thread() is pool._task_handler:
                time.sleep(0.3)
            return put(obj)

        def holding_the_lock(terminate):
            def kill():
                terminate()
                if not kills:
                    pool._outqueue._wlock.acquire()
                kills.append(True)

            return kill

        pool._outqueue.put = slow_put
        for worker in pool._pool:
            worker.terminate = holding_the_lock(worker.terminate)
        return n_jobs

    monkeypatch.setattr(
        _watched_pool.WatchedMultiprocessingBackend, "configure", instrumented
    )
    model = ParallelPredictor(
        _FailsFirstSleepsAfter(), backend="multiprocessing", **ENGINE
    )
    start = time.monotonic()
    with pytest.raises(ChunkError, match="injected failure"):
        model.predict(_marked(rows=[0]))
    assert time.monotonic() - start < PROMPT_S
    assert kills, "no busy worker was killed"


@pytest.mark.timeout(30)
def test_multiprocessing_pool_ends_with_a_worker_stuck_writing_a_result():
    # Pool.terminate writes the result handler's sentinel under the lock of
    # the results queue. The result handler can end first (on the task
    # handler's sentinel) while a worker holds that lock, waiting to write a
    # result too big for the pipe that no one reads any more.
    backend = _watched_pool.WatchedMultiprocessingBackend()
    backend.configure(n_jobs=2)
    pool = backend._pool
    pool._result_handler._state = "TERMINATE"
    pool._outqueue.put(None)
    pool._result_handler.join(5)
    pool.apply_async(np.ones, (1 << 20,))
    deadline = time.monotonic() + 10
    while not pool._outqueue._reader.poll() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool._outqueue._reader.poll(), "the worker wrote no result"
    # Forgotten, as a result that arrived would be.
    pool._cache.clear()
    backend.terminate()
    assert all(worker.exitcode is not None for worker in pool._pool)


class _SlowToPickle:
    """Pickled in 0.5 s, as 4 MB: more than a pipe holds."""

    def __reduce__(self):
        time.sleep(0.5)
        return bytes, (bytes(4 << 20),)


@pytest.mark.timeout(60)
def test_multiprocessing_pool_ends_while_a_task_is_being_pickled():
    # Pool.terminate reads the queued tasks only while there are some: the
    # task handler, still pickling, writes its task after that, to workers
    # that are gone (a fit whose first model failed to pickle hung 1 time
    # in 6 while the second model's data was pickled).
    backend = _watched_pool.WatchedMultiprocessingBackend()
    # Workers that read nothing for a while: the task is not taken either.
    backend.configure(n_jobs=2, initializer=time.sleep, initargs=(2,))
    backend._pool.apply_async(len, (_SlowToPickle(),))
    time.sleep(0.1)  # the task handler is pickling
    ended = threading.Event()
    threading.Thread(
        target=lambda: (backend.terminate(), ended.set()), daemon=True
    ).start()
    assert ended.wait(20), "Pool.terminate waits for the task handler for good"


@pytest.mark.timeout(60)
def test_multiprocessing_tasks_written_through_a_descriptor_past_1023():
    # A process with many files or sockets open gives the pool's pipes
    # descriptors that select() refuses ("filedescriptor out of range").
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"at most {hard} open files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    opened: list[int] = []
    try:
        for _ in range(3):
            # Every free descriptor below 1100 taken (the lowest free is
            # given), after the garbage (earlier tests' pipes) has let go of
            # its own; again if another thread let go of one meanwhile.
            gc.collect()
            while not opened or opened[-1] < 1100:
                opened.append(os.open(os.devnull, os.O_RDONLY))
            backend = _watched_pool.WatchedMultiprocessingBackend()
            # Workers that read nothing for a while: the task fills the pipe.
            backend.configure(n_jobs=2, initializer=time.sleep, initargs=(0.5,))
            if backend._pool._inqueue._writer.fileno() > 1023:
                break
            backend.terminate()
            opened.append(-1)  # fill again
        try:
            assert backend._pool._inqueue._writer.fileno() > 1023
            task = backend._pool.apply_async(len, (bytes(4 << 20),))
            assert task.get(timeout=30) == 4 << 20
        finally:
            backend.terminate()
    finally:
        for fd in opened:
            if fd >= 0:
                os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------------------
# A worker process that dies
# ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
# The multiprocessing pool's result handler ends on the error, printed as
# any thread's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_an_output_that_cannot_be_unpickled_is_a_prompt_error(wrapper, backend):
    # Unpickling it ended a multiprocessing pool's result handler, and the
    # call waited for ever; loky reports its pool broken.
    faulty = Faulty(LogisticRegression(), fault="return-unloadable").fit(X, Y)
    model = _wrap(wrapper, faulty, backend=backend)
    start = time.monotonic()
    with pytest.raises(BrokenProcessPool, match="un-?serialize|unpickl"):
        model.predict(_marked())
    assert time.monotonic() - start < PROMPT_S
    _assert_works(model, wrapper)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "fault, error, match",
    [
        ("exit", BrokenProcessPool, r"terminated(.|\n)*EXIT\(3\)"),
        ("kill", BrokenProcessPool, r"terminated(.|\n)*SIGKILL"),
        ("memory", MemoryError, "allocate"),
    ],
)
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_dead_worker_is_a_prompt_error_and_the_next_call_works(
    wrapper, backend, fault, error, match
):
    model = _wrap(
        wrapper, Faulty(LogisticRegression(), fault).fit(X, Y), backend=backend
    )
    start = time.monotonic()
    with pytest.raises(error, match=match):
        model.predict(_marked())
    assert time.monotonic() - start < PROMPT_S
    _assert_works(model, wrapper)


@pytest.mark.timeout(60)
def test_forked_workers_survive_the_callers_openmp_threads():
    # The caller runs OpenMP (GNU libgomp) threads, then the multiprocessing
    # backend forks workers that use OpenMP too: without care, they wait
    # forever for threads that were not forked.
    model = HistGradientBoostingClassifier(max_iter=5).fit(X, Y)
    expected = model.predict(X)
    wrapped = ParallelPredictor(model, backend="multiprocessing", **ENGINE)
    assert_same_output(wrapped.predict(X), expected)


# ---------------------------------------------------------------------------
# KeyboardInterrupt during a long call
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _interrupt_when_running(log_dir):
    """Interrupt the main thread as soon as a delayed call runs in the block."""
    leaving = threading.Event()

    def watch():
        while not running_calls(log_dir):
            if leaving.wait(0.01):
                return
        _thread.interrupt_main()

    # A process started in the background ignores SIGINT, and interrupt_main
    # then does nothing: Python's own handler raises KeyboardInterrupt.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        leaving.set()
        thread.join()
        signal.signal(signal.SIGINT, previous)


def _alive(pid):
    """Whether a process runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in "ZX"


def _wait_for(condition, timeout=PROMPT_S):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_keyboard_interrupt_stops_the_work(wrapper, backend, tmp_path):
    # Every chunk sleeps 2 s: the whole call would take 12 s on two workers.
    slow = Faulty(LogisticRegression(), "sleep", seconds=2.0, log_dir=str(tmp_path))
    model = _wrap(wrapper, slow.fit(X, Y), backend=backend)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt), _interrupt_when_running(tmp_path):
        model.predict(_marked(range(len(X))))
    assert time.monotonic() - start < PROMPT_S
    interrupted = running_calls(tmp_path)
    n_started = len(interrupted) + len(done_calls(tmp_path))
    if backend == "threading":
        # A thread cannot be killed: the chunks the threads run finish...
        assert _wait_for(lambda: not running_calls(tmp_path))
    else:
        # The worker processes that ran the interrupted chunks are gone...
        assert _wait_for(lambda: not any(map(_alive, interrupted))), interrupted
    # ...and no other chunk starts.
    time.sleep(0.5)
    assert len(running_calls(tmp_path)) + len(done_calls(tmp_path)) == n_started
    _assert_works(model, wrapper)


# ---------------------------------------------------------------------------
# Estimators that cannot be pickled
# ---------------------------------------------------------------------------


def _locked():
    model = LogisticRegression().fit(X, Y)
    model.lock_ = threading.Lock()
    return model


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_unpicklable_estimator_is_a_clear_error_or_runs_on_threads(wrapper, backend):
    model = _wrap(wrapper, _locked(), backend=backend)
    if backend == "threading":
        _assert_works(model, wrapper)
        return
    with pytest.raises(PicklingError, match="_thread.lock(.|\n)*backend='threading'"):
        model.predict(X)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_functions_without_an_importable_name_reach_the_workers(backend):
    # A lambda pickles by value, as joblib's own process backends send it.
    model = make_pipeline(FunctionTransformer(lambda a: a * 2), LogisticRegression())
    wrapped = _wrap("ParallelPredictor", model.fit(X, Y), backend=backend)
    _assert_works(wrapped, "ParallelPredictor")


@pytest.mark.timeout(60)
def test_estimator_defined_in_a_script_reaches_loky_workers(tmp_path):
    # Classes of a script's (or a notebook's) __main__ cannot be imported by a
    # fresh worker process: they must travel by value.
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import numpy as np
            from sklearn.base import BaseEstimator
            from sklearn_parpredict import parallel_predict

            class Doubler(BaseEstimator):
                def fit(self, X, y=None):
                    self.fitted_ = True
                    return self

                def predict(self, X):
                    return 2 * X[:, 0]

            if __name__ == "__main__":
                X = np.arange(200.0).reshape(100, 2)
                out = parallel_predict(
                    Doubler().fit(X), X, n_jobs=2, backend="loky", chunk_size=10
                )
                assert (out == 2 * X[:, 0]).all()
                print("ok")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=50
    )
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


# ---------------------------------------------------------------------------
# Nested use
# ---------------------------------------------------------------------------


def _logged(log_dir, seconds=0.05):
    """A classifier whose every call on marked rows sleeps and is logged."""
    return Faulty(LogisticRegression(), "sleep", seconds=seconds, log_dir=str(log_dir))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_nested_in_parallel_grid_search(wrapper, tmp_path):
    X_all = _marked(range(len(X)))
    model = _wrap(wrapper, _logged(tmp_path), n_jobs=-1, backend=None)
    grid = {f"{_estimator_param(wrapper)}__seconds": [0.02, 0.05]}
    search = GridSearchCV(model, grid, cv=2, n_jobs=2).fit(X_all, Y)
    serial = GridSearchCV(model.set_params(n_jobs=1), grid, cv=2).fit(X_all, Y)
    np.testing.assert_array_equal(
        search.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"]
    )
    # Two search workers, each predicting in-process: never more than two
    # calls at once on two workers.
    assert 1 <= max_overlap(done_calls(tmp_path)) <= 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("outer", WRAPPERS)
def test_wrapper_inside_a_wrapper(outer, tmp_path):
    inner = _wrap("ParallelPredictor", _logged(tmp_path).fit(X, Y), n_jobs=-1)
    model = _wrap(outer, inner, n_jobs=2, backend="loky")
    out = model.predict(_marked(range(len(X))))
    serial = _wrap(outer, inner, n_jobs=1).predict(_marked(range(len(X))))
    assert_same_output(out, serial)
    # Twelve chunks on two workers: the inner wrapper does not fan out again.
    assert 1 <= max_overlap(done_calls(tmp_path)) <= 2


# ---------------------------------------------------------------------------
# Concurrent calls from several threads
# ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "backend, chunk_size",
    [("loky", 20), ("loky", "auto"), ("threading", 20), ("multiprocessing", 20)],
)
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_concurrent_calls_from_threads(wrapper, backend, chunk_size):
    model = _wrap(wrapper, _BYSTANDER, backend=backend, chunk_size=chunk_size)
    serial = _wrap(wrapper, _BYSTANDER, n_jobs=1)
    # Each thread predicts its own rows, so that mixed-up outputs show.
    batches = [X[i::4] for i in range(4)] * 2
    with ThreadPoolExecutor(4) as threads:
        outputs = list(threads.map(model.predict, batches))
    for batch, out in zip(batches, outputs):
        assert_same_output(out, serial.predict(batch))


class _SlowOrFailing(BaseEstimator):
    """Fails at once on a row marked -999, else sleeps 0.2 s a chunk."""

    def fit(self, X, y=None):
        self.fitted_ = True
        return self

    def predict(self, X):
        if (X[:, 0] == -999).any():
            raise ValueError("found -999")
        time.sleep(0.2)
        return (X[:, 0] > 0).astype(int)


@pytest.mark.timeout(120)
def test_a_failed_call_on_loky_leaves_another_threads_call_running():
    # joblib stops the workers of a failed call, whoever else's tasks they
    # run: the valid call failed with loky's ShutdownExecutorError.
    from sklearn_parpredict import ParallelPredictor

    good = np.random.RandomState(0).randn(8000, 3)
    bad = good.copy()
    bad[100, 0] = -999
    model = _SlowOrFailing().fit(good)
    wrapper = ParallelPredictor(model, n_jobs=2, backend="loky", chunk_size=500)
    wrapper.predict(good[:1000])
    outcomes = {}

    def call(name, rows, delay):
        time.sleep(delay)
        try:
            outcomes[name] = wrapper.predict(rows)
        except Exception as exc:
            outcomes[name] = exc

    threads = [
        threading.Thread(target=call, args=("good", good, 0.0)),
        threading.Thread(target=call, args=("bad", bad, 0.5)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert isinstance(outcomes["bad"], ValueError)
    assert not isinstance(outcomes["good"], Exception), repr(outcomes["good"])
    np.testing.assert_array_equal(outcomes["good"], model.predict(good))
    # A failed call alone still stops the workers it kept busy.
    with pytest.raises(ValueError, match="-999"):
        wrapper.predict(bad)
    np.testing.assert_array_equal(
        wrapper.predict(good[:1000]), model.predict(good[:1000])
    )


# ---------------------------------------------------------------------------
# Chaos: random estimator, input, backend, chunking and fault
# ---------------------------------------------------------------------------


@st.composite
def chaos(draw):
    name, kind, X, container = draw(family_rows(max_rows=120))
    n_rows = len(X)
    # Text has no numeric column to carry the marker.
    faults = ["none"] if kind == "text" or not n_rows else ["none", "raise"]
    fault = draw(st.sampled_from(faults))
    if fault != "none":
        X[draw(st.integers(0, n_rows - 1)), 0] = MARK
    return {
        "estimator": inject(fitted(name), fault),
        "X": make_input(kind, X, container),
        "entry": draw(st.sampled_from(["ParallelPredictor", "parallel_predict"])),
        # Processes, threads, and rarely (slow to start) stdlib pools.
        "backend": draw(
            st.sampled_from(["loky", "threading"] * 2 + ["multiprocessing"])
        ),
        # Mostly small chunks on two workers, so that the rows really are
        # split: one worker, or "auto" on small inputs, stays in-process.
        "n_jobs": 2,
        "chunk_size": draw(st.integers(0, 30).map(lambda n: n or "auto")),
    }


@pytest.mark.timeout(240)
@given(chaos())
def test_chaos_equals_serial_or_raises_its_error(scenario):
    estimator, X = scenario["estimator"], scenario["X"]
    engine = {k: scenario[k] for k in ("n_jobs", "backend", "chunk_size")}
    for method in [m for m in METHODS if hasattr(estimator, m)]:
        expected, error = serial_or_error(estimator, method, X)
        if scenario["entry"] == "ParallelPredictor":
            call = getattr(ParallelPredictor(estimator, **engine), method)
        else:
            call = functools.partial(
                parallel_predict, estimator, method=method, **engine
            )
        if error is None:
            assert_same_output(call(X), expected)
            continue
        # Chunks fail in any order: the call raises the error of the failing
        # chunk that ends first, the injected one or the estimator's own.
        _, own = serial_or_error(estimator.estimator_, method, X)
        errors = tuple({type(error)} | ({type(own)} if own else set()))
        with pytest.raises(errors) as raised:
            call(X)
        if isinstance(raised.value, ChunkError):
            assert str(raised.value).startswith("injected failure in a chunk")
