"""AliExpress Searching System dataset (Tianchi dataset 74690), the AITM/PLE multi-task data.

CSV with header ``search_id,categorical_1..categorical_16,numerical_1..numerical_63,click,conversion``
(one file per country and split in the release, e.g. ``AliExpress_NL/train.csv``; torch-rechub's samples
keep the same columns). Categorical values are label-encoded ids, numerical ones normalised floats.
A conversion without a click is a malformed row.
"""

import dataclasses
import glob
import os

from tfrecsys.data.readers.common import Source, SourceFile, one_record, parse_file, to_columns
from tfrecsys.data.readers.csv_samples import (ConversionNeedsClick, CsvRowParser, float_column, header_of,
                                               int_column, label_column)

DATASET = "aliexpress"
NUM_CATEGORICAL = 16
NUM_NUMERICAL = 63
HEADER = ("search_id", *(f"categorical_{i}" for i in range(1, NUM_CATEGORICAL + 1)),
          *(f"numerical_{i}" for i in range(1, NUM_NUMERICAL + 1)), "click", "conversion")


@dataclasses.dataclass
class AliExpress:
    rows: dict
    bad_rows: list


def row_parser() -> CsvRowParser:
    rules = [int_column("search_id")]
    rules += [int_column(f"categorical_{i}") for i in range(1, NUM_CATEGORICAL + 1)]
    rules += [float_column(f"numerical_{i}") for i in range(1, NUM_NUMERICAL + 1)]
    rules += [label_column("click"), label_column("conversion")]
    return CsvRowParser(HEADER, tuple(rules), ConversionNeedsClick("click", "conversion"))


def _check_header(path: str) -> None:
    header = header_of(path)
    if header != HEADER:
        missing = [c for c in HEADER if c not in header]
        raise ValueError(f"{path}: not an AliExpress CSV: header has {len(header)} columns, expected {len(HEADER)}"
                         f" ({'missing ' + str(missing[:5]) if missing else 'in another order'})")


def read_aliexpress(path: str) -> AliExpress:
    _check_header(path)
    parser = row_parser()
    records, bad = parse_file(path, parser, skip_header_lines=1)
    return AliExpress(to_columns(records, parser.columns), bad)


def _files(directory: str) -> list:
    paths = sorted(glob.glob(os.path.join(directory, "**", "*.csv"), recursive=True))
    if not paths:
        raise FileNotFoundError(f"{DATASET}: no *.csv files under {directory}; see data/{DATASET}.md")
    files = []
    for path in paths:
        _check_header(path)
        name = os.path.basename(path)
        split = "test" if "test" in name else "train" if "train" in name else None
        if split is None:
            raise ValueError(f"{path}: cannot tell the split (train or test) from the file name")
        files.append(SourceFile(path, one_record(row_parser()), skip_header_lines=1, split=split))
    return files


SOURCE = Source(name=DATASET, columns=row_parser().columns, files=_files)
