"""Run the engine's tasks on a cluster: joblib's ``dask`` and ``ray`` backends.

On a process pool the engine ships models and large inputs through files on
local shared memory (:mod:`~sklearn_parpredict._sharing`), which a worker on
another machine cannot open. On a cluster backend a fitted model is instead
put into the cluster once per fitted state, and tasks carry a small handle
that each worker process resolves once and caches:

- Dask: the model is scattered to one worker; every other worker fetches
  it from a peer at its first task that needs it. It is not broadcast: Dask's
  active memory manager drops the extra replicas of a broadcast a moment
  later, and a worker that had received one would then receive the model a
  second time. The handle names the key without depending on it, so the
  scheduler holds only the key, however many chunks and calls use it.
- Ray: the model is put in the object store once; each pool worker loads it
  once (joblib's Ray backend starts its workers on every call).

Row chunks travel inside their task: the scheduler keeps a task's data only
until the task is done, and a task whose worker dies is run again elsewhere
with the same data (joblib's Dask backend would otherwise scatter each chunk
to a single worker, and losing that worker would lose the chunk).

Nothing here imports Dask or Ray: they are only used when the caller already
has them running.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Any

from sklearn_parpredict._locks import fork_safe
from sklearn_parpredict._sharing import ModelHandle, live_tokens

# Fitted models a worker process keeps between tasks.
_WORKER_CACHE_SIZE = 8


def in_worker() -> bool:
    """Whether this code runs inside a task on a Dask worker.

    Such a task already holds one of the cluster's cores: fanning out again
    from it would only oversubscribe them.
    """
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


def cluster_for(backend):
    """The cluster behind a joblib backend instance, or None for local ones."""
    name = type(backend).__name__
    if name == "DaskDistributedBackend" and hasattr(backend, "client"):
        return DaskCluster(backend.client)
    if name == "RayBackend":
        return RayCluster()
    return None


def parallel_backend(backend, active):
    """What to give ``joblib.Parallel`` for the ``backend`` setting.

    The backend instance already made (``active``) on a cluster: joblib 1.6
    makes the Dask backend from its name with a stray ``nesting_level``
    keyword that it then passes to every task, which fails.
    """
    return active if cluster_for(active) is not None else backend


class ModelLost(RuntimeError):
    """Every copy of a model in the cluster went with its lost workers."""


class _Rows:
    """Row chunk carried inside its task.

    joblib's Dask backend scatters every weak-referenceable argument larger
    than 1 kB; a slotted object without ``__weakref__`` is left in the task.
    """

    __slots__ = ("rows",)

    def __init__(self, rows):
        self.rows = rows


def run_carried(task, model, method, rows, *args):
    """Worker side of a cluster task: ``task`` on the model and rows."""
    rows = rows.rows if isinstance(rows, _Rows) else rows
    return task(resolve(model), method, rows, *args)


class _Shipped:
    """Models already in a cluster, by (cluster, fitted-state token).

    A model's token (from :class:`~sklearn_parpredict._sharing.ModelHandle`)
    changes whenever it is refitted, re-parametrised or replaced, and stops
    being live when the model is garbage collected: entries of tokens no
    longer live are dropped on the next look-up, which frees the model in the
    cluster.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._refs: dict[tuple, object] = {}

    def get(self, key: tuple, valid, ship):
        """The reference under ``key``, shipping the model when it is not."""
        with self._lock:
            live = live_tokens()
            for stale in [k for k in self._refs if k[-1] not in live]:
                del self._refs[stale]
            ref = self._refs.get(key)
            if ref is None or not valid(ref):
                ref = self._refs[key] = ship()
            return ref

    def __contains__(self, key: tuple) -> bool:
        with self._lock:
            return key in self._refs

    def forget(self, key: tuple) -> None:
        with self._lock:
            self._refs.pop(key, None)


_shipped = _Shipped()


class DaskCluster:
    """Ship models to the workers of a ``distributed.Client`` once."""

    def __init__(self, client):
        self.client = client

    def _key(self, estimator) -> tuple:
        return ("dask", id(self.client), ModelHandle(estimator).token)

    def model(self, estimator) -> ClusterModel:
        """A handle of ``estimator``, scattered to the cluster."""

        def valid(future):
            # A future is lost when every worker that held it died, and
            # cancelled when its client closed.
            return future.status == "finished" and future.client is self.client

        def ship():
            return self.client.scatter(estimator, hash=False)

        key = self._key(estimator)
        future = _shipped.get(key, valid, ship)
        return ClusterModel(key[-1], _fetch_dask, future.key, keep=future)

    def future(self, estimator):
        """The future of ``estimator`` on the cluster, for Dask graphs.

        A graph that takes the future depends on it: Dask fetches it for
        every worker that runs a block, and fails the blocks clearly if it
        is lost.
        """
        return self.model(estimator).keep

    def shipped(self, estimator) -> bool:
        return self._key(estimator) in _shipped

    def rows(self, chunk):
        return _Rows(chunk)

    def run(self, attempt, estimators):
        """``attempt()``, once more when a lost worker took a model with it.

        Dask runs a lost worker's tasks again by itself, but not a model
        whose every copy was on lost workers: the tasks that need it fail.
        The models are then shipped anew for the second attempt.
        """
        try:
            return attempt()
        except ModelLost:
            for estimator in estimators:
                _shipped.forget(self._key(estimator))
            return attempt()

    def warm_up(self, estimators) -> None:
        """Ship the models in the background, for the next call."""

        def ship():
            for estimator in estimators:
                try:
                    self.model(estimator)
                except Exception:  # noqa: S110 - a failed warm-up only costs speed
                    pass

        threading.Thread(target=ship, name="sklearn-parpredict-ship").start()


class RayCluster:
    """Put models in Ray's object store once per fitted state."""

    def _key(self, estimator) -> tuple:
        import ray

        # Object references do not outlive the Ray session that made them.
        session = ray.get_runtime_context().get_job_id()
        return ("ray", session, ModelHandle(estimator).token)

    def model(self, estimator) -> ClusterModel:
        """A handle of ``estimator``, put in the object store."""
        import ray

        key = self._key(estimator)
        ref = _shipped.get(key, lambda ref: True, lambda: ray.put(estimator))
        return ClusterModel(key[-1], _fetch_ray, ref)

    def shipped(self, estimator) -> bool:
        return self._key(estimator) in _shipped

    def rows(self, chunk):
        return chunk

    def run(self, attempt, estimators):
        return attempt()

    def warm_up(self, estimators) -> None:
        # Putting a model in the object store is all there is to warm: Ray's
        # joblib backend starts its workers anew on every call.
        for estimator in estimators:
            self.model(estimator)


# -- worker side ---------------------------------------------------------------

_worker_models: OrderedDict[str, object] = OrderedDict()
_worker_lock = fork_safe(globals(), "_worker_lock", threading.Lock)


class ClusterModel:
    """A model in a cluster, pickled as its token and address.

    A task resolves it (:func:`resolve`) on the worker's task thread, not
    when the task is unpickled (on the worker's event loop, where waiting
    for a peer would deadlock). Each worker process resolves a fitted state
    once: later tasks find it in the worker's cache, whatever the cluster did
    with its copies meanwhile.
    """

    def __init__(self, token: str, fetch, address, keep=None):
        self.token = token
        self.fetch = fetch
        self.address = address
        # What keeps the model alive in the cluster (a Dask future); never
        # pickled, so that tasks do not depend on it.
        self.keep = keep

    def __reduce__(self):
        return ClusterModel, (self.token, self.fetch, self.address)

    def __dask_tokenize__(self):
        return self.token


def _load_model(token: str, fetch, address):
    """The model under ``token`` in this process, fetched the first time."""
    with _worker_lock:
        model = _worker_models.get(token)
        if model is None:
            model = _worker_models[token] = fetch(address)
        _worker_models.move_to_end(token)
        while len(_worker_models) > _WORKER_CACHE_SIZE:
            _worker_models.popitem(last=False)
        return model


def resolve(model):
    """The model behind a handle that reached the worker unpickled."""
    if isinstance(model, ClusterModel):
        return _load_model(model.token, model.fetch, model.address)
    return model


def _fetch_dask(key):
    import distributed

    worker = distributed.get_worker()
    if key in worker.data:  # the worker the model was scattered to
        return worker.data[key]
    client = distributed.get_client()
    # Known to be in memory: a future made here is told of nothing by the
    # scheduler, and gathering one still "pending" would wait forever.
    # distributed annotates ``state`` as a FutureState, but looks it up by
    # name among its handlers of a key's states.
    future: Any = distributed.Future(key, client, state="memory")  # type: ignore[arg-type]
    # ``who_has`` takes futures: given keys, it asks for none.
    if client.who_has([future]).get(key):
        return client.gather(future)
    raise ModelLost(
        "The fitted model is no longer on the Dask cluster: every worker that "
        "held it was lost."
    )


def _fetch_ray(ref):
    import ray

    return ray.get(ref)
