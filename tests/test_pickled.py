"""Rows and outputs pickled between processes: on their own, through a file
when they are large; and what a row costs to send."""

import math
import os
import pickle
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_parpredict import _nan, _pickled, _rows
from sklearn_parpredict._files import removed, temp_folder
from sklearn_parpredict._jobs import resolve
from sklearn_parpredict._pickled import PickledRows, nbytes


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


# np.nan itself and other NaNs: the others stay others (a text vectorizer
# raises another error for them).
_NANS = ["a", np.nan, "b", math.nan, float("nan"), np.nan]


@pytest.fixture(params=[False, True], ids=["inline", "spooled"])
def spooled(request, monkeypatch) -> bool:
    """Whether pickles go through a file (every one does) or not."""
    if request.param:
        monkeypatch.setattr(_pickled, "SPOOL_MIN_BYTES", 0)
    return request.param


def test_rows_holding_np_nan_itself_hold_it_again_once_sent(spooled):
    column = np.array(_NANS, object)
    table = np.asfortranarray(np.stack([column, column[::-1]], axis=1))
    spool = _pickled.Spool()
    try:
        # A tuple too: what ``texts, labels = zip(*pairs)`` gives.
        for rows in (column, table, column.tolist(), tuple(column)):
            sent, filed = _spooled(rows, spool)
            assert filed == spooled and type(sent) is type(rows)
            given, got = np.asarray(rows, object).flat, np.asarray(sent, object).flat
            assert [x is np.nan for x in got] == [x is np.nan for x in given]
            assert list(map(str, got)) == list(map(str, given))
    finally:
        spool.close()
    # A masked array's own assignment would store a copy of np.nan.
    masked = np.ma.masked_array(column, mask=[0, 0, 1, 0, 0, 0])
    sent = pickle.loads(pickle.dumps(PickledRows(masked)))
    assert [x is np.nan for x in sent.data] == [x is np.nan for x in column]
    # Rows without it go as they are.
    assert _nan.NanKept.around(column[[0, 2, 3]]).tolist() == ["a", "b", math.nan]
    assert type(_nan.NanKept.around(column[[0, 2, 3]])) is np.ndarray


def test_pandas_objects_holding_np_nan_itself_hold_it_again_once_sent(spooled):
    import pandas as pd

    # Columns of objects: pandas < 3's for text, ``read_csv(dtype=object)``'s.
    values = _NANS
    column = pd.Series(values, dtype=object, name="t")
    flipped = pd.Series(values[::-1], dtype=object)
    frame = pd.DataFrame({"t": column, "x": np.arange(6.0), "u": flipped})
    spool = _pickled.Spool()
    try:
        for rows in (
            column,
            frame,
            frame.iloc[1:5],
            frame["u"].iloc[2:],
            pd.Index(values, dtype=object),
            pd.array(np.array(values, dtype=object), dtype=object),
        ):
            sent, filed = _spooled(rows, spool)
            assert filed == spooled and type(sent) is type(rows)
            given, got = _items(rows), _items(sent)
            assert [x is np.nan for x in got] == [x is np.nan for x in given]
            assert list(map(str, got)) == list(map(str, given))
        pd.testing.assert_frame_equal(_spooled(frame, spool)[0], frame)
    finally:
        spool.close()


def _items(rows) -> list:
    """The objects ``rows`` hold, column after column."""
    if hasattr(rows, "columns"):
        return [item for name in rows.columns for item in rows[name]]
    return list(rows)


class _Unequal:
    """An item that cannot be compared: NumPy's comparison fails on it."""

    def __ne__(self, other):
        raise TypeError("no comparison")

    def __str__(self):
        return "unequal"


def test_outputs_holding_np_nan_itself_hold_it_again_once_returned(spooled):
    import pandas as pd

    values = _NANS
    column = np.array(values, object)
    outputs = [
        column,
        np.asfortranarray(np.stack([column, column[::-1]], axis=1)),
        values,
        pd.DataFrame({"t": pd.Series(values, dtype=object), "x": np.arange(6.0)}),
        # Items that are not a bool when compared (pd.NA), or cannot be
        # compared: every item is looked at.
        np.array([pd.NA, np.nan, "a", np.nan], object),
        np.array([_Unequal(), np.nan], object),
    ]
    for output in outputs:
        got = pickle.loads(pickle.dumps(_pickled.Returned(output)))
        assert type(got) is type(output)
        given, back = _objects(output), _objects(got)
        assert [x is np.nan for x in back] == [x is np.nan for x in given]
        assert list(map(str, back)) == list(map(str, given))
    # Every chunk's NaN is np.nan again: one NaN in a set, as serially.
    labels = np.array(["a", np.nan, "b", np.nan], object)
    chunks = [pickle.loads(pickle.dumps(_pickled.Returned(labels))) for _ in range(3)]
    assert len(set(np.concatenate(chunks))) == len(set(labels)) == 3


def _objects(rows) -> list:
    """The objects of an array (in C order), a list or a frame."""
    if isinstance(rows, np.ndarray):
        return list(rows.flat)
    return _items(rows)


def test_only_pandas_columns_of_objects_are_looked_into_for_np_nan(monkeypatch):
    import pandas as pd
    import scipy.sparse as sp

    text = pd.Series(["a", "b", np.nan], dtype="string")
    objects = pd.Series(["a", "b", np.nan], dtype=object)
    numeric = pd.DataFrame({"x": np.arange(3.0), "i": np.arange(3)})
    # Arrays, lists and tuples are looked into whole (see _NanKept); numbers
    # and pandas' own strings, which it restores np.nan in, not at all.
    for rows in (
        np.array(["a", np.nan], dtype=object),
        ["a", np.nan],
        ("a", np.nan),
        np.arange(3.0),
        sp.eye(3, format="csr"),
        numeric,
        numeric["x"],
        text,
        text.to_frame(),
        pd.Index([1, 2]),
        None,
    ):
        assert not _pickled.object_columns(rows)
    for rows in (
        objects,
        objects.to_frame().assign(x=1.0),
        pd.Index(objects),
        pd.array(objects.to_numpy(), dtype=object),
    ):
        assert _pickled.object_columns(rows)
    looked = []
    reduce = _pickled._reduce_array

    def reduce_array(array):
        looked.append(array.dtype)
        return reduce(array)

    monkeypatch.setattr(_pickled, "_reduce_array", reduce_array)
    pickle.loads(pickle.dumps(PickledRows(numeric.assign(s=text))))
    assert looked == []
    pickle.loads(pickle.dumps(PickledRows(numeric.assign(s=objects))))
    assert object in looked


def test_array_subclasses_keep_their_byte_order_once_sent():
    data = np.arange(6, dtype=">f4").reshape(3, 2)
    records = np.zeros(3, dtype=[("x", ">i4"), ("y", "<f8")]).view(np.recarray)
    records["x"] = [1, 2, 3]
    masked = np.ma.masked_array(data, mask=[[0, 1], [0, 0], [1, 0]])
    with pytest.warns(PendingDeprecationWarning):
        matrix = np.matrix(data)
    for rows in (matrix, masked, records, data):
        sent = pickle.loads(pickle.dumps(PickledRows(rows)))
        assert type(sent) is type(rows)
        assert sent.dtype == rows.dtype
        np.testing.assert_array_equal(np.asarray(sent), np.asarray(rows))
    np.testing.assert_array_equal(sent_mask(masked), masked.mask)


def sent_mask(masked):
    return pickle.loads(pickle.dumps(PickledRows(masked))).mask


def test_rows_are_charged_their_pickling_once_per_kind_of_input(monkeypatch):
    import pandas as pd
    import scipy.sparse as sp

    pickled = []

    spooled = []

    class Counted(PickledRows):
        def __reduce__(self):
            pickled.append(self.rows.shape[0])
            spooled.append(self.spool is not None)
            return super().__reduce__()

    monkeypatch.setattr(_pickled, "PickledRows", Counted)
    monkeypatch.setattr(_pickled, "_pickling_costs", type(_pickled._pickling_costs)())
    fewest, most = _pickled._PICKLING_SAMPLE_ROWS
    n = 3 * most
    frame = pd.DataFrame({"a": np.arange(float(n)), "b": ["text"] * n})
    per_row = _pickled.pickling_per_row(frame)
    assert per_row > 0
    # Measured on the first rows, not all of them, sent as a task's rows
    # are, and kept for later calls on input of that kind, whatever its rows.
    assert pickled and set(pickled) == {_pickled.sample_rows(frame)}
    assert all(spooled)
    count = len(pickled)
    assert _pickled.pickling_per_row(frame.iloc[::-1]) == per_row
    assert len(pickled) == count
    # Other columns, dtypes or containers are another kind.
    for other in (
        frame[["a"]],
        frame.astype({"a": "float32"}),
        np.zeros((10, 3)),
        sp.random(10, 3, density=0.5, format="csr", random_state=0),
    ):
        assert _pickled.pickling_per_row(other) >= 0
        assert len(pickled) > count
        count = len(pickled)
    # What workers memory-map is not pickled, and costs nothing to send.
    large = np.zeros((_rows.SHARE_MIN_BYTES // 8, 1))
    assert _rows.shares(large) and not _rows.shares(large.astype(object))
    assert _pickled.pickling_per_row(large) == 0.0
    assert len(pickled) == count
    # Rows no pickler takes cannot go to processes at any price, and are
    # measured again next time.
    locks = np.array([threading.Lock() for _ in range(4)], dtype=object)[:, None]
    kinds = len(_pickled._pickling_costs)
    assert _pickled.pickling_per_row(locks) == float("inf")
    assert len(_pickled._pickling_costs) == kinds

    # Input whose dtypes cannot be hashed is measured, and not remembered.
    class Unhashable:
        dtypes = [["float64"]]
        shape = (3, 1)

    assert _pickled._input_kind(Unhashable()) is None
    assert _pickled._input_kind(frame) is not None
    # Only so many kinds are kept.
    for columns in range(1, _pickled._PICKLING_KINDS + 2):
        _pickled.pickling_per_row(np.zeros((4, columns)))
    assert len(_pickled._pickling_costs) == _pickled._PICKLING_KINDS


def test_pickling_is_measured_on_enough_rows_to_outweigh_a_pickles_own_cost():
    import pandas as pd

    fewest, most = _pickled._PICKLING_SAMPLE_ROWS
    # A pickle's own cost (a DataFrame's columns and index) spread over too
    # few rows passed for rows 3 to 4 times dearer than a task's (see
    # _PICKLING_SAMPLE_BYTES): narrow rows are measured on more of them.
    narrow = pd.DataFrame({"a": np.zeros(10), "b": ["text"] * 10})
    assert _pickled.sample_rows(narrow) == most
    # Wide rows on fewer, so that measuring them stays cheap.
    assert _pickled.sample_rows(np.zeros((10, 100_000))) == fewest
    middle = np.zeros((10, _pickled._PICKLING_SAMPLE_BYTES // 8 // (2 * fewest)))
    assert fewest < _pickled.sample_rows(middle) < most
    # Rows of unknown size: the fewest.
    assert _pickled.sample_rows(np.zeros((0, 3))) == fewest


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
    # Their coordinates and offsets too.
    coo = matrix.tocoo()
    assert nbytes(coo) == coo.data.nbytes + coo.row.nbytes + coo.col.nbytes
    dia = matrix.todia()
    assert nbytes(dia) == dia.data.nbytes + dia.offsets.nbytes
    assert nbytes([[0.0] * 4] * 100) == 0


def test_nbytes_reads_no_deprecated_attribute():
    import warnings

    pa = pytest.importorskip("pyarrow")
    chunked = pa.chunked_array([np.arange(50.0), np.arange(50.0)])
    # Its ``data`` warns: once per task's output, from every worker.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nbytes(chunked) == 0
        _pickled.Returned(chunked).__reduce__()


def _spooled(obj, spool):
    """``obj`` pickled through ``spool``, and whether a file carried it."""
    loads, args = PickledRows(obj, spool).__reduce__()
    return loads(*args), loads is _pickled._load_spooled


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
    spool = _pickled.Spool()
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
    spool = _pickled.Spool()
    previous = _pickled.SPOOL_MIN_BYTES
    _pickled.SPOOL_MIN_BYTES = 0 if spooled else previous
    try:
        got = pickle.loads(pickle.dumps(PickledRows(array, spool)))
        returned = pickle.loads(pickle.dumps(_pickled.Returned(array)))
    finally:
        _pickled.SPOOL_MIN_BYTES = previous
        spool.close()
    for out in (got, returned):
        assert out.dtype == array.dtype and out.shape == array.shape
        np.testing.assert_array_equal(out, array)
        # A worker's rows are its own, as the caller's output is: estimators
        # write to them (KMeans's Cython on sparse input, a transformer that
        # edits its input in place).
        assert out.flags.aligned and out.flags.writeable


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
        returned = _pickled.Returned(output)
        loads, args = returned.__reduce__()
        assert loads is _pickled._load_returned
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
        assert _pickled.received(returned) is output
    assert set(os.listdir(temp_folder())) == before
    # Small outputs, or outputs of unknown size, go as loky sends them.
    for small in (np.zeros(10), [[1.0] * 4] * 100_000):
        loads, args = _pickled.Returned(small).__reduce__()
        assert loads is _pickled._identity and args[0] is small
    assert _pickled.received(np.zeros(3)).shape == (3,)


@pytest.mark.parametrize("keep_nan", [False, True])
def test_rows_pickled_by_cloudpickle_after_pickle_failed_load_as_they_were(keep_nan):
    import pandas as pd
    from _helpers import in_child

    # pickle leaves the numeric block out of band, then fails on the lambda;
    # cloudpickle's pickle must not be loaded with pickle's buffers.
    frame = pd.DataFrame({"x": np.arange(50_000.0), "y": np.arange(50_000.0)})
    frame["f"] = pd.Series([lambda v: v] * len(frame), dtype=object)

    def loads_back():
        parts = _pickled._dumps_out_of_band(frame, keep_nan)
        back = _pickled._loads(parts[0], parts[1:])
        return back[["x", "y"]].equals(frame[["x", "y"]]) and callable(back["f"][0])

    # In a child: the failure was a segmentation fault.
    assert in_child(loads_back) == 0


def test_outputs_a_worker_took_from_its_mapped_model_come_back_as_ndarrays(tmp_path):
    # A worker's model is mapped from its file, and what is taken from its
    # arrays is an np.memmap, where the caller's model gives an ndarray.
    import joblib

    joblib.dump({"classes": np.arange(3)}, tmp_path / "model")
    classes = joblib.load(tmp_path / "model", mmap_mode="c")["classes"]
    labels = classes.take(np.zeros(200_000, dtype=int))
    assert type(labels) is np.memmap and labels.nbytes >= _pickled.SPOOL_MIN_BYTES
    for output in (labels, [labels, labels[:10]], (labels,)):
        got = pickle.loads(pickle.dumps(_pickled.Returned(output)))
        items = got if isinstance(output, list | tuple) else [got]
        assert isinstance(output, np.memmap) or type(got) is type(output)
        assert all(type(item) is np.ndarray for item in items)
        np.testing.assert_array_equal(items[0], labels)
