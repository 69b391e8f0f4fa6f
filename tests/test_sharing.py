"""Shared arrays: each task's rows written once, as the task is sent."""

import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sklearn_parpredict._sharing import SharedArray, _merge, _missing, resolve


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
