"""Dense rows that worker processes memory-map: written to files once per
call, a row range at a time, as tasks are sent, into files that earlier
calls kept where they can; not written at all when the caller's array
already maps a file.

Like the models' handles (:mod:`._sharing`), a row handle used in the same
process is just the rows, and pickles for another process to what that
process maps. Other rows travel pickled (:mod:`._pickled`).
"""

from __future__ import annotations

import math
import mmap
import os
import threading
from typing import Any, Literal, cast

import numpy as np

from sklearn_parpredict._costs import CORES
from sklearn_parpredict._files import (
    background,
    copied_pages,
    keep,
    reused,
    temp_path,
)
from sklearn_parpredict._locks import fork_safe

Order = Literal["C", "F"]

# Dense inputs from this size on are written once to a memory-mapped file
# rather than pickled chunk by chunk.
SHARE_MIN_BYTES = 1 << 20

# Threads writing shared rows at once: one per core the workers may use.
_WRITERS = CORES

# Tasks are pickled on other threads (loky's feeder) while calls go on, and
# rows are written on background threads: the files of the shared arrays are
# changed under this lock.
_lock = fork_safe(globals(), "_lock", threading.RLock)


class SharedArray:
    """A dense array that workers memory-map, written as tasks need its rows.

    Each row range that tasks read is written once, to a file of its own
    (one that an earlier call kept, where one is large enough), on
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
        self._order = copied_order(array)
        backing = backing_file(array)
        # Whether the call writes the files, rather than map the caller's.
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
                # Into a file an earlier call kept, where one is large enough.
                path = reused((b - a) * self._row_bytes) or temp_path("data")
                writers = background("write", _WRITERS)
                future = writers.submit(self._write, a, b, path)
                self._pieces.append((a, b, path, 0, future))
            self._pieces.sort(key=lambda piece: piece[0])

    def _write(self, start: int, stop: int, path: str) -> None:
        # In the order a copy of the rows keeps (see copied_order); over a
        # kept file's first bytes, which it keeps.
        laid_out = np.asfortranarray if self._order == "F" else np.ascontiguousarray
        rows = laid_out(self.array[start:stop])
        with open(path, "r+b" if os.path.exists(path) else "wb") as file:
            file.write(rows.ravel(order="K").view(np.uint8).data)

    def _files(self, start: int, stop: int) -> list[tuple]:
        """The files holding rows ``start:stop``, written: path, byte of
        the first row of the range of rows mapped there, the rows of that
        range, and where in it and how many of them are wanted."""
        self.write_ahead(start, stop)
        with _lock:
            pieces = [p for p in self._pieces if p[0] < stop and p[1] > start]
        files = []
        for a, b, path, offset, future in pieces:
            if future is not None:
                future.result()
            first, n = max(a, start), min(b, stop) - max(a, start)
            if self._order == "C":
                # Only the rows wanted, which lie together.
                offset += (first - a) * self._row_bytes
                files.append((path, offset, n, 0, n))
            else:
                # A column's rows lie together: the whole range is mapped.
                files.append((path, offset, b - a, first - a, n))
        return files

    def close(self) -> None:
        # The call's tasks have ended: its files are kept for the next call
        # to write into, each once no write into it is running (a file whose
        # write never started is kept as it was, if it exists). The caller's
        # own file stays as it is.
        with _lock:
            self._closed = True
            pieces, self._pieces = self._pieces, []
        if not self._owned:
            return
        for piece in pieces:
            path, future = piece[2], piece[4]
            if future.cancel():
                keep([path])
            else:
                future.add_done_callback(lambda _, path=path: keep([path]))


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
        return _load_rows, (files, array.dtype, array.shape[1:], self.shared._order)


def _load_rows(
    files: list, dtype: np.dtype, row_shape: tuple, order: Order = "C"
) -> np.ndarray:
    """The rows in ``files`` (see :meth:`SharedArray._files`), laid out in
    ``order``."""
    parts = [
        _map_rows(path, offset, dtype, (mapped, *row_shape), order)[first:][:n]
        for path, offset, mapped, first, n in files
    ]
    if len(parts) == 1:
        return parts[0]
    # Ranges written for other tasks (another model's chunks of the same
    # input) hold these rows between them.
    return np.concatenate(parts) if parts else np.empty((0, *row_shape), dtype)


def _map_rows(
    path: str, offset: int, dtype: np.dtype, shape: tuple, order: Order = "C"
) -> np.ndarray:
    """The array of ``shape``, laid out in ``order``, that starts ``offset``
    bytes into the file at ``path``."""
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
    pages = copied_pages(path, start, offset + size - start)
    return np.ndarray(shape, dtype, buffer=pages, offset=offset - start, order=order)


def copied_order(array: np.ndarray) -> Order:
    """The memory order, ``"C"`` or ``"F"``, that NumPy gives a copy of rows
    of ``array`` (``order="K"``, as in a pickle of a contiguous chunk).

    A chunk of a Fortran-ordered matrix is a view that is neither C- nor
    Fortran-contiguous, which NumPy pickles in C order; a worker's
    estimator then saw other rows than the serial call's, and returned them
    in C order where the serial call returns Fortran order (StandardScaler,
    which copies its input as it is laid out). Its rows go in Fortran order
    instead.
    """
    if array.ndim == 2 and abs(array.strides[0]) < abs(array.strides[1]):
        return "F"
    return "C"


def laid_out(rows):
    """``rows``, a chunk contiguous in no order of a Fortran-ordered matrix,
    copied in Fortran order (see :func:`copied_order`): NumPy, and the
    pickles of Dask and Ray, would send it in C order. Other rows as they
    are."""
    if (
        isinstance(rows, np.ndarray)
        and not (rows.flags.c_contiguous or rows.flags.f_contiguous)
        and copied_order(rows) == "F"
    ):
        return rows.copy(order="F")
    return rows


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
    base: Any = array
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
    high = low + -(-len(cast(mmap.mmap, memmap.base)) // mmap.PAGESIZE) * mmap.PAGESIZE
    try:
        # Read, not followed: following the link needs CAP_SYS_ADMIN.
        path = os.readlink(f"/proc/self/map_files/{low:x}-{high:x}")
    except OSError:
        return None
    if memmap.filename and os.path.realpath(memmap.filename) == path:
        return path
    return None


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
