"""Split any supported input by rows and concatenate outputs back.

Every container a scikit-learn estimator accepts is split here, and every
container a prediction method returns is joined here, so that the engine never
needs to know what it is carrying.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.utils import _safe_indexing

# Sparse formats that support fast row slicing; others are converted once
# before splitting and each chunk is converted back, so the estimator sees the
# format the serial call would see.
_ROW_SLICEABLE_SPARSE = {"csr", "csc", "lil"}


def n_rows(X) -> int:
    """Number of rows (samples) of ``X``."""
    shape = getattr(X, "shape", None)
    if shape is not None and len(shape) >= 1 and shape[0] is not None:
        return int(shape[0])
    if shape == ():
        # A scalar has no rows to split: the estimator's own call, in-process,
        # raises what the serial call raises.
        return 0
    return len(X)


def prepare(X):
    """Return ``X`` in a form that can be cut into row chunks cheaply.

    Lists and tuples stay lists (text estimators take lists of strings); sparse
    formats without row slicing become CSR.
    """
    if sp.issparse(X) and X.format not in _ROW_SLICEABLE_SPARSE:
        return X.tocsr()
    if not hasattr(X, "shape") and not hasattr(X, "__len__"):
        # Array-likes that only implement __array__.
        return np.asarray(X)
    return X


def row_slice(X, start: int, stop: int, fmt: str | None = None):
    """Rows ``start:stop`` of ``X`` (a view where the container allows it).

    ``fmt`` is the sparse format the chunk must be returned in.
    """
    if isinstance(X, np.ndarray | list | tuple):
        return X[start:stop]
    if sp.issparse(X):
        chunk = X[start:stop]
        return chunk.asformat(fmt) if fmt and chunk.format != fmt else chunk
    if hasattr(X, "iloc"):
        return X.iloc[start:stop]
    return _safe_indexing(X, slice(start, stop))


def select_columns(X, columns):
    """Columns ``columns`` of ``X`` (names, positions, slice or mask)."""
    if columns is None:
        return X
    return _safe_indexing(X, columns, axis=1)


def split_bounds(start: int, stop: int, n_chunks: int) -> list[tuple[int, int]]:
    """Cut ``[start, stop)`` into ``n_chunks`` contiguous, near-equal ranges."""
    n_chunks = max(1, min(n_chunks, stop - start))
    edges = np.linspace(start, stop, n_chunks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def concatenate(parts: list):
    """Join per-chunk outputs into what one call on all rows returns.

    Parameters
    ----------
    parts : list
        Outputs of the same method on consecutive row chunks, in row order.
    """
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(parts, axis=0)
    if sp.issparse(first):
        out = sp.vstack(parts, format=first.format)
        return out.astype(first.dtype, copy=False)
    if hasattr(first, "iloc"):
        return _concat_pandas(parts)
    if isinstance(first, list | tuple) and _is_per_output(parts):
        # Multi-output methods (predict_proba of a multi-output classifier)
        # return one array per output: join each output separately.
        joined = [concatenate(list(group)) for group in zip(*parts)]
        return type(first)(joined) if isinstance(first, tuple) else joined
    if isinstance(first, list):
        return [item for part in parts for item in part]
    raise TypeError(
        f"Cannot concatenate outputs of type {type(first).__name__} by rows."
    )


def _is_per_output(parts) -> bool:
    """Whether list outputs are one array per output rather than one per row."""
    return all(
        len(part) == len(parts[0])
        and all(hasattr(item, "shape") and len(item.shape) >= 1 for item in part)
        for part in parts
    )


def _concat_pandas(parts):
    import pandas as pd

    out = pd.concat(parts, axis=0)
    if all(isinstance(p.index, pd.RangeIndex) and p.index.start == 0 for p in parts):
        # Every chunk got a fresh default index (the estimator ignored the
        # input's index, or the input had none): the serial call numbers all
        # rows once.
        out.index = pd.RangeIndex(len(out))
    return out
