"""Rows and outputs that go between processes pickled: a task's rows
pickled on their own, through a file when they are large; a task's output
sent back, through a file when it is large; and what a row costs to send.

Dense arrays that workers can memory-map go by :mod:`._rows` instead.
"""

from __future__ import annotations

import copyreg
import functools
import io
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from sklearn_parpredict import _chunking, _sparse
from sklearn_parpredict._files import copied_pages, temp_path, unlink, unlink_soon
from sklearn_parpredict._locks import fork_safe
from sklearn_parpredict._nan import NanKept
from sklearn_parpredict._nan import reduce_array as _reduce_array
from sklearn_parpredict._rows import laid_out, shares
from sklearn_parpredict._sharing import cloudpickle

# Tasks are pickled on other threads (loky's feeder) while calls go on: the
# spools' files and the pickling costs are changed under this lock.
_lock = fork_safe(globals(), "_lock", threading.RLock)


def nbytes(X) -> int:
    """The bytes of ``X``'s data (0 when unknown): NumPy arrays, DataFrames
    without their objects' contents, sparse matrices."""
    if isinstance(X, np.ndarray):
        return X.nbytes
    usage = getattr(X, "memory_usage", None)
    if callable(usage):
        try:
            return int(np.sum(usage(index=False)))
        except Exception:  # a dataframe of another kind
            return 0
    if not sp.issparse(X):
        # Elsewhere ``data`` may mean anything: a pyarrow ChunkedArray warns,
        # on every call, that reading it is deprecated.
        return 0
    # Every format's index arrays: a COO's coordinates weigh more than its
    # values, where only the values were counted.
    parts = (getattr(X, name, None) for name in ("data", *_sparse.INDEXES))
    return sum(part.nbytes for part in parts if isinstance(part, np.ndarray))


# Pickled rows and outputs from this size on go between processes through
# a file rather than through loky's pipe (see Spool). An output sent back by
# a warm worker took, through the pipe and through a file: 512 KiB 1.05 ms
# and 1.47 ms, 640 KiB 1.59 ms and 1.51 ms, 768 KiB 3.57 ms and 1.29 ms
# (2 cores).
SPOOL_MIN_BYTES = 640 << 10
# Where each part of a spooled pickle starts in its file: numpy arrays and
# Arrow buffers rebuilt over the file's pages stay aligned.
_ALIGN = 64


class Spool:
    """Files holding one call's pickled rows, removed when the call ends.

    loky sends a task through a pipe that the worker reads as the parent
    writes it, one task after the other: 50,000 DataFrame rows (3.5 MB
    pickled) took 10 ms to reach a warm worker that way, two such tasks
    19 ms, when pickling them took 1.2 ms and unpickling 0.4 ms (2 cores).
    A file on shared memory is written at the speed of memory. The rows'
    arrays (a DataFrame's blocks, Arrow string buffers, a sparse matrix's
    data) go into it straight from the caller's memory, as pickle protocol
    5 hands them over out of band, and the worker rebuilds them over the
    file's pages, copied on write.
    """

    def __init__(self):
        self._paths: list[str] = []
        self._closed = False

    def write(self, parts: list) -> tuple[str, list[tuple[int, int]]]:
        """A new file holding the bytes-like ``parts``: its path, and where
        each part lies in it."""
        with _lock:
            if self._closed:
                # As for SharedArray: no file that nothing would remove.
                raise RuntimeError("the call that spooled these rows has ended")
            path = temp_path("rows")
            self._paths.append(path)
            return path, _write_parts(path, parts)

    def close(self) -> None:
        # A worker maps its file before its task starts, and the call ends
        # after its tasks.
        with _lock:
            self._closed = True
            unlink_soon(self._paths)
            self._paths = []


def _write_parts(path: str, parts: list) -> list[tuple[int, int]]:
    """Write ``parts`` to a new file at ``path``, each aligned; their
    ``(offset, length)``."""
    layout = []
    with open(path, "wb") as file:
        for part in parts:
            offset = -(-file.tell() // _ALIGN) * _ALIGN
            file.seek(offset)
            layout.append((offset, file.write(part)))
    return layout


def _load_spooled(path: str, layout: list[tuple[int, int]]):
    """What was spooled to ``path`` as ``layout``: a pickle and its
    out-of-band buffers, rebuilt over the file's pages.

    The pages are mapped copied on write (as a shared array's rows are):
    an estimator may write into its rows, and the caller into an output.
    """
    view = memoryview(copied_pages(path))
    parts = [view[offset : offset + length] for offset, length in layout]
    return pickle.loads(parts[0], buffers=parts[1:])


def _dumps(obj, keep_nan: bool = False, buffers: list | None = None) -> bytes:
    """``obj`` pickled, by cloudpickle where pickle fails; where ``keep_nan``,
    by picklers that keep ``np.nan`` in its arrays of objects (see
    :class:`_NanKeeping`); with ``buffers``, the buffers protocol 5 leaves
    out of it appended there."""
    dumps, fallback = _NAN_KEEPING_DUMPS if keep_nan else _DUMPS
    kwargs: dict = {} if buffers is None else {"buffer_callback": buffers.append}
    try:
        return dumps(obj, protocol=5, **kwargs)
    except (pickle.PicklingError, AttributeError, TypeError):
        # Objects holding functions or classes defined in a script. The
        # buffers pickle left out before it failed are not cloudpickle's:
        # kept, they were read in place of its own, and loading the rows
        # crashed the process (a segmentation fault).
        if buffers is not None:
            buffers.clear()
        return fallback(obj, protocol=5, **kwargs)


def _dumps_out_of_band(obj, keep_nan: bool = False) -> list:
    """``obj`` pickled (as :func:`_dumps` does), then the buffers pickle
    protocol 5 left out of it."""
    buffers: list = []
    data = _dumps(obj, keep_nan, buffers)
    return [data, *(buffer.raw() for buffer in buffers)]


def _loads(data: bytes, buffers: Sequence = ()):
    return pickle.loads(data, buffers=buffers)


def _reduce_spooled(obj, write, keep_nan: bool = False):
    """How to pickle ``obj`` (as :func:`_dumps` does): as bytes when it is
    small, else in a file that ``write(parts)`` makes (its ``(path,
    layout)``)."""
    parts = _dumps_out_of_band(obj, keep_nan)
    if sum(memoryview(part).nbytes for part in parts) < SPOOL_MIN_BYTES:
        return _loads, (parts[0], [bytearray(part) for part in parts[1:]])
    return write(parts)


class PickledRows:
    """Rows for a process, pickled on their own and sent as ``bytes``, or
    in a file of the call's :class:`Spool` when they are large.

    joblib's pickler writes every array over 1 MB that it finds in a task
    (the blocks of a DataFrame, the data of a sparse matrix) to a file in
    the call's temporary folder. At the end of the call it removes that
    folder, and waits 0.1 s when loky's resource tracker has not yet removed
    the files. A pipeline on 100,000 DataFrame rows on 2 processes took
    150 ms instead of 40 ms. Pickled here, the rows hold no array for
    joblib to write. They are pickled when their task is, so the first
    task can start while the later ones are still being pickled.

    ``objects`` says whether the rows have columns of objects (see
    :func:`object_columns`), where the caller knows it of all the chunks of
    an input; None: the rows are looked at.
    """

    def __init__(self, rows, spool: Spool | None = None, objects: bool | None = None):
        self.rows = rows
        self.spool = spool
        self.objects = objects

    def __reduce__(self):
        rows = NanKept.around(_ByteOrderKept.around(laid_out(self.rows)))
        objects = self.objects
        if objects is None:
            objects = object_columns(self.rows)
        if self.spool is None:
            return _loads, (_dumps(rows, objects),)
        return _reduce_spooled(
            rows, lambda parts: (_load_spooled, self.spool.write(parts)), objects
        )


class _ByteOrderKept:
    """An array subclass (a memmap, a masked array, a matrix) of a byte
    order other than the machine's, pickled so that it keeps it.

    NumPy pickles such arrays in the machine's order: ``>f4`` rows arrived
    as ``float32``, which scikit-learn keeps, where it converts ``>f4`` to
    ``float64`` in the serial call (a scaler's output 7e-7 apart, in another
    dtype). Their bytes go as they are, read in the machine's order, and
    are read in theirs again once unpickled.
    """

    def __init__(self, rows):
        self.rows = rows

    @classmethod
    def around(cls, rows):
        """``rows`` as they are, or wrapped when NumPy would lose their order."""
        if (
            isinstance(rows, np.ndarray)
            and type(rows) is not np.ndarray
            and not rows.dtype.isnative
        ):
            return cls(rows)
        return rows

    def __reduce__(self):
        dtype = self.rows.dtype
        return _viewed_as, (self.rows.view(dtype.newbyteorder("=")), dtype)


def _viewed_as(rows, dtype):
    return rows.view(dtype)


_OBJECTS = np.dtype(object)


def object_columns(X) -> bool:
    """Whether ``X`` is pandas' (a DataFrame, a Series, an Index, an array)
    with a column of objects, which pandas pickles as a NumPy array of
    objects (see :class:`_NanKeeping`). NumPy arrays, lists and tuples are
    wrapped whole instead (see :class:`._nan.NanKept`)."""
    if isinstance(X, np.ndarray):
        return False
    dtypes = getattr(X, "dtypes", None)
    if dtypes is None or getattr(X, "ndim", 2) == 1:
        # A Series' dtypes is its one dtype; an Index and an array have none.
        dtypes = [getattr(X, "dtype", None)]
    # A pandas array of objects is typed as one, its NumPy dtype within.
    return any(getattr(dtype, "numpy_dtype", dtype) == _OBJECTS for dtype in dtypes)


class _NanKeeping:
    """A pickler that pickles the NumPy arrays it meets (the blocks of a
    DataFrame, the values of a Series or an Index) with
    :func:`._nan.reduce_array`, so that those that hold ``np.nan`` itself do again
    once unpickled; pandas rebuilds its objects around them.

    Only pandas' rows with a column of objects are pickled this way (see
    :func:`object_columns`): looking for ``np.nan`` in an array of short
    strings takes a third as long as pickling it.
    """

    # The table of the pickler this is mixed into.
    table: ClassVar[Mapping]

    @property
    def dispatch_table(self) -> dict:
        # A dict, made as the pickler starts (copyreg's entries as they are
        # then): the C pickler looks types up in another mapping through
        # Python. A 500-row DataFrame with a column of objects pickled in
        # 0.19 ms through a ChainMap, 0.10 ms through a dict (2 cores).
        return {**self.table, np.ndarray: _reduce_array}


# A property where typeshed has an attribute: read once, as the pickler starts.
class _NanKeepingPickler(_NanKeeping, pickle.Pickler):  # type: ignore[misc]
    table = copyreg.dispatch_table


class _NanKeepingCloudPickler(_NanKeeping, cloudpickle.Pickler):
    table = cloudpickle.Pickler.dispatch_table


def _dumped_by(pickler, obj, **kwargs) -> bytes:
    """``obj`` pickled by ``pickler`` (a class), as ``pickle.dumps`` does."""
    file = io.BytesIO()
    pickler(file, **kwargs).dump(obj)
    return file.getvalue()


# What _dumps pickles with, and falls back to: functions as ``pickle.dumps``.
_DUMPS = pickle.dumps, cloudpickle.dumps
_NAN_KEEPING_DUMPS = (
    functools.partial(_dumped_by, _NanKeepingPickler),
    functools.partial(_dumped_by, _NanKeepingCloudPickler),
)


class Returned:
    """A task's output on its way back from a worker process: through a
    file when it is large, which the caller removes once it has mapped it.

    Through loky's pipe, a 2-process transform of 200,000 rows into 100
    features (160 MB) took 0.70 s against 0.24 s serially (2 cores).

    Objects that are ``np.nan`` itself are ``np.nan`` itself again in the
    caller, as rows sent to a worker are (see :class:`._nan.NanKept`): pickled
    as another NaN, ``OrdinalEncoder.inverse_transform``'s missing values
    were not ``np.nan``, and a ``set`` of its column held every missing value apart
    where the serial call's holds one.
    """

    def __init__(self, value):
        self.value = _unmapped(value)

    def __reduce__(self):
        value = NanKept.around(self.value)
        objects = object_columns(self.value)
        if nbytes(self.value) < SPOOL_MIN_BYTES:
            # Small, or of a kind whose size is unknown: as loky would.
            if objects:
                return _loads, (_dumps(value, keep_nan=True),)
            return _identity, (value,)
        return _reduce_spooled(value, _spool_returned, objects)


def _unmapped(value):
    """A worker's output as the caller's own model would have returned it.

    A worker maps its model's arrays from their file (np.memmap, see
    :func:`._sharing._load_model`), and what an estimator takes from them
    is an np.memmap too (a forest's ``classes_.take(...)``), where the
    caller's model gives an ndarray. joblib sends small ones back as
    ndarrays; spooled, they came back as np.memmap, beside the rows probed
    in-process, and the call ran again in-process, its estimator never
    split again: a second forest's first call on a warm pool took 1.03 s
    against 0.63 s serially, and its later calls 0.64 s where the pool
    gave 0.35 s (2 cores). Arrays as such, and in a list or tuple of arrays
    (one per output), are viewed as ndarrays; nothing is copied, and other
    lists (one item per row) are left as they are.
    """
    if isinstance(value, np.memmap):
        return value.view(np.ndarray)
    if (
        type(value) in (list, tuple)
        and value
        and isinstance(value[0], np.ndarray)
        and any(isinstance(item, np.memmap) for item in value)
    ):
        return type(value)(_unmapped(item) for item in value)
    return value


def _spool_returned(parts: list):
    path = temp_path("out")
    try:
        layout = _write_parts(path, parts)
    except BaseException:
        unlink(path)
        raise
    return _load_returned, (path, layout)


def _load_returned(path: str, layout: list[tuple[int, int]]):
    try:
        return _load_spooled(path, layout)
    finally:
        # The mapping keeps the pages; the name goes.
        unlink(path)


def _identity(value):
    return value


class KeptWhole:
    """An object on its way back from a worker process (a model fitted
    there), pickled whole by a pickler that keeps ``np.nan`` itself in its
    arrays of objects (see :class:`_NanKeeping`)."""

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return _loads, (_dumps(self.value, keep_nan=True),)


def received(output):
    """A task's output as the caller gets it: a :class:`Returned` or a
    :class:`KeptWhole` that was not pickled (the task ran in this process)
    is unwrapped."""
    return output.value if isinstance(output, Returned | KeptWhole) else output


# Rows pickled to measure what a row costs to send to a process: about
# this many bytes of them, within these bounds. A pickle costs what its
# columns and index cost whatever its rows (0.3 ms for a DataFrame of 7
# columns), and its rows cost more per row once they are too many for the
# caches: the same frame's rows took 3.2e-7 s each sent 1,000 at a time,
# 4.6e-8 s 8,000 at a time, 6.5e-8 s 20,000 and 5.4e-8 s 50,000 at a time
# (spooled; 2 cores). Measured on 2,000 rows, a pipeline's 100,000 rows
# were charged 22 ms to send, ran in-process at 1.0x of serial, and took
# 0.066 s on 2 processes against 0.10 s serially.
_PICKLING_SAMPLE_BYTES = 2 << 20
_PICKLING_SAMPLE_ROWS = (2_000, 20_000)
# A measurement this long is not repeated.
_PICKLING_ENOUGH_S = 0.01
# How many kinds of input (type, dtypes, columns) the measurements are kept
# for.
_PICKLING_KINDS = 32
_pickling_costs: OrderedDict = OrderedDict()


def _input_kind(X) -> tuple | None:
    """What the cost of pickling ``X``'s rows is remembered by; None where
    it cannot be (dtypes that cannot be hashed)."""
    dtypes = getattr(X, "dtypes", None)
    if dtypes is not None and getattr(X, "ndim", 2) != 1:  # a DataFrame
        dtypes = tuple(dtypes)
    else:
        # A Series' dtypes is its one dtype.
        dtypes = str(getattr(X, "dtype", None))
    kind = type(X), dtypes, getattr(X, "shape", (0,))[1:]
    try:
        hash(kind)
    except TypeError:
        return None
    return kind


def sample_rows(X) -> int:
    """How many rows of ``X`` to pickle to measure what a row costs to send:
    about ``_PICKLING_SAMPLE_BYTES`` of them, within ``_PICKLING_SAMPLE_ROWS``
    (the bytes of objects a column points to are not counted)."""
    fewest, most = _PICKLING_SAMPLE_ROWS
    per_row = nbytes(X) / max(_chunking.n_rows(X), 1)
    if per_row <= 0:
        return fewest
    return int(min(max(_PICKLING_SAMPLE_BYTES / per_row, fewest), most))


def pickling_per_row(X) -> float:
    """Seconds a row of ``X`` costs to send to a process: pickled in this
    process (one core, while the workers wait for their tasks) and
    unpickled in the worker; 0 for input the workers memory-map, infinite
    for rows that cannot be pickled.

    Measured once per kind of input on its first rows, sent as a task's
    rows are (through a file when they are large): a plan on processes must
    charge it up front. A pipeline on 100,000 DataFrame rows with three text
    columns, predicted 0.066 s on 2 processes against 0.09 s serially, took
    0.09 s to 0.12 s, 22 ms of which pickling its rows (2 cores).
    """
    if shares(X):
        return 0.0
    kind = _input_kind(X)
    with _lock:
        known = _pickling_costs.get(kind)
        if known is not None:
            _pickling_costs.move_to_end(kind)
            return known
    rows = min(_chunking.n_rows(X), sample_rows(X))
    sample = _chunking.row_slice(X, 0, rows)
    best = float("inf")
    spool = Spool()
    try:
        # The best of two: the first pickling of a kind pays for imports and
        # caches that later ones do not, a share of a long one's time that
        # does not pay for a second (objects' bytes are not counted in the
        # sample's size: 20,000 documents of 1 KB pickle to 20 MB).
        for _ in range(2):
            start = time.perf_counter()
            try:
                loads, args = PickledRows(sample, spool).__reduce__()
                loads(*args)
            except Exception:
                # Rows no pickler takes (objects holding locks, open files)
                # can still run in this process, or on threads; not
                # remembered, as other rows of this kind may pickle.
                return float("inf")
            best = min(best, time.perf_counter() - start)
            if best >= _PICKLING_ENOUGH_S:
                break
    finally:
        spool.close()
    per_row = best / max(rows, 1)
    if kind is None:
        return per_row
    with _lock:
        _pickling_costs[kind] = per_row
        while len(_pickling_costs) > _PICKLING_KINDS:
            _pickling_costs.popitem(last=False)
    return per_row
