"""The feature schema: one description of every input that drives parsing, embeddings and serving.

A schema lists four kinds of feature:

* ``IdFeature``: one categorical id per row (int64 or string), mapped to an embedding row by exactly one of
  ``num_buckets`` (integer ids already in ``[0, num_buckets)``), ``vocabulary`` (an explicit list) or
  ``hash_buckets`` (hashing); ids outside the vocabulary land in OOV rows, never in an error.
* ``DenseFeature``: ``dim`` floats per row.
* ``SequenceFeature``: a variable-length list of ids per row in time order (oldest first), e.g. a click
  history. Batches carry it padded to ``max_len`` (the most recent ``max_len`` events are kept) together
  with ``<name>_length``; that is also how serving clients send it. A sequence either ``shares`` the
  vocabulary and embedding table of an id feature (history of item ids → ``item_id``'s table) or has its own.
  A side sequence (the categories or timestamps of a history) sets ``aligned_with`` to its primary sequence:
  it has no length of its own and is masked by the primary's ``<name>_length``.
* ``LabelFeature``: a training target; never an input of the serving signature.

Any feature may be ``training_only`` (position, device, time since exposure): it is parsed for training but
left out of every serving signature, so a model can use it only in a tower that serving drops.

Schemas come from the ``features`` block of an experiment config; see ``FeatureSchema.from_config``.
"""

import dataclasses
from typing import Mapping, Optional, Sequence, Union

import tensorflow as tf

_DTYPES = {"int64": tf.int64, "string": tf.string, "float32": tf.float32}
LENGTH_SUFFIX = "_length"


class SchemaError(ValueError):
    """A feature schema or a batch that does not match it; the message names the feature."""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """How raw ids map to embedding rows. Exactly one of the three fields is set.

    ``vocabulary`` is a tuple of ids or the path of a vocabulary file (one id per line, as written by
    preprocessing); a file travels inside the SavedModel as an asset.
    """

    num_buckets: Optional[int] = None
    vocabulary: Optional[Union[tuple, str]] = None
    hash_buckets: Optional[int] = None
    num_oov: int = 1

    def validate(self, feature: str, dtype: str) -> None:
        given = [k for k in ("num_buckets", "vocabulary", "hash_buckets") if getattr(self, k) is not None]
        if len(given) != 1:
            raise SchemaError(f"feature {feature!r}: set exactly one of num_buckets, vocabulary, hash_buckets "
                              f"(got {given or 'none'})")
        if self.num_buckets is not None and dtype != "int64":
            raise SchemaError(f"feature {feature!r}: num_buckets needs dtype int64, got {dtype}; "
                              "use vocabulary or hash_buckets for strings")
        if isinstance(self.vocabulary, str) and not tf.io.gfile.exists(self.vocabulary):
            raise SchemaError(f"feature {feature!r}: vocabulary file {self.vocabulary} does not exist")
        if self.num_oov < 1:
            raise SchemaError(f"feature {feature!r}: num_oov must be at least 1, got {self.num_oov}")

    @property
    def size(self) -> int:
        """Rows of the embedding table, OOV rows included."""
        if self.num_buckets is not None:
            return self.num_buckets + self.num_oov
        if isinstance(self.vocabulary, str):
            with tf.io.gfile.GFile(self.vocabulary) as lines:
                return sum(1 for _ in lines) + self.num_oov
        if self.vocabulary is not None:
            return len(self.vocabulary) + self.num_oov
        return self.hash_buckets


@dataclasses.dataclass(frozen=True)
class IdFeature:
    name: str
    vocab: Vocabulary
    dtype: str = "int64"
    embedding_dim: int = 16
    training_only: bool = False

    @property
    def table(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True)
class DenseFeature:
    name: str
    dim: int = 1
    default: float = 0.0
    training_only: bool = False
    dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class SequenceFeature:
    name: str
    max_len: int
    vocab: Optional[Vocabulary] = None
    shares: Optional[str] = None
    aligned_with: Optional[str] = None
    dtype: str = "int64"
    embedding_dim: int = 16
    training_only: bool = False

    @property
    def table(self) -> str:
        """The embedding table: the shared id feature's, or the sequence's own."""
        return self.shares or self.name

    @property
    def length_name(self) -> str:
        """The ``[batch]`` int64 input that holds the valid length (the primary's for a side sequence)."""
        return (self.aligned_with or self.name) + LENGTH_SUFFIX


@dataclasses.dataclass(frozen=True)
class LabelFeature:
    name: str
    dtype: str = "float32"
    training_only: bool = True


Feature = Union[IdFeature, DenseFeature, SequenceFeature, LabelFeature]
_KINDS = {"id": IdFeature, "dense": DenseFeature, "sequence": SequenceFeature, "label": LabelFeature}


def _check_dtype(name: str, dtype: str, allowed: Sequence[str]) -> None:
    if dtype not in allowed:
        raise SchemaError(f"feature {name!r}: dtype {dtype!r} is not one of {list(allowed)}")


@dataclasses.dataclass(frozen=True)
class FeatureSchema:
    """All features of an experiment, in a fixed (config) order."""

    features: tuple

    def __post_init__(self):
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SchemaError(f"features defined twice: {duplicates}")
        by_name = {f.name: f for f in self.features}
        for feature in self.features:
            if isinstance(feature, (IdFeature, SequenceFeature)):
                _check_dtype(feature.name, feature.dtype, ("int64", "string"))
            if isinstance(feature, IdFeature):
                feature.vocab.validate(feature.name, feature.dtype)
            if isinstance(feature, SequenceFeature):
                if feature.length_name in by_name:
                    raise SchemaError(f"feature {feature.length_name!r} clashes with the length input of "
                                      f"sequence {feature.name!r}")
                if feature.aligned_with is not None:
                    primary = by_name.get(feature.aligned_with)
                    if not isinstance(primary, SequenceFeature) or primary.aligned_with is not None:
                        raise SchemaError(f"sequence feature {feature.name!r} is aligned_with "
                                          f"{feature.aligned_with!r}, which is not a primary sequence feature")
                    if primary.max_len != feature.max_len:
                        raise SchemaError(f"sequence feature {feature.name!r} has max_len {feature.max_len} but "
                                          f"its primary {primary.name!r} has {primary.max_len}")
                if feature.max_len < 1:
                    raise SchemaError(f"feature {feature.name!r}: max_len must be positive")
                if (feature.shares is None) == (feature.vocab is None):
                    raise SchemaError(f"sequence feature {feature.name!r}: set exactly one of shares (an id "
                                      "feature whose table it uses) or its own vocabulary")
                if feature.shares is not None:
                    target = by_name.get(feature.shares)
                    if not isinstance(target, IdFeature):
                        raise SchemaError(f"sequence feature {feature.name!r} shares {feature.shares!r}, "
                                          "which is not an id feature of this schema")
                    if target.dtype != feature.dtype:
                        raise SchemaError(f"sequence feature {feature.name!r} is {feature.dtype} but shares "
                                          f"{feature.shares!r}, which is {target.dtype}")
                else:
                    feature.vocab.validate(feature.name, feature.dtype)
            if isinstance(feature, LabelFeature):
                _check_dtype(feature.name, feature.dtype, ("float32", "int64"))

    @classmethod
    def from_config(cls, features_config: Mapping) -> "FeatureSchema":
        """Builds a schema from a config block ``{name: {kind: id|dense|sequence|label, ...}}``.

        Vocabulary keys (``num_buckets``, ``vocabulary``, ``hash_buckets``, ``num_oov``) sit beside the others.
        """
        features = []
        for name, spec in features_config.items():
            spec = dict(spec)
            kind = spec.pop("kind", None)
            if kind not in _KINDS:
                raise SchemaError(f"feature {name!r}: kind must be one of {sorted(_KINDS)}, got {kind!r}")
            vocab_keys = {k: spec.pop(k) for k in ("num_buckets", "vocabulary", "hash_buckets", "num_oov")
                          if k in spec}
            if isinstance(vocab_keys.get("vocabulary"), (list, tuple)):
                vocab_keys["vocabulary"] = tuple(vocab_keys["vocabulary"])
            if kind == "id" or (kind == "sequence" and ("shares" not in spec or vocab_keys)):
                spec["vocab"] = Vocabulary(**vocab_keys)
            elif vocab_keys and kind != "sequence":
                raise SchemaError(f"feature {name!r}: {sorted(vocab_keys)} only apply to id and sequence features")
            fields = {f.name for f in dataclasses.fields(_KINDS[kind])}
            unknown = sorted(set(spec) - fields)
            if unknown:
                raise SchemaError(f"feature {name!r} ({kind}): unknown keys {unknown}; known: {sorted(fields - {'name'})}")
            try:
                features.append(_KINDS[kind](name=name, **spec))
            except TypeError as error:
                raise SchemaError(f"feature {name!r} ({kind}): {error}") from None
        return cls(tuple(features))

    def __getitem__(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise SchemaError(f"no feature named {name!r}; the schema has {[f.name for f in self.features]}")

    def of_kind(self, kind: type) -> list:
        return [f for f in self.features if isinstance(f, kind)]

    @property
    def labels(self) -> list:
        return self.of_kind(LabelFeature)

    @property
    def inputs(self) -> list:
        """Every model input (labels excluded), training-only features included."""
        return [f for f in self.features if not isinstance(f, LabelFeature)]

    @property
    def serving_inputs(self) -> list:
        """What a serving client sends: inputs that are not training-only."""
        return [f for f in self.inputs if not f.training_only]

    # Parsing -----------------------------------------------------------------------------------------------

    def parse_spec(self, features: Optional[Sequence[Feature]] = None) -> dict:
        """``tf.io.parse_example`` spec. Missing dense or id values are an error, not a silent default:
        a row without ``user_id`` is a broken row."""
        spec = {}
        for feature in features if features is not None else self.features:
            dtype = _DTYPES[feature.dtype]
            if isinstance(feature, SequenceFeature):
                spec[feature.name] = tf.io.RaggedFeature(dtype)
            elif isinstance(feature, DenseFeature):
                shape = [] if feature.dim == 1 else [feature.dim]
                spec[feature.name] = tf.io.FixedLenFeature(shape, dtype)
            else:
                spec[feature.name] = tf.io.FixedLenFeature([], dtype)
        return spec

    def parse_examples(self, serialized: tf.Tensor, with_labels: bool = True, serving: bool = False) -> dict:
        """Parses a ``[batch]`` string tensor of tf.train.Example into the model's input dict.

        Sequences come out as ``[batch, max_len]`` (the most recent ``max_len`` events, left-aligned, padded
        with 0 or "") plus ``<name>_length`` ``[batch]`` int64, exactly as serving clients send them.
        """
        selected = self.serving_inputs if serving else self.inputs
        if with_labels:
            selected = selected + self.labels
        parsed = tf.io.parse_example(serialized, self.parse_spec(selected))
        return self.pad_sequences(parsed)

    def pad_sequences(self, features: dict) -> dict:
        """Replaces each ragged sequence ``[batch, (len)]`` with its padded form and length."""
        out = dict(features)
        for feature in self.of_kind(SequenceFeature):
            value = out.get(feature.name)
            if not isinstance(value, tf.RaggedTensor):
                continue
            recent = value[:, -feature.max_len:]
            pad = "" if feature.dtype == "string" else 0
            out[feature.name] = recent.to_tensor(default_value=pad, shape=[None, feature.max_len])
            if feature.aligned_with is None:
                out[feature.length_name] = tf.cast(recent.row_lengths(), tf.int64)
        return out

    def input_signature(self, serving: bool = True) -> dict:
        """``{name: tf.TensorSpec}`` for the raw-feature signature (``serving_default``)."""
        specs = {}
        for feature in self.serving_inputs if serving else self.inputs:
            dtype = _DTYPES[feature.dtype]
            if isinstance(feature, SequenceFeature):
                specs[feature.name] = tf.TensorSpec([None, feature.max_len], dtype, name=feature.name)
                if feature.aligned_with is None:
                    specs[feature.length_name] = tf.TensorSpec([None], tf.int64, name=feature.length_name)
            elif isinstance(feature, DenseFeature) and feature.dim > 1:
                specs[feature.name] = tf.TensorSpec([None, feature.dim], dtype, name=feature.name)
            else:
                specs[feature.name] = tf.TensorSpec([None], dtype, name=feature.name)
        return specs

    def split_labels(self, batch: dict) -> tuple:
        """``(inputs, labels)`` from a parsed batch."""
        label_names = {f.name for f in self.labels}
        inputs = {k: v for k, v in batch.items() if k not in label_names}
        labels = {k: v for k, v in batch.items() if k in label_names}
        return inputs, labels

    def to_json(self) -> dict:
        """A plain description (written beside exports and datasets so a reader needs no config)."""
        out = {}
        for feature in self.features:
            entry = {"kind": next(k for k, c in _KINDS.items() if isinstance(feature, c))}
            for field in dataclasses.fields(feature):
                if field.name == "name":
                    continue
                value = getattr(feature, field.name)
                if isinstance(value, Vocabulary):
                    entry.update({k: (list(v) if isinstance(v, tuple) else v)
                                  for k, v in dataclasses.asdict(value).items() if v is not None})
                elif value is not None:
                    entry[field.name] = value
            out[feature.name] = entry
        return out
