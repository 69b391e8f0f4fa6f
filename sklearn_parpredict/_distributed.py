"""Run the engine's tasks on a cluster: joblib's ``dask`` and ``ray`` backends.

On a process pool the engine ships models and large inputs through files on
local shared memory (:mod:`~sklearn_parpredict._sharing`), which a worker on
another machine cannot open. On a cluster backend a fitted model is instead
put into the cluster once per fitted state and client, and every task refers
to it:

- Dask: the model is scattered to every worker (``broadcast=True``) and tasks
  take its future; each worker deserialises it once and keeps it in its data
  store, and the scheduler holds only the key, however many chunks and calls
  use it.
- Ray: the model is put in the object store once; each pool worker loads it
  once per call of the backend (joblib's Ray backend starts its actors per
  call).

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

from sklearn_parpredict._sharing import ModelHandle, live_tokens

# Fitted models a Ray worker keeps between tasks.
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


class _Rows:
    """Row chunk carried inside its task.

    joblib's Dask backend scatters every weak-referenceable argument larger
    than 1 kB; a slotted object without ``__weakref__`` is left in the task.
    """

    __slots__ = ("rows",)

    def __init__(self, rows):
        self.rows = rows


def run_carried(task, model, method, rows, *args):
    """Worker side of a cluster task: ``task`` with the chunk unwrapped."""
    return task(model, method, rows.rows if isinstance(rows, _Rows) else rows, *args)


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


_shipped = _Shipped()


class DaskCluster:
    """Ship models to the workers of a ``distributed.Client`` once."""

    def __init__(self, client):
        self.client = client

    def _key(self, estimator) -> tuple:
        return ("dask", id(self.client), ModelHandle(estimator).token)

    def model(self, estimator):
        """A future of ``estimator`` that every worker holds."""

        def valid(future):
            # A future is lost when every worker that held it died, and
            # cancelled when its client closed.
            return future.status == "finished" and future.client is self.client

        def ship():
            return self.client.scatter(estimator, broadcast=True, hash=False)

        return _shipped.get(self._key(estimator), valid, ship)

    def shipped(self, estimator) -> bool:
        return self._key(estimator) in _shipped

    def rows(self, chunk):
        return _Rows(chunk)

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

    def model(self, estimator):
        """A handle that pickles to the model's object reference."""
        import ray

        key = self._key(estimator)
        ref = _shipped.get(key, lambda ref: True, lambda: ray.put(estimator))
        return _RayModel(key[-1], ref)

    def shipped(self, estimator) -> bool:
        return self._key(estimator) in _shipped

    def rows(self, chunk):
        return chunk

    def warm_up(self, estimators) -> None:
        # Putting a model in the object store is all there is to warm: Ray's
        # joblib backend starts its workers anew on every call.
        for estimator in estimators:
            self.model(estimator)


class _RayModel:
    """A model in Ray's object store, loaded once per worker process."""

    def __init__(self, token: str, ref):
        self.token = token
        self.ref = ref

    def __reduce__(self):
        return _load_ray_model, (self.token, self.ref)


_worker_models: OrderedDict[str, object] = OrderedDict()
_worker_lock = threading.Lock()


def _load_ray_model(token: str, ref):
    with _worker_lock:
        model = _worker_models.get(token)
        if model is None:
            import ray

            model = _worker_models[token] = ray.get(ref)
        _worker_models.move_to_end(token)
        while len(_worker_models) > _WORKER_CACHE_SIZE:
            _worker_models.popitem(last=False)
        return model
