"""Rows sent to processes: shared arrays written once, as each task is sent;
other rows pickled on their own."""

import concurrent.futures
import os
import pickle
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_parpredict import _rows
from sklearn_parpredict._jobs import resolve
from sklearn_parpredict._rows import (
    PickledRows,
    SharedArray,
    _missing,
    nbytes,
)
from sklearn_parpredict._sharing import removed, temp_folder


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
            # A worker may write into its rows (an estimator scaling them in
            # place): they are its own copy, and the file keeps the input.
            rows[...] = rows[:1]
            again = pickle.loads(pickle.dumps(shared.rows(start, stop)))
            np.testing.assert_array_equal(again, array[start:stop])
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

    monkeypatch.setattr(_rows, "PickledRows", Counted)
    monkeypatch.setattr(_rows, "_pickling_costs", type(_rows._pickling_costs)())
    n = 3 * _rows._PICKLING_SAMPLE_ROWS
    frame = pd.DataFrame({"a": np.arange(float(n)), "b": ["text"] * n})
    per_row = _rows.pickling_per_row(frame)
    assert per_row > 0
    # Measured on the first rows, not all of them, and kept for later calls
    # on input of that kind, whatever its rows.
    assert pickled and set(pickled) == {_rows._PICKLING_SAMPLE_ROWS}
    count = len(pickled)
    assert _rows.pickling_per_row(frame.iloc[::-1]) == per_row
    assert len(pickled) == count
    # Other columns, dtypes or containers are another kind.
    for other in (
        frame[["a"]],
        frame.astype({"a": "float32"}),
        np.zeros((10, 3)),
        sp.random(10, 3, density=0.5, format="csr", random_state=0),
    ):
        assert _rows.pickling_per_row(other) >= 0
        assert len(pickled) > count
        count = len(pickled)
    # What workers memory-map is not pickled, and costs nothing to send.
    large = np.zeros((_rows.SHARE_MIN_BYTES // 8, 1))
    assert _rows.shares(large) and not _rows.shares(large.astype(object))
    assert _rows.pickling_per_row(large) == 0.0
    assert len(pickled) == count
    # Rows no pickler takes cannot go to processes at any price, and are
    # measured again next time.
    locks = np.array([threading.Lock() for _ in range(4)], dtype=object)[:, None]
    kinds = len(_rows._pickling_costs)
    assert _rows.pickling_per_row(locks) == float("inf")
    assert len(_rows._pickling_costs) == kinds

    # Input whose dtypes cannot be hashed is measured, and not remembered.
    class Unhashable:
        dtypes = [["float64"]]
        shape = (3, 1)

    assert _rows._input_kind(Unhashable()) is None
    assert _rows._input_kind(frame) is not None
    # Only so many kinds are kept.
    for columns in range(1, _rows._PICKLING_KINDS + 2):
        _rows.pickling_per_row(np.zeros((4, columns)))
    assert len(_rows._pickling_costs) == _rows._PICKLING_KINDS


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

    def written():
        return [piece[:2] for piece in shared._pieces]

    try:
        pickle.dumps(shared.rows(0, 25))
        assert copied == [25]
        assert written() == [(0, 25)]
        # Overlapping ranges (several models' tasks on one X) write only the
        # rows not yet in a file, and read the rows from the files that hold
        # them.
        assert_array_equal = np.testing.assert_array_equal
        assert_array_equal(
            pickle.loads(pickle.dumps(shared.rows(10, 60))), array[10:60]
        )
        assert_array_equal(pickle.loads(pickle.dumps(shared.rows(0, 60))), array[:60])
        assert copied == [25, 35]
        assert written() == [(0, 25), (25, 60)]
        # Written ahead of the tasks that read them, in the background.
        shared.write_ahead(50, 100)
        shared.rows(80, 90).write_ahead()
        got = pickle.loads(pickle.dumps(shared.rows(50, 100)))
        assert copied == [25, 35, 40]
        assert written() == [(0, 25), (25, 60), (60, 100)]
        assert_array_equal(got, array[50:100])
        assert len({piece[2] for piece in shared._pieces}) == 3
    finally:
        shared.close()


ranges = st.lists(st.tuples(st.integers(0, 50), st.integers(1, 10)), max_size=6)


@given(written=ranges, query=st.tuples(st.integers(0, 50), st.integers(0, 50)))
def test_missing_is_what_the_written_ranges_do_not_cover(written, query):
    # Sorted, disjoint ranges, some adjacent.
    merged, at = [], 0
    for gap, length in written:
        merged.append((at + gap, at + gap + length))
        at += gap + length
    start, stop = sorted(query)
    covered = {i for a, b in merged for i in range(a, b)}
    missing = list(_missing(merged, start, stop))
    assert {i for a, b in missing for i in range(a, b)} == (
        set(range(start, stop)) - covered
    )
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(missing, missing[1:]))


def test_rows_of_a_closed_input_are_not_written_again():
    shared = SharedArray(np.ones((10, 2)))
    pickle.dumps(shared.rows(0, 5))
    shared.close()
    with pytest.raises(RuntimeError, match="has ended"):
        pickle.dumps(shared.rows(5, 10))
    assert shared._pieces == []


def _spooled(obj, spool):
    """``obj`` pickled through ``spool``, and whether a file carried it."""
    loads, args = PickledRows(obj, spool).__reduce__()
    return loads(*args), loads is _rows._load_spooled


def test_large_pickled_rows_go_through_a_file_that_the_call_removes():
    import pandas as pd
    import scipy.sparse as sp

    n = 100_000
    frame = pd.DataFrame(
        {
            "x": np.arange(float(n)),
            "i": np.arange(n, dtype=np.int32),
            "s": np.array(["ab", "c", "def"] * (n // 3) + ["g"] * (n % 3)),
        },
        index=np.arange(n) * 2,
    )
    matrix = sp.random(n, 50, density=0.05, format="csr", random_state=0)
    spool = _rows.Spool()
    try:
        got, filed = _spooled(frame, spool)
        assert filed
        pd.testing.assert_frame_equal(got, frame)
        got, filed = _spooled(matrix, spool)
        assert filed
        assert (got != matrix).nnz == 0 and got.format == "csr"
        # The worker's rows are its own, aligned, and may be written to.
        got, _ = _spooled(np.arange(float(n))[::-1].copy(), spool)
        assert got.flags.aligned and got.flags.writeable
        got[:] = 0
        again, _ = _spooled(np.arange(float(n)), spool)
        np.testing.assert_array_equal(again, np.arange(float(n)))
        # Small rows go as bytes with their task.
        got, filed = _spooled(frame.iloc[:10], spool)
        assert not filed
        pd.testing.assert_frame_equal(got, frame.iloc[:10])
        paths = list(spool._paths)
        assert len(paths) == 4 and all(map(os.path.exists, paths))
    finally:
        spool.close()
    # Removed on another thread, outside the call's time.
    removed()
    assert not any(map(os.path.exists, paths))
    # A task still being sent after its call ended leaves no file behind.
    with pytest.raises(RuntimeError, match="has ended"):
        _spooled(frame, spool)
    assert spool._paths == []


@settings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from(["float64", "float32", "int8", "complex128", "bool", "U3"]),
    shape=st.tuples(st.integers(0, 300), st.integers(1, 40)),
    order=st.sampled_from("CF"),
    spooled=st.booleans(),
)
def test_rows_and_outputs_come_through_pickle_equal(dtype, shape, order, spooled):
    rng = np.random.default_rng(0)
    array = np.asarray(rng.integers(0, 100, shape), order=order).astype(dtype)
    spool = _rows.Spool()
    previous = _rows.SPOOL_MIN_BYTES
    _rows.SPOOL_MIN_BYTES = 0 if spooled else previous
    try:
        got = pickle.loads(pickle.dumps(PickledRows(array, spool)))
        returned = pickle.loads(pickle.dumps(_rows.Returned(array)))
    finally:
        _rows.SPOOL_MIN_BYTES = previous
        spool.close()
    for out in (got, returned):
        assert out.dtype == array.dtype and out.shape == array.shape
        np.testing.assert_array_equal(out, array)
        assert out.flags.aligned


def test_large_outputs_come_back_through_a_file_removed_once_read():
    import pandas as pd
    import scipy.sparse as sp

    outputs = [
        np.arange(100_000.0).reshape(-1, 4),
        pd.DataFrame({"a": np.arange(50_000.0), "b": np.arange(50_000)}),
        sp.random(50_000, 20, density=0.1, format="csr", random_state=0),
    ]
    before = set(os.listdir(temp_folder()))
    for output in outputs:
        returned = _rows.Returned(output)
        loads, args = returned.__reduce__()
        assert loads is _rows._load_returned
        path = args[0]
        assert os.path.exists(path)
        got = loads(*args)
        assert not os.path.exists(path)
        if sp.issparse(output):
            assert (got != output).nnz == 0
        elif isinstance(output, pd.DataFrame):
            pd.testing.assert_frame_equal(got, output)
        else:
            np.testing.assert_array_equal(got, output)
            # The caller may write into its output.
            got[:] = 0
        # In this process (a task run by the caller), the output itself.
        assert _rows.received(returned) is output
    assert set(os.listdir(temp_folder())) == before
    # Small outputs, or outputs of unknown size, go as loky sends them.
    for small in (np.zeros(10), [[1.0] * 4] * 100_000):
        loads, args = _rows.Returned(small).__reduce__()
        assert loads is _rows._identity and args[0] is small
    assert _rows.received(np.zeros(3)).shape == (3,)


def _data_files() -> set[str]:
    return {name for name in os.listdir(temp_folder()) if name.startswith("data-")}


# Which file a memory map maps is read from /proc (Linux); elsewhere the
# rows are copied, as any array's.
@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/map_files")
@pytest.mark.parametrize("mode", ["r", "r+", "w+"])
@pytest.mark.parametrize(
    "view",
    [
        lambda m: m,
        lambda m: m[7:],
        lambda m: np.asarray(m)[3:250],
        lambda m: m.reshape(-1, 3, 2)[1:],
    ],
    ids=["memmap", "rows", "plain array over it", "3-D"],
)
def test_workers_read_a_memory_mapped_input_from_the_callers_file(tmp_path, mode, view):
    path = tmp_path / "X.dat"
    values = np.arange(300 * 6, dtype=np.float32).reshape(300, 6)
    # At an offset that is not a multiple of the page.
    shape, offset = (299, 6), 24
    if mode == "w+":
        mapped = np.memmap(path, np.float32, mode, offset, shape)
        mapped[:] = values[1:]
    else:
        values.tofile(path)
        mapped = np.memmap(path, np.float32, mode, offset, shape)
    array = view(mapped)
    before = _data_files()
    shared = SharedArray(array)
    try:
        for start, stop in [(0, 5), (4, len(array)), (len(array) - 1, len(array))]:
            rows = pickle.loads(pickle.dumps(shared.rows(start, stop)))
            np.testing.assert_array_equal(rows, array[start:stop])
            assert rows.dtype == array.dtype and not np.shares_memory(rows, array)
            # The worker's rows are its own: the caller's file is unchanged.
            rows[...] = -1
        np.testing.assert_array_equal(
            np.fromfile(path, np.float32)[6:], values[1:].ravel()
        )
        assert _data_files() == before
    finally:
        shared.close()
    removed()
    assert path.exists()


def test_a_memory_map_that_workers_would_read_otherwise_is_copied(tmp_path):
    path = tmp_path / "X.dat"
    np.arange(600.0).tofile(path)
    replaced = np.memmap(path, mode="r", shape=(200, 3), dtype=np.float64)
    changed = np.memmap(path, mode="c", shape=(200, 3), dtype=np.float64)
    # Copy-on-write: the caller's changes are not in the file.
    changed[:10] = -1
    shared_memmap = np.memmap(path, mode="r", shape=(200, 3), dtype=np.float64)
    columns = shared_memmap[:, :2]
    # The caller still reads the file it mapped; the name now holds another.
    moved = tmp_path / "new.dat"
    np.zeros(600).tofile(moved)
    os.replace(moved, path)
    for array in (replaced, changed, columns):
        assert _rows.backing_file(array) is None
        shared = SharedArray(array)
        try:
            rows = pickle.loads(pickle.dumps(shared.rows(0, 20)))
            np.testing.assert_array_equal(rows, array[:20])
        finally:
            shared.close()
    assert _rows.backing_file(np.zeros((5, 2))) is None
    assert _rows.backing_file(np.memmap(path, mode="r", shape=(0, 3))) is None


def test_rows_written_ahead_of_a_call_that_ended_leave_no_file(monkeypatch):
    # A call that fails while its rows are still being written (or queued
    # for writing) closes its input: nothing may stay behind.
    started, release = threading.Event(), threading.Event()
    write = SharedArray._write

    def slow(self, start, stop, path):
        started.set()
        release.wait(10)
        write(self, start, stop, path)

    monkeypatch.setattr(SharedArray, "_write", slow)
    before = _data_files()
    shared = SharedArray(np.ones((1000, 4)))
    for start in range(0, 1000, 100):
        shared.write_ahead(start, start + 100)
    assert started.wait(10)
    paths = [piece[2] for piece in shared._pieces]
    writes = [piece[4] for piece in shared._pieces]
    shared.close()
    release.set()
    with pytest.raises(RuntimeError, match="has ended"):
        shared.write_ahead(0, 10)
    # Those not started never start; those running finish, and remove the
    # files they created after the call had removed what it knew of.
    concurrent.futures.wait(writes)
    assert any(write.cancelled() for write in writes)
    removed()
    assert not any(map(os.path.exists, paths))
    assert _data_files() == before
