"""Which columns each of several models reads and is fitted against, and one
table of their outputs.

The column logic of :class:`MultiModelPredictor`: its ``models`` checked as
``(estimator, features, target)`` entries; a model's ``features`` (names,
positions, a slice, a mask, a callable or None) resolved to column positions
with errors that name the model and the columns; its ``target`` found in ``y``
or ``X``; and the models' predictions assembled as one DataFrame or array.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral

import numpy as np
from sklearn.utils import _safe_indexing
from sklearn.utils._indexing import (
    _determine_key_type,
    _get_column_indices,
    _get_column_indices_for_bool_or_int,
)
from sklearn.utils.validation import check_consistent_length

from sklearn_parpredict import _chunking


def is_frame(X) -> bool:
    """Whether ``X`` is a dataframe (columns selectable by name)."""
    return hasattr(X, "columns") and hasattr(X, "shape") and not hasattr(X, "tocsr")


def names_of(X) -> list:
    """The column names of a dataframe (a pyarrow Table's ``columns`` are
    its columns' data). Asked of the class: a pandas frame gives a column
    named ``column_names`` as an attribute."""
    if hasattr(type(X), "column_names"):
        return list(X.column_names)
    return list(X.columns)


def is_target(target) -> bool:
    return isinstance(target, str | Integral) and not isinstance(target, bool)


def shorten(items, limit: int = 10) -> str:
    items = list(items)
    text = ", ".join(repr(item) for item in items[:limit])
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")


# Positions found before, by what decides them (see _positions_key): found on
# every call of models given fitted, and scikit-learn's look-up of names
# (through narwhals) costs 80 µs a model, 2% of a call on one row.
_known_positions: dict[tuple, tuple[int, ...] | int] = {}
_MAX_KNOWN = 256


def column_positions(X, features, target) -> list[int] | int:
    """Positions in ``X`` of the columns that model ``target`` uses.

    ``features`` is the model's selector: names, positions, a slice, a boolean
    mask, a callable returning one of those, or ``None`` for all columns.
    One name or position (not in a list) gives one int: the model sees that
    column as 1-D, as ``X[name]`` and :class:`~sklearn.compose.ColumnTransformer`
    give it (a text vectorizer takes a column of strings). Every error names
    the model and the offending columns.
    """
    key = _positions_key(X, features)
    known = _known_positions.get(key) if key is not None else None
    if known is not None:
        return known if isinstance(known, int) else list(known)
    positions = _find_positions(X, features, target)
    if key is not None:
        if len(_known_positions) >= _MAX_KNOWN:
            _known_positions.clear()
        _known_positions[key] = (
            positions if isinstance(positions, int) else tuple(positions)
        )
    return positions


def as_list(columns) -> list:
    """``columns`` (from :func:`column_positions`, or their names) as a list."""
    return [columns] if is_target(columns) else list(columns)


def _positions_key(X, features) -> tuple | None:
    """What the positions of ``features`` in ``X`` depend on, hashable; None
    for a callable (its answer may depend on anything in ``X``)."""
    if callable(features):
        return None
    selector: tuple
    if features is None or isinstance(features, str | Integral):
        selector = (type(features), features)
    elif isinstance(features, slice):
        selector = (slice, features.start, features.stop, features.step)
    elif isinstance(features, list | tuple):
        # The types too: True and 1 are equal keys, a mask and a position.
        selector = (tuple(features), tuple(map(type, features)))
    elif hasattr(features, "__array__"):
        array = np.asarray(features)
        if array.dtype.hasobject:
            return None
        selector = (array.dtype.str, array.shape, array.tobytes())
    else:
        return None
    names = None
    if is_frame(X):
        names = tuple(names_of(X))
    key = (type(X), X.shape[1], names, selector)
    try:
        hash(key)
    except TypeError:  # unhashable names or positions: found every time
        return None
    return key


def _find_positions(X, features, target) -> list[int] | int:
    n_columns = X.shape[1]
    key = features(X) if callable(features) else features
    if key is None:
        return list(range(n_columns))
    single = is_target(key)
    if single:
        key = [key]
    try:
        if hasattr(key, "__array__"):  # arrays, pandas Index, Series
            key = np.asarray(key).tolist()
        elif not isinstance(key, slice):
            key = [k.item() if isinstance(k, np.generic) else k for k in key]
        kind = _determine_key_type(key)
        if isinstance(key, slice) and key.start is None and key.stop is None:
            # slice(None), slice(None, None, -1): positions, though
            # scikit-learn finds no type in them.
            kind = "int"
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"The features of model {target!r} must be column names, integer "
            f"positions, a slice, a boolean mask, a callable returning one of "
            f"those, or None; got {features!r}."
        ) from exc
    if kind is None:
        raise ValueError(f"The features of model {target!r} select no columns.")
    if kind == "str":
        if not is_frame(X):
            shown = key if isinstance(key, slice) else shorten(key)
            raise ValueError(
                f"Model {target!r} selects columns by name ({shown}), but X "
                f"({type(X).__name__}) has no column names: pass a DataFrame, "
                f"or select the columns by position."
            )
        columns = names_of(X)
        wanted = [key.start, key.stop] if isinstance(key, slice) else key
        missing = [col for col in wanted if col is not None and col not in columns]
        if missing:
            raise ValueError(
                f"Column(s) {shorten(missing)} used by model {target!r} not found in X."
            )
        positions = _get_column_indices(X, key)
    elif kind == "bool":
        if isinstance(key, slice) or len(key) != n_columns:
            raise ValueError(
                f"The boolean mask of model {target!r} has {len(key)} entries, "
                f"but X has {n_columns} columns."
            )
        positions = _get_column_indices_for_bool_or_int(key, n_columns)
    else:
        if not isinstance(key, slice):
            bad = [pos for pos in key if not -n_columns <= pos < n_columns]
            if bad:
                raise ValueError(
                    f"Column position(s) {shorten(bad)} used by model "
                    f"{target!r} out of range: X has {n_columns} columns."
                )
        positions = _get_column_indices_for_bool_or_int(key, n_columns)
    if not positions:
        raise ValueError(f"The features of model {target!r} select no columns.")
    if single:
        return int(positions[0])
    return [int(pos) for pos in positions]


def column_key(X, cols):
    """``cols`` (names or positions) as a key for :func:`select_columns`.

    None when they are all of ``X``'s columns in order (no copy needed); one
    name or position as itself (it selects a 1-D column).
    """
    if is_target(cols):
        return cols
    if cols and isinstance(cols[0], str):
        return None if cols == names_of(X) else cols
    if cols == list(range(X.shape[1])):
        return None
    return np.asarray(cols, dtype=np.intp)


def assemble(X, targets, columns):
    """One table of the models' predictions, as :meth:`predict` documents."""
    if hasattr(X, "iloc"):
        import pandas as pd

        return pd.DataFrame(dict(zip(targets, columns)), index=X.index)
    n_rows = _chunking.n_rows(X)
    if not columns:
        return np.empty((n_rows, 0))
    kinds = {column.dtype.kind for column in columns}
    if len({column.dtype for column in columns}) == 1 or (
        len(kinds) == 1 and kinds <= set("biufcUS")
    ):
        return np.column_stack(columns)
    out = np.empty((n_rows, len(columns)), dtype=object)
    for j, column in enumerate(columns):
        out[:, j] = column
    return out


def check_models(models, reserved) -> list[tuple]:
    """The models of a :class:`MultiModelPredictor` as checked
    ``(estimator, features, target)`` tuples; ``reserved``: the names of its
    parameters, which no target may take."""
    if not isinstance(models, list | tuple) or not models:
        raise ValueError(
            "models must be a non-empty list of (estimator, features, "
            f"target) tuples; got {models!r}."
        )
    for item in models:
        if not isinstance(item, tuple | list) or len(item) != 3:
            raise ValueError(
                "Each entry of models must be an (estimator, features, "
                f"target) tuple; got {item!r}."
            )
    estimators, _, targets = zip(*models)
    for target in targets:
        if not is_target(target):
            raise TypeError(
                f"A target must be a string or an integer; got {target!r} "
                f"of type {type(target).__name__}."
            )
    names = [str(target) for target in targets]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Targets must be unique; duplicated: {shorten(duplicates)}.")
    # The constraints name every parameter, without get_params'
    # inspection of the signature (10 µs, on every call).
    clashes = sorted(set(names) & set(reserved))
    if clashes:
        raise ValueError(
            f"Targets must not be names of MultiModelPredictor's parameters "
            f"(they name the models in nested parameters); got "
            f"{shorten(clashes)}."
        )
    nested = [name for name in names if "__" in name]
    if nested:
        raise ValueError(
            f"Targets must not contain '__' (it separates nested parameter "
            f"names); got {shorten(nested)}."
        )
    for estimator, target in zip(estimators, targets):
        # scikit-learn's own check (_check_estimators_are_instances) is
        # missing from 1.6.
        if isinstance(estimator, type):
            raise TypeError(
                f"Expected an estimator instance ({estimator.__name__}()), "
                f"got estimator class instead ({estimator.__name__})."
            )
        if not hasattr(estimator, "predict"):
            raise TypeError(
                f"The estimator of model {target!r} has no 'predict' "
                f"method: {estimator!r}."
            )
    return [tuple(item) for item in models]


def target_values(X, y, i: int, target):
    """The values model ``i`` is fitted (or scored) against, and the position
    of their column in ``X`` when they are taken from it (``y`` is None)."""
    if y is None:
        if is_frame(X):
            if target not in names_of(X):
                raise ValueError(
                    f"Target column {target!r} not found in X (y is None, "
                    f"so each target is taken from X)."
                )
            return X[target], names_of(X).index(target)
        if not isinstance(target, Integral) or not (-X.shape[1] <= target < X.shape[1]):
            raise ValueError(
                f"Target {target!r} cannot be taken from X: y is None and X "
                f"({type(X).__name__}, {X.shape[1]} columns) has no such "
                f"column. Pass y, or a DataFrame X holding the target."
            )
        position = int(target) % X.shape[1]
        column = _safe_indexing(X, position, axis=1)
        if hasattr(column, "toarray"):
            column = column.toarray()
        return np.ravel(column), position
    if not is_frame(y) and y.ndim == 1:
        return y, None
    column = _y_column(y, i, target)
    if is_frame(y):
        if column is None:
            raise ValueError(
                f"Target column {target!r} not found in y; y's columns are "
                f"{shorten(y.columns)}."
            )
        # By label where it is one, as y[target] gives it.
        return (y[target] if target in list(y.columns) else y.iloc[:, column]), None
    if column is None:
        wanted = target if isinstance(target, Integral) else i
        raise ValueError(
            f"Target {target!r} needs column {wanted} of y, but y has "
            f"{y.shape[1]} columns."
        )
    return y[:, column], None


def check_y(y, X, targets: list):
    """``y`` as an array (a column vector as 1-D) or a DataFrame, as long as
    ``X``, in which no two of ``targets`` take the same column."""
    if isinstance(y, Mapping):
        raise TypeError(
            f"y must be an array-like or a DataFrame, not a {type(y).__name__}: "
            f"pass pandas.DataFrame(y) to give the targets by name."
        )
    if not is_frame(y) and not hasattr(y, "iloc"):
        y = np.asarray(y)
        if y.ndim not in (1, 2):
            raise ValueError(f"y must be 1-D or 2-D; got shape {y.shape}.")
        if y.ndim == 2 and y.shape[1] == 1:
            # A column vector is a 1-D y: every model's target.
            y = y[:, 0]
    check_consistent_length(X, y)
    taken: dict[int, object] = {}
    for i, target in enumerate(targets):
        column = _y_column(y, i, target)
        if column is None:
            continue
        if column in taken:
            raise ValueError(
                f"Targets {taken[column]!r} and {target!r} both take column "
                f"{column} of y: an integer target is a column position, any "
                f"other target takes its label's column (a DataFrame) or the "
                f"column of its model's rank (an array). Give each model a "
                f"column of its own."
            )
        taken[column] = target
    return y


def _y_column(y, i: int, target) -> int | None:
    """The position of the column of ``y`` that model ``i``'s ``target``
    takes: its label's in a DataFrame (else an integer target's position),
    in a 2-D array an integer target's position or, for any other target,
    its model's rank. None for a 1-D ``y`` (every model's) or a column that
    ``y`` lacks (:func:`target_values` says so)."""
    if is_frame(y):
        columns = list(y.columns)
        if target in columns:
            return columns.index(target)
        width = len(columns)
    elif y.ndim == 2:
        width = y.shape[1]
        target = target if isinstance(target, Integral) else i
    else:
        return None
    if isinstance(target, Integral) and -width <= int(target) < width:
        return int(target) % width
    return None
