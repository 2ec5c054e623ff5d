"""Amazon review sequences in the S3-Rec / SASRec release format (``Beauty.txt`` + ``Beauty_item2attributes.json``).

``<Name>.txt`` holds one user per line, space-separated: ``user_id item_1 item_2 ...``, the items in review
time order (the release keeps the order but not the times, so a user's n-th item gets ``timestamp = n``).
``<Name>_item2attributes.json`` maps item id to attribute ids (categories and brand of the item).
The same format holds the Sports_and_Outdoors, Toys_and_Games, Yelp and LastFM releases.
"""

import dataclasses
import json

import numpy as np
import tensorflow as tf

from tfrecsys.data.readers.common import (RowError, Source, SourceFile, parse_file, require_file, to_columns,
                                          to_int)

DATASET = "amazon-beauty"
EVENT_COLUMNS = {"user_id": "int64", "item_id": "int64", "timestamp": "int64"}


@dataclasses.dataclass
class ReviewSequences:
    """``interactions``: columns user_id, item_id, timestamp (the item's position in the user's sequence);
    ``item_attributes``: item id → tuple of attribute ids."""

    interactions: dict
    item_attributes: dict
    bad_rows: list

    @property
    def num_users(self) -> int:
        return len(np.unique(self.interactions["user_id"]))

    @property
    def num_items(self) -> int:
        return len(np.unique(self.interactions["item_id"]))


def parse_sequence_line(text: str) -> list:
    """``user_id item_1 ... item_n`` → one record per item, ``timestamp`` its 0-based position."""
    fields = text.split()
    if len(fields) < 2:
        raise RowError("a sequence line needs a user id and at least one item id")
    user = to_int(fields[0], "user_id")
    return [{"user_id": user, "item_id": to_int(item, f"item {position}"), "timestamp": position}
            for position, item in enumerate(fields[1:])]


def read_item_attributes(path: str) -> dict:
    """``{item_id: (attribute ids...)}`` from an ``*_item2attributes.json`` file."""
    with tf.io.gfile.GFile(path) as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object {{item_id: [attribute ids]}}")
    attributes = {}
    for item, values in raw.items():
        if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
            raise ValueError(f"{path}: item {item!r}: attributes must be a list of integers, got {values!r}")
        try:
            attributes[int(item)] = tuple(values)
        except ValueError:
            raise ValueError(f"{path}: item id {item!r} is not an integer") from None
    return attributes


def read_review_sequences(sequences_path: str, attributes_path: str = "") -> ReviewSequences:
    """Reads an S3-Rec sequence file and, when given, its item-attribute file."""
    records, bad = parse_file(sequences_path, parse_sequence_line)
    interactions = to_columns([r for line in records for r in line], EVENT_COLUMNS)
    attributes = read_item_attributes(attributes_path) if attributes_path else {}
    return ReviewSequences(interactions, attributes, bad)


def read_amazon_beauty(directory: str) -> ReviewSequences:
    """``Beauty.txt`` and ``Beauty_item2attributes.json`` from ``directory``."""
    return read_review_sequences(require_file(directory, "Beauty.txt", DATASET),
                                 require_file(directory, "Beauty_item2attributes.json", DATASET))


class _AttributeJoiner:
    """Adds the item's ``attributes`` (empty when the release filtered all of them out as rare)."""

    def __init__(self, attributes: dict):
        self.attributes = attributes

    def __call__(self, record: dict) -> dict:
        return {**record, "attributes": self.attributes.get(record["item_id"], ())}


def _files(directory: str) -> list:
    return [SourceFile(require_file(directory, "Beauty.txt", DATASET), parse_sequence_line)]


def _joiner(directory: str):
    return _AttributeJoiner(read_item_attributes(require_file(directory, "Beauty_item2attributes.json", DATASET)))


SOURCE = Source(name=DATASET, columns={**EVENT_COLUMNS, "attributes": "int64_list"}, files=_files,
                make_joiner=_joiner, user_column="user_id", item_column="item_id", time_column="timestamp")
