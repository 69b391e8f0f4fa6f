"""Models shipped once: the tokens of fitted models and their files."""

import gc
import os

import numpy as np
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


# A parent that predicted on processes forks children (a server's workers)
# that predict on processes of their own, then exit as a program does.
_FORKING_PARENT = """
import os, sys
import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn_parpredict import ParallelPredictor, _files
X = np.random.default_rng(0).normal(size=(20_000, 8))
y = X[:, 0] > 0
def predict(seed):
    model = RandomForestClassifier(5, random_state=seed).fit(X[:500], y[:500])
    engine = {"n_jobs": 2, "backend": "multiprocessing", "chunk_size": 5_000}
    ParallelPredictor(model, **engine).predict(X)
predict(0)
_files.drop_kept()
_files.removed()
before = sorted(os.listdir(_files.temp_folder()))
for seed in (1, 2):
    pid = os.fork()
    if pid == 0:
        predict(seed)
        sys.exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
# A multiprocessing child ends with os._exit, after its finalizers.
import multiprocessing
child = multiprocessing.get_context("fork").Process(target=predict, args=(3,))
child.start()
child.join()
assert child.exitcode == 0
print(len(before), len(os.listdir(_files.temp_folder())))
"""


@pytest.mark.timeout(180)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks")
def test_a_forked_child_removes_its_files_from_its_parents_folder_at_exit():
    import subprocess
    import sys
    from pathlib import Path

    import sklearn_parpredict

    env = dict(os.environ)
    root = str(Path(sklearn_parpredict.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, "-c", _FORKING_PARENT],
        capture_output=True,
        text=True,
        env=env,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    # The parent's model file alone, before and after: the children's
    # models and the rows they kept for their next call are gone.
    assert before == after == 1


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


class _Counted:
    """Counts how often it is pickled."""

    pickled = 0

    def __reduce__(self):
        _Counted.pickled += 1
        return _Counted, ()


def test_a_models_pickled_bytes_count_its_arrays_once_per_state():
    import threading

    import numpy as np

    model = _Bare()
    model.weights_ = np.ones(1 << 20, dtype=np.uint8)
    model.counted_ = _Counted()
    before = _Counted.pickled
    nbytes = _sharing.pickled_bytes(model)
    # The array's bytes, and the little around them.
    assert (1 << 20) < nbytes < (1 << 20) + 4096
    assert _sharing.pickled_bytes(model) == nbytes
    assert _Counted.pickled == before + 1
    # Refitted: counted again.
    model.weights_ = np.ones(1 << 21, dtype=np.uint8)
    assert (1 << 21) < _sharing.pickled_bytes(model) < (1 << 21) + 4096
    assert _Counted.pickled == before + 2
    # Not for plain pickle: no size (its shipping counts no bytes).
    model.lock_ = threading.Lock()
    assert _sharing.pickled_bytes(model) is None


def _by_value_encoder():
    from sklearn.preprocessing import OrdinalEncoder

    class LocalEncoder(OrdinalEncoder):
        """Defined in a function: pickled by value, by cloudpickle."""

    return LocalEncoder


@pytest.mark.parametrize("by_value", [False, True], ids=["joblib", "cloudpickle"])
def test_np_nan_in_a_model_is_np_nan_itself_in_the_workers(by_value, tmp_path):
    import joblib
    from sklearn.preprocessing import OrdinalEncoder

    column = np.array([["a"], [np.nan], ["b"]], dtype=object)
    cls = _by_value_encoder() if by_value else OrdinalEncoder
    model = cls().fit(column)
    model.kept = [np.nan, 1.0]
    # Another NaN, as the serial call's, stays another NaN.
    model.other = np.array([float("nan"), "x"], dtype=object)
    path = str(tmp_path / "model.pkl")
    _sharing._dump_model(model, path)
    loaded = joblib.load(path, mmap_mode="c")
    assert type(loaded).__name__ == cls.__name__
    assert [x is np.nan for x in loaded.categories_[0]] == [False, False, True]
    assert [x is np.nan for x in model.categories_[0]] == [False, False, True]
    if not by_value:
        # (cloudpickle's C pickler does not ask about floats outside arrays.)
        assert loaded.kept[0] is np.nan
    assert loaded.other[0] is not np.nan and np.isnan(loaded.other[0])
    assert loaded.other[1] == "x"
