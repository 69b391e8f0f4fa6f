"""Hand tasks to a joblib backend: the one place where work leaves the caller.

Prediction chunks, the warm-up of a pool and :class:`MultiModelPredictor`'s
fits all go through :func:`fan_out`. It adds to joblib what the package
promises its users: the caller's scikit-learn configuration and NumPy
floating-point error state in every task,
the workers' warnings and errors raised again in the caller as the serial
call raises them (:mod:`._outcomes`), a dead ``multiprocessing`` worker that
fails the call instead of hanging it (:mod:`._watched_pool`), and, on
joblib's threading backend, the package's own threads.
"""

from __future__ import annotations

import contextlib
import copy

import joblib
from joblib._parallel_backends import (
    LokyBackend,
    MultiprocessingBackend,
    ParallelBackendBase,
    ThreadingBackend,
)
from joblib.parallel import get_active_backend
from sklearn.utils.parallel import Parallel, delayed

from sklearn_parpredict import _loky, _threads
from sklearn_parpredict._outcomes import (
    Failed,
    Rebuilt,
    in_task_order,
    ordered_outputs,
    outcome,
    recording_warnings,
)
from sklearn_parpredict._warned import CAUGHT, Tally, in_piece, warn_again
from sklearn_parpredict._watched_pool import WatchedMultiprocessingBackend

try:  # joblib's thread-local configuration, set by ``parallel_config``
    from joblib.parallel import _backend as _joblib_local
    from joblib.parallel import default_parallel_config as _joblib_defaults
except ImportError:  # pragma: no cover - joblib internals moved
    _joblib_local = _joblib_defaults = None


def parallel_config(backend):
    """The joblib context in which ``backend`` (None: the active one) is used."""
    if backend is None:
        return contextlib.nullcontext()
    return joblib.parallel_config(backend=backend)


def active_backend(backend):
    """The backend instance ``Parallel(backend=backend)`` runs on, and the
    default ``n_jobs`` of its context."""
    with parallel_config(backend):
        return get_active_backend()


def config_key() -> int:
    """Which ``joblib.parallel_config`` context is in force: each context is
    a new object (a stale key only costs a plan, never changes an output)."""
    return id(getattr(_joblib_local, "config", None))


def backend_configured() -> bool:
    """Whether a ``joblib.parallel_config`` context names a backend."""
    try:
        config = getattr(_joblib_local, "config", None)
        return (
            config is not None and config["backend"] is not _joblib_defaults["backend"]
        )
    except Exception:  # joblib internals moved: assume the user chose
        return True


def joblib_config() -> dict | None:
    """The calling thread's ``joblib.parallel_config``, for a thread of ours
    that works for it (see :func:`in_joblib_config`)."""
    return getattr(_joblib_local, "config", None)


@contextlib.contextmanager
def in_joblib_config(config: dict | None):
    """Run under ``config``, a caller's :func:`joblib_config`, on another
    thread, whose own joblib settings are joblib's defaults: a warm-up in
    the background started loky's workers with them, which the caller's
    calls under other settings (``max_nbytes``, ``inner_max_num_threads``)
    replaced by their own, and under ``backend="multiprocessing"`` it
    started loky workers that no call runs on."""
    if config is None or _joblib_local is None:
        yield
        return
    backend = config.get("backend")
    if isinstance(backend, ParallelBackendBase):
        # An instance of its own: joblib sets a backend up for the call that
        # runs on it (its executor, its Parallel), and the caller's calls
        # run on the caller's meanwhile.
        config = {**config, "backend": copy.copy(backend)}
    old = getattr(_joblib_local, "config", None)
    _joblib_local.config = config
    try:
        yield
    finally:
        if old is None:
            del _joblib_local.config
        else:
            _joblib_local.config = old


def fan_out(
    function,
    tasks,
    *,
    n_workers: int,
    backend=None,
    verbose: int = 0,
    rank: list[int] | None = None,
    tallies: list[Tally] | None = None,
):
    """``[function(*task) for task in tasks]`` on a joblib backend, in order.

    The one place where the package hands work to a backend: prediction
    chunks, the warm-up of a pool and :class:`MultiModelPredictor`'s fits.

    Parameters
    ----------
    function : callable
        Called once per task.
    tasks : iterable of tuple
        The arguments of each call.
    n_workers : int
        Workers to use; at most one runs the tasks in this thread.
    backend : str, backend instance or None
        As joblib's ``Parallel`` takes it; None honours an active
        ``joblib.parallel_config``.
    verbose : int
        Verbosity of joblib's ``Parallel``.
    rank : list of int, default=None
        Each task's place in the serial call's order, where the tasks are
        given in another (longest first); None: their order.
    tallies : list of Tally, default=None
        Each task's :class:`._warned.Tally`: the tasks that are pieces of
        one serial call share one, and show its warnings as the serial
        call does, not once per task. None: each task is a call of its own
        (a model's fit), whose warnings all show.

    Returns
    -------
    outputs : list
        The calls' outputs, in task order. The first task's exception in the
        serial order, or the error of a worker that died, is raised as is.
        (On joblib's ``multiprocessing`` backend, which hands no outputs
        back in order, the error of the task that failed first.)
    """
    tasks = list(tasks)
    if n_workers <= 1 or len(tasks) <= 1:
        function, tasks = _in_pieces(function, tasks, tallies)
        return [function(*task) for task in tasks]
    active, _ = active_backend(backend)
    if getattr(active, "uses_threads", False):
        function, tasks = _in_pieces(function, tasks, tallies)
    if isinstance(active, ThreadingBackend) and not verbose:
        # joblib's threads start anew and are polled every 10 ms on every
        # call; the package's own are kept and waited on. (joblib's progress
        # report, verbose, needs joblib's.)
        return _threads.run(function, tasks, n_workers, rank)
    if getattr(active, "uses_threads", False):
        # Threads get the config directly. scikit-learn's Parallel would also
        # swap the process-wide warning filters in every task, which races
        # between threads and can leave the caller's filters changed.
        context = _threads.caller_context()
        ordered = ordered_outputs(active)
        runner = joblib.Parallel(
            n_jobs=n_workers,
            backend=backend,
            verbose=verbose,
            batch_size=1,
            return_as="generator" if ordered else "list",
        )
        with _threads.warning_filters_kept():
            try:
                return in_task_order(
                    runner(
                        joblib.delayed(_threads.in_config)(
                            context, outcome, ordered, function, *task
                        )
                        for task in tasks
                    ),
                    rank,
                )
            except Failed as failed:
                raise failed.exception from failed.exception.__cause__
    if type(active) is MultiprocessingBackend:
        backend = WatchedMultiprocessingBackend(
            nesting_level=active.nesting_level,
            inner_max_num_threads=active.inner_max_num_threads,
        )
    # scikit-learn's Parallel carries the caller's config to the workers;
    # NumPy's error state goes with each task.
    ordered = ordered_outputs(active)
    runner = Parallel(
        n_jobs=n_workers,
        backend=backend,
        verbose=verbose,
        batch_size=1,
        return_as="generator" if ordered else "list",
    )
    # On loky, the tasks go to the executor that joblib configures, and the
    # caller waits on them rather than polling. (joblib's progress report,
    # verbose, needs joblib's loop.)
    direct = type(active) is LokyBackend and not verbose
    # The failed task and the tasks the serial call runs before it, done.
    failure: list = []

    def note_failure(first: int, before: list) -> None:
        failure[:] = [first, before]

    try:
        with runner if direct else contextlib.nullcontext():
            if direct and _loky.usable(runner):
                tasks = [(function, *task) for task in tasks]
                results = _loky.run(
                    runner, recording_warnings, tasks, rank, note_failure
                )
            else:
                errstate = _threads.ErrState.current()
                results = in_task_order(
                    runner(
                        delayed(_threads.in_errstate)(
                            errstate,
                            outcome,
                            ordered,
                            recording_warnings,
                            function,
                            *task,
                        )
                        for task in tasks
                    ),
                    rank,
                    note_failure,
                )
    except Exception as exc:
        # The failing task's warnings, raised before its error as the serial
        # call raises them (scikit-learn warns of sparse columns, then fails
        # on their missing values).
        error: BaseException = exc.exception if isinstance(exc, Failed) else exc
        if failure:
            # The warnings of the tasks before it in the serial order, which
            # the serial call shows before its error too: a pipeline's step
            # that warns of the first rows, then fails on later ones.
            before = failure[1]
            warn_again(
                [caught for _, (_, caught) in before],
                tallies and [tallies[i] for i, _ in before],
            )
        if isinstance(error, Rebuilt):
            error = error.rebuilt()
        warn_again([error.__dict__.pop(CAUGHT, ())], _failed_tally(tallies, failure))
        if error is not exc:
            # With its traceback in the worker as its cause.
            raise error from error.__cause__
        raise
    warn_again((caught for _, caught in results), tallies)
    return [out for out, _ in results]


def _failed_tally(tallies: list[Tally] | None, failure: list) -> list | None:
    """The tally of the failed task (``failure``: its index and the tasks
    before it, where known), as :func:`._warned.warn_again` takes it."""
    if not tallies:
        return None
    if failure:
        return [tallies[failure[0]]]
    # (Which task failed is not known: its tally is the one the tasks
    # share, where they are all pieces of one call.)
    if all(tally is tallies[0] for tally in tallies):
        return tallies[:1]
    return None


def _in_pieces(function, tasks: list, tallies: list[Tally] | None):
    """``function`` and ``tasks`` to run in this process, each task a piece
    of the call that its tally counts: their warnings are shown as they are
    raised, through it."""
    if tallies is None:
        return function, tasks
    return in_piece, [(tally, function, *task) for tally, task in zip(tallies, tasks)]
