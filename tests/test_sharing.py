"""Shared arrays: each task's rows written once, as the task is sent."""

import gc
import os
import pickle
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.base import BaseEstimator

from sklearn_parpredict import _sharing
from sklearn_parpredict._sharing import (
    ModelHandle,
    PickledRows,
    SharedArray,
    _merge,
    _missing,
    live_tokens,
    nbytes,
    resolve,
)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(60.0).reshape(20, 3),
        np.asfortranarray(np.arange(60.0).reshape(20, 3)),
        np.arange(20, dtype=np.float32),
        np.arange(120, dtype=np.int16).reshape(20, 3, 2),
        np.arange(80.0).reshape(40, 2)[::2],
        np.arange(20).astype("datetime64[s]"),
    ],
    ids=["C", "F", "1-D float32", "3-D int16", "strided", "datetime"],
)
def test_pickled_rows_are_the_rows(array):
    shared = SharedArray(array)
    try:
        for start, stop in [(5, 9), (0, 20), (19, 20), (3, 3)]:
            rows = pickle.loads(pickle.dumps(shared.rows(start, stop)))
            assert rows.dtype == array.dtype
            np.testing.assert_array_equal(rows, array[start:stop])
            # In-process, the handle is the caller's own rows.
            assert np.shares_memory(resolve(shared.rows(start, stop)), array) or (
                start == stop
            )
    finally:
        shared.close()


def test_rows_sent_pickled_on_their_own_are_the_rows():
    import pandas as pd

    frame = pd.DataFrame({"a": np.arange(5.0), "b": list("vwxyz")}, index=range(5, 10))
    sent = pickle.loads(pickle.dumps(PickledRows(frame)))
    pd.testing.assert_frame_equal(sent, frame)
    # Rows plain pickle cannot take (a function defined here) go as cloudpickle
    # takes them; in-process, the handle is the rows themselves.
    rows = [lambda x: x + 1]
    assert pickle.loads(pickle.dumps(PickledRows(rows)))[0](1) == 2
    assert resolve(PickledRows(frame)) is frame


def test_rows_are_charged_their_pickling_once_per_kind_of_input(monkeypatch):
    import pandas as pd
    import scipy.sparse as sp

    pickled = []

    class Counted(PickledRows):
        def __reduce__(self):
            pickled.append(self.rows.shape[0])
            return super().__reduce__()

    monkeypatch.setattr(_sharing, "PickledRows", Counted)
    monkeypatch.setattr(_sharing, "_pickling_costs", type(_sharing._pickling_costs)())
    n = 3 * _sharing._PICKLING_SAMPLE_ROWS
    frame = pd.DataFrame({"a": np.arange(float(n)), "b": ["text"] * n})
    per_row = _sharing.pickling_per_row(frame)
    assert per_row > 0
    # Measured on the first rows, not all of them, and kept for later calls
    # on input of that kind, whatever its rows.
    assert pickled and set(pickled) == {_sharing._PICKLING_SAMPLE_ROWS}
    count = len(pickled)
    assert _sharing.pickling_per_row(frame.iloc[::-1]) == per_row
    assert len(pickled) == count
    # Other columns, dtypes or containers are another kind.
    for other in (
        frame[["a"]],
        frame.astype({"a": "float32"}),
        np.zeros((10, 3)),
        sp.random(10, 3, density=0.5, format="csr", random_state=0),
    ):
        assert _sharing.pickling_per_row(other) >= 0
        assert len(pickled) > count
        count = len(pickled)
    # What workers memory-map is not pickled, and costs nothing to send.
    large = np.zeros((_sharing.SHARE_MIN_BYTES // 8, 1))
    assert _sharing.shares(large) and not _sharing.shares(large.astype(object))
    assert _sharing.pickling_per_row(large) == 0.0
    assert len(pickled) == count
    # Rows no pickler takes cannot go to processes at any price, and are
    # measured again next time.
    locks = np.array([threading.Lock() for _ in range(4)], dtype=object)[:, None]
    kinds = len(_sharing._pickling_costs)
    assert _sharing.pickling_per_row(locks) == float("inf")
    assert len(_sharing._pickling_costs) == kinds

    # Input whose dtypes cannot be hashed is measured, and not remembered.
    class Unhashable:
        dtypes = [["float64"]]
        shape = (3, 1)

    assert _sharing._input_kind(Unhashable()) is None
    assert _sharing._input_kind(frame) is not None
    # Only so many kinds are kept.
    for columns in range(1, _sharing._PICKLING_KINDS + 2):
        _sharing.pickling_per_row(np.zeros((4, columns)))
    assert len(_sharing._pickling_costs) == _sharing._PICKLING_KINDS


def test_nbytes_counts_the_data_of_arrays_frames_and_sparse_matrices():
    import pandas as pd
    import scipy.sparse as sp

    array = np.zeros((100, 4))
    assert nbytes(array) == 3200
    assert nbytes(pd.DataFrame(array)) == 3200
    matrix = sp.random(100, 4, density=0.5, format="csr", random_state=0)
    assert nbytes(matrix) == (
        matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes
    )
    assert nbytes([[0.0] * 4] * 100) == 0


def test_rows_are_written_only_when_a_task_needs_them_and_only_once(monkeypatch):
    array = np.arange(300.0).reshape(100, 3)
    shared = SharedArray(array)
    copied = []
    original = np.ascontiguousarray

    def spy(a, *args, **kwargs):
        copied.append(len(a))
        return original(a, *args, **kwargs)

    monkeypatch.setattr(np, "ascontiguousarray", spy)
    try:
        pickle.dumps(shared.rows(0, 25))
        assert copied == [25]
        assert shared._written == [(0, 25)]
        # Overlapping ranges (several models' tasks on one X) write only the
        # rows not yet in the file.
        pickle.dumps(shared.rows(10, 60))
        pickle.dumps(shared.rows(0, 60))
        assert copied == [25, 35]
        assert shared._written == [(0, 60)]
        got = pickle.loads(pickle.dumps(shared.rows(50, 100)))
        assert copied == [25, 35, 40]
        np.testing.assert_array_equal(got, array[50:100])
    finally:
        shared.close()


ranges = st.lists(
    st.tuples(st.integers(0, 50), st.integers(0, 50)).map(sorted).map(tuple),
    max_size=6,
)


@given(written=ranges, query=st.tuples(st.integers(0, 50), st.integers(0, 50)))
def test_missing_is_what_the_written_ranges_do_not_cover(written, query):
    start, stop = sorted(query)
    merged = _merge(written)
    covered = {i for a, b in merged for i in range(a, b)}
    assert covered == {i for a, b in written for i in range(a, b)}
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(merged, merged[1:]))
    missing = list(_missing(merged, start, stop))
    assert {i for a, b in missing for i in range(a, b)} == (
        set(range(start, stop)) - covered
    )


def test_rows_of_a_closed_input_are_not_written_again():
    shared = SharedArray(np.ones((10, 2)))
    pickle.dumps(shared.rows(0, 5))
    shared.close()
    with pytest.raises(RuntimeError, match="has ended"):
        pickle.dumps(shared.rows(5, 10))
    assert shared._path is None


class _Bare(BaseEstimator):
    """A stand-in for a fitted model."""


def test_a_model_collected_while_the_live_tokens_are_listed_is_forgotten_later():
    # loky pickles tasks on a feeder thread: a garbage collection set off
    # there, inside the loop over the entries, runs the weakref callbacks of
    # dead models in the middle of that loop.
    doomed = [_Bare()]
    doomed_handle = ModelHandle(doomed[0])
    token, path = doomed_handle.token, doomed_handle._entry.path
    del doomed_handle  # the list holds the model's last reference
    kept = _Bare()
    kept_handle = ModelHandle(kept)

    class _DiesOnRead(_sharing._Entry):
        @property
        def token(self):
            doomed.clear()  # the model's weakref callback runs here
            return self.__dict__["token"]

    entry = kept_handle._entry
    entry.__class__ = _DiesOnRead
    try:
        assert kept_handle.token in live_tokens()
    finally:
        entry.__class__ = _sharing._Entry
    gc.collect()
    # The next call drops the dead model's entry and its file.
    assert live_tokens() >= {kept_handle.token}
    assert token not in live_tokens()
    assert not os.path.exists(path)


def test_a_stale_collection_notice_does_not_forget_a_newer_model_at_that_id():
    first = _Bare()
    key = id(first)
    old = ModelHandle(first)._entry
    # A collected model's id can be reused before the queue is drained.
    _sharing._collected.append((key, old))
    second = _Bare()
    _sharing._entries[key] = new = _sharing._Entry(None, None)
    try:
        _sharing._forget_collected()
        assert _sharing._entries.get(key) is new
        assert old.path is None
    finally:
        _sharing._forget(key)
        del first, second
