"""Models shipped once: the tokens of fitted models and their files."""

import gc
import os

import pytest
from _helpers import in_child
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


def test_a_forked_child_names_its_models_apart_and_leaves_its_parents_files():
    model = _Bare()
    parent = ModelHandle(model)
    path = parent._entry.path
    assert os.path.exists(path)

    def child():
        # Its own names: children of one parent (a server's workers) wrote
        # their models under the same names, and loaded each other's.
        own = ModelHandle(_Bare())
        again = ModelHandle(model)  # the parent's model, in the child
        named_apart = own.token.split("-")[0] != parent.token.split("-")[0]
        # Letting go of the models (a refit, the end of the child) removes
        # the child's own files, never the parent's.
        _sharing._forget(id(model))
        _sharing._forget(id(own.model))
        return named_apart and again.token != parent.token and os.path.exists(path)

    assert in_child(child) == 0
    assert os.path.exists(path)
    assert parent.token in live_tokens()


def test_a_model_that_cannot_be_pickled_is_tried_once_per_state():
    import pickle
    import threading

    model = _Bare()
    model.lock_ = threading.Lock()
    tried = []
    dump = _sharing._dump_model

    def counted(model, path):
        tried.append(path)
        dump(model, path)

    _sharing._dump_model = counted
    try:
        for _ in range(3):
            assert not _sharing.can_ship(model)
        assert len(tried) == 1
        del model.lock_  # a new state: tried again, and picklable now
        assert _sharing.can_ship(model)
        assert len(tried) == 2
        model.lock_ = threading.Lock()
        with pytest.raises(pickle.PicklingError, match="backend='threading'"):
            ModelHandle(model)
    finally:
        _sharing._dump_model = dump
        _sharing._forget(id(model))


def test_a_folder_that_fails_is_not_taken_for_a_model_that_cannot_be_pickled(
    tmp_path,
):
    with pytest.raises(FileNotFoundError):
        _sharing._dump_model(_Bare(), str(tmp_path / "gone" / "model.pkl"))
