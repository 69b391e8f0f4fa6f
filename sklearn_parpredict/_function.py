"""The function form of :class:`ParallelPredictor`."""

from __future__ import annotations

from typing import Any

from sklearn_parpredict._engine import ENGINE_CONSTRAINTS, Backend, run_one
from sklearn_parpredict._validation import validate_once

_CONSTRAINTS = {
    # The estimator checks its input, as in the serial call: some take
    # None (neighbors: each sample without itself) or an iterable of texts.
    "X": "no_validation",
    "method": [str],
    **{k: v for k, v in ENGINE_CONSTRAINTS.items() if k != "verbose"},
    "params": [dict, None],
}


def parallel_predict(
    estimator: Any,
    X: Any,
    *,
    method: str = "predict",
    n_jobs: int | None = -1,
    backend: Backend = None,
    chunk_size: int | str = "auto",
    params: dict | None = None,
) -> Any:
    """Call a fitted estimator's method on ``X`` in parallel over row chunks.

    The function form of :class:`ParallelPredictor`: the same engine, for code
    that does not want a wrapper. The result is what
    ``getattr(estimator, method)(X, **params)`` returns.

    Parameters
    ----------
    estimator : estimator instance
        A fitted estimator.
    X : {array-like, sparse matrix, DataFrame} of shape (n_samples, ...)
        The input, split by rows. It is the estimator's to check, as in the
        serial call: ``None`` for a neighbors estimator's own samples, an
        iterable of texts for a vectorizer.
    method : str, default="predict"
        The method to call: ``"predict"``, ``"predict_proba"``,
        ``"transform"``, ...
    n_jobs : int, default=-1
        Number of workers; ``-1`` uses all cores (see the scikit-learn
        glossary). ``None`` means 1 unless in a ``joblib.parallel_config``
        context.
    backend : str, default=None
        A joblib backend name; ``None`` uses the active
        ``joblib.parallel_config``, else threads when ``chunk_size="auto"``
        measures them faster for the estimator, else joblib's default.
    chunk_size : int or "auto", default="auto"
        Rows per task. ``"auto"`` times the first rows and picks the chunk
        count, or stays in-process when parallelism cannot pay for itself.
    params : dict, default=None
        Keyword arguments for the method. An array (or list, Series,
        sparse matrix) with as many rows as ``X`` has one value per row and
        is cut with the rows, as scikit-learn cuts the parameters of ``fit``
        in cross-validation; any other goes whole to every chunk.

    Returns
    -------
    output : object
        What the serial call returns: same type, dtype, shape and index.

    See Also
    --------
    ParallelPredictor : The same engine as a scikit-learn meta-estimator.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> from sklearn_parpredict import parallel_predict
    >>> X, y = make_classification(n_samples=200, random_state=0)
    >>> forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    >>> proba = parallel_predict(forest, X, method="predict_proba", n_jobs=2)
    >>> proba.shape
    (200, 2)
    >>> bool((proba == forest.predict_proba(X)).all())
    True
    """
    settings = (method, n_jobs, backend, chunk_size)
    validate_once(
        ("parallel_predict", type(params), settings, *map(type, settings)),
        _CONSTRAINTS,
        lambda: {
            "X": X,
            "method": method,
            "n_jobs": n_jobs,
            "backend": backend,
            "chunk_size": chunk_size,
            "params": params,
        },
        "parallel_predict",
    )
    return run_one(
        estimator,
        method,
        X,
        params or {},
        n_jobs=n_jobs,
        backend=backend,
        chunk_size=chunk_size,
    )
