"""Module-level locks that a forked child gets free, and other state a
forked child resets (:func:`in_forked_child`).

A child forked while another thread of its parent holds a lock inherits the
lock held, by a thread that the child does not have: the child's first wait
on it never ends. The ``multiprocessing`` backend forks its workers from
whichever thread calls, while other threads may be inside the package: with
four threads calling ``MultiModelPredictor.predict`` at once, a worker forked
while another thread was preparing a model to ship waited forever to load
it, and with it the call and the threads behind it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar

_Lock = TypeVar("_Lock")


def fork_safe(
    namespace: MutableMapping[str, Any], name: str, factory: Callable[[], _Lock]
) -> _Lock:
    """``namespace[name] = factory()``, made anew in every forked child.

    What the lock guards is left as the fork found it: the caches it guards
    are worth no more than a lock that is never released.
    """
    namespace[name] = factory()
    in_forked_child(lambda: namespace.__setitem__(name, factory()))
    return namespace[name]


def in_forked_child(function: Callable[[], None]) -> Callable[[], None]:
    """Have ``function`` run in every child forked from now on, and return
    it: the state a child must not take from its parent is reset there."""
    if hasattr(os, "register_at_fork"):  # not on Windows, which never forks
        os.register_at_fork(after_in_child=function)
    return function
