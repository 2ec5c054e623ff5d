"""What every source reader shares: line parsing with bad rows kept (never dropped silently), columns.

A reader parses each line of a source file with a pure function ``parse_line(text) -> record`` that raises
``RowError(reason)`` for a malformed line. The in-memory readers here and the Beam preprocessing pipeline
(`tfrecsys.data.preprocess`) call the same functions, so a row is judged the same way in both: the
in-memory readers return the bad rows beside the good ones, the pipeline routes them to its dead-letter
output with the same reason.
"""

import dataclasses
import gzip
import io
import math
import os
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf


class RowError(ValueError):
    """One malformed source row; the message is the reason (the caller adds file and line)."""


@dataclasses.dataclass(frozen=True)
class BadRow:
    """A source row that could not be used: where it is, why, and its text."""

    path: str
    line: int  # 1-based, counting header lines
    reason: str
    text: str


def require_file(directory: str, name: str, dataset: str) -> str:
    """``directory/name``, or FileNotFoundError saying which dataset file is missing and where to get it."""
    path = os.path.join(directory, name)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{dataset}: {path} does not exist; download the dataset "
                                f"(`tfrecsys-data download {dataset}`, see data/{dataset}.md) and point "
                                f"the reader at its directory")
    return path


def open_text(path: str, encoding: str = "utf-8") -> io.TextIOBase:
    """A text stream over ``path`` (local, or any tf.io.gfile filesystem such as gs://); ``.gz`` files are
    decompressed."""
    compressed = path.endswith(".gz")
    if "://" in path:
        with tf.io.gfile.GFile(path, "rb") as remote:  # GFile is not an io.RawIOBase, so buffer it
            raw = io.BytesIO(remote.read())
        raw = gzip.GzipFile(fileobj=raw) if compressed else raw
    else:
        raw = gzip.open(path, "rb") if compressed else open(path, "rb")
    # newline="" keeps "\r" inside fields as data; lines are split on "\n" as every source format is.
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def iter_lines(path: str, encoding: str = "utf-8", skip_header_lines: int = 0) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of every data line, without its line ending; blank lines are skipped."""
    with open_text(path, encoding) as lines:
        for number, text in enumerate(lines, start=1):
            if number <= skip_header_lines:
                continue
            text = text.rstrip("\r\n")
            if text:
                yield number, text


def parse_file(path: str, parse_line: Callable[[str], object], encoding: str = "utf-8",
               skip_header_lines: int = 0) -> tuple[list, list[BadRow]]:
    """Parses every line of ``path``; returns the parsed records and the bad rows with their reasons."""
    records, bad = [], []
    for number, text in iter_lines(path, encoding, skip_header_lines):
        try:
            records.append(parse_line(text))
        except RowError as error:
            bad.append(BadRow(path, number, str(error), text))
    return records, bad


def read_header(path: str, encoding: str = "utf-8") -> str:
    with open_text(path, encoding) as lines:
        return lines.readline().rstrip("\r\n")


def split_fields(text: str, separator: str, expected: Sequence[int]) -> list[str]:
    """``text`` split on ``separator``; RowError unless the field count is one of ``expected``."""
    fields = text.split(separator)
    if len(fields) not in expected:
        wanted = " or ".join(str(n) for n in expected)
        raise RowError(f"expected {wanted} {separator!r}-separated fields, got {len(fields)}")
    return fields


def to_int(value: str, field: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise RowError(f"field {field!r}: {value!r} is not an integer") from None


def to_float(value: str, field: str, missing: Optional[float] = None) -> float:
    """A finite float; an empty field gives ``missing`` when that is allowed (e.g. NaN), else RowError."""
    value = value.strip()
    if not value and missing is not None:
        return missing
    try:
        number = float(value)
    except ValueError:
        raise RowError(f"field {field!r}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise RowError(f"field {field!r}: {value!r} is not finite")
    return number


def to_binary(value: str, field: str) -> float:
    """A 0/1 label as float; anything else is a RowError."""
    number = to_int(value, field)
    if number not in (0, 1):
        raise RowError(f"field {field!r}: label must be 0 or 1, got {number}")
    return float(number)


_NUMPY_DTYPES = {"int64": np.int64, "float32": np.float32}


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One file of a source's rows and how to parse a line of it into records (a list: one line of a
    sequence file holds a user's whole history)."""

    path: str
    parse: Callable[[str], list]
    encoding: str = "utf-8"
    skip_header_lines: int = 0
    split: Optional[str] = None  # set when the dataset ships pre-split files ("train", "test")
    columns: Optional[dict] = None  # set when the columns depend on the file (a CSV header)


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset format as preprocessing sees it.

    ``files(input_path)`` lists the row files under a directory (or file pattern); ``make_joiner(input_path)``
    (optional) loads the small side tables (items, users) once per worker and returns a function that adds
    their columns to a record, raising RowError for a record whose item or user the tables lack.
    ``columns`` are the record's columns after the join with their dtypes (``int64``, ``float32``, ``string``,
    ``int64_list`` or ``string_list``); a source
    whose columns come from a CSV header leaves it None and its files carry them.
    Event logs (``user_column`` set) become one example per event with the user's earlier events as history;
    sample tables are one example per row.
    """

    name: str
    columns: Optional[dict]
    files: Callable[[str], list]
    make_joiner: Optional[Callable[[str], Callable[[dict], dict]]] = None
    user_column: Optional[str] = None
    item_column: Optional[str] = None
    time_column: Optional[str] = None

    @property
    def is_event_log(self) -> bool:
        return self.user_column is not None

    def columns_for(self, files: Sequence[SourceFile]) -> dict:
        """The record columns of ``files`` (of this source); files with different columns are an error."""
        if self.columns is not None:
            return dict(self.columns)
        first = files[0]
        for other in files[1:]:
            if other.columns != first.columns:
                raise ValueError(f"{self.name}: {other.path} has columns {list(other.columns)} but {first.path} "
                                 f"has {list(first.columns)}")
        return dict(first.columns)


def one_record(parse_line: Callable[[str], dict]) -> Callable[[str], list]:
    """Adapts a one-record-per-line parser to SourceFile.parse."""
    return _OneRecord(parse_line)


class _OneRecord:
    """A picklable wrapper (Beam ships parse functions to workers)."""

    def __init__(self, parse_line):
        self.parse_line = parse_line

    def __call__(self, text: str) -> list:
        return [self.parse_line(text)]


def to_columns(records: Iterable[dict], dtypes: dict) -> dict:
    """Records (dicts) to columns: ``int64``/``float32`` become numpy arrays, ``string`` an object array of
    str, ``*_list`` an object array of tuples (variable length per row)."""
    records = list(records)
    columns = {}
    for name, dtype in dtypes.items():
        values = [record[name] for record in records]
        if dtype in _NUMPY_DTYPES:
            columns[name] = np.asarray(values, _NUMPY_DTYPES[dtype]).reshape(len(values))
        else:
            array = np.empty(len(values), object)
            for row, value in enumerate(values):  # element-wise: equal-length tuples must not become 2-D
                array[row] = tuple(value) if dtype.endswith("_list") else value
            columns[name] = array
    return columns
