"""What a task sends back from a worker, and how the caller raises it.

A task's warnings go back with its output or its error and are raised again
in the caller, under the caller's filters. Its error comes back as the
serial call raises it: as itself where plain pickle cannot rebuild it (see
:class:`Rebuilt`), as a ``StopIteration`` past joblib's generators, and,
where several tasks failed, the first in the serial order (see
:func:`in_task_order`).

The pieces of one serial call (its tasks, wherever they run, and the rows
run in this process) show its warnings as the serial call shows them, not
once per piece (see :class:`Tally`).
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterable

from joblib.externals.loky.process_executor import _ExceptionWithTraceback

from sklearn_parpredict._locks import fork_safe, in_forked_child
from sklearn_parpredict._sharing import cloudpickle
from sklearn_parpredict._threads import first_in_order

# Where a failing task's exception carries its warnings back (an attribute
# pickles with the exception).
CAUGHT = "_sklearn_parpredict_warnings"


def recording_warnings(function, *args):
    """A task in a worker process, and the warnings it raised.

    A worker's warnings are printed on its stderr, out of the reach of the
    caller's filters, ``pytest.warns`` or ``logging.captureWarnings``: they
    are sent back with the output and raised again in the caller.
    """
    stand_in = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = function(*args)
        except BaseException as exc:
            # (Not only an Exception: one that is not, unpickled in vain,
            # broke loky's pool, and a multiprocessing pool's result handler,
            # its call left waiting for ever.)
            stand_in = _stand_in(exc)
            if stand_in is None:
                setattr(exc, CAUGHT, _sendable(_described(caught)))
                raise
    if stand_in is not None:
        setattr(stand_in, CAUGHT, _sendable(_described(caught)))
        # Raised here, it has no context: where distributed is imported,
        # tblib pickles an exception's context with it.
        raise stand_in
    return out, _sendable(_described(caught))


def ordered_outputs(active) -> bool:
    """Whether joblib's loop on ``active`` hands the outputs back one by one,
    in task order (not joblib's ``multiprocessing`` backend)."""
    return bool(getattr(active, "supports_return_generator", False))


class Failed(Exception):
    """A task's exception, returned as its output, or raised in its place
    (see :func:`outcome`)."""

    def __init__(self, exception: Exception):
        super().__init__(exception)
        self.exception = exception

    def __reduce__(self):
        # To the caller, with its traceback in the worker as its cause, as
        # loky sends an error.
        return Failed, (_ExceptionWithTraceback(self.exception),)


class _Aborted(Exception):
    """Thrown into joblib's generator of outputs: it stops the tasks."""


def outcome(ordered: bool, function, *args):
    """``function(*args)``, its exception in a :class:`Failed`: returned
    where joblib's loop hands the outputs back in task order (``ordered``),
    else raised.

    joblib raises the error of whichever task failed first, where the
    serial call meets the first rows' error first: a task in order returns
    it for :func:`in_task_order` to raise. And joblib gathers the outputs
    in a generator, which turns a ``StopIteration`` raised through it into
    ``RuntimeError: generator raised StopIteration`` (PEP 479): raised, it
    goes through as a :class:`Failed`, which :func:`._fanout.fan_out` unwraps.
    """
    try:
        return function(*args)
    except Exception as exc:
        if ordered:
            return Failed(exc)
        raise Failed(exc) from None


def in_task_order(outputs, rank: list[int] | None = None) -> list:
    """The outputs of joblib's loop of :func:`outcome` tasks, in task order.

    The first task that failed in the serial order (``rank``, as
    :func:`._threads.first_in_order` takes it) raises its exception once
    every task before it in that order is done; joblib stops the others.
    """
    results: list = []
    failed: list[int] = []
    for out in outputs:
        if isinstance(out, Failed):
            failed.append(len(results))
        results.append(out)
        first = first_in_order(failed, rank, lambda j: j < len(results))
        if first is not None:
            if not isinstance(outputs, list):
                with contextlib.suppress(_Aborted):
                    outputs.throw(_Aborted())
            # Raised here, not through joblib's generator: a StopIteration
            # stays one.
            raise results[first].exception
    return results


def _sendable(described: list[tuple]) -> list[tuple]:
    """The warnings that go back with a task's output or error, in a form
    every backend's pickler takes: a warning class defined in a function
    (which plain pickle refuses, and with it the output or the error) goes
    by value; none go where no pickler takes them."""
    if not described:
        return described
    try:
        pickle.dumps(described)
        return described
    except Exception:  # noqa: S110 - by value, below
        pass
    try:
        return _ByValue(cloudpickle.dumps(described))  # type: ignore[return-value]
    except Exception:
        return []


class _ByValue:
    """Bytes of cloudpickle that plain pickle sends, and unpickles into what
    they hold."""

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self):
        return pickle.loads, (self.data,)

    def __iter__(self):
        # Not pickled at all (a cluster's workers in this process).
        return iter(pickle.loads(self.data))


def _described(caught: list) -> list[tuple]:
    """Warnings as they go back to the caller (see :func:`warn_again`)."""
    return [(str(w.message), w.category, w.filename, w.lineno) for w in caught]


def _stand_in(exc: BaseException) -> Exception | None:
    """An error to raise in place of ``exc`` when the caller could not
    unpickle it: a ``multiprocessing`` pool would wait for the task forever,
    and loky would report a broken pool instead of the error.

    Where only its class's ``__init__`` fails on its ``args`` (one that
    takes other arguments than it passes on: ``__init__(self, a, b)``
    calling ``super().__init__(f"{a}-{b}")``), ``exc`` is sent back rebuilt
    without it (see :class:`Rebuilt`), the serial call's error; else an
    error naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return None
    except Exception as why:
        with contextlib.suppress(Exception):
            carrier = Rebuilt(exc)
            if type(pickle.loads(pickle.dumps(carrier))) is type(exc):
                return carrier
        trace = "".join(traceback.format_exception(exc))
        return RuntimeError(
            f"{type(exc).__qualname__}: {exc}\n(raised in a worker process; "
            f"it cannot be sent back as it is, as unpickling it fails with "
            f"{type(why).__name__}: {why}. Its traceback in the worker:\n"
            f"{trace})"
        )


class Rebuilt(Exception):
    """Pickles into its exception ``exc`` as it is, ``args`` and attributes,
    without calling its class's ``__init__`` (as ``copy.copy`` would not
    either), which pickle's default for exceptions calls with ``args``."""

    def __init__(self, exc: BaseException):
        super().__init__(exc)

    def __reduce__(self):
        return _rebuild, self.parts()

    def parts(self) -> tuple:
        (exc,) = self.args
        # With what was set on the carrier (the task's warnings).
        return type(exc), exc.args, {**vars(exc), **vars(self)}

    def rebuilt(self) -> BaseException:
        """The exception itself, where it was never pickled (a cluster's
        workers in this process)."""
        return _rebuild(*self.parts())


def _rebuild(cls: type, args: tuple, state: dict) -> BaseException:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


# Per source file that no module loaded here has, the registry that lets the
# "default" action show a warning raised again once per location.
_warning_registries: dict[str, dict] = {}


def warn_again(caught, tallies: Iterable[Tally | None] | None = None) -> None:
    """Raise the workers' warnings in the caller: those of each task
    (``caught``, in task order) that its :class:`Tally` lets through
    (``tallies``, one per task; None: each task is a call of its own)."""
    for task, tally in zip(caught, tallies or itertools.repeat(None)):
        counts: dict = {}
        for warning in task:
            if tally is not None and not tally.passes(counts, warning):
                continue
            message, category, filename, lineno = warning
            module = _module_of(filename)
            warnings.warn_explicit(
                message,
                category,
                filename,
                lineno,
                registry=_registry(filename, module),
                **module,
            )


def _registry(filename: str, module: dict) -> dict:
    """The registry of the warnings shown from ``filename``: its module's,
    which the serial call's warnings go to (a warning the serial call
    showed under ``"default"`` is not shown again by the wrapper's)."""
    loaded = sys.modules.get(module["module"]) if module else None
    if loaded is not None:
        return vars(loaded).setdefault("__warningregistry__", {})
    return _warning_registries.setdefault(filename, {})


def _module_of(filename: str) -> dict:
    """The name of the loaded module of that file (filters match on it), as
    ``warn_explicit``'s keyword; none where no module loaded here has that
    file (one the worker alone imported, a function pickled by value):
    ``module=None`` would drop the warning, as at interpreter exit."""
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == filename:
            return {"module": name}
    return {}


class Tally:
    """The warnings that the pieces of one serial call showed: each is shown
    as many times as the piece that raised it most raised it, not once per
    piece.

    A wrapper call cuts a serial call (one estimator's method on all rows)
    into pieces: the rows probed in this process, chunks timed on threads,
    then the plan's tasks, on threads or in worker processes. Each piece is
    a whole call of the estimator, and raises again what the serial call
    raises once per call: a check of the input or the model (scikit-learn's
    "X has feature names, but ... was fitted without feature names", a
    deprecation), a NumPy floating-point warning (one per ufunc call on all
    rows), a warning the estimator raises k times per call (once per tree
    of a forest). For all of them, the most any one piece raised a warning
    is what the serial call raises; the sum over the pieces is the bug this
    rule fixes (a warning per chunk under ``simplefilter("always")``, and
    under every filter where the estimator resets the registries of shown
    warnings on each call, as ``check_array``'s ``catch_warnings`` does), and
    once per wrapper call whatever each piece raised (what processes did
    before) loses the k warnings of a call. A warning raised once per row is
    the one it undercounts: under ``"always"`` the serial call shows it per
    row, the wrapper as often as in its largest piece; under Python's
    default filters (once per location) both show it once. Warnings are
    told apart by category, message, file and line, as the registries of
    shown warnings tell them apart: one that names its row is its own
    warning, shown as often as it was raised.

    The caller's filters apply to each warning as they would in the serial
    call: on threads and in this process, in the piece, as the estimator
    raises it (an ``"error"`` filter raises it there, as in the serial
    call); from processes, when it is raised again (see :func:`warn_again`).

    A ``quiet`` tally shows nothing: its pieces are calls that the serial
    call never makes (the warm-up of a pool of workers).
    """

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._most: dict[tuple, int] = {}
        self._lock = threading.Lock()
        # Where the call's warnings go: warnings that a piece shows while
        # the estimator records its own (``catch_warnings(record=True)``
        # inside its method, process-wide before Python 3.14) go there.
        self.destination = _destination()

    def passes(self, counts: dict, warning: tuple) -> bool:
        """Whether a piece shows ``warning`` once more: ``counts`` is how
        many times the piece raised each so far, and the piece shows only
        what goes past the most that another piece showed."""
        if self.quiet:
            return False
        with self._lock:
            n = counts[warning] = counts.get(warning, 0) + 1
            if n <= self._most.get(warning, 0):
                return False
            self._most[warning] = n
            return True

    @contextlib.contextmanager
    def piece(self):
        """Run a piece of the call in this thread: the warnings it shows go
        through the tally as they are raised.

        On threads (and in this process) a piece's warnings cannot be
        recorded and raised again, as worker processes' are:
        ``catch_warnings`` swaps process-wide state before Python 3.14, and
        would catch the other threads' warnings too. They are let through,
        or not, where they are shown: ``warnings._showwarnmsg``, the hook
        the ``warnings`` module calls once a warning passed the filters
        ("replace if you like"), is replaced while pieces run.
        """
        outer = getattr(_local, "piece", None)
        _local.piece = _Piece(self, outer)
        _hook(+1)
        try:
            yield
        finally:
            _hook(-1)
            _local.piece = outer


def in_piece(tally: Tally, function: Callable, *args):
    """``function(*args)``, a piece of the call that ``tally`` counts."""
    with tally.piece():
        return function(*args)


class _Piece:
    """One piece running in a thread: how many times it raised each warning."""

    def __init__(self, tally: Tally, outer: _Piece | None):
        self.tally = tally
        # A piece of a call made inside another piece (a wrapper inside a
        # wrapper): what the inner call shows, the outer piece raised.
        self.outer = outer
        self.counts: dict[tuple, int] = {}

    def shows(self, warning: tuple) -> bool:
        return self.tally.passes(self.counts, warning) and (
            self.outer is None or self.outer.shows(warning)
        )


_local = threading.local()
_hook_users = 0
_hook_lock = fork_safe(globals(), "_hook_lock", threading.Lock)
# The hook that ours replaced, to which it hands what it shows.
_shown_by: Callable = warnings._showwarnmsg  # type: ignore[attr-defined]


@in_forked_child
def _no_pieces() -> None:
    # A child forked from inside a piece runs none of its parent's pieces.
    global _local, _hook_users
    _local = threading.local()
    _hook_users = 0
    if warnings._showwarnmsg is _show:  # type: ignore[attr-defined]
        warnings._showwarnmsg = _shown_by  # type: ignore[attr-defined]


def _destination() -> tuple:
    return (warnings.showwarning, getattr(warnings, "_showwarnmsg_impl", None))


def _show(msg) -> None:
    """``warnings._showwarnmsg`` while pieces run."""
    piece = getattr(_local, "piece", None)
    if (
        piece is None
        or _destination() != piece.tally.destination
        or piece.shows((str(msg.message), msg.category, msg.filename, msg.lineno))
    ):
        _shown_by(msg)


def _hook(change: int) -> None:
    """Count a piece in (+1) or out (-1): the hook is in place while one
    runs. (One that another library put in place since is left alone.)"""
    global _hook_users, _shown_by
    with _hook_lock:
        _hook_users += change
        current = warnings._showwarnmsg  # type: ignore[attr-defined]
        if _hook_users == change == 1 and current is not _show:
            _shown_by = current
            warnings._showwarnmsg = _show  # type: ignore[attr-defined]
        elif _hook_users == 0 and current is _show:
            warnings._showwarnmsg = _shown_by  # type: ignore[attr-defined]
