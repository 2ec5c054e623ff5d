"""Taobao UserBehavior (Alibaba Tianchi dataset 649): ``UserBehavior.csv``.

Comma-separated, no header: ``user_id,item_id,category_id,behavior_type,timestamp`` with behavior_type one
of ``pv`` (page view), ``cart``, ``fav``, ``buy``; timestamps in Unix seconds. Rows are grouped by user,
not sorted by time.
"""

import dataclasses
import glob
import os

import numpy as np

from tfrecsys.data.readers.common import (RowError, Source, SourceFile, one_record, parse_file, split_fields,
                                          to_columns, to_int)

DATASET = "taobao-user-behavior"
BEHAVIORS = ("pv", "cart", "fav", "buy")
COLUMNS = {"user_id": "int64", "item_id": "int64", "category_id": "int64", "behavior": "string",
           "timestamp": "int64"}


@dataclasses.dataclass
class UserBehavior:
    events: dict
    bad_rows: list

    @property
    def num_users(self) -> int:
        return len(np.unique(self.events["user_id"]))


def parse_behavior(text: str) -> dict:
    fields = split_fields(text, ",", (5,))
    if fields[3] not in BEHAVIORS:
        raise RowError(f"field 'behavior_type': {fields[3]!r} is not one of {list(BEHAVIORS)}")
    return {"user_id": to_int(fields[0], "user_id"), "item_id": to_int(fields[1], "item_id"),
            "category_id": to_int(fields[2], "category_id"), "behavior": fields[3],
            "timestamp": to_int(fields[4], "timestamp")}


def read_user_behavior(path: str) -> UserBehavior:
    """Reads a UserBehavior CSV file (the whole release or a part of it)."""
    records, bad = parse_file(path, parse_behavior)
    return UserBehavior(to_columns(records, COLUMNS), bad)


def _files(path: str) -> list:
    """A file, or every ``UserBehavior*.csv`` in a directory."""
    paths = sorted(glob.glob(os.path.join(path, "UserBehavior*.csv"))) if os.path.isdir(path) else [path]
    if not paths or not os.path.exists(paths[0]):
        raise FileNotFoundError(f"{DATASET}: no UserBehavior*.csv at {path}; download it from Tianchi "
                                f"(see data/{DATASET}.md)")
    return [SourceFile(p, one_record(parse_behavior)) for p in paths]


SOURCE = Source(name=DATASET, columns=COLUMNS, files=_files, user_column="user_id", item_column="item_id",
                time_column="timestamp")
