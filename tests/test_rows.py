"""Dense rows that processes memory-map: written once, a range at a time,
as each task is sent; not written when the caller's array maps a file."""

import concurrent.futures
import multiprocessing
import os
import pickle
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sklearn_parpredict import _files, _rows
from sklearn_parpredict._files import removed, temp_folder
from sklearn_parpredict._jobs import resolve
from sklearn_parpredict._rows import SharedArray, _missing


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
            # Laid out as the caller's rows: a copy keeps the same order.
            laid_out = np.array(rows, order="K").flags
            assert laid_out == np.array(array[start:stop], order="K").flags
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


def test_rows_written_ahead_of_a_call_that_ended_leave_only_kept_files(monkeypatch):
    # A call that fails while its rows are still being written (or queued
    # for writing) closes its input: no file is created after that, and
    # those created are kept for the next call, once written, or removed.
    started, release = threading.Event(), threading.Event()
    write = SharedArray._write

    def slow(self, start, stop, path):
        started.set()
        release.wait(10)
        write(self, start, stop, path)

    monkeypatch.setattr(SharedArray, "_write", slow)
    _files.drop_kept()
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
    # Those not started never start; those running finish, and are kept.
    concurrent.futures.wait(writes)
    assert any(write.cancelled() for write in writes)
    written = [path for path, w in zip(paths, writes) if not w.cancelled()]
    assert set(_kept_paths()) == set(written)
    assert {os.path.basename(path) for path in written} == _data_files() - before
    _files.drop_kept()
    assert not any(map(os.path.exists, paths))
    assert _data_files() == before


def _kept_paths() -> list[str]:
    with _files._lock:
        return [entry[2] for entry in _files._own_kept()]


def _reuse_in_child():
    sys.exit(0 if _files.reused(1) is None else 1)


def test_the_next_call_writes_into_the_files_a_call_kept():
    _files.drop_kept()
    first = SharedArray(np.arange(40.0).reshape(10, 4))
    pickle.dumps(first.rows(0, 6))
    pickle.dumps(first.rows(6, 10))
    paths = {piece[2] for piece in first._pieces}
    first.close()
    assert set(_kept_paths()) == paths
    # Smaller rows go to the smallest kept file that holds them, over its
    # first bytes; what no kept file holds goes to a new one.
    second = SharedArray(-np.arange(40.0).reshape(5, 8))
    try:
        small = pickle.loads(pickle.dumps(second.rows(0, 1)))
        large = pickle.loads(pickle.dumps(second.rows(1, 5)))
        np.testing.assert_array_equal(small, -np.arange(8.0).reshape(1, 8))
        np.testing.assert_array_equal(large, -np.arange(8.0, 40.0).reshape(4, 8))
        used = [piece[2] for piece in second._pieces]
        assert used[0] in paths and used[1] not in paths
        assert os.path.getsize(used[0]) == 4 * 4 * 8  # the 4-row file, kept as is
    finally:
        second.close()
    # A forked child does not write into its parent's files.
    assert _kept_paths()
    child = multiprocessing.get_context("fork").Process(target=_reuse_in_child)
    child.start()
    child.join(30)
    assert child.exitcode == 0
    _files.drop_kept()
    assert not any(map(os.path.exists, paths | set(used)))


def test_kept_files_are_bounded_and_removed_after_a_while(monkeypatch):
    _files.drop_kept()
    folder = _files.temp_folder()
    paths = [os.path.join(folder, f"data-kept-{i}") for i in range(3)]
    for path, size in zip(paths, (100, 200, 300)):
        with open(path, "wb") as file:
            file.write(b"x" * size)
    monkeypatch.setattr(_files, "KEEP_BYTES", 350)
    monkeypatch.setattr(_files, "KEEP_S", 2.0)
    _files.keep(paths)
    _files.removed()
    # Beyond the bytes kept in all, files are removed at once.
    assert sorted(_kept_paths()) == paths[:2]
    assert not os.path.exists(paths[2])
    assert _files.reused(150) == paths[1]
    assert _files.reused(150) is None
    _files.keep([paths[1]])
    # A timer removes them (its first round may be due later than this).
    assert _files._sweeping
    _files._sweep()
    assert sorted(_kept_paths()) == paths[:2]
    time.sleep(2.1)
    _files._sweep()
    assert _kept_paths() == []
    assert not any(map(os.path.exists, paths))
