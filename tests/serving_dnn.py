"""Small exports through the real export contract, for the serving and export-contract tests.

``synthetic_examples`` writes tf.train.Examples for any feature schema (every feature, labels included, as a
training TFRecord row would hold them); ``export_ranking_model`` builds a config's model with fixed seeds,
calls it once and exports it with ``export_saved_model``, so the served SavedModel is exactly what
``tfrecsys-export`` writes, only untrained.
"""

import os

import numpy as np
import tensorflow as tf

from tfrecsys.config import load_config
from tfrecsys.export.saved_model import export_saved_model
from tfrecsys.features.schema import DenseFeature, FeatureSchema, IdFeature, LabelFeature, SequenceFeature
from tfrecsys.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DNN_CONFIG = os.path.join(REPO, "configs", "dnn_simulator.py")
SMALL_DNN = {"model.hidden_units": (8,)}


def _ids(feature, rng, count: int) -> list:
    if feature.dtype == "string":
        return [f"v{int(i)}".encode() for i in rng.integers(0, 50, count)]
    return rng.integers(0, 50, count).tolist()


def synthetic_examples(schema: FeatureSchema, count: int, seed: int = 0) -> list[bytes]:
    """``count`` serialized tf.train.Example rows holding every feature of ``schema`` with plausible values."""
    rng = np.random.default_rng(seed)
    lengths = {f.name: int(rng.integers(0, f.max_len + 3)) for f in schema.of_kind(SequenceFeature)}
    rows = []
    for _ in range(count):
        feature = {}
        for spec in schema.features:
            if isinstance(spec, IdFeature):
                values = _ids(spec, rng, 1)
            elif isinstance(spec, SequenceFeature):
                values = _ids(spec, rng, lengths[spec.aligned_with or spec.name])
            elif isinstance(spec, DenseFeature) and spec.dtype == "int64":  # a request time
                values = rng.integers(1_700_000_000, 1_700_001_000, spec.dim).tolist()
            elif isinstance(spec, DenseFeature):
                values = rng.random(spec.dim).astype(np.float32).tolist()
            else:
                assert isinstance(spec, LabelFeature)
                values = [float(rng.integers(0, 2))] if spec.dtype == "float32" else [int(rng.integers(0, 2))]
            if values and isinstance(values[0], bytes):
                feature[spec.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
            elif values and isinstance(values[0], float):
                feature[spec.name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
            else:
                feature[spec.name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        for name in lengths:  # a new length per row
            lengths[name] = int(rng.integers(0, schema[name].max_len + 3))
        rows.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return rows


def export_ranking_model(config_path: str, overrides: dict, export_base: str, model_name: str,
                         version: int | None = None, seed: int = 0, warmup_rows: int = 4) -> str:
    """Builds the config's model (weights seeded by ``seed``) and exports it; returns the version path."""
    config = load_config(config_path, overrides)
    schema = FeatureSchema.from_config(config.features)
    tf.keras.utils.set_random_seed(seed)
    model = build_model(config, schema)
    examples = synthetic_examples(schema, max(warmup_rows, 2), seed)
    model(schema.parse_examples(tf.constant(examples), with_labels=False, serving=True), training=False)
    return export_saved_model(model, schema, export_base, model_name, version=version,
                              warmup_examples=examples[:warmup_rows])


def export_dnn(export_base: str, model_name: str = "dnn", version: int | None = None, seed: int = 0) -> str:
    return export_ranking_model(DNN_CONFIG, SMALL_DNN, export_base, model_name, version, seed)


def dnn_schema() -> FeatureSchema:
    return FeatureSchema.from_config(load_config(DNN_CONFIG, SMALL_DNN).features)
