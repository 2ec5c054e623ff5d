"""What data/ hands a model builder besides batches: tables read from files beside the data.

A model reads no files (../shared/DESIGN.md): the train loop and the exporter build ``ModelTables(config,
schema)`` and pass it to ``tfrecsys.models.build_model``; a family's builder asks it for what it needs
(two_tower: the candidate corpus with its item frequencies). Tables are read when asked for, once.
"""

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tfrecsys.data.input import check_schema
from tfrecsys.data.item_frequency import read_item_frequency
from tfrecsys.features.schema import FeatureSchema


@dataclasses.dataclass
class CandidateCorpus:
    """Every item the model can retrieve, read from ``path`` (one tf.train.Example per item): ``ids`` ``[N]``,
    the candidate tower's inputs ``features`` (parsed and padded like a batch, ``[N, ...]``) and ``counts``
    ``[N]``, each item's occurrences in the training data (0 for items the frequency table does not list)."""

    path: str
    ids: np.ndarray
    features: dict
    counts: np.ndarray

    @classmethod
    def read(cls, candidates_path: str, schema: FeatureSchema, feature_names: Sequence[str], id_feature: str,
             frequency_path: Optional[str] = None) -> "CandidateCorpus":
        if not tf.io.gfile.exists(candidates_path):
            raise FileNotFoundError(f"candidate corpus {candidates_path} does not exist (config.data.candidates_file)")
        features = [schema[name] for name in feature_names]
        check_schema(candidates_path, schema, features)
        records = tf.data.TFRecordDataset(candidates_path).batch(1 << 30).get_single_element()
        parsed = schema.pad_sequences(tf.io.parse_example(records, schema.parse_spec(features)))
        ids = parsed[id_feature].numpy()
        unique, first = np.unique(ids, return_counts=True)
        if (first > 1).any():
            raise ValueError(f"{candidates_path}: {id_feature} {unique[first > 1][0]!r} is listed more than once")
        counts = np.zeros(len(ids), np.float64)
        if frequency_path is not None:
            table = read_item_frequency(frequency_path, key_dtype=schema[id_feature].dtype)
            keys = [i.decode("utf-8") for i in ids.tolist()] if ids.dtype == object else ids.tolist()
            counts = np.asarray([table.get(key, 0) for key in keys], np.float64)
            if counts.sum() <= 0:
                raise ValueError(f"item frequency table {frequency_path} counts none of the {len(ids)} items of "
                                 f"{candidates_path}")
        return cls(path=candidates_path, ids=ids, features=parsed, counts=counts)


class ModelTables:
    """The tables of one experiment: ``config.data`` names the files, under ``config.data.dir``."""

    def __init__(self, config, schema: FeatureSchema):
        self.config = config
        self.schema = schema
        self._corpora = {}

    def path(self, field: str) -> str:
        """``config.data.<field>``, under ``config.data.dir`` when relative."""
        path = self.config.data[field]
        if "://" in path or os.path.isabs(path):
            return path
        return os.path.join(self.config.data.dir, path)

    def candidate_corpus(self, feature_names: Sequence[str], id_feature: str) -> CandidateCorpus:
        """Every retrievable item with ``feature_names`` (``config.data.candidates_file``) and, when
        ``config.data.item_frequency_file`` is set, its training count."""
        key = (tuple(feature_names), id_feature)
        if key not in self._corpora:
            frequency = self.path("item_frequency_file") if self.config.data.get("item_frequency_file") else None
            self._corpora[key] = CandidateCorpus.read(self.path("candidates_file"), self.schema, feature_names,
                                                      id_feature, frequency)
        return self._corpora[key]
