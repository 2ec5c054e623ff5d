"""Retrieval export: a query SavedModel that returns the top-K items of a brute-force index, and a candidate
SavedModel that returns item embeddings.

Both follow the SavedModel contract (../shared/DESIGN.md) and are written by ``export_saved_model``, so each is
a versioned ``<export_base>/<name>/<version>/`` written atomically, with warmup requests and
``assets.extra/tfrecsys.json``; the pair gets the same version number.

* Query model ``<model_name>``: ``serving_default`` takes the query tower's raw features (the other features
  of the schema are not inputs) and returns ``item_ids`` ``[batch, K]`` (the item id dtype, int64 for integer
  ids) and ``scores`` float32 ``[batch, K]``, best first. ``serving_examples`` takes ``inputs``, serialized
  tf.train.Example ``[batch]``, and returns the same: batch scoring feeds that one. The index is a
  tensorflow-recommenders ``BruteForce`` layer over the candidate tower's embeddings of every corpus item
  (a matrix product and ``top_k``: no XLA, so the real tensorflow_model_server serves it as it is).
  Scores are the cosine similarities ``⟨u, v⟩`` of the normalised tower outputs (the training logits times
  the temperature), so they compare across queries.
* Candidate model ``<candidate_model_name>``: ``serving_default`` / ``serving_examples`` over the candidate
  tower's features, returning ``embedding`` float32 ``[batch, dim]``: for an external ANN index, or to embed
  new items without re-exporting the query model.
"""

import dataclasses
import os
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrecsys.export.saved_model import existing_versions, export_saved_model
from tfrecsys.features.schema import FeatureSchema, LabelFeature

ITEM_IDS = "item_ids"
SCORES = "scores"
EMBEDDING = "embedding"
_EMBED_BATCH = 4096


def serving_schema(schema: FeatureSchema, feature_names: Sequence[str]) -> FeatureSchema:
    """``schema`` with every input outside ``feature_names`` marked training-only, so that the serving
    signatures take exactly ``feature_names`` (features whose tables they share stay in the schema)."""
    wanted = set(feature_names)
    missing = sorted(wanted - {f.name for f in schema.inputs})
    if missing:
        raise ValueError(f"features {missing} are not inputs of the schema")
    return FeatureSchema(tuple(
        f if isinstance(f, LabelFeature) or f.name in wanted else dataclasses.replace(f, training_only=True)
        for f in schema.features))


class TopKRetrieval(tf.Module):
    """Query features → the ``k`` best corpus items: ``{"item_ids": [batch, k], "scores": [batch, k]}``.

    ``index`` is a ``tfrs.layers.factorized_top_k.BruteForce(k=k)`` indexed with the candidate embeddings
    ``[num_items, dim]`` and their ids ``[num_items]``; it scores ``query_tower(features)``.
    """

    def __init__(self, query_tower: tf.keras.layers.Layer, candidate_ids, candidate_embeddings, k: int,
                 name: Optional[str] = None):
        super().__init__(name=name)
        num_items = int(np.shape(candidate_embeddings)[0])
        if not 1 <= k <= num_items:
            raise ValueError(f"k must be between 1 and the number of candidates ({num_items}), got {k}")
        self.k = k
        self.query_tower = query_tower
        self.index = tfrs.layers.factorized_top_k.BruteForce(k=k)
        self.index.index(tf.convert_to_tensor(candidate_embeddings, tf.float32), tf.convert_to_tensor(candidate_ids))

    def __call__(self, features, training=False):
        scores, ids = self.index(tf.cast(self.query_tower(features, training=training), tf.float32))
        return {ITEM_IDS: ids, SCORES: scores}


class CandidateEmbedding(tf.Module):
    """Candidate features → ``{"embedding": [batch, dim]}``."""

    def __init__(self, candidate_tower: tf.keras.layers.Layer, name: Optional[str] = None):
        super().__init__(name=name)
        self.tower = candidate_tower

    def __call__(self, features, training=False):
        return {EMBEDDING: tf.cast(self.tower(features, training=training), tf.float32)}


def embed_corpus(candidate_tower, corpus_features: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """The candidate tower's embedding of every corpus row, ``[num_items, dim]``, in batches."""
    rows = int(tf.shape(next(iter(corpus_features.values())))[0])
    parts = []
    for start in range(0, rows, _EMBED_BATCH):
        batch = {name: value[start:start + _EMBED_BATCH] for name, value in corpus_features.items()}
        parts.append(tf.cast(candidate_tower(batch, training=False), tf.float32))
    return tf.concat(parts, axis=0)


def export_retrieval(*, query_tower, candidate_tower, schema: FeatureSchema, query_features: Sequence[str],
                     candidate_features: Sequence[str], candidate_ids, corpus_features: Mapping[str, tf.Tensor],
                     export_base: str, model_name: str, candidate_model_name: str, k: int,
                     version: Optional[int] = None, query_warmup_examples: Sequence[bytes] = (),
                     candidate_warmup_examples: Sequence[bytes] = (), metadata: Optional[dict] = None) -> tuple:
    """Writes the query model and the candidate model; returns ``(query_path, candidate_path)``.

    ``candidate_ids`` ``[num_items]`` and ``corpus_features`` (the candidate tower's inputs, one row per item)
    describe the corpus the index is built from. ``version`` defaults to one more than the highest version of
    either model, so the two always carry the same number.
    """
    if model_name == candidate_model_name:
        raise ValueError(f"the query and candidate models need different names, both are {model_name!r}")
    if version is None:
        version = 1 + max(existing_versions(os.path.join(export_base, model_name))
                          + existing_versions(os.path.join(export_base, candidate_model_name)) + [0])
    embeddings = embed_corpus(candidate_tower, corpus_features)
    num_items, dim = (int(n) for n in embeddings.shape)
    retrieval = {"k": k, "num_candidates": num_items, "embedding_dim": dim, "query_model": model_name,
                 "candidate_model": candidate_model_name, "query_features": list(query_features),
                 "candidate_features": list(candidate_features)}
    query_model = TopKRetrieval(query_tower, candidate_ids, embeddings, k, name=f"{model_name}_top_k")
    candidate_model = CandidateEmbedding(candidate_tower, name=f"{candidate_model_name}_embedding")
    candidate_path = export_saved_model(
        candidate_model, serving_schema(schema, candidate_features), export_base, candidate_model_name,
        version=version, warmup_examples=candidate_warmup_examples,
        metadata={**(metadata or {}), "retrieval": {**retrieval, "role": "candidate_embedding"}})
    query_path = export_saved_model(
        query_model, serving_schema(schema, query_features), export_base, model_name, version=version,
        warmup_examples=query_warmup_examples,
        metadata={**(metadata or {}), "retrieval": {**retrieval, "role": "query_top_k"}})
    return query_path, candidate_path
