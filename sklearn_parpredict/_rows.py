"""Rows sent to worker processes: dense arrays memory-mapped, written once
per call unless the caller's array already maps a file; other rows pickled
on their own, through a file when they are large; what a row costs to
send; and outputs sent back, through a file when they are large.

Like the models' handles (:mod:`._sharing`), a row handle used in the same
process is just the rows, and pickles for another process to what that
process loads.
"""

from __future__ import annotations

import math
import mmap
import os
import pickle
import threading
import time
import uuid
from collections import OrderedDict

import joblib
import numpy as np

from sklearn_parpredict import _chunking
from sklearn_parpredict._sharing import (
    background,
    cloudpickle,
    temp_folder,
    unlink,
    unlink_soon,
)

# Dense inputs from this size on are written once to a memory-mapped file
# rather than pickled chunk by chunk.
SHARE_MIN_BYTES = 1 << 20

# Threads writing shared rows at once: one per core the workers may use.
_WRITERS = joblib.cpu_count()

# Tasks are pickled on other threads (loky's feeder) while calls go on: the
# shared arrays' files and the pickling costs are changed under this lock.
_lock = threading.RLock()


class SharedArray:
    """A dense array that workers memory-map, written as tasks need its rows.

    Each row range that tasks read is written once, to a file of its own, on
    background threads, in the order the tasks are sent
    (:meth:`write_ahead`): each task is sent as soon as its rows are
    written, while later rows are being written, and several ranges are
    written at once. Writes into one file on tmpfs go one after the other
    (its inode's lock); into separate files they run in parallel: 80 MB in
    16 ranges took 34 ms on one thread, 21 ms on two (2 cores).

    An array that is already a memory map of a file (``np.load(path,
    mmap_mode="r")``, :class:`numpy.memmap`), which the caller reads as the
    file holds it, is not written at all: workers map the caller's file.
    """

    def __init__(self, array: np.ndarray):
        self.array = array
        self._closed = False
        self._row_bytes = array.itemsize * math.prod(array.shape[1:])
        backing = backing_file(array)
        self._owned = backing is None
        # Sorted, disjoint row ranges in files: (start, stop, path, byte at
        # which row ``start`` is in the file, the write's future or None).
        self._pieces: list[tuple] = []
        if backing is not None:
            self._pieces.append((0, len(array), *backing, None))

    def rows(self, start: int, stop: int) -> SharedRows:
        """A handle on rows ``start:stop`` for one task."""
        return SharedRows(self, start, stop)

    def write_ahead(self, start: int, stop: int) -> None:
        """Start writing the rows ``start:stop`` not in a file yet."""
        with _lock:
            if self._closed:
                # A task still being sent after its call failed: no file may
                # be created that nothing would remove.
                raise RuntimeError("the call that shared this input has ended")
            covered = [piece[:2] for piece in self._pieces]
            for a, b in list(_missing(covered, start, stop)):
                path = _temp_path("data")
                writers = background("write", _WRITERS)
                future = writers.submit(self._write, a, b, path)
                self._pieces.append((a, b, path, 0, future))
            self._pieces.sort(key=lambda piece: piece[0])

    def _write(self, start: int, stop: int, path: str) -> None:
        # C order, as a pickled chunk would be.
        rows = np.ascontiguousarray(self.array[start:stop])
        with open(path, "wb") as file:
            file.write(rows.reshape(-1).view(np.uint8))
        with _lock:
            if self._closed:  # closed while this was written: nothing reads it
                unlink(path)

    def _files(self, start: int, stop: int) -> list[tuple[str, int, int]]:
        """The files holding rows ``start:stop``, written: path, byte of
        the first row there, rows."""
        self.write_ahead(start, stop)
        with _lock:
            pieces = [p for p in self._pieces if p[0] < stop and p[1] > start]
        files = []
        for a, b, path, offset, future in pieces:
            if future is not None:
                future.result()
            first = max(a, start)
            offset += (first - a) * self._row_bytes
            files.append((path, offset, min(b, stop) - first))
        return files

    def close(self) -> None:
        # Workers that still map the files keep their pages; the names go
        # soon, outside the call's time. The caller's own file stays.
        with _lock:
            self._closed = True
            pieces, self._pieces = self._pieces, []
        for piece in pieces:
            if piece[4] is not None:
                piece[4].cancel()
        if self._owned:
            unlink_soon([piece[2] for piece in pieces])


def _missing(written: list[tuple[int, int]], start: int, stop: int):
    """The parts of ``[start, stop)`` not covered by ``written`` (sorted,
    disjoint ranges)."""
    for a, b in written:
        if b <= start or a >= stop:
            continue
        if a > start:
            yield start, a
        start = max(start, b)
    if start < stop:
        yield start, stop


class SharedRows:
    """Rows ``start:stop`` of a :class:`SharedArray`, as one task reads them."""

    def __init__(self, shared: SharedArray, start: int, stop: int):
        self.shared = shared
        self.start = start
        self.stop = stop

    def write_ahead(self) -> None:
        """Start writing these rows to their file, if need be."""
        self.shared.write_ahead(self.start, self.stop)

    def __reduce__(self):
        files = self.shared._files(self.start, self.stop)
        array = self.shared.array
        return _load_rows, (files, array.dtype, array.shape[1:])


def _load_rows(files: list, dtype: np.dtype, row_shape: tuple) -> np.ndarray:
    """The rows in ``files`` (path, byte of the first row, rows)."""
    parts = [
        _map_rows(path, offset, dtype, (n, *row_shape)) for path, offset, n in files
    ]
    if len(parts) == 1:
        return parts[0]
    # Ranges written for other tasks (another model's chunks of the same
    # input) hold these rows between them.
    return np.concatenate(parts) if parts else np.empty((0, *row_shape), dtype)


def _map_rows(path: str, offset: int, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """The C-ordered array of ``shape`` that starts ``offset`` bytes into
    the file at ``path``."""
    # A plain array over the file's pages, copied on write, not an
    # np.memmap: joblib sends a worker's output that is a view of an
    # np.memmap back as a reference to the file, whose pages still hold the
    # rows as written. StandardScaler(copy=False), which scales its input in
    # place and returns it, came back unscaled. Copied on write, a worker
    # never changes the caller's file either.
    size = dtype.itemsize * math.prod(shape)
    if size == 0:
        return np.empty(shape, dtype)
    # Only the task's rows are mapped, from the page they start in.
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    pages = _copied_pages(path, start, offset + size - start)
    return np.ndarray(shape, dtype, buffer=pages, offset=offset - start)


def _copied_pages(path: str, start: int = 0, length: int = 0) -> mmap.mmap:
    """``length`` bytes of the file at ``path`` from ``start`` (0: to its
    end), mapped copy-on-write: the process may write into what it maps, and
    the file keeps what was written to it."""
    with open(path, "rb") as file:
        return mmap.mmap(file.fileno(), length, access=mmap.ACCESS_COPY, offset=start)


def backing_file(array: np.ndarray) -> tuple[str, int] | None:
    """The file that holds ``array`` as the caller reads it, and the byte at
    which its first row starts there; None when another process could not
    read it there.

    That is a C-contiguous view of a :class:`numpy.memmap` in a mode whose
    writes reach the file (not ``"c"``, whose changes only the caller sees),
    mapped from the file that still has its name: one replaced or removed
    since would give workers other bytes than the caller's.
    """
    if not array.flags.c_contiguous or array.size == 0:
        return None
    base = array
    while not (isinstance(base, np.memmap) and isinstance(base.base, mmap.mmap)):
        base = getattr(base, "base", None)
        if not isinstance(base, np.ndarray):
            return None
    if base.mode == "c":
        return None
    path = _mapped_path(base)
    if path is None:
        return None
    start = base.__array_interface__["data"][0]
    offset = base.offset + array.__array_interface__["data"][0] - start
    try:
        # A file cut short since would fault the worker reading past it.
        if offset + array.nbytes > os.stat(path).st_size:
            return None
    except OSError:
        return None
    return path, offset


def _mapped_path(memmap: np.memmap) -> str | None:
    """Where the file that ``memmap`` maps is now, as the kernel names it
    (``/proc/self/map_files``, Linux); None where unknown, or when the file
    has been removed or replaced since (its name then ends in
    " (deleted)")."""
    granularity = mmap.ALLOCATIONGRANULARITY
    low = memmap.__array_interface__["data"][0] - memmap.offset % granularity
    high = low + -(-len(memmap.base) // mmap.PAGESIZE) * mmap.PAGESIZE
    try:
        # Read, not followed: following the link needs CAP_SYS_ADMIN.
        path = os.readlink(f"/proc/self/map_files/{low:x}-{high:x}")
    except OSError:
        return None
    if memmap.filename and os.path.realpath(memmap.filename) == path:
        return path
    return None


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
    parts = (getattr(X, name, None) for name in ("data", "indices", "indptr"))
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
            path = _temp_path("rows")
            self._paths.append(path)
            return path, _write_parts(path, parts)

    def close(self) -> None:
        # A worker maps its file before its task starts, and the call ends
        # after its tasks.
        with _lock:
            self._closed = True
            unlink_soon(self._paths)
            self._paths = []


def _temp_path(what: str) -> str:
    """A new file name in this process's temporary folder."""
    return os.path.join(temp_folder(), f"{what}-{uuid.uuid4().hex}")


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
    view = memoryview(_copied_pages(path))
    parts = [view[offset : offset + length] for offset, length in layout]
    return pickle.loads(parts[0], buffers=parts[1:])


def _dumps(obj, **kwargs) -> bytes:
    try:
        return pickle.dumps(obj, protocol=5, **kwargs)
    except (pickle.PicklingError, AttributeError, TypeError):
        # Objects holding functions or classes defined in a script.
        return cloudpickle.dumps(obj, protocol=5, **kwargs)


def _dumps_out_of_band(obj) -> list:
    """``obj`` pickled, then the buffers pickle protocol 5 left out of it."""
    buffers: list = []
    data = _dumps(obj, buffer_callback=buffers.append)
    return [data, *(buffer.raw() for buffer in buffers)]


def _loads(data: bytes, buffers: list = ()):
    return pickle.loads(data, buffers=buffers)


def _reduce_spooled(obj, write):
    """How to pickle ``obj``: as bytes when it is small, else in a file that
    ``write(parts)`` makes (its ``(path, layout)``)."""
    parts = _dumps_out_of_band(obj)
    if sum(memoryview(part).nbytes for part in parts) < SPOOL_MIN_BYTES:
        return _loads, (parts[0], [bytes(part) for part in parts[1:]])
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
    """

    def __init__(self, rows, spool: Spool | None = None):
        self.rows = rows
        self.spool = spool

    def __reduce__(self):
        if self.spool is None:
            return _loads, (_dumps(self.rows),)
        return _reduce_spooled(
            self.rows, lambda parts: (_load_spooled, self.spool.write(parts))
        )


class Returned:
    """A task's output on its way back from a worker process: through a
    file when it is large, which the caller removes once it has mapped it.

    Through loky's pipe, a 2-process transform of 200,000 rows into 100
    features (160 MB) took 0.70 s against 0.24 s serially (2 cores).
    """

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        if nbytes(self.value) < SPOOL_MIN_BYTES:
            # Small, or of a kind whose size is unknown: as loky would.
            return _identity, (self.value,)
        return _reduce_spooled(self.value, _spool_returned)


def _spool_returned(parts: list):
    path = _temp_path("out")
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


def received(output):
    """A task's output as the caller gets it: a :class:`Returned` that was
    not pickled (the task ran in this process) is unwrapped."""
    return output.value if isinstance(output, Returned) else output


def shares(X) -> bool:
    """Whether processes memory-map ``X`` (a :class:`SharedArray`) rather
    than get its rows pickled with their tasks."""
    # Subclasses (np.matrix, masked arrays) go pickled, as they are: written
    # to a file, a worker would read a plain array.
    return (
        type(X) in (np.ndarray, np.memmap)
        and not X.dtype.hasobject
        and X.nbytes >= SHARE_MIN_BYTES
    )


# Rows pickled to measure what a row costs to send to a process, and how
# many kinds of input (type, dtypes, columns) the measurements are kept for.
_PICKLING_SAMPLE_ROWS = 2_000
_PICKLING_KINDS = 32
_pickling_costs: OrderedDict = OrderedDict()


def _input_kind(X) -> tuple | None:
    """What the cost of pickling ``X``'s rows is remembered by; None where
    it cannot be (dtypes that cannot be hashed)."""
    dtypes = getattr(X, "dtypes", None)
    if dtypes is not None:  # a DataFrame
        dtypes = tuple(dtypes)
    else:
        dtypes = str(getattr(X, "dtype", None))
    kind = type(X), dtypes, getattr(X, "shape", (0,))[1:]
    try:
        hash(kind)
    except TypeError:
        return None
    return kind


def pickling_per_row(X) -> float:
    """Seconds a row of ``X`` costs to send to a process: pickled in this
    process (one core, while the workers wait for their tasks) and
    unpickled in the worker; 0 for input the workers memory-map, infinite
    for rows that cannot be pickled.

    Measured once per kind of input on its first rows: a plan on processes
    must charge it up front. A pipeline on 100,000 DataFrame rows with three
    text columns, predicted 0.066 s on 2 processes against 0.09 s serially,
    took 0.09 s to 0.12 s, 22 ms of which pickling its rows (2 cores).
    """
    if shares(X):
        return 0.0
    kind = _input_kind(X)
    with _lock:
        known = _pickling_costs.get(kind)
        if known is not None:
            _pickling_costs.move_to_end(kind)
            return known
    rows = min(_chunking.n_rows(X), _PICKLING_SAMPLE_ROWS)
    sample = _chunking.row_slice(X, 0, rows)
    best = float("inf")
    # The best of two: the first pickling of a kind pays for imports and
    # caches that later ones do not.
    for _ in range(2):
        start = time.perf_counter()
        try:
            loads, (data,) = PickledRows(sample).__reduce__()
            loads(data)
        except Exception:
            # Rows no pickler takes (objects holding locks, open files) can
            # still run in this process, or on threads; not remembered, as
            # other rows of this kind may pickle.
            return float("inf")
        best = min(best, time.perf_counter() - start)
    per_row = best / max(rows, 1)
    if kind is None:
        return per_row
    with _lock:
        _pickling_costs[kind] = per_row
        while len(_pickling_costs) > _PICKLING_KINDS:
            _pickling_costs.popitem(last=False)
    return per_row
