"""Header-driven parsing of the CSV sample formats (Ali-CCP, AliExpress, Criteo as DeepCTR writes it).

The header names the columns; a format maps each header name to an output column, a dtype and a converter.
The parser is built once per file from its header. Everything here is picklable (module-level functions
and plain classes), because Beam ships parsers to its workers.
"""

import math
from typing import Callable, Optional

from tfrecsys.data.readers.common import RowError, read_header, to_binary, to_float, to_int

# How one header column is read: (output name, dtype, converter(text, header_name) -> value).
ColumnRule = tuple


def _as_string(value: str, field: str) -> str:
    return value


def _float_or_nan(value: str, field: str) -> float:
    return to_float(value, field, missing=math.nan)


def int_column(name: str) -> ColumnRule:
    return (name, "int64", to_int)


def float_column(name: str, missing_is_nan: bool = False) -> ColumnRule:
    return (name, "float32", _float_or_nan if missing_is_nan else to_float)


def string_column(name: str) -> ColumnRule:
    return (name, "string", _as_string)


def label_column(name: str) -> ColumnRule:
    return (name, "float32", to_binary)


class ConversionNeedsClick:
    """Row check for entire-space data (impression → click → conversion): a conversion without a click is a
    malformed row, not a positive."""

    def __init__(self, click: str, conversion: str):
        self.click, self.conversion = click, conversion

    def __call__(self, record: dict) -> None:
        if record[self.conversion] > record[self.click]:
            raise RowError(f"{self.conversion}=1 without {self.click}=1: a conversion needs a click")


class CsvRowParser:
    """Parses one line of a CSV file with a known header into a record."""

    def __init__(self, header: tuple, rules: tuple, check: Optional[Callable[[dict], None]] = None):
        if len(header) != len(rules):
            raise ValueError(f"{len(header)} header columns but {len(rules)} column rules")
        self.header, self.rules, self.check = header, rules, check

    def __call__(self, text: str) -> dict:
        fields = text.split(",")
        if len(fields) != len(self.header):
            raise RowError(f"expected {len(self.header)} comma-separated fields (as in the header), "
                           f"got {len(fields)}")
        record = {name: convert(value, header_name)
                  for value, header_name, (name, _, convert) in zip(fields, self.header, self.rules)}
        if self.check is not None:
            self.check(record)
        return record

    @property
    def columns(self) -> dict:
        return {name: dtype for name, dtype, _ in self.rules}


def header_of(path: str) -> tuple:
    header = tuple(read_header(path).split(","))
    if not any(header):
        raise ValueError(f"{path}: the file is empty (a header line was expected)")
    return header
