"""Ali-CCP (Alibaba Click and Conversion Prediction, Tianchi dataset 408), the ESMM paper's data, in the
two preprocessed sample formats in circulation.

* CSV (torch-rechub): header ``click,purchase,101,121,...,150_14,D109_14,...,D853``: two labels, label-encoded
  categorical fields named by their Ali-CCP field id and dense ``D<field>`` values. Output columns:
  ``click``, ``purchase``, ``field_<id>`` (int64) and ``dense_<id>`` (float32).
* PaddleRec ESMM text: ``sample_id,click,purchase,<field>:<feature_id>,...``, a field repeated once per value
  (``150_14`` holds a list). Output columns: ``sample_id``, ``click``, ``purchase`` and ``field_<id>`` as
  int64 lists (empty when the row has no value for the field).

A purchase without a click is a malformed row (impression → click → purchase).
"""

import dataclasses
import glob
import os

from tfrecsys.data.readers.common import (RowError, Source, SourceFile, one_record, parse_file, to_binary,
                                          to_columns, to_int)
from tfrecsys.data.readers.csv_samples import (ConversionNeedsClick, CsvRowParser, float_column, header_of,
                                               int_column, label_column)

DATASET = "ali-ccp"
# The Ali-CCP feature fields (the paper's Table: user, item, combination and context fields).
FIELDS = ("101", "109_14", "110_14", "127_14", "150_14", "121", "122", "124", "125", "126", "127", "128", "129",
          "205", "206", "207", "210", "216", "301", "508", "509", "702", "853")
PADDLE_COLUMNS = {"sample_id": "int64", "click": "float32", "purchase": "float32",
                  **{f"field_{f}": "int64_list" for f in FIELDS}}


@dataclasses.dataclass
class AliCcp:
    rows: dict
    bad_rows: list


def csv_parser(header: tuple) -> CsvRowParser:
    """A parser for a torch-rechub Ali-CCP CSV with this header."""
    rules = []
    for name in header:
        if name in ("click", "purchase"):
            rules.append(label_column(name))
        elif name.startswith("D"):
            rules.append(float_column(f"dense_{name[1:]}"))
        elif name in FIELDS:
            rules.append(int_column(f"field_{name}"))
        else:
            raise ValueError(f"Ali-CCP CSV column {name!r} is not click, purchase, an Ali-CCP field {list(FIELDS)} "
                             "or a dense D<field>")
    if "click" not in header or "purchase" not in header:
        raise ValueError(f"Ali-CCP CSV header needs click and purchase columns, got {list(header)}")
    return CsvRowParser(header, tuple(rules), ConversionNeedsClick("click", "purchase"))


def read_ali_ccp_csv(path: str) -> AliCcp:
    parser = csv_parser(header_of(path))
    records, bad = parse_file(path, parser, skip_header_lines=1)
    return AliCcp(to_columns(records, parser.columns), bad)


def parse_paddle_line(text: str) -> dict:
    """``sample_id,click,purchase,field:id,field:id,...`` (PaddleRec's ESMM format)."""
    fields = text.split(",")
    if len(fields) < 3:
        raise RowError("expected sample_id,click,purchase and field:feature_id tokens")
    record = {"sample_id": to_int(fields[0], "sample_id"), "click": to_binary(fields[1], "click"),
              "purchase": to_binary(fields[2], "purchase")}
    ConversionNeedsClick("click", "purchase")(record)
    values = {f: [] for f in FIELDS}
    for token in fields[3:]:
        field, sep, feature = token.partition(":")
        if not sep or field not in values:
            raise RowError(f"token {token!r} is not <field>:<feature_id> with a field of {list(FIELDS)}")
        values[field].append(to_int(feature, f"field {field}"))
    record.update({f"field_{f}": tuple(v) for f, v in values.items()})
    return record


def read_ali_ccp_paddle(path: str) -> AliCcp:
    records, bad = parse_file(path, parse_paddle_line)
    return AliCcp(to_columns(records, PADDLE_COLUMNS), bad)


def _split_of(path: str) -> str:
    name = os.path.basename(path)
    for split in ("train", "val", "test"):
        if split in name:
            return split
    raise ValueError(f"{path}: cannot tell the split (train, val, test) from the file name")


def _csv_files(directory: str) -> list:
    paths = sorted(glob.glob(os.path.join(directory, "*.csv")))
    if not paths:
        raise FileNotFoundError(f"{DATASET}: no *.csv files in {directory}; see data/{DATASET}.md")
    parsers = [csv_parser(header_of(p)) for p in paths]
    return [SourceFile(p, one_record(parser), skip_header_lines=1, split=_split_of(p), columns=parser.columns)
            for p, parser in zip(paths, parsers)]


SOURCE = Source(name=DATASET, columns=None, files=_csv_files)
