"""Models shipped once: the tokens of fitted models and their files."""

import gc
import os

from sklearn.base import BaseEstimator

from sklearn_parpredict import _sharing
from sklearn_parpredict._sharing import ModelHandle, live_tokens


class _Bare(BaseEstimator):
    """A stand-in for a fitted model."""


def test_a_model_collected_while_the_live_tokens_are_listed_is_forgotten_later():
    # loky pickles tasks on a feeder thread: a garbage collection set off
    # there, inside the loop over the entries, runs the weakref callbacks of
    # dead models in the middle of that loop.
    doomed = [_Bare()]
    doomed_handle = ModelHandle(doomed[0])
    token, path = doomed_handle.token, doomed_handle._entry.path
    del doomed_handle  # the list holds the model's last reference
    kept = _Bare()
    kept_handle = ModelHandle(kept)

    class _DiesOnRead(_sharing._Entry):
        @property
        def token(self):
            doomed.clear()  # the model's weakref callback runs here
            return self.__dict__["token"]

    entry = kept_handle._entry
    entry.__class__ = _DiesOnRead
    try:
        assert kept_handle.token in live_tokens()
    finally:
        entry.__class__ = _sharing._Entry
    gc.collect()
    # The next call drops the dead model's entry and its file.
    assert live_tokens() >= {kept_handle.token}
    assert token not in live_tokens()
    assert not os.path.exists(path)


def test_a_stale_collection_notice_does_not_forget_a_newer_model_at_that_id():
    first = _Bare()
    key = id(first)
    old = ModelHandle(first)._entry
    # A collected model's id can be reused before the queue is drained.
    _sharing._collected.append((key, old))
    second = _Bare()
    _sharing._entries[key] = new = _sharing._Entry(None, None)
    try:
        _sharing._forget_collected()
        assert _sharing._entries.get(key) is new
        assert old.path is None
    finally:
        _sharing._forget(key)
        del first, second
