"""Criteo datasets: the Display Advertising Challenge log and the Conversion Logs of delayed feedback.

Display Advertising Challenge (Kaggle 2014, ``train.txt``): tab-separated, no header, 40 fields per line:
``label``, 13 integer features ``I1..I13`` (mostly counts), 26 hashed categorical features ``C1..C26``
(8 hex digits). Any feature may be empty. DeepCTR's sample holds the same columns as CSV with a header;
both are read. Missing integers become NaN (preprocessing writes the schema's default), missing categories
the empty string.

Conversion Logs (Chapelle, KDD 2014, ``data.txt``), the delayed-feedback data: tab-separated, no header, one
click per line: click timestamp, conversion timestamp (empty when the click never converted), 8 integer
and 9 hashed categorical features. Output columns: ``click_timestamp``, ``conversion_timestamp`` (-1 when
none), ``converted`` (float label), ``delay`` (seconds, -1 when none), ``int_1..int_8``, ``cat_1..cat_9``.
A conversion before its click is a malformed row.
"""

import dataclasses
import glob
import math
import os

from tfrecsys.data.readers.common import (RowError, Source, SourceFile, one_record, parse_file, read_header,
                                          split_fields, to_binary, to_columns, to_float, to_int)
from tfrecsys.data.readers.csv_samples import CsvRowParser, float_column, label_column, string_column

DISPLAY_DATASET = "criteo-display-ad"
CONVERSION_DATASET = "criteo-conversion-logs"
INTEGER_FEATURES = tuple(f"I{i}" for i in range(1, 14))
CATEGORICAL_FEATURES = tuple(f"C{i}" for i in range(1, 27))
DISPLAY_HEADER = ("label", *INTEGER_FEATURES, *CATEGORICAL_FEATURES)
DISPLAY_COLUMNS = {"label": "float32", **{n: "float32" for n in INTEGER_FEATURES},
                   **{n: "string" for n in CATEGORICAL_FEATURES}}
CONVERSION_INTEGERS = tuple(f"int_{i}" for i in range(1, 9))
CONVERSION_CATEGORICALS = tuple(f"cat_{i}" for i in range(1, 10))
CONVERSION_COLUMNS = {"click_timestamp": "int64", "conversion_timestamp": "int64", "converted": "float32",
                      "delay": "int64", **{n: "float32" for n in CONVERSION_INTEGERS},
                      **{n: "string" for n in CONVERSION_CATEGORICALS}}
NO_CONVERSION = -1


@dataclasses.dataclass
class CriteoRows:
    rows: dict
    bad_rows: list


def _display_record(fields: list) -> dict:
    record = {"label": to_binary(fields[0], "label")}
    for name, value in zip(INTEGER_FEATURES, fields[1:14]):
        record[name] = to_float(value, name, missing=math.nan)
    record.update(zip(CATEGORICAL_FEATURES, fields[14:]))
    return record


def parse_display_tsv(text: str) -> dict:
    """A ``train.txt`` line: label, I1..I13, C1..C26, tab-separated."""
    return _display_record(split_fields(text, "\t", (40,)))


def display_csv_parser() -> CsvRowParser:
    """DeepCTR's CSV form of the same columns (header ``label,I1,...,C26``)."""
    rules = (label_column("label"), *(float_column(n, missing_is_nan=True) for n in INTEGER_FEATURES),
             *(string_column(n) for n in CATEGORICAL_FEATURES))
    return CsvRowParser(DISPLAY_HEADER, rules)


def _is_display_csv(path: str) -> bool:
    return read_header(path).startswith("label,")


def _display_file(path: str) -> SourceFile:
    if _is_display_csv(path):
        header = tuple(read_header(path).split(","))
        if header != DISPLAY_HEADER:
            raise ValueError(f"{path}: CSV header is not label,I1..I13,C1..C26")
        return SourceFile(path, one_record(display_csv_parser()), skip_header_lines=1)
    return SourceFile(path, one_record(parse_display_tsv))


def read_criteo_display(path: str) -> CriteoRows:
    """Reads a Display Advertising Challenge file: the original TSV or DeepCTR's CSV sample."""
    file = _display_file(path)
    records, bad = parse_file(path, lambda text: file.parse(text)[0], skip_header_lines=file.skip_header_lines)
    return CriteoRows(to_columns(records, DISPLAY_COLUMNS), bad)


def parse_conversion_log(text: str) -> dict:
    """A ``data.txt`` line: click ts, conversion ts (empty: none), 8 integer and 9 categorical features."""
    fields = split_fields(text, "\t", (2 + len(CONVERSION_INTEGERS) + len(CONVERSION_CATEGORICALS),))
    click = to_int(fields[0], "click_timestamp")
    conversion = to_int(fields[1], "conversion_timestamp") if fields[1].strip() else NO_CONVERSION
    if conversion != NO_CONVERSION and conversion < click:
        raise RowError(f"conversion at {conversion} is before its click at {click}")
    record = {"click_timestamp": click, "conversion_timestamp": conversion,
              "converted": float(conversion != NO_CONVERSION),
              "delay": conversion - click if conversion != NO_CONVERSION else NO_CONVERSION}
    for name, value in zip(CONVERSION_INTEGERS, fields[2:10]):
        record[name] = to_float(value, name, missing=math.nan)
    record.update(zip(CONVERSION_CATEGORICALS, fields[10:]))
    return record


def read_criteo_conversion_logs(path: str) -> CriteoRows:
    records, bad = parse_file(path, parse_conversion_log)
    return CriteoRows(to_columns(records, CONVERSION_COLUMNS), bad)


def _paths(pattern: str, dataset: str) -> list:
    """A file, a glob pattern, or every ``*.txt``/``*.csv`` file of a directory."""
    if os.path.isdir(pattern):
        paths = sorted(glob.glob(os.path.join(pattern, "*.txt")) + glob.glob(os.path.join(pattern, "*.csv")))
    else:
        paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"{dataset}: no file matches {pattern}; see data/{dataset}.md")
    return paths


DISPLAY_SOURCE = Source(name=DISPLAY_DATASET, columns=DISPLAY_COLUMNS,
                        files=lambda pattern: [_display_file(p) for p in _paths(pattern, DISPLAY_DATASET)])
CONVERSION_SOURCE = Source(
    name=CONVERSION_DATASET, columns=CONVERSION_COLUMNS,
    files=lambda pattern: [SourceFile(p, one_record(parse_conversion_log))
                           for p in _paths(pattern, CONVERSION_DATASET)],
    time_column="click_timestamp")
