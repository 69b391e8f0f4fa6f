"""Dask collections in, lazy Dask collections out: one task per block.

A ``dask.array.Array`` or ``dask.dataframe.DataFrame`` input is not computed:
the method is mapped over its blocks (row chunks) and the result is a lazy
collection whose ``compute()`` is what the serial call returns on the
computed input. Dask then runs the blocks wherever its scheduler runs tasks,
a ``distributed`` cluster included. A call whose output for a row depends
on the other rows (see :func:`._rowwise.splittable`) is one task on the
whole input, and a method that fits the estimator or scores it is the serial
call itself.

The output's type and block shapes are known before anything is computed by
calling the method on one row made up from the input's dtypes (or, when the
estimator rejects made-up values, on the input's first row).
"""

from __future__ import annotations

import copy
import math
import sys
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn import config_context

from sklearn_parpredict import _chunking, _rowwise
from sklearn_parpredict._distributed import DaskCluster
from sklearn_parpredict._jobs import run_task
from sklearn_parpredict._sharing import ModelHandle
from sklearn_parpredict._threads import caller_context


def is_collection(X) -> bool:
    """Whether ``X`` is a Dask collection (without importing Dask)."""
    if "dask" not in sys.modules or not hasattr(X, "__dask_graph__"):
        return False
    import dask

    return dask.is_dask_collection(X)


def computed(X):
    """``X`` computed when it is a Dask collection, else ``X`` itself."""
    return X.compute() if is_collection(X) else X


def _call_block(
    block, model, method, columns, params, empty, config, errstate, block_info=None
):
    """One block's output.

    ``empty`` is the output's empty form, which an empty block gives without
    calling the estimator; None where the estimator must see empty blocks
    too (see :func:`call`). ``config`` is scikit-learn's configuration where
    the collection was made (``transform_output``, ``assume_finite``), and
    ``errstate`` NumPy's floating-point error state there
    (``np.errstate(divide="raise")``): Dask's threads and workers do not
    share them. ``block_info`` is Dask's description of a Dask array's
    block: its row range cuts the parameters that have one value per row.
    """
    if empty is not None and _chunking.n_rows(block) == 0:
        if hasattr(empty, "iloc"):
            return empty.set_axis(block.index[:0], axis=0)
        return empty
    if block_info is not None:
        rows = block_info[0]
        (start, stop), n = rows["array-location"][0], rows["shape"][0]
        params = _rowwise.params_for_rows(params, n, start, stop)
    with config_context(**config):
        return errstate.run(run_task, model, method, block, columns, params)


def _is_frame(X) -> bool:
    return hasattr(X, "map_partitions")


def _row_blocks(X) -> int:
    return X.npartitions if _is_frame(X) else X.numblocks[0]


def _known_rows(X) -> int | None:
    """``X``'s number of rows where Dask knows it without computing (a Dask
    array of known chunks), else None."""
    if _is_frame(X) or math.isnan(X.shape[0]):
        return None
    return int(X.shape[0])


def _one_block(X):
    """``X`` as one row block: the whole input in one task."""
    if _is_frame(X):
        return X.repartition(npartitions=1)
    import dask
    import dask.array as da

    # Not rechunk: it needs the chunks' sizes, unknown in an array made from
    # a Dask DataFrame.
    return da.from_delayed(dask.delayed(X), shape=X.shape, dtype=X.dtype, meta=X._meta)


def _model_ref(estimator):
    """The model as a graph argument: a scattered future on a cluster.

    With a ``distributed`` client as Dask's scheduler, the model is the
    future that :class:`~sklearn_parpredict._distributed.DaskCluster` keeps,
    scattered once per fitted state. The graph depends on it: Dask moves it
    to each worker that runs a block on every computation (its memory
    manager drops the extra copies in between), and no other scheduler can
    compute the graph. Otherwise it is one key of the graph, sent once per
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
    row of ``X``. Their warnings are silenced: the serial call makes no
    such calls, and with warnings turned into errors a warning would send
    the probe down the other path.
    """
    n = _known_rows(X)
    if n is not None:
        params = _rowwise.params_for_rows(params, n, 0, 1)
    if hasattr(X, "_meta_nonempty"):
        made_up = X._meta_nonempty.iloc[:1]
    else:
        made_up = np.zeros((1, *X.shape[1:]), dtype=X.dtype)
    context = caller_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _call_block(
                made_up, estimator, method, columns, params, None, *context
            )
        except Exception:  # noqa: S110 - made-up values rejected: a real row
            pass
        return _call_block(
            _first_row(X), estimator, method, columns, params, None, *context
        )


def _first_row(X):
    """The first row of ``X``, or no rows where ``X`` has none (the serial
    call on them then raises as it does, in most estimators).

    Blocks are computed in order up to the first that has rows: Dask's
    ``head`` looks in the first one only, which a filter may have emptied.
    """
    if _known_rows(X) is not None:
        return X[:1].compute()
    frame = _is_frame(X)
    blocks = X.partitions if frame else X.blocks
    for i in range(_row_blocks(X)):
        block = blocks[i].head(1, npartitions=1) if frame else blocks[i].compute()
        if _chunking.n_rows(block):
            break
    return _chunking.row_slice(block, 0, 1)


def call(estimator, method: str, X, columns=None, params=None):
    """``estimator.method`` mapped over the blocks of the Dask collection ``X``.

    Returns a lazy Dask collection: a Dask array for array outputs (with
    known block sizes when ``X`` is a Dask array), a Dask DataFrame or Series
    for pandas outputs. A method that fits the estimator or scores it
    (``fit_transform``, ``score``) returns what the serial call on ``X``
    returns.
    """
    import dask.array as da

    params = params or {}
    getattr(estimator, method)  # fail as the serial call does
    if _rowwise.fits_or_sums(method):
        # Lazily, a worker would fit its own copy and leave this process's
        # estimator as it was; a score is one number, not rows.
        return run_task(estimator, method, X, columns, params)
    if not hasattr(X, "ndim") or X.ndim != 2:
        raise ValueError(
            f"Expected a 2-D Dask array or a Dask DataFrame, got "
            f"{type(X).__name__} with {getattr(X, 'ndim', '?')} dimensions."
        )
    probed = estimator
    if not _rowwise.splittable(estimator, method, params):
        # A row's output depends on the other rows of the call.
        X = _one_block(X)
        # Such an estimator may draw from a random state it keeps: probed,
        # the state would move on before the blocks draw from it.
        probed = copy.deepcopy(estimator)
    n = _known_rows(X)
    if n is None:
        _check_no_rows_to_cut(estimator, method, params)
    sample = _sample_output(probed, method, X, columns, params)
    if isinstance(sample, list | tuple):
        raise TypeError(
            f"{type(estimator).__name__}.{method} returns one array per output, "
            f"which cannot be one Dask collection: call it on each output's "
            f"model, or compute the input first."
        )
    meta = _chunking.row_slice(sample, 0, 0)
    # On no rows at all the serial call raises, in most estimators: an empty
    # block gives an empty output only beside others that may have rows.
    empty = meta if _row_blocks(X) > 1 and n != 0 else None
    model = _model_ref(estimator)
    # What every block is called with; the caller's config and error state
    # last (see _call_block).
    block_args = (model, method, columns, params, empty, *caller_context())
    if hasattr(X, "map_partitions"):
        if sp.issparse(sample):
            raise TypeError(
                f"{type(estimator).__name__}.{method} returns a sparse matrix, "
                f"which a Dask DataFrame's partitions cannot make into one "
                f"collection: pass a Dask array, or ask for dense output."
            )
        return X.map_partitions(_call_block, *block_args, meta=meta)
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
        *block_args,
        dtype=sample.dtype,
        meta=meta,
        **layout,
    )


def _check_no_rows_to_cut(estimator, method: str, params: dict) -> None:
    """Raise where a parameter may have one value per row of an input whose
    row blocks' sizes are unknown: it could not be cut with the blocks."""
    # Tuples are left whole, as settings (``iteration_range=(0, 3)``).
    names = [
        name
        for name, value in params.items()
        if _rowwise.row_like(value) and not isinstance(value, tuple)
    ]
    if names:
        raise ValueError(
            f"Cannot tell whether the parameters {names} of "
            f"{type(estimator).__name__}.{method} have one value per row of "
            f"this Dask input, whose row chunks are unknown (a Dask DataFrame, "
            f"or an array made from one): give a Dask array of known chunks "
            f"(ddf.to_dask_array(lengths=True), x.compute_chunk_sizes()), or "
            f"compute the input first."
        )
