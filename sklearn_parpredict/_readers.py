"""Input files read in batches of rows, each batch as the whole file reads.

Parquet row batches, CSV chunks and row ranges of a ``.npy`` array, each
batch holding what ``pandas.read_parquet``, ``pandas.read_csv`` or
``numpy.load`` give for those rows of the whole file: the same dtypes, the
same Python values, whatever the batch size. pandas and pyarrow are imported
inside the functions: the core package does not need them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sklearn_parpredict._loading import CommandError

INPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".npy": "npy"}
# Rows a part of a CSV file has at least in the pass that finds its dtypes.
_DTYPE_PASS_ROWS = 100_000


def file_format(path: Path, formats: dict, role: str) -> str:
    try:
        return formats[path.suffix.lower()]
    except KeyError:
        expected = ", ".join(sorted(set(formats)))
        raise CommandError(
            f"unknown {role} format {path.suffix or '(no suffix)'!r} for {path}: "
            f"expected one of {expected}"
        ) from None


class Reader:
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
        """The Arrow type of each column, where the file records it (a CSV
        file: once its first batch is read)."""
        return {}

    def widest_time(self, name, batch_rows: int) -> Any:
        """The value of column ``name`` that pandas writes widest, as a
        one-row Series, when the column holds datetimes or timedeltas; else
        None (see :func:`time_precision`)."""
        return None


class _ParquetReader(Reader):
    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        # A buffered stream, not pre-buffered: pyarrow otherwise reads whole
        # column chunks of a row group at once, and pandas writes one row
        # group per million rows, so memory would grow with the file.
        self.file = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        self.n_rows = self.file.metadata.num_rows
        # A DataFrame's index stored with it: pandas reads it back as the
        # index, not as features.
        metadata = self.file.schema_arrow.pandas_metadata or {}
        stored = metadata.get("index_columns")
        self.index_columns = [name for name in stored or () if isinstance(name, str)]
        # An unnamed index is stored as "__index_level_0__", ..., a name
        # pandas reads back as no column (the index's name is None): asked
        # for as a column (--id-column), no batch would hold it.
        unnamed = {
            field.get("field_name")
            for field in metadata.get("columns") or ()
            if field.get("name") is None
            and field.get("field_name") in self.index_columns
        }
        self.columns = [n for n in self.file.schema_arrow.names if n not in unnamed]

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

    def widest_time(self, name, batch_rows):
        import pyarrow.types as pat

        kind = self.arrow_types().get(name)
        # With a time zone too: pandas 2 and later write those as wide as
        # the column's widest as well ("00:00:00.000+00:00" beside
        # "10:00:00.500+00:00").
        if kind is None or not (pat.is_timestamp(kind) or pat.is_duration(kind)):
            return None
        widest, value = -1, None
        for frame in self.batches([name], batch_rows):
            precision = time_precision(frame[name])
            i = int(np.argmax(precision)) if len(precision) else 0
            if len(precision) and precision[i] > widest:
                widest, value = precision[i], frame[name].iloc[i : i + 1]
        return value

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


def time_precision(column) -> np.ndarray:
    """How much of each value of a datetime64 or timedelta64 column pandas
    writes: 0 a whole day, 1 a time of day in whole seconds, 2, 3 and 4
    milli-, micro- and nanoseconds; -1 where missing. Datetimes with a time
    zone count as their local time, which pandas writes.

    pandas writes every value of a column as its widest needs (``2020-01-01``
    only where all are whole days, else ``2020-01-01 00:00:00``, with as many
    decimals as the finest value): a batch is written as the whole file is
    when it holds a value as wide as the file's widest.
    """
    if getattr(column.dtype, "tz", None) is not None:
        # NumPy's array of these holds Timestamp objects.
        column = column.dt.tz_localize(None)
    values = np.asarray(column)
    unit, _ = np.datetime_data(values.dtype)
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    ticks = values.view(np.int64)
    nanos = (ticks % per_second) * (10**9 // per_second)
    precision = np.select(
        [
            nanos % 10**3 != 0,
            nanos % 10**6 != 0,
            nanos != 0,
            ticks % (86_400 * per_second) != 0,
        ],
        [4, 3, 2, 1],
        0,
    )
    return np.where(np.isnat(values), -1, precision)


def _null_count(chunk) -> int | None:
    """A Parquet column chunk's count of missing values, None if unknown."""
    stats = chunk.statistics
    return stats.null_count if stats is not None and stats.has_null_count else None


class _CSVReader(Reader):
    def __init__(self, path: Path):
        import pandas as pd

        self.path = path
        # The header alone, to check the columns before any row is read.
        self.columns = list(pd.read_csv(path, nrows=0, index_col=False).columns)
        self._bools: set = set()

    def arrow_types(self) -> dict:
        # True/False with values missing, held as objects: a batch of missing
        # values alone gives Arrow no type, and the whole column is bool.
        import pyarrow as pa

        return {name: pa.bool_() for name in self._bools}

    def batches(self, columns, batch_rows):
        import pandas as pd

        # Every column is parsed (not usecols): a line with more fields than
        # the header is an error, as when pandas reads the whole file.
        dtype = self._dtypes(columns, batch_rows)
        objects = [name for name, kind in dtype.items() if kind is _OBJECTS]
        # The others are integers past 64 bits.
        self._bools = {
            name for name in objects if ("objects", "integer") not in self._parts[name]
        }
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
        self._parts = seen
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
    dtypes = {part[0] for part in parts if part[0] not in ("empty", "objects")}
    numeric = {getattr(dtype, "kind", "O") for dtype in dtypes}
    if "objects" in kinds:
        # Bools with values missing, integers past 64 bits: objects when
        # every other part holds the like (bools; integers), else text.
        held = {part[1] for part in parts if part[0] == "objects"}
        alike = {"boolean": {"b"}, "integer": {"i", "u"}}.get(held.pop(), set())
        return _OBJECTS if not held and numeric <= alike else str
    if not dtypes:
        return float  # every value missing
    if len(dtypes) == 1 and "empty" not in kinds:
        return next(iter(dtypes))
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


class NpyReader(Reader):
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


def open_input(path: str | Path) -> Reader:
    """Open a Parquet, CSV or ``.npy`` file for reading in batches."""
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"input file not found: {path}")
    kind = file_format(path, INPUT_FORMATS, "input")
    reader = {"parquet": _ParquetReader, "csv": _CSVReader, "npy": NpyReader}[kind]
    try:
        return reader(path)
    except CommandError:
        raise
    except Exception as exc:
        raise CommandError(f"cannot read {path} as {kind}: {exc}") from exc
