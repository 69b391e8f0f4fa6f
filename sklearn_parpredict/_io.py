"""Streaming batch scoring: read rows in batches, predict, write incrementally.

Memory is bounded by the batch size, not by the file: inputs are read one batch
at a time (see :mod:`._readers`) and each batch's predictions are appended to
the output before the next batch is read. The output is written to a
temporary file in the output's folder and renamed over the output only on
success, so a failed run leaves nothing partial behind.

pandas, pyarrow and tqdm are imported inside the functions: the core package
does not need them.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

import numpy as np

from sklearn_parpredict._loading import CommandError
from sklearn_parpredict._readers import (
    NpyReader,
    Reader,
    file_format,
    open_input,
    time_precision,
)

OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
DEFAULT_BATCH_ROWS = 100_000


class _Writer:
    """Appends DataFrames to a Parquet or CSV file."""

    def __init__(
        self,
        path: Path,
        kind: str,
        types: dict | None = None,
        widest: dict | None = None,
    ):
        # types: Arrow types for columns that may be all missing in the
        # first batch (an id column read from Parquet). widest: for a
        # column of times, its value that pandas writes widest (see
        # _readers.time_precision).
        self.path, self.kind = path, kind
        self.types, self.widest = types or {}, widest or {}
        self._parquet: Any = None
        self._started = False

    def write(self, frame) -> None:
        if self.kind == "csv":
            for name, value in self.widest.items():
                frame = _as_wide_as(frame, name, value)
            # The header once, then rows appended.
            frame.to_csv(
                self.path,
                mode="a" if self._started else "w",
                header=not self._started,
                index=False,
            )
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                table = table.cast(_typed(table.schema, frame, self.types))
                self._parquet = pq.ParquetWriter(self.path, table.schema)
            elif table.schema != self._parquet.schema:
                # CSV chunks may infer different dtypes (int, then float);
                # the file keeps the first batch's schema.
                table = table.cast(self._parquet.schema)
            self._parquet.write_table(table)
        self._started = True

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()


def _as_wide_as(frame, name, value):
    """``frame`` with its times in column ``name`` written as text as wide as
    ``value`` (a one-row Series) is, when pandas would write them narrower."""
    import pandas as pd

    column = frame[name]
    if time_precision(column).max(initial=-1) >= time_precision(value)[0]:
        return frame
    text = pd.concat([column, value]).astype(str).iloc[:-1]
    return frame.assign(**{name: text.where(column.notna(), None)})


def _typed(schema, frame, types: dict):
    """``schema`` with a type for the columns whose values are all missing
    in ``frame`` (Arrow's null type, which no later batch could be cast to):
    the type in ``types``, else their dtype's (text for objects)."""
    import pyarrow as pa

    for i, field in enumerate(schema):
        if pa.types.is_null(field.type):
            dtype = frame[field.name].dtype
            kind = getattr(dtype, "kind", "O")
            typed = types.get(field.name) or (
                pa.from_numpy_dtype(dtype) if kind in "biufmM" else pa.large_string()
            )
            schema = schema.set(i, field.with_type(typed))
    return schema


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary file next to ``path``, renamed to ``path`` on success (to
    the file it links to, for a link).

    On any error, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise CommandError(f"the output {path} is a folder")
    # A link is written through, as pandas' to_csv and to_parquet write:
    # os.replace would put the file in the link's place, and leave what it
    # points to as it was.
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    folder = target.parent
    if not folder.is_dir():
        raise CommandError(f"output folder not found: {folder}")
    # In the same folder, so that the rename is atomic (same file system).
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise CommandError(f"cannot write to {folder}: {exc}") from exc
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        try:
            os.chmod(tmp, _output_mode(target))
            os.replace(tmp, target)
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _output_mode(target: Path) -> int:
    """The permissions of the output: those of the file it replaces, as
    pandas keeps them when it writes over a file, else those any new file
    gets. mkstemp creates the file readable by its owner only."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _prefix(method: str) -> str:
    """What names the output columns of ``method``."""
    prefix = {
        "predict_proba": "proba",
        "predict_log_proba": "log_proba",
    }.get(method, method.removeprefix("predict_") if method != "predict" else "")
    return prefix or "prediction"


def _output_names(model, method: str, n_columns: int) -> list[str]:
    """Column names of a 2-D output of ``method``."""
    classes = getattr(model, "classes_", None)
    prefix = _prefix(method)
    if (
        classes is not None
        and method in ("predict_proba", "predict_log_proba", "decision_function")
        and np.ndim(classes) == 1
        and len(classes) == n_columns
    ):
        return [f"{prefix}_{c}" for c in classes]
    if method == "transform" and hasattr(model, "get_feature_names_out"):
        with contextlib.suppress(Exception):
            names = [str(n) for n in model.get_feature_names_out()]
            if len(names) == n_columns:
                return names
    return [f"{prefix}_{i}" for i in range(n_columns)]


def _output_frame(model, method: str, output, ids, id_column):
    """The output rows of one batch as a DataFrame, the id column first."""
    import pandas as pd

    columns: dict[str, Any] = {}
    if id_column is not None:
        # Its own array, its dtype kept (as the output's columns of a
        # DataFrame, below): NumPy's gives nullable integers (Int64) with a
        # value missing as floats, which a CSV output wrote "4.0" in the
        # batches with a missing value and "4" in the others, and a Parquet
        # output lost the nullable, string and category dtypes.
        columns[id_column] = ids.array
    if hasattr(output, "toarray"):  # a sparse transform
        output = output.toarray()
    names: list[str] = []
    values: list = []
    if isinstance(output, list):
        # Multi-output predict_proba: one array per output, one column per
        # class of that output.
        classes = getattr(model, "classes_", None)
        for k, out in enumerate(output):
            labels = classes[k] if isinstance(classes, list) else range(out.shape[1])
            for label, column in zip(labels, np.asarray(out).T):
                names.append(f"{_prefix(method)}_{k}_{label}")
                values.append(column)
    elif isinstance(output, pd.DataFrame):
        # Column by column: each keeps its dtype (to_numpy would give all
        # of them one).
        names = [str(c) for c in output.columns]
        values = [column.array for _, column in output.items()]
    else:
        output = np.asarray(output)
        if output.ndim == 1:
            names = ["prediction" if method == "predict" else method]
            values = [output]
        else:
            names = _output_names(model, method, output.shape[1])
            values = list(output.T)
    for name, column in zip(names, values):
        if name in columns:
            raise CommandError(f"output column {name!r} clashes with the id column")
        columns[name] = column
    return pd.DataFrame(columns)


def _select_columns(reader: Reader, model, columns, id_column, path):
    """The feature columns to read, checked against the input."""
    if reader.columns is None:
        # A .npy array: columns are positions, and there is no id column.
        if id_column is not None:
            raise CommandError("--id-column needs a Parquet or CSV input")
        if columns is None:
            return None
        try:
            positions = [int(c) for c in columns]
        except ValueError:
            raise CommandError(
                f"{path} is a .npy array: --columns must be column positions"
            ) from None
        n = cast(NpyReader, reader).shape[1]
        bad = [p for p in positions if not -n <= p < n]
        if bad:
            raise CommandError(
                f"column positions out of range for {n} columns: "
                + ", ".join(map(str, bad))
            )
        return positions

    if id_column is not None and id_column not in reader.columns:
        raise CommandError(f"id column {id_column!r} is not in {path}")
    source = "--columns"
    if columns is None and hasattr(model, "feature_names_in_"):
        columns, source = [str(c) for c in model.feature_names_in_], "the model"
    if columns is None:
        index = getattr(reader, "index_columns", ())
        return [c for c in reader.columns if c != id_column and c not in index]
    missing = [c for c in columns if c not in reader.columns]
    if missing:
        raise CommandError(
            f"{path} lacks {len(missing)} column{'s' if len(missing) > 1 else ''} "
            f"needed by {source}: {', '.join(missing)}"
        )
    return list(columns)


def _read(batches: Iterator, path: Path) -> Iterator:
    """The non-empty batches, an error reading one named as the command's."""
    n_read = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:
            raise CommandError(f"cannot read {path} after row {n_read}: {exc}") from exc
        if len(batch):
            n_read += len(batch)
            yield batch


def progress_bar(total: int | None, *, quiet: bool = False, file: TextIO | None = None):
    """A tqdm progress bar over rows, shown only on a terminal and not quiet."""
    from tqdm.auto import tqdm

    file = sys.stderr if file is None else file
    disable = quiet or not (hasattr(file, "isatty") and file.isatty())
    return tqdm(total=total, unit=" rows", unit_scale=True, file=file, disable=disable)


def predict_file(
    model,
    input_path: str | Path,
    output_path: str | Path,
    *,
    method: str = "predict",
    n_jobs: int | None = -1,
    backend: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    columns: Sequence | None = None,
    id_column: str | None = None,
    quiet: bool = False,
) -> int:
    """Score a file in batches and write the predictions, row order kept.

    Parameters
    ----------
    model : estimator instance
        A fitted model.

    input_path : str or Path
        A Parquet (``.parquet``, ``.pq``), CSV (``.csv``) or ``.npy`` file.

    output_path : str or Path
        A Parquet or CSV file, replaced only when every row was scored.

    method : str, default="predict"
        The model's method to call.

    n_jobs, backend
        As in :class:`~sklearn_parpredict.ParallelPredictor`.

    batch_rows : int, default=DEFAULT_BATCH_ROWS
        Rows read, predicted and written at a time: the memory bound.

    columns : sequence of str or int, default=None
        The feature columns (positions for ``.npy``). ``None`` uses the
        model's ``feature_names_in_`` when it has them, else every column but
        the id column.

    id_column : str, default=None
        An input column copied to the output, first, next to each prediction.

    quiet : bool, default=False
        Hide the progress bar (it is shown only when stderr is a terminal).

    Returns
    -------
    n_rows : int
        The number of rows scored.
    """
    from sklearn_parpredict import ParallelPredictor

    input_path, output_path = Path(input_path), Path(output_path)
    if not callable(getattr(model, method, None)):
        raise CommandError(f"the model ({type(model).__name__}) has no method {method}")
    out_kind = file_format(output_path, OUTPUT_FORMATS, "output")
    reader = open_input(input_path)
    if output_path.exists() and output_path.samefile(input_path):
        raise CommandError(f"the output {output_path} is the input")
    features = _select_columns(reader, model, columns, id_column, input_path)
    read = features  # a .npy array's positions
    if features is not None and reader.columns is not None:
        read = list(dict.fromkeys(features + ([id_column] if id_column else [])))
    names = getattr(model, "feature_names_in_", None)

    # One wrapper for the whole file: the model is shipped to the workers on
    # the first batch and reused by every later one.
    wrapped = ParallelPredictor(model, n_jobs=n_jobs, backend=backend)
    predict = getattr(wrapped, method)
    n_done = 0
    with (
        atomic_output(output_path) as tmp,
        progress_bar(reader.n_rows, quiet=quiet) as bar,
    ):
        widest = None
        if id_column is not None and out_kind == "csv":
            widest = reader.widest_time(id_column, batch_rows)
        writer = _Writer(
            tmp, out_kind, None, {id_column: widest} if widest is not None else None
        )
        try:
            for batch in _read(reader.batches(read, batch_rows), input_path):
                if n_done == 0:
                    # Asked for once the first batch is read: a CSV file's
                    # types are known after its dtype pass.
                    types = reader.arrow_types()
                    if id_column in types:
                        writer.types = {id_column: types[id_column]}
                if reader.columns is None:
                    X, ids = batch, None
                    if names is not None and batch.shape[1] == len(names):
                        # The model was fitted on named columns: give it them,
                        # rather than a warning per batch.
                        import pandas as pd

                        X = pd.DataFrame(batch, columns=names, copy=False)
                else:
                    X = batch[features]
                    if names is None:
                        # Fitted without column names: named columns would
                        # only draw a warning per batch.
                        X = X.to_numpy()
                    ids = batch[id_column] if id_column else None
                try:
                    output = predict(X)
                except Exception as exc:
                    raise CommandError(
                        f"{type(model).__name__}.{method} failed on rows "
                        f"{n_done}-{n_done + len(X) - 1}: {exc}"
                    ) from exc
                frame = _output_frame(model, method, output, ids, id_column)
                try:
                    writer.write(frame)
                except (OSError, ValueError, TypeError, NotImplementedError) as exc:
                    # pyarrow's errors derive from these (a later CSV chunk
                    # whose id column cannot take the first chunk's type).
                    raise CommandError(
                        f"cannot write rows {n_done}-{n_done + len(X) - 1} to "
                        f"{output_path}: {exc}"
                    ) from exc
                n_done += len(X)
                bar.update(len(X))
            if n_done == 0:
                raise CommandError(f"{input_path} has no rows")
        finally:
            writer.close()
    return n_done
