"""MovieLens in GroupLens' original files: 100K (``u.data``, ``u.item``, ``u.user``) and 1M (``::``-separated
``ratings.dat``, ``movies.dat``, ``users.dat``).

    data = read_movielens_100k("../shared/datasets/movielens-100k")
    data.ratings["user_id"], data.ratings["item_id"], data.ratings["rating"], data.ratings["timestamp"]
    data.items["item_id"], data.items["title"], data.items["genres"], data.users["user_id"], ...

Ids are the raw ids of the files (1-based). Ratings keep the file's order (u.data is not sorted). A rating
whose user or item is missing from the user or item table is a bad row, not a silent join miss.
"""

import dataclasses
import re

import numpy as np

from tfrecsys.data.readers.common import (BadRow, RowError, Source, SourceFile, iter_lines, one_record,
                                          parse_file, require_file, split_fields, to_columns, to_float, to_int)

DATASET_100K = "movielens-100k"
DATASET_1M = "movielens-1m"
# u.genre, in the order of u.item's 19 genre flags.
GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western")
RATING_COLUMNS = {"user_id": "int64", "item_id": "int64", "rating": "float32", "timestamp": "int64"}
ITEM_COLUMNS_100K = {"item_id": "int64", "title": "string", "release_date": "string", "release_year": "int64",
                     "imdb_url": "string", "genres": "string_list"}
USER_COLUMNS_100K = {"user_id": "int64", "age": "int64", "gender": "string", "occupation": "string",
                     "zip_code": "string"}
ITEM_COLUMNS_1M = {"item_id": "int64", "title": "string", "release_year": "int64", "genres": "string_list"}
# In ml-1m, age and occupation are codes (see its README), not years and names.
USER_COLUMNS_1M = {"user_id": "int64", "gender": "string", "age": "int64", "occupation": "int64",
                   "zip_code": "string"}
_ENCODING = "latin-1"  # both releases' item files are Latin-1 (titles such as "Misérables")


@dataclasses.dataclass
class MovieLens:
    """Ratings, items and users as columns (numpy arrays; strings and genre tuples as object arrays)."""

    ratings: dict
    items: dict
    users: dict
    bad_rows: list

    @property
    def num_ratings(self) -> int:
        return len(self.ratings["user_id"])

    @property
    def num_users(self) -> int:
        return len(np.unique(self.ratings["user_id"]))

    @property
    def num_items(self) -> int:
        return len(np.unique(self.ratings["item_id"]))


def _rating(fields: list) -> dict:
    record = {"user_id": to_int(fields[0], "user_id"), "item_id": to_int(fields[1], "item_id"),
              "rating": to_float(fields[2], "rating"), "timestamp": to_int(fields[3], "timestamp")}
    if not 0.5 <= record["rating"] <= 5:
        raise RowError(f"field 'rating': {record['rating']} is outside 0.5..5")
    return record


def parse_rating_100k(text: str) -> dict:
    """``user_id\\titem_id\\trating\\ttimestamp`` (u.data)."""
    return _rating(split_fields(text, "\t", (4,)))


def parse_rating_1m(text: str) -> dict:
    """``UserID::MovieID::Rating::Timestamp`` (ratings.dat)."""
    return _rating(split_fields(text, "::", (4,)))


def _year(text: str) -> int:
    match = re.search(r"(\d{4})\)?\s*$", text)
    return int(match.group(1)) if match else 0


def parse_item_100k(text: str) -> dict:
    """``movie_id|title|release_date|video_release_date|IMDb_URL|`` then 19 genre flags (u.item)."""
    fields = split_fields(text, "|", (24,))
    flags = fields[5:]
    if any(flag not in ("0", "1") for flag in flags):
        raise RowError(f"genre flags must be 0 or 1, got {flags}")
    return {"item_id": to_int(fields[0], "movie_id"), "title": fields[1], "release_date": fields[2],
            "release_year": _year(fields[2]), "imdb_url": fields[4],
            "genres": tuple(g for g, flag in zip(GENRES_100K, flags) if flag == "1")}


def parse_user_100k(text: str) -> dict:
    """``user_id|age|gender|occupation|zip_code`` (u.user)."""
    fields = split_fields(text, "|", (5,))
    return {"user_id": to_int(fields[0], "user_id"), "age": to_int(fields[1], "age"), "gender": fields[2],
            "occupation": fields[3], "zip_code": fields[4]}


def parse_item_1m(text: str) -> dict:
    """``MovieID::Title (Year)::Genre|Genre`` (movies.dat)."""
    fields = split_fields(text, "::", (3,))
    return {"item_id": to_int(fields[0], "MovieID"), "title": fields[1], "release_year": _year(fields[1]),
            "genres": tuple(g for g in fields[2].split("|") if g)}


def parse_user_1m(text: str) -> dict:
    """``UserID::Gender::Age::Occupation::Zip-code`` (users.dat; age and occupation are codes)."""
    fields = split_fields(text, "::", (5,))
    return {"user_id": to_int(fields[0], "UserID"), "gender": fields[1], "age": to_int(fields[2], "Age"),
            "occupation": to_int(fields[3], "Occupation"), "zip_code": fields[4]}


def _table(path: str, parse, key: str, columns: dict) -> tuple[dict, list]:
    records, bad = parse_file(path, parse, _ENCODING)
    seen, unique = set(), []
    for record in records:
        if record[key] in seen:
            raise ValueError(f"{path}: {key} {record[key]} appears twice")
        seen.add(record[key])
        unique.append(record)
    return to_columns(unique, columns), bad


def _read(directory, dataset, ratings_name, parse_rating, items_name, parse_item, item_columns, users_name,
          parse_user, user_columns) -> MovieLens:
    items, bad_items = _table(require_file(directory, items_name, dataset), parse_item, "item_id", item_columns)
    users, bad_users = _table(require_file(directory, users_name, dataset), parse_user, "user_id", user_columns)
    known_items, known_users = set(items["item_id"].tolist()), set(users["user_id"].tolist())
    path = require_file(directory, ratings_name, dataset)
    ratings, bad = [], []
    for number, text in iter_lines(path, _ENCODING):
        try:
            record = parse_rating(text)
            if record["item_id"] not in known_items:
                raise RowError(f"item_id {record['item_id']} is not in {items_name}")
            if record["user_id"] not in known_users:
                raise RowError(f"user_id {record['user_id']} is not in {users_name}")
            ratings.append(record)
        except RowError as error:
            bad.append(BadRow(path, number, str(error), text))
    return MovieLens(to_columns(ratings, RATING_COLUMNS), items, users, bad_items + bad_users + bad)


def read_movielens_100k(directory: str) -> MovieLens:
    """Reads ``u.data``, ``u.item`` and ``u.user`` of MovieLens 100K from ``directory``."""
    return _read(directory, DATASET_100K, "u.data", parse_rating_100k, "u.item", parse_item_100k,
                 ITEM_COLUMNS_100K, "u.user", parse_user_100k, USER_COLUMNS_100K)


def read_movielens_1m(directory: str, ratings_file: str = "ratings.dat") -> MovieLens:
    """Reads ``ratings.dat`` (or another file in its format), ``movies.dat`` and ``users.dat`` of ML-1M."""
    return _read(directory, DATASET_1M, ratings_file, parse_rating_1m, "movies.dat", parse_item_1m,
                 ITEM_COLUMNS_1M, "users.dat", parse_user_1m, USER_COLUMNS_1M)


class _Joiner:
    """Adds the item's and the user's columns to a rating; RowError when either table lacks it."""

    def __init__(self, items: dict, users: dict, items_name: str, users_name: str):
        self.items = _rows_by_key(items, "item_id")
        self.users = _rows_by_key(users, "user_id")
        self.items_name, self.users_name = items_name, users_name

    def __call__(self, record: dict) -> dict:
        item = self.items.get(record["item_id"])
        if item is None:
            raise RowError(f"item_id {record['item_id']} is not in {self.items_name}")
        user = self.users.get(record["user_id"])
        if user is None:
            raise RowError(f"user_id {record['user_id']} is not in {self.users_name}")
        return {**record, **item, **user}


def _rows_by_key(columns: dict, key: str) -> dict:
    names = [n for n in columns if n != key]
    return {k: {n: _plain(columns[n][row]) for n in names} for row, k in enumerate(columns[key].tolist())}


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _joiner_100k(directory: str):
    items, _ = _table(require_file(directory, "u.item", DATASET_100K), parse_item_100k, "item_id",
                      ITEM_COLUMNS_100K)
    users, _ = _table(require_file(directory, "u.user", DATASET_100K), parse_user_100k, "user_id",
                      USER_COLUMNS_100K)
    return _Joiner(items, users, "u.item", "u.user")


def _joiner_1m(directory: str):
    items, _ = _table(require_file(directory, "movies.dat", DATASET_1M), parse_item_1m, "item_id", ITEM_COLUMNS_1M)
    users, _ = _table(require_file(directory, "users.dat", DATASET_1M), parse_user_1m, "user_id", USER_COLUMNS_1M)
    return _Joiner(items, users, "movies.dat", "users.dat")


def _joined_columns(item_columns: dict, user_columns: dict) -> dict:
    return {**RATING_COLUMNS, **{k: v for k, v in item_columns.items() if k != "item_id"},
            **{k: v for k, v in user_columns.items() if k != "user_id"}}


SOURCE_100K = Source(
    name=DATASET_100K, columns=_joined_columns(ITEM_COLUMNS_100K, USER_COLUMNS_100K),
    files=lambda directory: [SourceFile(require_file(directory, "u.data", DATASET_100K),
                                        one_record(parse_rating_100k), _ENCODING)],
    make_joiner=_joiner_100k, user_column="user_id", item_column="item_id", time_column="timestamp")

SOURCE_1M = Source(
    name=DATASET_1M, columns=_joined_columns(ITEM_COLUMNS_1M, USER_COLUMNS_1M),
    files=lambda directory: [SourceFile(require_file(directory, "ratings.dat", DATASET_1M),
                                        one_record(parse_rating_1m), _ENCODING)],
    make_joiner=_joiner_1m, user_column="user_id", item_column="item_id", time_column="timestamp")
