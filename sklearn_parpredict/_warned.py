"""Warnings of the pieces of a call, shown as the serial call shows them.

A worker process records its task's warnings, which go back with the output
or the error (:func:`recorded`) and are raised again in the caller, under
the caller's filters (:func:`warn_again`). On threads and in this process
they are shown as they are raised. Either way, the pieces of one serial call
(its tasks, wherever they run, and the rows run in this process) show its
warnings as the serial call shows them, not once per piece (see
:class:`Tally`).
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import sys
import threading
import warnings
from collections.abc import Callable, Iterable

from sklearn_parpredict._locks import fork_safe, in_forked_child
from sklearn_parpredict._sharing import cloudpickle

# Where a failing task's exception carries its warnings back (an attribute
# pickles with the exception).
CAUGHT = "_sklearn_parpredict_warnings"


def recorded(caught: list) -> list[tuple]:
    """The warnings ``catch_warnings(record=True)`` caught in a task, as they
    go back to the caller (see :func:`warn_again`): each raised warning
    itself, else (one that pickles in no way) its text."""
    if not caught:
        return []
    return _sendable(_described(caught, _Raised)) or _sendable(_described(caught, str))


def _sendable(described: list[tuple]) -> list[tuple]:
    """The warnings that go back with a task's output or error, in a form
    every backend's pickler takes: a warning class defined in a function
    (which plain pickle refuses, and with it the output or the error) goes
    by value; none go where no pickler takes them. They are unpickled here
    first: one that failed to unpickle in the caller (a warning's ``args``
    that do not) would fail the output or the error it goes with."""
    if not described:
        return described
    try:
        pickle.loads(pickle.dumps(described))
        return described
    except Exception:  # noqa: S110 - by value, below
        pass
    try:
        data = cloudpickle.dumps(described)
        pickle.loads(data)
        return _ByValue(data)  # type: ignore[return-value]
    except Exception:
        return []


class _Raised:
    """A raised warning on its way to the caller: it pickles into the
    warning as it was raised, ``args`` and attributes, without calling its
    class's ``__init__``.

    Sent as its text, it was raised again as ``category(text)``: a class
    whose ``__init__`` takes other arguments failed the call with a
    ``TypeError`` (under every filter, ``"ignore"`` too), and the others
    lost their attributes, which the serial call's warning has (and
    ``pytest.warns`` or an ``"error"`` filter hands the caller).
    """

    def __init__(self, message: Warning):
        self.message = message

    def __reduce__(self):
        message = self.message
        return _rebuilt, (type(message), message.args, vars(message), str(message))


def _rebuilt(cls: type, args: tuple, state: dict, text: str):
    """The warning ``_Raised`` sent; its text where it cannot be rebuilt
    (a class that ``__new__`` refuses): the output must still unpickle."""
    try:
        return rebuild(cls, args, state)
    except Exception:
        return text


def rebuild(cls: type, args: tuple, state: dict) -> BaseException:
    """An exception or warning of class ``cls``, ``args`` and attributes
    ``state``, made without calling its class's ``__init__`` (which may
    take other arguments than it passes on as ``args``), as ``copy.copy``
    makes it."""
    made = cls.__new__(cls, *args)
    made.args = args
    made.__dict__.update(state)
    return made


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


def _described(caught: list, message: Callable) -> list[tuple]:
    """Warnings as they go back to the caller (see :func:`warn_again`), each
    raised warning as ``message`` makes it."""
    return [(message(w.message), w.category, w.filename, w.lineno) for w in caught]


# Per source file that no module loaded here has, the registry that lets the
# "default" action show a warning raised again once per location.
_warning_registries: dict[str, dict] = {}


def warn_again(caught, tallies: Iterable[Tally | None] | None = None) -> None:
    """Raise the workers' warnings in the caller: those of each task
    (``caught``, in task order) that its :class:`Tally` lets through
    (``tallies``, one per task; None: each task is a call of its own)."""
    # Looked up once per file: finding a file's module reads every loaded
    # module (0.34 ms), and a warning raised k times per call is raised
    # again k times.
    modules: dict[str, dict] = {}
    for task, tally in zip(caught, tallies or itertools.repeat(None)):
        counts: dict = {}
        for warning in task:
            message, category, filename, lineno = warning
            if isinstance(message, _Raised):
                # Not pickled (a cluster's workers in this process).
                message = message.message
            if tally is not None and not tally.passes(
                counts, (str(message), category, filename, lineno)
            ):
                continue
            if filename not in modules:
                modules[filename] = _module_of(filename)
            module = modules[filename]
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
