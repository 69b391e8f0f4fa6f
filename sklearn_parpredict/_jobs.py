"""The unit of the engine's work: one method of one estimator on one input.

A :class:`Job` runs in this process; its row ranges become tasks, which
:func:`run_timed` runs on a worker, finding the model and the rows behind
their handles.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sklearn_parpredict import _chunking, _rowwise
from sklearn_parpredict._pickled import PickledRows, Returned
from sklearn_parpredict._rows import SharedRows
from sklearn_parpredict._sharing import ModelHandle
from sklearn_parpredict._warned import Tally

# Why each call ran as it did, for users asking why a call stayed in-process:
# ``logging.getLogger("sklearn_parpredict").setLevel(logging.DEBUG)``.
logger = logging.getLogger("sklearn_parpredict")


@dataclass
class Job:
    """One method of one fitted estimator on all rows of one input."""

    estimator: Any
    method: str
    X: Any
    columns: Any = None
    params: dict = field(default_factory=dict)
    # The caller's sparse X, when X is its CSR form to be cut (see
    # _chunking.prepare): the method is given its rows in the caller's
    # class, and all of them as the caller gave them (duplicates of a COO,
    # the blocks of a BSR).
    given: Any = None
    # The warnings its pieces showed: the call shows them as the serial call
    # does, not once per piece (see _warned.Tally).
    tally: Tally = field(default_factory=Tally, repr=False, compare=False)

    def call(self, start: int | None = None, stop: int | None = None):
        """Run the method in this process, on all rows or on ``start:stop``
        (a piece of the call, on any thread: see :attr:`tally`)."""
        if start is None:
            X = self.X if self.given is None else self.given
            return _call(self.estimator, self.method, X, self.columns, self.params)
        if stop is None:
            stop = _chunking.n_rows(self.X)
        X = self.rows(start, stop)
        params = self.params_for(start, stop)
        task = (self.estimator, self.method, X, self.columns, params)
        with self.tally.piece():
            return run_piece(_call, id(self), start, stop, *task)

    def rows(self, start: int, stop: int):
        """Rows ``start:stop`` of ``X``, as the method is given them."""
        return _chunking.row_slice(self.X, start, stop, self.given)

    def params_for(self, start: int, stop: int) -> dict:
        """The method's parameters for rows ``start:stop`` (see
        :func:`._rowwise.params_for_rows`)."""
        n = _chunking.n_rows(self.X)
        return _rowwise.params_for_rows(self.params, n, start, stop)


# Where the exception of a piece of a job's call (a task, or rows run in
# this process) says which job it is a piece of (its ``id``), which rows
# (``start``, ``stop``), and how many seconds it ran before it failed (an
# attribute pickles with the exception): see :func:`._engine._to_run_whole`.
FAILED_PIECE = "_sklearn_parpredict_failed_piece"


def run_piece(function, job_id: int, start: int, stop: int, *task):
    """``function(*task)``, a task on rows ``start:stop`` of job ``job_id``
    (or such rows run in this process), its exception marked as
    :data:`FAILED_PIECE` says."""
    started = time.perf_counter()
    try:
        return function(*task)
    except Exception as exc:
        seconds = time.perf_counter() - started
        with contextlib.suppress(Exception):  # one that takes no attributes
            setattr(exc, FAILED_PIECE, (job_id, start, stop, seconds))
        raise


def log(jobs: list[Job], sizes: list[int], how: str) -> None:
    """Log, at debug level, how a call of ``jobs`` on ``sizes`` rows ran."""
    if logger.isEnabledFor(logging.DEBUG):
        what = ", ".join(
            f"{type(job.estimator).__name__}.{job.method}" for job in jobs[:3]
        )
        more = f" and {len(jobs) - 3} more" if len(jobs) > 3 else ""
        logger.debug("%s%s on %s rows: %s", what, more, sum(sizes), how)


def run_task(model, method, X, columns, params):
    """The work of one task, in a worker or in-process."""
    return _call(resolve(model), method, resolve(X), columns, params)


def _call(model, method, X, columns, params):
    X = _chunking.select_columns(X, columns)
    return getattr(model, method)(X, **params)


def run_timed(*task):
    """A task on a worker, the seconds it took there, and the CPU seconds of
    the thread that ran it.

    Every task of a plan is also a timing of the estimator on a known number
    of rows: the cost model learns from it as from an in-process call, so a
    cost misjudged by a short probe does not mislead every later plan. The
    CPU time leaves out what the thread slept, waiting for the GIL.
    """
    cpu = time.thread_time()
    start = time.perf_counter()
    out = run_task(*task)
    return out, time.perf_counter() - start, time.thread_time() - cpu


def run_returned(*task):
    """:func:`run_timed` on a worker process: the output goes back through
    a file when it is large (see :class:`._pickled.Returned`)."""
    out, wall, cpu = run_timed(*task)
    return Returned(out), wall, cpu


def resolve(obj):
    """The object behind a handle that was not pickled (same process)."""
    if isinstance(obj, ModelHandle):
        return obj.model
    if isinstance(obj, SharedRows):
        return obj.shared.array[obj.start : obj.stop]
    if isinstance(obj, PickledRows):
        return obj.rows
    return obj
