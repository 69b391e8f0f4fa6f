"""Streaming batch scoring: read rows in batches, predict, write incrementally.

Memory is bounded by the batch size, not by the file: inputs are read one batch
at a time (Parquet row batches, CSV chunks, row ranges read from a ``.npy``)
and each batch's predictions are appended to the output before the next batch
is read. The output is written to a temporary file in the output's folder and
renamed over the output only on success, so a failed run leaves nothing
partial behind.

pandas, pyarrow and tqdm are imported inside the functions: the core package
does not need them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

import numpy as np

from sklearn_parpredict._loading import CommandError

INPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".npy": "npy"}
OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
DEFAULT_BATCH_ROWS = 100_000
# Rows a part of a CSV file has at least in the pass that finds its dtypes.
_DTYPE_PASS_ROWS = 100_000


def _format(path: Path, formats: dict, role: str) -> str:
    try:
        return formats[path.suffix.lower()]
    except KeyError:
        expected = ", ".join(sorted(set(formats)))
        raise CommandError(
            f"unknown {role} format {path.suffix or '(no suffix)'!r} for {path}: "
            f"expected one of {expected}"
        ) from None


class _Reader:
    """An input file read in batches of rows.

    ``columns`` are the file's column names (``None`` for ``.npy``, whose
    columns are positions); ``n_rows`` is the row count when the file's
    metadata gives it cheaply, else ``None``.
    """

    columns: list | None = None
    n_rows: int | None = None

    def batches(self, columns: list | None, batch_rows: int) -> Iterator[Any]:
        raise NotImplementedError

    def arrow_types(self) -> dict:
        """The Arrow type of each column, where the file records it."""
        return {}


class _ParquetReader(_Reader):
    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        # A buffered stream, not pre-buffered: pyarrow otherwise reads whole
        # column chunks of a row group at once, and pandas writes one row
        # group per million rows, so memory would grow with the file.
        self.file = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        self.columns = list(self.file.schema_arrow.names)
        self.n_rows = self.file.metadata.num_rows
        # A DataFrame's index stored with it: pandas reads it back as the
        # index, not as features.
        stored = (self.file.schema_arrow.pandas_metadata or {}).get("index_columns")
        self.index_columns = [name for name in stored or () if isinstance(name, str)]

    def batches(self, columns, batch_rows):
        missing = self._with_missing(columns)
        # Only the columns needed are decoded.
        for batch in self.file.iter_batches(batch_size=batch_rows, columns=columns):
            frame = batch.to_pandas()
            if columns is not None and any(n in columns for n in frame.index.names):
                # A stored index asked for as a column (the id column).
                frame = frame.reset_index()
            if not all(isinstance(name, str) for name in frame.columns):
                # pandas' metadata gives back the labels a frame was saved
                # with (0, 1, ... from pd.DataFrame(X)); the columns are
                # chosen by the file's names, their text.
                frame.columns = [str(name) for name in frame.columns]
            for name in missing.intersection(frame.columns):
                dtype = frame[name].dtype
                if isinstance(dtype, np.dtype) and dtype.kind in "iub":
                    frame[name] = frame[name].astype(
                        object if dtype.kind == "b" else np.float64
                    )
            yield frame

    def arrow_types(self) -> dict:
        return {field.name: field.type for field in self.file.schema_arrow}

    def _with_missing(self, columns) -> set[str]:
        """The integer and boolean columns read with a value missing
        somewhere in the file.

        pandas reads such a column of the whole file as float64 (booleans as
        object), but a batch without a missing value as int64 (bool): an id
        column would be written ``3`` in some batches and ``3.0`` in others.
        Counted from the row groups' statistics, or by reading the column
        where a row group has none.
        """
        import pyarrow.types as pat

        schema = self.file.schema_arrow
        names = schema.names if columns is None else columns
        wanted = [
            name
            for name in names
            if name in schema.names
            and (
                pat.is_integer(schema.field(name).type)
                or pat.is_boolean(schema.field(name).type)
            )
        ]
        leaves = {
            self.file.metadata.schema.column(j).path: j
            for j in range(self.file.metadata.num_columns)
        }
        found = set()
        for name in wanted:
            counts: list = [None]
            if name in leaves:
                counts = [
                    _null_count(self.file.metadata.row_group(i).column(leaves[name]))
                    for i in range(self.file.metadata.num_row_groups)
                ]
            if None in counts:
                counts = [
                    batch.column(0).null_count
                    for batch in self.file.iter_batches(columns=[name])
                ]
            if any(counts):
                found.add(name)
        return found


def _null_count(chunk) -> int | None:
    """A Parquet column chunk's count of missing values, None if unknown."""
    stats = chunk.statistics
    return stats.null_count if stats is not None and stats.has_null_count else None


class _CSVReader(_Reader):
    def __init__(self, path: Path):
        import pandas as pd

        self.path = path
        # The header alone, to check the columns before any row is read.
        self.columns = list(pd.read_csv(path, nrows=0, index_col=False).columns)

    def batches(self, columns, batch_rows):
        import pandas as pd

        # Every column is parsed (not usecols): a line with more fields than
        # the header is an error, as when pandas reads the whole file.
        dtype = self._dtypes(columns, batch_rows)
        objects = [name for name, kind in dtype.items() if kind is _OBJECTS]
        dtype = {name: kind for name, kind in dtype.items() if kind is not _OBJECTS}
        # index_col=False: a first line with one field more than the header
        # would otherwise make the first column an index, silently (the
        # dtype pass has refused such a line).
        with pd.read_csv(
            self.path, chunksize=batch_rows, dtype=dtype, index_col=False
        ) as chunks:
            for chunk in chunks:
                for name in objects:
                    chunk[name] = chunk[name].astype(object)
                yield chunk if columns is None else chunk[columns]

    def _dtypes(self, columns, batch_rows) -> dict:
        """Each column's dtype as one read of the whole file infers it.

        Each batch would infer its own: a text column whose first rows look
        like numbers would be numbers in the first batches only. So the file
        is read once for its dtypes, in larger batches that keep nothing
        else, and what they found is merged as pandas merges the parts of a
        whole file (see :func:`_common_dtype`).
        """
        import pandas as pd

        seen: dict = {}
        # Every column, as the batches are read: a line with more fields
        # than the header is an error here too (pandas before 2 let it pass
        # in batches of a few rows; on the first line, pandas only warns).
        with (
            warnings.catch_warnings(),
            pd.read_csv(
                self.path, chunksize=max(batch_rows, _DTYPE_PASS_ROWS), index_col=False
            ) as chunks,
        ):
            warnings.simplefilter("error", pd.errors.ParserWarning)
            for chunk in chunks:
                for name in chunk.columns if columns is None else columns:
                    seen.setdefault(name, set()).add(_part(chunk[name]))
        return {name: _common_dtype(parts) for name, parts in seen.items()}


# A column read as objects in the whole file that are not text (True/False
# with values missing, integers past 64 bits): each batch infers its values,
# as pandas does, and holds them as objects. Read with dtype=object, pandas
# would keep their text.
_OBJECTS = object()


def _part(column) -> tuple:
    """What a part of a file made of a column: ``("text",)``, ``("empty",)``
    (every value missing), ``("objects", what they are)``, or ``(dtype,
    whether any value is negative)``."""
    import pandas as pd

    dtype = column.dtype
    if not isinstance(dtype, np.dtype):
        # pandas 3's str dtype; any other extension dtype as itself.
        is_text = isinstance(dtype, pd.StringDtype)
        return ("text",) if is_text else (dtype, False)
    if dtype.kind == "O":
        held = pd.api.types.infer_dtype(column, skipna=True)
        if held == "string":
            return ("text",)
        return ("empty",) if held == "empty" else ("objects", held)
    if dtype.kind == "f" and column.isna().all():
        return ("empty",)
    return (dtype, dtype.kind == "i" and bool(len(column)) and column.min() < 0)


def _common_dtype(parts: set):
    """The dtype pandas infers for a column whose parts are ``parts`` (from
    :func:`_part`): a dtype to read every batch with, or ``_OBJECTS``."""
    kinds = {part[0] for part in parts}
    if "text" in kinds:
        # Text in any part: the whole column is text ("01" stays "01").
        return str
    if "objects" in kinds:
        return _OBJECTS
    dtypes = {part[0] for part in parts if part[0] != "empty"}
    if not dtypes:
        return float  # every value missing
    if len(dtypes) == 1 and "empty" not in kinds:
        return next(iter(dtypes))
    numeric = {getattr(dtype, "kind", "O") for dtype in dtypes}
    if numeric == {"b"}:
        return _OBJECTS  # True/False with values missing
    if numeric <= set("iu") and "empty" not in kinds:
        # Past int64 in some parts: uint64 when no part is negative, else
        # neither type holds every value, and pandas keeps the text.
        negative = any(part[1] for part in parts if part[0] != "empty")
        return str if negative else np.uint64
    if numeric <= set("iuf"):
        return float
    return str


class _NpyReader(_Reader):
    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if dtype.hasobject:
            raise CommandError(
                f"{path} holds Python objects: loading them would unpickle, "
                "which runs code; save a numeric array"
            )
        if len(shape) != 2:
            raise CommandError(
                f"{path} holds an array of shape {shape}: expected a 2-D "
                "array (rows, features)"
            )
        self.shape, self.fortran, self.dtype = shape, fortran, dtype
        self.n_rows = shape[0]

    def batches(self, columns, batch_rows):
        # Plain reads rather than a memory map: the pages of a map stay
        # resident (and count in the process's memory) after their batch is
        # done, so memory would grow with the file.
        n_rows, n_columns = self.shape
        itemsize = self.dtype.itemsize
        with open(self.path, "rb") as f:
            for start in range(0, n_rows, batch_rows):
                n = min(batch_rows, n_rows - start)
                if not self.fortran:
                    f.seek(self.offset + start * n_columns * itemsize)
                    batch = np.empty((n, n_columns), dtype=self.dtype)
                    self._read_into(f, batch)
                    yield batch if columns is None else batch[:, columns]
                    continue
                # Column-major (what np.save writes for most DataFrames'
                # to_numpy()): a batch of rows is one piece of each column.
                wanted = range(n_columns) if columns is None else columns
                batch = np.empty((n, len(wanted)), dtype=self.dtype, order="F")
                for k, j in enumerate(wanted):
                    f.seek(self.offset + ((j % n_columns) * n_rows + start) * itemsize)
                    self._read_into(f, batch[:, k])
                yield batch

    def _read_into(self, f, out):
        if f.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise CommandError(f"{self.path} is truncated")


def open_input(path: str | Path) -> _Reader:
    """Open a Parquet, CSV or ``.npy`` file for reading in batches."""
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"input file not found: {path}")
    kind = _format(path, INPUT_FORMATS, "input")
    reader = {"parquet": _ParquetReader, "csv": _CSVReader, "npy": _NpyReader}[kind]
    try:
        return reader(path)
    except CommandError:
        raise
    except Exception as exc:
        raise CommandError(f"cannot read {path} as {kind}: {exc}") from exc


class _Writer:
    """Appends DataFrames to a Parquet or CSV file."""

    def __init__(self, path: Path, kind: str, types: dict | None = None):
        # types: Arrow types for columns that may be all missing in the
        # first batch (an id column read from Parquet).
        self.path, self.kind, self.types = path, kind, types or {}
        self._parquet: Any = None
        self._started = False

    def write(self, frame) -> None:
        if self.kind == "csv":
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
    """A temporary file next to ``path``, renamed to ``path`` on success.

    On any error, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise CommandError(f"output folder not found: {folder}")
    if path.is_dir():
        raise CommandError(f"the output {path} is a folder")
    # In the same folder, so that the rename is atomic (same file system).
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise CommandError(f"cannot write to {folder}: {exc}") from exc
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp creates the file readable by its owner only; give the output
        # the permissions any new file would get.
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


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
        columns[id_column] = np.asarray(ids)
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


def _select_columns(reader: _Reader, model, columns, id_column, path):
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
        n = cast(_NpyReader, reader).shape[1]
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
    out_kind = _format(output_path, OUTPUT_FORMATS, "output")
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
        types = reader.arrow_types()
        writer = _Writer(
            tmp, out_kind, {id_column: types[id_column]} if id_column in types else None
        )
        try:
            for batch in _read(reader.batches(read, batch_rows), input_path):
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
