"""Split any supported input by rows and concatenate outputs back.

Every container a scikit-learn estimator accepts is split here, and every
container a prediction method returns is joined here, so that the engine never
needs to know what it is carrying.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Number

import numpy as np
import scipy.sparse as sp
from sklearn.utils import _safe_indexing

from sklearn_parpredict import _sparse


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


def cuttable(X) -> bool:
    """Whether ``X`` can be cut by rows: not an iterator (a generator,
    ``map``) or a view of a mapping, which only the estimator may consume,
    not a string (one value to scikit-learn, not rows of characters) or a
    mapping (one sample to a DictVectorizer, not rows of keys), and not
    None (to a neighbors estimator, the samples it was fitted on)."""
    if X is None or isinstance(X, str | bytes | Mapping):
        return False
    return (
        isinstance(X, np.ndarray | list | tuple)
        or sp.issparse(X)
        or hasattr(X, "shape")
        or not hasattr(X, "__iter__")
        or (hasattr(X, "__len__") and hasattr(X, "__getitem__"))
    )


def is_vector(X) -> bool:
    """Whether ``X`` is one vector of numbers: a 1-D numeric array or Series,
    or a list of numbers."""
    if isinstance(X, list | tuple):
        return len(X) > 0 and isinstance(X[0], Number)
    # ndim first: asked for a missing attribute, a DataFrame looks for a
    # column of that name (a third of the wrapper's own time on a few rows).
    if getattr(X, "ndim", None) != 1:
        return False
    return getattr(getattr(X, "dtype", None), "kind", None) in tuple("biufc")


def prepare(X, *, keep_duplicates: bool = False):
    """Return ``X`` in a form that can be cut into row chunks cheaply.

    Lists and tuples stay lists (text estimators take lists of strings); sparse
    formats without row slicing become CSR (see :func:`._sparse.as_csr`, which
    ``keep_duplicates`` is passed to).
    """
    if _sparse.converted(X):
        return _sparse.as_csr(X, keep_duplicates=keep_duplicates)
    if not hasattr(X, "shape") and not hasattr(X, "__len__"):
        # Array-likes that only implement __array__.
        return np.asarray(X)
    return X


def row_slice(X, start: int, stop: int, given=None):
    """Rows ``start:stop`` of ``X`` (a view where the container allows it).

    ``given``: the caller's sparse input that ``X`` was converted from
    (see :func:`prepare`), whose class the chunk is returned in.
    """
    if isinstance(X, np.ndarray | list | tuple):
        return X[start:stop]
    if sp.issparse(X):
        return _sparse.rows(X, start, stop, given)
    if hasattr(X, "iloc"):
        return _flagged_as(X.iloc[start:stop], X)
    if hasattr(X, "num_rows") and hasattr(X, "slice"):
        # A pyarrow Table or RecordBatch.
        return X.slice(start, stop - start)
    return _safe_indexing(X, slice(start, stop))


def _flagged_as(chunk, X):
    """``chunk``, rows of the pandas object ``X``, flagged as a copy of
    another object only where ``X`` is.

    pandas < 3 (without copy-on-write) flags a slice as a copy of its
    frame: an estimator that sets a column on its input raised
    ``SettingWithCopyWarning`` on every chunk run in this process or on
    threads, where the serial call, given the frame itself, raises it only
    where the frame is such a copy (``df[df.a > 0]``).

    The flag is read from the objects' ``__dict__``: pandas 3 has none, and
    there ``chunk._is_copy`` is the column of that name, if any.
    """
    if vars(chunk).get("_is_copy") is not None:
        object.__setattr__(chunk, "_is_copy", vars(X).get("_is_copy"))
    return chunk


def select_columns(X, columns):
    """Columns ``columns`` of ``X`` (names, positions, slice or mask)."""
    if columns is None:
        return X
    return _safe_indexing(X, columns, axis=1)


def split_bounds(
    start: int, stop: int, n_chunks: int, most: int | None = None
) -> list[tuple[int, int]]:
    """Cut ``[start, stop)`` into ``n_chunks`` contiguous, near-equal ranges,
    never all of one size: one row moves from the second to the first, or,
    where that would make the first longer than ``most`` rows, the last
    row becomes a chunk of its own.

    Chunks of equal rows cannot tell an output of one row per input row
    from one whose columns are the batch's rows: a Gram matrix of the batch
    is ``(k, k)`` in every chunk of ``k`` rows, and was joined into an
    ``(n, k)`` array where the serial call returns ``(n, n)``.
    """
    n_chunks = max(1, min(n_chunks, stop - start))
    edges = list(np.linspace(start, stop, n_chunks + 1).round().astype(int))
    size, uneven = divmod(stop - start, n_chunks)
    if n_chunks > 1 and not uneven:
        if most is None or size < most:
            edges[1] += 1
        elif size > 1:
            edges.insert(-1, stop - 1)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class NotPerRow(ValueError):
    """The outputs of row chunks are not one row of output per row of input:
    they cannot be joined into the output of one call on all rows.

    ``lasting``: whether that is the method's (its outputs' rows or shape),
    not only these rows' (categories inferred from the values, chunks that
    cannot be told apart): its later calls run in one piece.
    """

    def __init__(self, message: str, *, lasting: bool = True):
        super().__init__(message)
        self.lasting = lasting


def concatenate(parts: list, rows: list[int]):
    """Join per-chunk outputs into what one call on all rows returns.

    Parameters
    ----------
    parts : list
        Outputs of the same method on consecutive row chunks, in row order.
    rows : list of int
        The number of input rows of each chunk.

    Raises
    ------
    NotPerRow
        When an output does not have one row per input row, or the chunks'
        outputs differ in anything but their rows.
    """
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, np.ndarray):
        _check_rows(parts, rows, lambda part: part.shape[1:])
        if isinstance(first, np.ma.MaskedArray):
            out = np.ma.concatenate(parts, axis=0)
            if all(part.dtype == first.dtype for part in parts):
                out = out.astype(first.dtype, copy=False)
            fill = np.asarray(first.fill_value)
            if all(
                part.dtype == first.dtype
                and np.asarray(part.fill_value).tobytes() == fill.tobytes()
                for part in parts
            ):
                # np.ma gives the joined array the default fill value; the
                # bytes compare a NaN fill value equal to itself.
                out.fill_value = first.fill_value
            return out
        out = np.concatenate(parts, axis=0)
        if all(part.dtype == first.dtype for part in parts):
            # NumPy joins in native byte order: '>i8' labels would come back
            # as '<i8'.
            out = out.astype(first.dtype, copy=False)
        if type(first) not in (np.ndarray, np.memmap):
            # np.recarray, np.matrix: what the serial call returns.
            out = out.view(type(first))
        return out
    if sp.issparse(first):
        _check_rows(parts, rows, lambda part: (part.shape[1:], part.format))
        return _sparse.joined(parts)
    if hasattr(first, "iloc"):
        _check_rows(parts, rows, lambda part: tuple(getattr(part, "columns", ())))
        return _concat_pandas(parts)
    if isinstance(first, list | tuple) and _is_per_output(parts, rows):
        # Multi-output methods (predict_proba of a multi-output classifier)
        # return one array per output: join each output separately.
        joined = [concatenate(list(group), rows) for group in zip(*parts)]
        if not isinstance(first, tuple):
            return joined
        # A named tuple (an estimator's ``Prediction(mean, std)``) takes its
        # items as arguments: given one list, it raised a TypeError.
        make = getattr(type(first), "_make", type(first))
        return make(joined)
    if isinstance(first, list):
        _check_rows(parts, rows, lambda part: type(part))
        return [item for part in parts for item in part]
    raise NotPerRow(f"the method returned a {type(first).__name__}, not rows")


def _check_rows(parts, rows, rest) -> None:
    """Every part has its chunk's rows, and is otherwise alike the first
    (``rest``: what must match, such as the shape past the rows)."""
    like, kind = rest(parts[0]), _kind(parts[0])
    for part, n in zip(parts, rows):
        if _kind(part) is not kind or getattr(part, "ndim", 1) < 1:
            raise NotPerRow(f"the method returned a {type(part).__name__}")
        if n_rows(part) != n:
            raise NotPerRow(
                f"the method returned {n_rows(part)} rows for {n} rows of input"
            )
        if rest(part) != like:
            raise NotPerRow("the outputs of different rows are of different shapes")
    if len(parts) > 1 and len(set(rows)) == 1 and _columns(parts[0]) == rows[0]:
        # As many columns as rows in every chunk of equal rows: columns that
        # may be the batch's rows (see split_bounds, which never cuts such
        # chunks; pieces of other sources may).
        raise NotPerRow(
            "as many columns as rows in chunks of equal rows", lasting=False
        )


def _kind(part) -> type:
    # An np.memmap is an ndarray of a model's mapped arrays (a model loaded
    # with joblib.load(mmap_mode=...)): the pieces that ran in this process
    # give one where those from workers give ndarrays, or the other way.
    return np.ndarray if type(part) is np.memmap else type(part)


def _columns(part) -> int | None:
    shape: tuple = getattr(part, "shape", ())
    return shape[1] if len(shape) > 1 else None


def _is_per_output(parts, rows) -> bool:
    """Whether list outputs are one array per output rather than one per row.

    Raises
    ------
    NotPerRow
        When they could as well be something else: one array per row, or
        an array for the whole batch that has as many items as the chunks
        have rows.
    """
    if not all(
        len(part) == len(parts[0])
        and all(getattr(item, "ndim", 0) >= 1 and item.shape[0] == n for item in part)
        for part, n in zip(parts, rows)
    ):
        return False
    if all(len(part) == n for part, n in zip(parts, rows)):
        # The top 4 labels of each row, in chunks of 4 rows, read as 4
        # outputs of 4 rows each.
        raise NotPerRow("the method returned as many arrays as rows", lasting=False)
    if len(set(rows)) == 1:
        # Chunks of equal rows cannot tell an output of one row per row from
        # one the same for any batch (a forest's decision_path returns its
        # trees' node offsets: 11 of them, in chunks of 11 rows); the latter
        # is the same in every chunk, and varies along it. An output per row
        # that does so needs other rows that repeat chunk after chunk, and
        # only costs a call; one the same for every row (the probabilities
        # of a class always predicted, a Gaussian process's prior standard
        # deviation far from its data) is joined.
        for items in zip(*parts):
            first = items[0]
            if (
                isinstance(first, np.ndarray)
                and not first.dtype.hasobject
                and len(first) > 1
                and not (first == first[:1]).all()
                and all(np.array_equal(first, item) for item in items[1:])
            ):
                raise NotPerRow(
                    "an output is the same for every chunk of rows", lasting=False
                )
    return True


def _concat_pandas(parts):
    import pandas as pd

    if isinstance(parts[0], pd.Series):
        parts = _same_categories(parts) or _missing_as_inferred(parts) or parts
    else:
        # By position: column names may repeat.
        copied = False
        all_dtypes = [list(part.dtypes) for part in parts]
        for i, dtype in enumerate(all_dtypes[0]):
            if all(dtypes[i] == dtype for dtypes in all_dtypes[1:]):
                continue
            chunks = [part.iloc[:, i] for part in parts]
            if isinstance(dtype, pd.CategoricalDtype):
                columns = _same_categories(chunks)
            else:
                columns = _missing_as_inferred(chunks)
            if columns is not None:
                if not copied:
                    parts = [part.copy(deep=False) for part in parts]
                    copied = True
                for part, column in zip(parts, columns):
                    part.isetitem(i, column)
    if isinstance(parts[0].index, pd.CategoricalIndex):
        # Categories inferred per chunk (an index set from a column).
        _same_categories([part.index for part in parts], join=False)
    out = _metadata_kept(_as_first(pd.concat(parts, axis=0), parts), parts)
    first = parts[0].index
    if (
        first.dtype == _OBJECTS
        and out.index.dtype != _OBJECTS
        and all(part.index.dtype == _OBJECTS for part in parts)
    ):
        # pandas infers a dtype for the objects of the indexes it joins: an
        # index of objects holding numbers, dates or (pandas 3) strings came
        # back as int64, datetime64 or str, where the serial call keeps the
        # input's. (A MultiIndex, of object dtype too, keeps its levels'
        # from pandas 2 on; a Series of pandas 1.5 makes any index of
        # datetimes set on it a DatetimeIndex.)
        values = np.concatenate([part.index.to_numpy() for part in parts])
        out.index = pd.Index(values, dtype=object, name=out.index.name)
    if all(isinstance(p.index, pd.RangeIndex) and p.index.start == 0 for p in parts):
        # Every chunk got a fresh default index (the estimator ignored the
        # input's index, or the input had none): the serial call numbers all
        # rows once.
        out.index = pd.RangeIndex(len(out), name=first.name)
    return out


def _as_first(out, parts):
    """``out``, joined from pandas ``parts``, with their dtypes where pandas
    joined them as others: '>f8' columns (big-endian data) came back as
    native floats, as NumPy joins them (see :func:`concatenate`)."""
    if parts[0].ndim == 1:
        dtype = parts[0].dtype
        if _byte_swapped(dtype) and all(part.dtype == dtype for part in parts):
            return out.astype(dtype)
        return out
    for i, dtype in enumerate(parts[0].dtypes):
        if _byte_swapped(dtype) and all(part.dtypes.iloc[i] == dtype for part in parts):
            out.isetitem(i, out.iloc[:, i].astype(dtype))
    return out


def _metadata_kept(out, parts):
    """``out``, joined from pandas ``parts``, with the attributes that a
    subclass of DataFrame or Series names in ``_metadata`` (a unit, a
    reference system), where the parts agree on them.

    ``pd.concat`` leaves them unset (None) unless the subclass joins them
    itself; the serial call's output has them, as each chunk's has.
    """
    import pandas as pd

    base = pd.Series if out.ndim == 1 else pd.DataFrame
    for name in getattr(type(out), "_metadata", ()):
        if name in base._metadata or getattr(out, name, None) is not None:
            continue
        value = getattr(parts[0], name, None)
        if value is not None and all(
            _same_value(getattr(part, name, None), value) for part in parts[1:]
        ):
            object.__setattr__(out, name, value)
    return out


def _same_value(a, b) -> bool:
    # Each chunk from a worker process has its own copy of the value.
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # an array's ambiguous truth, a comparison that fails
        return False


def _byte_swapped(dtype) -> bool:
    return isinstance(dtype, np.dtype) and not dtype.isnative


def _same_categories(columns: list, join: bool = True) -> list | None:
    """Categorical chunks with the union of their categories (None: no
    change needed).

    Each chunk's categories are inferred from the values it holds, the
    serial call's from all of them; pandas joins categoricals of different
    categories as strings. Where the serial call's categories cannot be
    told from the chunks' (ordered ones, values of types that do not sort,
    or ``join=False``), raises :class:`NotPerRow`: the call runs whole.
    """
    import pandas as pd

    dtypes = [column.dtype for column in columns]
    if not all(isinstance(dtype, pd.CategoricalDtype) for dtype in dtypes) or all(
        dtype == dtypes[0] for dtype in dtypes
    ):
        return None
    if (
        not join
        or any(dtype.ordered for dtype in dtypes)
        or any(_unsortable(dtype.categories) for dtype in dtypes)
    ):
        # (pandas sorts mixed types its own way: 1, 2.5, 'a' where the
        # chunks 1, 'a' and 2.5 gave 1, 'a', 2.5.)
        raise NotPerRow("categories inferred per chunk of rows", lasting=False)
    categories = dtypes[0].categories.append([d.categories for d in dtypes[1:]])
    categories = categories.unique()
    if all(dtype.categories.is_monotonic_increasing for dtype in dtypes):
        # Inferred categories are sorted: so are the serial call's.
        try:
            categories = categories.sort_values()
        except TypeError:
            raise NotPerRow(
                "categories inferred per chunk of rows", lasting=False
            ) from None
    return [column.astype(pd.CategoricalDtype(categories)) for column in columns]


_OBJECTS = np.dtype(object)


def _missing_as_inferred(columns: list) -> list | None:
    """Chunks of a column whose values are all missing, of object dtype, as
    the dtype the other chunks agree on (None: no change needed).

    pandas infers a column's dtype from the objects it holds (``str`` from
    strings in pandas 3, datetimes, periods: ``pd.DataFrame`` of an array of
    objects, ``set_output(transform="pandas")``, ``infer_objects``), but
    none from missing values alone: a chunk of only None or NaN there stays
    of objects, and ``pd.concat`` joins it with the others' ``str`` or
    ``datetime64`` as objects, where the serial call infers the dtype from
    all the rows, the missing ones included.
    """
    import pandas as pd

    dtypes = [column.dtype for column in columns]
    if all(dtype == dtypes[0] for dtype in dtypes):
        return None
    missing = [
        dtype == _OBJECTS and column.isna().all()
        for dtype, column in zip(dtypes, columns)
    ]
    others = {dtype for dtype, blank in zip(dtypes, missing) if not blank}
    if len(others) != 1:
        return None
    (dtype,) = others
    if (
        dtype == _OBJECTS
        or (isinstance(dtype, np.dtype) and dtype.kind in "biu")
        or isinstance(dtype, pd.CategoricalDtype)
    ):
        # NumPy's integers and booleans hold no missing value: the serial
        # call's dtype is another (floats, objects). Categories are
        # _same_categories'.
        return None
    try:
        return [
            column.astype(dtype) if blank else column
            for column, blank in zip(columns, missing)
        ]
    except (TypeError, ValueError):
        return None


def _unsortable(categories) -> bool:
    # Types that do not compare with each other (numbers and strings).
    kind = categories.inferred_type
    return kind.startswith("mixed") and kind != "mixed-integer-float"
