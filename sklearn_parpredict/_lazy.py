"""Dask collections in, lazy Dask collections out: one task per block.

A ``dask.array.Array`` or ``dask.dataframe.DataFrame`` input is not computed:
the method is mapped over its blocks (row chunks) and the result is a lazy
collection whose ``compute()`` is what the serial call returns on the
computed input. Dask then runs the blocks wherever its scheduler runs tasks,
a ``distributed`` cluster included.

The output's type and block shapes are known before anything is computed by
calling the method on one row made up from the input's dtypes (or, when the
estimator rejects made-up values, on the input's first row).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn import config_context, get_config

from sklearn_parpredict import _chunking
from sklearn_parpredict._distributed import DaskCluster
from sklearn_parpredict._sharing import ModelHandle


def is_collection(X) -> bool:
    """Whether ``X`` is a Dask collection (without importing Dask)."""
    if "dask" not in sys.modules or not hasattr(X, "__dask_graph__"):
        return False
    import dask

    return dask.is_dask_collection(X)


def computed(X):
    """``X`` computed when it is a Dask collection, else ``X`` itself."""
    return X.compute() if is_collection(X) else X


def _call_block(block, model, method, columns, params, empty, config):
    """One block's output; an empty block gives the output's empty form.

    ``config`` is scikit-learn's configuration where the collection was
    made (``transform_output``, ``assume_finite``): Dask's threads and
    workers do not share it.
    """
    if _chunking.n_rows(block) == 0:
        if hasattr(empty, "iloc"):
            return empty.set_axis(block.index[:0], axis=0)
        return empty
    X = _chunking.select_columns(block, columns)
    with config_context(**config):
        return getattr(model, method)(X, **params)


def _model_ref(estimator):
    """The model as a graph argument: a scattered future on a cluster.

    With a ``distributed`` client as Dask's scheduler, the model is the
    future that :class:`~sklearn_parpredict._distributed.DaskCluster` keeps,
    scattered once per fitted state, which Dask moves to each worker that
    needs it. Otherwise it is one key of the graph, sent once per
    computation.
    """
    import dask

    distributed = sys.modules.get("distributed")
    scheduler = dask.config.get("scheduler", None)
    if distributed is not None and scheduler in (None, "dask.distributed"):
        try:
            client = distributed.default_client()
        except ValueError:  # no client: Dask's local schedulers
            client = None
        if client is not None:
            return DaskCluster(client).future(estimator)
    token = ModelHandle(estimator).token
    return dask.delayed(estimator, name=f"sklearn-parpredict-model-{token}")


def _sample_output(estimator, method, X, columns, params):
    """The method's output on one row of ``X``'s dtypes, computing little.

    A row of zeros (arrays) or Dask's made-up values (frames) is tried
    first; estimators that reject it (unknown categories, ...) get the first
    row of ``X``, which computes its first block only.
    """
    if hasattr(X, "_meta_nonempty"):
        made_up = X._meta_nonempty.iloc[:1]
    else:
        made_up = np.zeros((1, *X.shape[1:]), dtype=X.dtype)
    try:
        return _call_block(
            made_up, estimator, method, columns, params, None, get_config()
        )
    except Exception as exc:
        with warnings.catch_warnings():
            # head() warns when the first partition has fewer rows.
            warnings.simplefilter("ignore", UserWarning)
            first = X.head(1) if hasattr(X, "head") else X[:1].compute()
        if _chunking.n_rows(first) == 0:
            raise ValueError(
                f"Cannot tell the output of {type(estimator).__name__}.{method} "
                f"on this Dask input: it rejects made-up rows ({exc}) and the "
                f"first block is empty."
            ) from exc
        return _call_block(
            first, estimator, method, columns, params, None, get_config()
        )


def call(estimator, method: str, X, columns=None, params=None):
    """``estimator.method`` mapped over the blocks of the Dask collection ``X``.

    Returns a lazy Dask collection: a Dask array for array outputs (with
    known block sizes when ``X`` is a Dask array), a Dask DataFrame or Series
    for pandas outputs.
    """
    import dask.array as da

    params = params or {}
    getattr(estimator, method)  # fail as the serial call does
    if not hasattr(X, "ndim") or X.ndim != 2:
        raise ValueError(
            f"Expected a 2-D Dask array or a Dask DataFrame, got "
            f"{type(X).__name__} with {getattr(X, 'ndim', '?')} dimensions."
        )
    sample = _sample_output(estimator, method, X, columns, params)
    if isinstance(sample, list | tuple):
        raise TypeError(
            f"{type(estimator).__name__}.{method} returns one array per output, "
            f"which cannot be one Dask collection: call it on each output's "
            f"model, or compute the input first."
        )
    empty = _chunking.row_slice(sample, 0, 0)
    model = _model_ref(estimator)
    config = get_config()
    if hasattr(X, "map_partitions"):
        if sp.issparse(sample):
            raise TypeError(
                f"{type(estimator).__name__}.{method} returns a sparse matrix, "
                f"which a Dask DataFrame's partitions cannot make into one "
                f"collection: pass a Dask array, or ask for dense output."
            )
        return X.map_partitions(
            _call_block, model, method, columns, params, empty, config, meta=empty
        )
    if hasattr(sample, "iloc"):
        raise TypeError(
            f"{type(estimator).__name__}.{method} returns a {type(sample).__name__} "
            f"for array input, which cannot be a Dask array: pass a Dask "
            f"DataFrame to get a Dask DataFrame."
        )
    if len(X.chunks[1]) > 1:
        # Estimators need every column of a row at once.
        X = X.rechunk({1: -1})
    if sample.ndim == 1:
        layout = {"drop_axis": 1, "chunks": (X.chunks[0],)}
    else:
        layout = {"chunks": (X.chunks[0], *((n,) for n in sample.shape[1:]))}
        if sample.ndim > 2:
            layout["new_axis"] = list(range(2, sample.ndim))
    return da.map_blocks(
        _call_block,
        X,
        model,
        method,
        columns,
        params,
        empty,
        config,
        dtype=sample.dtype,
        meta=empty,
        **layout,
    )
