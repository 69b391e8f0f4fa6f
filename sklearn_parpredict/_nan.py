"""``np.nan`` itself across processes.

A float is pickled by value: ``np.nan`` reaches another process as another
NaN, which ``x is np.nan`` tells apart, and which a ``set`` keeps beside
the others. Arrays, lists and tuples of objects that hold it, and models,
are pickled here so that it is ``np.nan`` itself again once unpickled.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def itself() -> float:
    """``np.nan`` of the process that unpickles it."""
    return np.nan


class NanKept:
    """An array, a list or a tuple of objects that holds ``np.nan`` itself,
    pickled so that it does again once unpickled.

    A float is pickled by value: ``np.nan`` would reach the worker as
    another NaN. scikit-learn's text vectorizers tell a missing document by
    identity (``doc is np.nan``): a ``ValueError`` naming it in the serial
    call, an ``AttributeError`` ('float' object has no attribute 'lower')
    from a worker. pandas restores ``np.nan`` in its own ``str`` columns,
    not in its columns of objects: :class:`._pickled._NanKeeping` picklers
    wrap the arrays that hold them.
    """

    def __init__(self, items, positions: list[int]):
        self.items = items
        self.positions = positions

    @classmethod
    def around(cls, rows):
        """``rows`` as they are, or wrapped when they hold ``np.nan``."""
        nan = np.nan
        if isinstance(rows, np.ndarray) and rows.dtype == object:
            # A masked array's own flat iterator hands out masked items.
            flat = rows.view(np.ndarray).flat
            positions = [i for i in _unequal_to_themselves(rows) if flat[i] is nan]
        elif isinstance(rows, list | tuple):
            positions = [i for i, item in enumerate(rows) if item is nan]
        else:
            return rows
        return cls(rows, positions) if positions else rows

    def __reduce__(self):
        return _with_nan, (self.items, self.positions)


def _unequal_to_themselves(rows: np.ndarray) -> Iterable[int]:
    """The flat positions of ``rows`` (of objects) whose item may be a NaN:
    not equal to itself, or all of them where an item cannot say (``pd.NA``
    is not a bool).

    NumPy compares the items in C: 0.7 ms for 100,000 short strings, where
    a loop in Python over them took 2.5 ms and pickling them 6 ms.
    """
    plain = rows.view(np.ndarray)
    try:
        unequal = np.not_equal(plain, plain)
    except Exception:
        return range(plain.size)
    if getattr(unequal, "shape", None) != plain.shape:
        return range(plain.size)
    return np.flatnonzero(unequal).tolist()


def _with_nan(items, positions: list[int]):
    if isinstance(items, tuple):
        # Not written into: its items are, in a list (a row slice's tuple is
        # a plain one).
        return tuple(_with_nan(list(items), positions))
    # A masked array's own flat iterator stores a copy of the value.
    flat = items.view(np.ndarray).flat if isinstance(items, np.ndarray) else items
    for i in positions:
        flat[i] = np.nan
    return items


def reduce_array(array: np.ndarray):
    """How a :class:`._pickled._NanKeeping` pickler pickles a NumPy array: as NumPy
    does, and given ``np.nan`` back where it holds it (as by
    :class:`NanKept`)."""
    reduced = array.__reduce_ex__(5)
    kept = NanKept.around(array)
    if kept is array:
        return reduced
    # NumPy's pickling of it, not the array: pickled, it would come back here.
    return _with_nan, (_Reduced(reduced), kept.positions)


class _Reduced:
    """Pickled as ``reduced`` (what an object's ``__reduce__`` returns) says."""

    def __init__(self, reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced
