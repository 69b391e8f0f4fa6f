"""Sparse inputs cut by rows, and sparse outputs joined, as the serial call
has them: in the caller's class, blocks, index dtype and entries.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

# Sparse formats that support fast row slicing; others are converted once
# before splitting and each chunk is converted back, so the estimator sees the
# format the serial call would see.
_ROW_SLICEABLE = {"csr", "csc", "lil"}


def converted(X) -> bool:
    """Whether ``X`` is converted to CSR to be cut (see :func:`as_csr`): its chunks
    are converted back to the caller's sparse class (see :func:`rows`),
    and a call on all rows is given ``X`` itself."""
    return sp.issparse(X) and X.format not in _ROW_SLICEABLE


def as_csr(X, *, keep_duplicates: bool = False):
    """The sparse ``X``, of a format that :func:`converted` says is not cut
    as it is, as CSR.

    ``keep_duplicates``: keep a COO's duplicate entries, for chunks given
    back as COO (see :func:`rows`). Not for a CSR given to an estimator as
    it is: its own conversion of the COO sums them, where it takes a CSR's
    as they are (a ``Normalizer`` squares each).
    """
    csr = X.tocsr()
    if keep_duplicates and X.format == "coo" and X.ndim == 2 and csr.nnz < X.nnz:
        return _rows_of_coo(X)
    return csr


def _rows_of_coo(X):
    """The COO ``X``, which holds duplicate entries, as CSR of its entries
    as they are, row by row.

    ``tocsr`` sums duplicates: an identity's chunks came back with them
    summed where the serial call's output keeps them. Sorted stably, each
    row keeps its entries in the order ``X`` holds them. (Four times as
    long as ``tocsr`` on entries in no order: only for duplicates.)
    """
    order = np.argsort(X.row, kind="stable")
    indptr = np.zeros(X.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(X.row, minlength=X.shape[0]), out=indptr[1:])
    return sp.csr_matrix((X.data[order], X.col[order], indptr), shape=X.shape)


def as_sparse(X, sparse_type: type):
    """``X`` as the sparse class ``sparse_type``."""
    return X if type(X) is sparse_type else sparse_type(X)


def as_rows_of(chunk, given):
    """``chunk``, rows of the sparse ``given`` cut from its CSR form, in
    ``given``'s class, as the serial call gives the estimator its rows.

    A BSR chunk keeps ``given``'s block columns over blocks of one row:
    its rows need not be whole blocks, and the blocks SciPy would pick for
    it store zeros that ``given`` does not (a scaler's output held 354
    values where the serial call's holds 348).
    """
    if type(chunk) is type(given):
        return chunk
    if given.format == "bsr":
        return type(given)(chunk, blocksize=(1, given.blocksize[1]))
    chunk = type(given)(chunk)
    if given.format == "coo" and _canonical_by_rows():
        # Rows of a canonical COO are canonical (and cut from CSR, sorted
        # by rows): flagged as ``given`` is, their outputs are as the
        # serial call's (see _vstack).
        chunk.has_canonical_format = given.has_canonical_format
    return chunk


def rows(X, start: int, stop: int, given=None):
    """Rows ``start:stop`` of the sparse ``X``, in the class of ``given``,
    the caller's input that ``X`` is the CSR form of (see :func:`as_csr`),
    where there is one."""
    chunk = X[start:stop]
    if given is not None:
        chunk = as_rows_of(chunk, given)
    # The index dtype of the rows the serial call is given: SciPy slices
    # int64 indices into int32 ones, and the estimator's output (an
    # identity's, a PolynomialFeatures') then had int32 indices.
    return index_dtypes_kept(chunk, [X if given is None else given])


def joined(parts):
    """The sparse outputs ``parts`` of consecutive row chunks, stacked as
    the serial call's output."""
    first = parts[0]
    # As the parts' class: older SciPy stacks sparse arrays as a matrix.
    out = as_sparse(_vstack(parts), type(first))
    if all(part.dtype == first.dtype for part in parts):
        out = out.astype(first.dtype, copy=False)
    # (Chunks of other dtypes, as NumPy joins arrays: a chunk's rows of
    # ints and another's of floats, from a list of lists, are floats in
    # the serial call. Cast to the first chunk's dtype, 0.5 came back 0.)
    return index_dtypes_kept(out, parts)


def _vstack(parts):
    """The sparse ``parts`` stacked by rows, in the first one's format."""
    first = parts[0]
    if first.format == "bsr" and len({part.blocksize for part in parts}) == 1:
        return _vstack_blocks(parts)
    out = sp.vstack(parts, format=first.format)
    if first.format == "coo" and _canonical_by_rows():
        # Canonical parts, sorted by rows, stack into a canonical COO; SciPy
        # flags none it stacks (the serial call's identity on a canonical
        # COO returned it flagged, the joined one not).
        out.has_canonical_format = all(part.has_canonical_format for part in parts)
    return out


@functools.cache
def _canonical_by_rows() -> bool:
    """Whether SciPy sorts a canonical COO by rows, then columns (SciPy
    1.13 and later; before, by columns, and parts sorted by columns do not
    stack into a COO sorted by columns)."""
    probe = sp.coo_matrix(([1, 1], ([1, 0], [0, 1])), shape=(2, 2))
    probe.sum_duplicates()
    return probe.row.tolist() == [0, 1]


def _vstack_blocks(parts):
    """BSR ``parts`` of the same blocks stacked by rows, in those blocks.

    SciPy stacks BSR through COO into blocks of its own choosing (6x6 for
    parts in 1x3 blocks), which store zeros the parts do not: an identity
    on a BSR in 1x3 blocks returned 360 values where the serial call's 348.
    """
    first = parts[0]
    stored = np.cumsum([0] + [part.indptr[-1] for part in parts[:-1]])
    indptr = np.concatenate(
        [first.indptr[:1]]
        + [part.indptr[1:] + before for part, before in zip(parts, stored)]
    )
    # In the parts' index dtype where it holds all blocks (the running
    # total is int64).
    dtype = np.result_type(*(part.indptr for part in parts))
    if indptr[-1] <= np.iinfo(dtype).max:
        indptr = indptr.astype(dtype)
    return type(first)(
        (
            np.concatenate([part.data for part in parts]),
            np.concatenate([part.indices for part in parts]),
            indptr,
        ),
        shape=(sum(part.shape[0] for part in parts), first.shape[1]),
        blocksize=first.blocksize,
    )


# The index arrays of each sparse format (CSR, CSC and BSR; DIA; COO).
INDEXES = ("indices", "indptr", "offsets", "row", "col")


def index_dtypes_kept(out, parts):
    """``out``, stacked from sparse ``parts``, with their index dtype where
    SciPy stacked them into a narrower one.

    scikit-learn builds some sparse outputs with int64 indices whatever
    their size (``kneighbors_graph``, ``DictVectorizer``,
    ``LabelBinarizer(sparse_output=True)``, a tree's ``decision_path``, with
    SciPy 1.17); ``sp.vstack`` gives a matrix the smallest index dtype its
    size allows, and their outputs came back with int32 indices. A call on
    more rows never needs narrower indices than its parts'.
    """
    for name in INDEXES:
        index = getattr(out, name, None)
        if not isinstance(index, np.ndarray):
            continue
        dtypes = {getattr(part, name).dtype for part in parts}
        if len(dtypes) == 1:
            (dtype,) = dtypes
            if dtype.itemsize > index.dtype.itemsize:
                _set_index(out, name, index.astype(dtype))
    return out


def _set_index(matrix, name: str, index) -> None:
    """Set the index array ``name`` of the sparse ``matrix`` to ``index``."""
    coords = getattr(matrix, "coords", None)
    if name in ("row", "col") and coords is not None:
        # A COO of SciPy 1.13 and later keeps its row and col in ``coords``,
        # and setting either casts it to the dtype it had.
        at = len(coords) - (2 if name == "row" else 1)
        matrix.coords = (*coords[:at], index, *coords[at + 1 :])
    else:
        setattr(matrix, name, index)
