"""What a task sends back from a worker, and how the caller raises it.

A task's warnings go back with its output or its error and are raised again
in the caller, under the caller's filters (see :mod:`._warned`). Its error
comes back as the serial call raises it: as itself where plain pickle
cannot rebuild it (see :class:`Rebuilt`), as a ``StopIteration`` past
joblib's generators, and, where several tasks failed, the first in the
serial order (see :func:`in_task_order`).
"""

from __future__ import annotations

import contextlib
import pickle
import traceback
import warnings

from joblib.externals.loky.process_executor import _ExceptionWithTraceback

from sklearn_parpredict._jobs import FAILED_PIECE
from sklearn_parpredict._sharing import cloudpickle
from sklearn_parpredict._threads import first_in_order, serially_before
from sklearn_parpredict._warned import CAUGHT, rebuild, recorded


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
                setattr(exc, CAUGHT, recorded(caught))
                raise
    if stand_in is not None:
        setattr(stand_in, CAUGHT, recorded(caught))
        # Raised here, it has no context: where distributed is imported,
        # tblib pickles an exception's context with it.
        raise stand_in
    return out, recorded(caught)


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


def in_task_order(outputs, rank: list[int] | None = None, on_failure=None) -> list:
    """The outputs of joblib's loop of :func:`outcome` tasks, in task order.

    The first task that failed in the serial order (``rank``, as
    :func:`._threads.first_in_order` takes it) raises its exception once
    every task before it in that order is done; joblib stops the others.
    ``on_failure``, as :func:`._threads.gather` takes it, is called first.
    """
    results: list = []
    failed: list[int] = []
    for out in outputs:
        if isinstance(out, Failed):
            failed.append(len(results))
        results.append(out)
        first = first_in_order(failed, rank, lambda j: j < len(results))
        if first is not None:
            if on_failure is not None:
                before = serially_before(first, rank)
                on_failure(first, [(j, results[j]) for j in before])
            if not isinstance(outputs, list):
                with contextlib.suppress(_Aborted):
                    outputs.throw(_Aborted())
            # Raised here, not through joblib's generator: a StopIteration
            # stays one.
            raise results[first].exception
    return results


def _stand_in(exc: BaseException) -> Exception | None:
    """An error to raise in place of ``exc`` when the caller could not
    unpickle it: a ``multiprocessing`` pool would wait for the task forever,
    and loky would report a broken pool instead of the error.

    Where only its class's ``__init__`` fails on its ``args`` (one that
    takes other arguments than it passes on: ``__init__(self, a, b)``
    calling ``super().__init__(f"{a}-{b}")``), ``exc`` is sent back rebuilt
    without it (see :class:`Rebuilt`), the serial call's error; where plain
    pickle cannot name its class (one defined in a function, or in a script
    that the workers got by value), by value (see :class:`RebuiltByValue`);
    else an error naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return None
    except Exception as why:
        for carrier_type in (Rebuilt, RebuiltByValue):
            with contextlib.suppress(Exception):
                carrier = carrier_type(exc)
                if type(pickle.loads(pickle.dumps(carrier))) is type(exc):
                    return carrier
        trace = "".join(traceback.format_exception(exc))
        error = RuntimeError(
            f"{type(exc).__qualname__}: {exc}\n(raised in a worker process; "
            f"it cannot be sent back as it is, as unpickling it fails with "
            f"{type(why).__name__}: {why}. Its traceback in the worker:\n"
            f"{trace})"
        )
        # Marked as the piece that raised ``exc`` was: the call on all rows
        # that the caller may make for the serial call's error raises ``exc``
        # itself there.
        if FAILED_PIECE in vars(exc):
            setattr(error, FAILED_PIECE, vars(exc)[FAILED_PIECE])
        return error


class Rebuilt(Exception):
    """Pickles into its exception ``exc`` as it is, ``args`` and attributes,
    without calling its class's ``__init__`` (as ``copy.copy`` would not
    either), which pickle's default for exceptions calls with ``args``."""

    def __init__(self, exc: BaseException):
        super().__init__(exc)

    def __reduce__(self):
        return rebuild, self.parts()

    def parts(self) -> tuple:
        (exc,) = self.args
        # With what was set on the carrier (the task's warnings).
        return type(exc), exc.args, {**vars(exc), **vars(self)}

    def rebuilt(self) -> BaseException:
        """The exception itself, where it was never pickled (a cluster's
        workers in this process)."""
        return rebuild(*self.parts())


class RebuiltByValue(Rebuilt):
    """A :class:`Rebuilt` whose exception's class goes by value, as
    cloudpickle sends the workers the code that raised it: plain pickle
    names a class, which the caller has no name for where it was defined
    in a function or in a script. cloudpickle hands the caller its own
    class back, which its ``except`` clauses catch (a class it sent the
    workers by value is known to it by id)."""

    def __reduce__(self):
        return _loaded, (cloudpickle.dumps(self.parts()),)


def _loaded(data: bytes) -> BaseException:
    """The exception that :class:`RebuiltByValue` pickled into ``data``."""
    return rebuild(*pickle.loads(data))
