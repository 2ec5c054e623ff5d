"""The feature schema: one description of every input that drives parsing, embeddings and serving.

A schema lists four kinds of feature:

* ``IdFeature``: one categorical id per row (int64 or string), mapped to an embedding row by exactly one of
  ``num_buckets`` (integer ids already in ``[0, num_buckets)``), ``vocabulary`` (an explicit list) or
  ``hash_buckets`` (hashing); ids outside the vocabulary land in OOV rows, never in an error. A number
  (float32 or int64) is embedded by its bucket with ``boundaries`` (strictly increasing cut points, or the
  path of a file of them, one per line): value ``x`` → row ``i`` with ``b[i-1] <= x < b[i]``, ``len(b) + 1``
  rows, no OOV row (every number has a bucket). Read from a dense feature's column (``source``), such a
  feature embeds a continuous input by its range (an age band, a quantile of a heavy-tailed amount) beside
  or instead of its value; a serving client still sends that column once (``serving_aliases``).
* ``DenseFeature``: ``dim`` values per row, float32, or int64 for values a float would round (a request
  time of 1.7e9 s keeps only multiples of 128 s in float32); an int64 feature is parsed and served as int64.
  ``log1p`` (float32 only): the model reads ``sign(x)·log(1 + |x|)`` instead of ``x``, for heavy-tailed
  amounts (capital gains of 0 to 99,999); clients still send ``x``.
* ``SequenceFeature``: a variable-length list per row in time order (oldest first), e.g. a click history.
  Batches carry it padded to ``max_len`` (the most recent ``max_len`` events are kept) together with
  ``<name>_length``; that is also how serving clients send it. An embedded sequence (ids, int64 or string)
  either ``shares`` the vocabulary and embedding table of an id feature (history of item ids → ``item_id``'s
  table) or has its own. A ``raw`` sequence (int64 or float32: timestamps, action types, dwell times) has no
  vocabulary and reaches the model as its values.
  A side sequence (the categories or timestamps of a history) sets ``aligned_with`` to its primary sequence:
  it has no length of its own and is masked by the primary's ``<name>_length``.
* ``LabelFeature``: a training target; never an input of the serving signature. With ``max_len`` it is a
  label sequence (the next item at each position of a history), padded like a sequence with its own
  ``<name>_length``.

Every feature is read from the stored column (tf.train.Example key, Parquet column) named by ``source``,
its own name by default, so several features can cut their own ``max_len`` from one stored history (a
short one for attention, a lifelong one for search). Parsing reads each column once.

Any feature may be ``training_only`` (position, device, time since exposure): it is parsed for training but
left out of every serving signature, so a model can use it only in a tower that serving drops.

``feature.embedded`` says whether the embedding code looks a feature up in a table (id features and
non-raw sequences) or passes it through (dense features, raw sequences; labels are not inputs at all).

Schemas come from the ``features`` block of an experiment config (``FeatureSchema.from_config``); the JSON an
export or a dataset records (``to_json``) is read back with ``FeatureSchema.from_json``.
"""

import dataclasses
import functools
from typing import Mapping, Optional, Sequence, Union

import tensorflow as tf

from tfrecsys.contract import LENGTH_SUFFIX

_DTYPES = {"int64": tf.int64, "string": tf.string, "float32": tf.float32}
_VOCABULARY_KEYS = ("num_buckets", "vocabulary", "hash_buckets", "boundaries", "num_oov")
_VOCABULARY_KINDS = ("num_buckets", "vocabulary", "hash_buckets", "boundaries")


class SchemaError(ValueError):
    """A feature schema or a batch that does not match it; the message names the feature."""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """How raw ids map to embedding rows. Exactly one of the four kinds is set.

    ``vocabulary`` is a tuple of ids or the path of a vocabulary file (one id per line, as written by
    preprocessing); a file travels inside the SavedModel as an asset. ``boundaries`` (numbers only) is a
    tuple of strictly increasing cut points or the path of a file of them, one per line; the model reads the
    file when it is built and holds the cut points as constants. A file is read once per ``Vocabulary``
    (its cut points or line count are kept), whatever asks for them. ``feature``: the feature it belongs to,
    named in errors (a schema sets it; not part of the description).
    """

    num_buckets: Optional[int] = None
    vocabulary: Optional[Union[tuple, str]] = None
    hash_buckets: Optional[int] = None
    boundaries: Optional[Union[tuple, str]] = None
    num_oov: int = 1
    feature: str = dataclasses.field(default="", compare=False, repr=False)

    def validate(self, feature: str, dtype: str) -> None:
        given = [k for k in _VOCABULARY_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise SchemaError(f"feature {feature!r}: set exactly one of {', '.join(_VOCABULARY_KINDS)} "
                              f"(got {given or 'none'})")
        if self.num_buckets is not None and dtype != "int64":
            raise SchemaError(f"feature {feature!r}: num_buckets needs dtype int64, got {dtype}; "
                              "use vocabulary or hash_buckets for strings")
        if self.boundaries is not None:
            if dtype not in ("float32", "int64"):
                raise SchemaError(f"feature {feature!r}: boundaries bucket numbers (dtype float32 or int64), got "
                                  f"dtype {dtype}")
            if self.num_oov != 1:
                raise SchemaError(f"feature {feature!r}: num_oov does not apply to boundaries (every number has a "
                                  f"bucket), got {self.num_oov}")
            if not isinstance(self.boundaries, str):
                check_boundaries(self.boundaries, f"feature {feature!r}")
        elif dtype == "float32":
            raise SchemaError(f"feature {feature!r}: a float32 id feature is embedded by its bucket; set "
                              "boundaries (cut points) instead of " + ", ".join(given))
        if self.num_oov < 1:
            raise SchemaError(f"feature {feature!r}: num_oov must be at least 1, got {self.num_oov}")

    def check_file(self) -> None:
        """A vocabulary or boundaries file must exist (and a boundaries file hold increasing numbers) where a
        schema is built for training or export; a schema read back from an export's JSON does not open it (the
        SavedModel holds its own copy)."""
        for kind in ("vocabulary", "boundaries"):
            path = getattr(self, kind)
            if isinstance(path, str) and not tf.io.gfile.exists(path):
                raise SchemaError(f"{self._named()}: {kind} file {path} does not exist (where tfrecsys-preprocess "
                                  "writes it, run it with this config: a directory preprocessed with an older "
                                  "config lacks the files of features added since)")
        if isinstance(self.boundaries, str):
            self.bucket_boundaries()

    def _named(self) -> str:
        return f"feature {self.feature!r}" if self.feature else "vocabulary"

    def bucket_boundaries(self) -> tuple:
        """The cut points of a ``boundaries`` vocabulary, read from its file (once) if it names one."""
        if not isinstance(self.boundaries, str):
            return tuple(float(b) for b in self.boundaries)
        return self._boundaries_in_file

    @functools.cached_property
    def _boundaries_in_file(self) -> tuple:
        with tf.io.gfile.GFile(self.boundaries) as lines:
            texts = [line.strip() for line in lines if line.strip()]
        where = f"{self._named()} (boundaries file {self.boundaries})"
        try:
            values = tuple(float(text) for text in texts)
        except ValueError as error:
            raise SchemaError(f"{where}: {error}") from None
        check_boundaries(values, where)
        return values

    @functools.cached_property
    def _lines_in_vocabulary_file(self) -> int:
        with tf.io.gfile.GFile(self.vocabulary) as lines:
            return sum(1 for _ in lines)

    @property
    def size(self) -> int:
        """Rows of the embedding table, OOV rows included."""
        if self.boundaries is not None:
            return len(self.bucket_boundaries()) + 1
        if self.num_buckets is not None:
            return self.num_buckets + self.num_oov
        if isinstance(self.vocabulary, str):
            return self._lines_in_vocabulary_file + self.num_oov
        if self.vocabulary is not None:
            return len(self.vocabulary) + self.num_oov
        return self.hash_buckets

    def describe(self) -> dict:
        """The keys a config or ``to_json`` gives for this vocabulary (tuples as lists)."""
        return {kind: (list(value) if isinstance(value, tuple) else value)
                for kind in _VOCABULARY_KEYS if (value := getattr(self, kind)) is not None}


def check_boundaries(boundaries, where: str) -> None:
    """Bucket cut points must be a non-empty, strictly increasing sequence of numbers."""
    try:
        values = [float(b) for b in boundaries]
    except (TypeError, ValueError):
        raise SchemaError(f"{where}: boundaries must be numbers, got {boundaries!r}") from None
    if not values:
        raise SchemaError(f"{where}: boundaries must hold at least one cut point")
    unordered = [(b, a) for b, a in zip(values, values[1:]) if a <= b]
    if unordered:
        raise SchemaError(f"{where}: boundaries must be strictly increasing; {unordered[0][1]} follows "
                          f"{unordered[0][0]}")


class _StoredColumn:
    """``source`` defaults to the feature's own name, so every feature names the column it is read from."""

    def __post_init__(self):
        if self.source is None:
            object.__setattr__(self, "source", self.name)


@dataclasses.dataclass(frozen=True)
class IdFeature(_StoredColumn):
    name: str
    vocab: Vocabulary
    dtype: str = "int64"
    embedding_dim: int = 16
    training_only: bool = False
    source: Optional[str] = None

    embedded = True
    is_sequence = False

    @property
    def table(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True)
class DenseFeature(_StoredColumn):
    name: str
    dim: int = 1
    default: Union[float, int] = 0.0
    training_only: bool = False
    dtype: str = "float32"
    source: Optional[str] = None
    log1p: bool = False

    embedded = False
    is_sequence = False


@dataclasses.dataclass(frozen=True)
class SequenceFeature(_StoredColumn):
    name: str
    max_len: int
    vocab: Optional[Vocabulary] = None
    shares: Optional[str] = None
    aligned_with: Optional[str] = None
    dtype: str = "int64"
    embedding_dim: int = 16
    training_only: bool = False
    raw: bool = False
    source: Optional[str] = None

    is_sequence = True

    @property
    def embedded(self) -> bool:
        """False for a raw sequence: its values reach the model as they are."""
        return not self.raw

    @property
    def table(self) -> str:
        """The embedding table: the shared id feature's, or the sequence's own."""
        return self.shares or self.name

    @property
    def length_name(self) -> str:
        """The ``[batch]`` int64 input that holds the valid length (the primary's for a side sequence)."""
        return (self.aligned_with or self.name) + LENGTH_SUFFIX

    @property
    def has_own_length(self) -> bool:
        return self.aligned_with is None


@dataclasses.dataclass(frozen=True)
class LabelFeature(_StoredColumn):
    name: str
    dtype: str = "float32"
    training_only: bool = True
    max_len: Optional[int] = None
    source: Optional[str] = None

    embedded = False
    has_own_length = True

    @property
    def is_sequence(self) -> bool:
        """A label sequence: one target per position, padded to ``max_len`` with ``<name>_length``."""
        return self.max_len is not None

    @property
    def length_name(self) -> Optional[str]:
        return self.name + LENGTH_SUFFIX if self.is_sequence else None


Feature = Union[IdFeature, DenseFeature, SequenceFeature, LabelFeature]
_KINDS = {"id": IdFeature, "dense": DenseFeature, "sequence": SequenceFeature, "label": LabelFeature}


def _check_dtype(name: str, dtype: str, allowed: Sequence[str], what: str = "", hint: str = "") -> None:
    if dtype not in allowed:
        raise SchemaError(f"{what or 'feature'} {name!r}: dtype {dtype!r} is not one of {list(allowed)}{hint}")


def _stored_as(feature: Feature) -> str:
    """What a feature parses from its column: two features of one column must parse it alike."""
    if feature.is_sequence:
        return f"a list of {feature.dtype}"
    dim = feature.dim if isinstance(feature, DenseFeature) else 1
    return f"{dim} {feature.dtype} value{'s' if dim > 1 else ''} per row"


def _validate_sequence(feature: SequenceFeature, by_name: dict) -> None:
    if feature.max_len < 1:
        raise SchemaError(f"feature {feature.name!r}: max_len must be positive")
    if feature.aligned_with is not None:
        primary = by_name.get(feature.aligned_with)
        if not isinstance(primary, SequenceFeature) or primary.aligned_with is not None:
            raise SchemaError(f"sequence feature {feature.name!r} is aligned_with {feature.aligned_with!r}, "
                              "which is not a primary sequence feature")
        if primary.max_len != feature.max_len:
            raise SchemaError(f"sequence feature {feature.name!r} has max_len {feature.max_len} but its primary "
                              f"{primary.name!r} has {primary.max_len}")
    if feature.raw:
        _check_dtype(feature.name, feature.dtype, ("int64", "float32"), "raw sequence feature",
                     "; raw sequences hold numbers (embed strings with a vocabulary instead)")
        given = [key for key in ("vocab", "shares") if getattr(feature, key) is not None]
        if given:
            raise SchemaError(f"raw sequence feature {feature.name!r} is not embedded, so it takes no "
                              f"{' or '.join(given)}; drop raw=True to embed it")
        return
    _check_dtype(feature.name, feature.dtype, ("int64", "string"), "sequence feature",
                 "; set raw=True for a sequence of numbers that is not embedded")
    if (feature.shares is None) == (feature.vocab is None):
        raise SchemaError(f"sequence feature {feature.name!r}: set exactly one of shares (an id feature whose "
                          "table it uses) or its own vocabulary, or raw=True for values that are not embedded")
    if feature.shares is not None:
        target = by_name.get(feature.shares)
        if not isinstance(target, IdFeature):
            raise SchemaError(f"sequence feature {feature.name!r} shares {feature.shares!r}, which is not an id "
                              "feature of this schema")
        if target.dtype != feature.dtype:
            raise SchemaError(f"sequence feature {feature.name!r} is {feature.dtype} but shares "
                              f"{feature.shares!r}, which is {target.dtype}")
    else:
        feature.vocab.validate(feature.name, feature.dtype)


def _validate(feature: Feature, by_name: dict) -> None:
    if not feature.source:
        raise SchemaError(f"feature {feature.name!r}: source must name a stored column")
    if isinstance(feature, IdFeature):
        _check_dtype(feature.name, feature.dtype, ("int64", "string", "float32"))
        feature.vocab.validate(feature.name, feature.dtype)
    elif isinstance(feature, DenseFeature):
        _check_dtype(feature.name, feature.dtype, ("float32", "int64"), "dense feature")
        if feature.dim < 1:
            raise SchemaError(f"dense feature {feature.name!r}: dim must be positive, got {feature.dim}")
        if feature.log1p and feature.dtype != "float32":
            raise SchemaError(f"dense feature {feature.name!r}: log1p applies to float32 values, got {feature.dtype}")
        if feature.dtype == "int64" and float(feature.default) != int(feature.default):
            raise SchemaError(f"dense feature {feature.name!r} is int64 but its default {feature.default} is not "
                              "a whole number")
    elif isinstance(feature, SequenceFeature):
        _validate_sequence(feature, by_name)
    else:
        _check_dtype(feature.name, feature.dtype, ("float32", "int64"), "label feature")
        if feature.max_len is not None and feature.max_len < 1:
            raise SchemaError(f"label feature {feature.name!r}: max_len must be positive, got {feature.max_len}")
    if feature.is_sequence and feature.has_own_length and feature.length_name in by_name:
        raise SchemaError(f"feature {feature.length_name!r} clashes with the length input of sequence "
                          f"{feature.name!r}")


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
        readers = {}
        for feature in self.features:
            _validate(feature, by_name)
            first = readers.setdefault(feature.source, feature)
            if _stored_as(first) != _stored_as(feature):
                raise SchemaError(f"features {first.name!r} and {feature.name!r} both read column "
                                  f"{feature.source!r}, as {_stored_as(first)} and as {_stored_as(feature)}; "
                                  "one column is parsed once, one way")

    @classmethod
    def from_config(cls, features_config: Mapping) -> "FeatureSchema":
        """Builds a schema from a config block ``{name: {kind: id|dense|sequence|label, ...}}``.

        Vocabulary keys (``num_buckets``, ``vocabulary``, ``hash_buckets``, ``num_oov``) sit beside the others;
        a raw sequence is ``kind="sequence", raw=True`` without them. Vocabulary files must exist.
        """
        schema = cls.from_json(features_config)
        for feature in schema.features:
            if getattr(feature, "vocab", None) is not None:
                feature.vocab.check_file()
        return schema

    @classmethod
    def from_json(cls, features_json: Mapping) -> "FeatureSchema":
        """The schema ``to_json`` described (as an export records it in ``assets.extra/tfrecsys.json``).

        The one decoder of that JSON: batch scoring reads an export's schema with it. It checks what
        ``from_config`` checks but opens no vocabulary file, since the path recorded is where training read
        it, not necessarily a path the reader can open.
        """
        return cls(tuple(_feature_from_entry(name, entry) for name, entry in features_json.items()))

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

    @functools.cached_property
    def serving_aliases(self) -> dict:
        """``{feature: input}``: serving inputs that ``serving_default`` does not take under their own name,
        because another serving input already carries their stored column (an id feature bucketing a dense
        feature's value: ``capital_gains_bucket`` → ``capital_gains``), so a client sends each column once.
        Sequences do not share this way (two cuts of one history differ in ``max_len``). The input that
        carries a column is the serving input named after it, else the first that reads it."""
        single = [f for f in self.serving_inputs if not f.is_sequence]
        carriers = {f.source: f.name for f in single if f.name == f.source}
        aliases = {}
        for feature in single:
            carrier = carriers.setdefault(feature.source, feature.name)
            if carrier != feature.name:
                aliases[feature.name] = carrier
        return aliases

    def with_serving_aliases(self, inputs: Mapping) -> dict:
        """``serving_default``'s inputs → the model's: each of ``serving_aliases`` gets its carrier's value."""
        return {**inputs, **{name: inputs[carrier] for name, carrier in self.serving_aliases.items()}}

    # Parsing -----------------------------------------------------------------------------------------------

    def parse_spec(self, features: Optional[Sequence[Feature]] = None) -> dict:
        """``tf.io.parse_example`` spec, keyed by stored column (``source``): features that share a column
        share its entry, so it is parsed once. Missing dense or id values are an error, not a silent default:
        a row without ``user_id`` is a broken row."""
        spec = {}
        for feature in features if features is not None else self.features:
            dtype = _DTYPES[feature.dtype]
            if feature.is_sequence:
                # int64 row splits, as Parquet decoding builds them, so both formats give one element spec.
                spec[feature.source] = tf.io.RaggedFeature(dtype, row_splits_dtype=tf.int64)
            elif isinstance(feature, DenseFeature) and feature.dim > 1:
                spec[feature.source] = tf.io.FixedLenFeature([feature.dim], dtype)
            else:
                spec[feature.source] = tf.io.FixedLenFeature([], dtype)
        return spec

    def parse_examples(self, serialized: tf.Tensor, with_labels: bool = True, serving: bool = False,
                       ragged: bool = False) -> dict:
        """Parses a ``[batch]`` string tensor of tf.train.Example into the model's input dict.

        Sequences come out as ``[batch, max_len]`` (the most recent ``max_len`` events, left-aligned, padded
        with 0 or "") plus ``<name>_length`` ``[batch]`` int64, exactly as serving clients send them; with
        ``ragged`` (training only: the serving contract is padded) as ``tf.RaggedTensor`` ``[batch, (len)]``
        cut to the same ``max_len`` events, without lengths (``row_lengths()`` gives them).
        """
        selected = self.serving_inputs if serving else self.inputs
        if with_labels:
            selected = selected + self.labels
        columns = tf.io.parse_example(serialized, self.parse_spec(selected))
        return self.features_from_columns(columns, selected, ragged=ragged)

    def features_from_columns(self, columns: Mapping, features: Sequence[Feature], ragged: bool = False) -> dict:
        """Parsed stored columns (keyed by ``source``; lists as ragged ``[batch, (len)]``) → ``{name: value}``
        of ``features``: each sequence cut to its own most recent ``max_len`` values, padded with its
        ``<name>_length`` unless ``ragged``.

        A side sequence must hold as many values as its primary in every row (one per event): a row where
        it does not fails (InvalidArgumentError naming both), instead of pairing events with the wrong
        categories or times.
        """
        out = {}
        primaries = {feature.name: feature for feature in features if feature.is_sequence}
        for feature in features:
            primary = primaries.get(getattr(feature, "aligned_with", None))
            if primary is not None and primary.source != feature.source:
                tf.debugging.assert_equal(
                    columns[feature.source].row_lengths(), columns[primary.source].row_lengths(),
                    message=f"sequence feature {feature.source!r} must hold as many values as {primary.source!r} "
                            "in every row (it is aligned_with it, one value per event)")
        for feature in features:
            value = columns[feature.source]
            if not feature.is_sequence:
                out[feature.name] = value
                continue
            recent = value[:, -feature.max_len:]
            if ragged:
                out[feature.name] = recent
                continue
            pad = "" if feature.dtype == "string" else 0
            out[feature.name] = recent.to_tensor(default_value=pad, shape=[None, feature.max_len])
            if feature.has_own_length:
                out[feature.length_name] = tf.cast(recent.row_lengths(), tf.int64)
        return out

    def pad_sequences(self, columns: Mapping) -> dict:
        """``features_from_columns`` (padded) for every feature whose column ``columns`` holds, e.g. the
        output of ``tf.io.parse_example`` with ``parse_spec(features)``."""
        return self.features_from_columns(columns, [f for f in self.features if f.source in columns])

    def input_signature(self, serving: bool = True) -> dict:
        """``{name: tf.TensorSpec}`` for the raw-feature signature (``serving_default``), each feature in its
        own dtype (int64 stays int64). Served, a stored column is one input (``serving_aliases``); the
        training signature (``serving=False``) names every input, as parsed batches do."""
        specs = {}
        aliases = self.serving_aliases if serving else {}
        for feature in self.serving_inputs if serving else self.inputs:
            if feature.name in aliases:
                continue
            dtype = _DTYPES[feature.dtype]
            if isinstance(feature, SequenceFeature):
                specs[feature.name] = tf.TensorSpec([None, feature.max_len], dtype, name=feature.name)
                if feature.has_own_length:
                    specs[feature.length_name] = tf.TensorSpec([None], tf.int64, name=feature.length_name)
            elif isinstance(feature, DenseFeature) and feature.dim > 1:
                specs[feature.name] = tf.TensorSpec([None, feature.dim], dtype, name=feature.name)
            else:
                specs[feature.name] = tf.TensorSpec([None], dtype, name=feature.name)
        return specs

    def split_labels(self, batch: dict) -> tuple:
        """``(inputs, labels)`` from a parsed batch; a label sequence's length goes with the labels."""
        label_names = {f.name for f in self.labels} | {f.length_name for f in self.labels if f.is_sequence}
        inputs = {k: v for k, v in batch.items() if k not in label_names}
        labels = {k: v for k, v in batch.items() if k in label_names}
        return inputs, labels

    def to_json(self) -> dict:
        """A plain description (written beside exports and datasets so a reader needs no config); read it
        back with ``from_json``. ``source`` appears only where it differs from the name."""
        out = {}
        for feature in self.features:
            entry = {"kind": next(k for k, c in _KINDS.items() if isinstance(feature, c))}
            for field in dataclasses.fields(feature):
                value = getattr(feature, field.name)
                if (field.name == "name" or value is None or (field.name == "source" and value == feature.name)
                        or (isinstance(feature, SequenceFeature) and field.name == "raw" and not value)
                        or (isinstance(feature, SequenceFeature) and feature.raw and field.name == "embedding_dim")
                        or (isinstance(feature, DenseFeature) and field.name == "log1p" and not value)):
                    continue
                if isinstance(value, Vocabulary):
                    entry.update(value.describe())
                else:
                    entry[field.name] = value
            out[feature.name] = entry
        return out


def _feature_from_entry(name: str, entry: Mapping) -> Feature:
    """One ``{kind: ..., ...}`` entry of a config block or of ``to_json`` → its feature."""
    spec = dict(entry)
    kind = spec.pop("kind", None)
    if kind not in _KINDS:
        raise SchemaError(f"feature {name!r}: kind must be one of {sorted(_KINDS)}, got {kind!r}")
    vocab_keys = {k: spec.pop(k) for k in _VOCABULARY_KEYS if k in spec}
    for listed in ("vocabulary", "boundaries"):
        if isinstance(vocab_keys.get(listed), (list, tuple)):
            vocab_keys[listed] = tuple(vocab_keys[listed])
    if kind == "sequence" and spec.get("raw"):
        not_for_raw = sorted(vocab_keys) + [k for k in ("embedding_dim",) if k in spec]
        if not_for_raw:
            raise SchemaError(f"raw sequence feature {name!r} is not embedded, so {not_for_raw} do not apply; "
                              "drop raw=True to embed it")
    elif kind == "id" or (kind == "sequence" and ("shares" not in spec or vocab_keys)):
        spec["vocab"] = Vocabulary(**vocab_keys, feature=name)
    elif vocab_keys and kind != "sequence":
        raise SchemaError(f"feature {name!r}: {sorted(vocab_keys)} only apply to id and sequence features")
    fields = {f.name for f in dataclasses.fields(_KINDS[kind])}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise SchemaError(f"feature {name!r} ({kind}): unknown keys {unknown}; known: {sorted(fields - {'name'})}")
    try:
        return _KINDS[kind](name=name, **spec)
    except TypeError as error:
        raise SchemaError(f"feature {name!r} ({kind}): {error}") from None
