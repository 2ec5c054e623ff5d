"""Raw ids → embedding rows, inside the model so that a SavedModel takes raw ids and strings."""

import tensorflow as tf

from tfrecsys.features.schema import DenseFeature, FeatureSchema, IdFeature, SequenceFeature, Vocabulary


class IdLookup(tf.keras.layers.Layer):
    """Maps raw ids (int64 or string, any shape) to row indices in ``[0, vocab.size)``.

    ``num_buckets``: id ``x`` in ``[0, n)`` → ``x``; anything else → ``n + (x mod num_oov)``.
    ``vocabulary``: OOV rows first (``[0, num_oov)``), then the vocabulary in order.
    ``hash_buckets``: ``hash(x) mod hash_buckets`` (Keras ``Hashing``, stable across processes).
    ``boundaries`` ``b`` (numbers): ``x`` → ``i`` with ``b[i-1] <= x < b[i]``, in ``[0, len(b)]``.
    """

    def __init__(self, vocab: Vocabulary, dtype_name: str = "int64", **kwargs):
        super().__init__(**kwargs)
        self.vocab = vocab
        self.dtype_name = dtype_name
        if vocab.vocabulary is not None:
            vocabulary = vocab.vocabulary if isinstance(vocab.vocabulary, str) else list(vocab.vocabulary)
            lookup = tf.keras.layers.StringLookup if dtype_name == "string" else tf.keras.layers.IntegerLookup
            self._table = lookup(vocabulary=vocabulary, num_oov_indices=vocab.num_oov, mask_token=None,
                                 output_mode="int")
        elif vocab.hash_buckets is not None:
            self._table = tf.keras.layers.Hashing(num_bins=vocab.hash_buckets)
        else:
            self._table = None
        # Read once here (from a file, if named): the SavedModel holds the cut points as constants.
        self._boundaries = list(vocab.bucket_boundaries()) if vocab.boundaries is not None else None

    def call(self, ids):
        if self._table is not None:
            return tf.cast(self._table(ids), tf.int64)
        if self._boundaries is not None:
            return tf.cast(tf.raw_ops.Bucketize(input=ids, boundaries=self._boundaries), tf.int64)
        n = tf.constant(self.vocab.num_buckets, tf.int64)
        in_range = tf.logical_and(ids >= 0, ids < n)
        return tf.where(in_range, ids, n + tf.math.floormod(ids, self.vocab.num_oov))

    def get_config(self):
        vocabulary = self.vocab.vocabulary
        boundaries = self.vocab.boundaries
        return {**super().get_config(), "dtype_name": self.dtype_name,
                "vocab": {"num_buckets": self.vocab.num_buckets, "hash_buckets": self.vocab.hash_buckets,
                          "num_oov": self.vocab.num_oov,
                          "vocabulary": list(vocabulary) if isinstance(vocabulary, tuple) else vocabulary,
                          "boundaries": list(boundaries) if isinstance(boundaries, tuple) else boundaries,
                          "feature": self.vocab.feature}}

    @classmethod
    def from_config(cls, config):
        vocab = dict(config.pop("vocab"))
        for kind in ("vocabulary", "boundaries"):
            if isinstance(vocab.get(kind), list):
                vocab[kind] = tuple(vocab[kind])
        return cls(Vocabulary(**vocab), **config)


INITIAL_STDDEV = 0.05  # the tables' default initialiser: truncated N(0, 0.05²)


class EmbeddingTables(tf.keras.layers.Layer):
    """The one owner of a model's embedding tables: a lookup and a ``[vocab.size, embedding_dim]`` table per
    table name of the schema (an id feature, or a sequence with its own vocabulary).

    Towers and branches embed through views (``view(names)``, a ``FeatureEmbedding``) that hold no variables,
    so a history that ``shares`` ``item_id`` and the candidate ``item_id`` of another tower read one variable.
    A table's variable is created the first time a view embeds a feature that uses it. ``l2``: see
    ``regularize``. Rows start truncated-normal with standard deviation 0.05 (``INITIAL_STDDEV``) unless
    ``initialize_normal`` says other.
    """

    def __init__(self, schema: FeatureSchema, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.schema = schema
        self.l2 = 0.0
        self._lookups = {}
        self._tables = {}
        for feature in schema.inputs:
            if not feature.embedded or feature.table in self._tables:
                continue
            owner = schema[feature.table]
            self._lookups[feature.table] = IdLookup(owner.vocab, owner.dtype, name=f"{feature.table}_lookup")
            self._tables[feature.table] = tf.keras.layers.Embedding(
                owner.vocab.size, owner.embedding_dim, name=f"{feature.table}_embedding",
                embeddings_initializer=tf.keras.initializers.TruncatedNormal(stddev=INITIAL_STDDEV))
        if l2:
            self.regularize(l2)

    def regularize(self, l2: float) -> None:
        """Adds ``l2 · ‖W‖²`` of every table to the model's losses (Keras' ``embeddings_regularizer``; DeepCTR's
        ``l2_reg_embedding``, 1e-6 by default in its DIN and DIEN). The penalty covers the whole table at
        every step, so each table's gradient, and with it the optimizer's update, is dense: under Adam a row
        that no batch touches still shrinks towards 0 (its only gradient is the penalty's, which Adam
        normalises), so rarely seen ids keep less of what they memorised. The dense update costs a pass over
        every table per step; DIN's mini-batch aware L2 (``tfrecsys.layers.regularization``) is the sparse
        alternative. Set it before the tables are built.
        """
        if l2 < 0:
            raise ValueError(f"{self.name}: embedding L2 must be >= 0, got {l2}")
        built = sorted(name for name, table in self._tables.items() if table.built)
        if built:
            raise ValueError(f"{self.name}: embedding L2 is set before the tables are built; {built} already are")
        self.l2 = float(l2)
        for table in self._tables.values():
            table.embeddings_regularizer = tf.keras.regularizers.L2(self.l2) if self.l2 else None

    def initialize_normal(self, stddev: float, seed=None) -> None:
        """Every table's rows start ``N(0, stddev²)`` (not truncated) instead of the default. DeepCTR's
        ``SparseFeat`` starts them at ``N(0, 10⁻⁸)`` (stddev 1e-4): every id starts near 0, so the networks
        above see near-zero inputs until an id's row has learned, and an id no batch touches stays near 0
        (with ``regularize``, Adam's normalised penalty moves a row of the default scale much further: its
        gradient ``2λw`` is then comparable to Adam's ε). ``seed``: None draws from the global seed; an integer
        seeds every table's initialiser with it, as DeepCTR's default initialiser (``seed=2020`` for every table
        in every run: the tables start the same whatever the run's seed, and the first rows of tables of one
        width start equal). Set it before the tables are built.
        """
        if stddev <= 0:
            raise ValueError(f"{self.name}: the embeddings' initial standard deviation must be > 0, got {stddev}")
        built = sorted(name for name, table in self._tables.items() if table.built)
        if built:
            raise ValueError(f"{self.name}: the embeddings' initialiser is set before the tables are built; "
                             f"{built} already are")
        for table in self._tables.values():
            table.embeddings_initializer = tf.keras.initializers.RandomNormal(stddev=stddev, seed=seed)

    def embed(self, table: str, ids: tf.Tensor) -> tf.Tensor:
        """Raw ids of any shape ``[...]`` → ``[..., embedding_dim]`` rows of ``table``."""
        return self._tables[table](self._lookups[table](ids))

    def rows(self, table: str, ids: tf.Tensor) -> tf.Tensor:
        """Raw ids → row indices of ``table`` (OOV ids land in its OOV rows)."""
        return self._lookups[table](ids)

    def table(self, name: str) -> tf.keras.layers.Embedding:
        return self._tables[name]

    def view(self, include, name=None) -> "FeatureEmbedding":
        return FeatureEmbedding(self, include=include, name=name)

    def call(self, features):
        """Every schema input embedded (``FeatureEmbedding`` over all inputs)."""
        return FeatureEmbedding(self)(features)

    def get_config(self):
        return {**super().get_config(), "schema": self.schema.to_json(), "l2": self.l2}

    @classmethod
    def from_config(cls, config):
        config["schema"] = FeatureSchema.from_config(config["schema"])
        return cls(**config)


class FeatureEmbedding(tf.keras.layers.Layer):
    """Embeds the ``include``d inputs through a table owner (``EmbeddingTables``); holds no variables itself.

    Input: the parsed feature dict (raw ids; sequences padded ``[batch, max_len]`` with ``<name>_length``).
    Output dict:
      * id feature ``name`` → ``[batch, dim]``;
      * sequence ``name`` → ``[batch, max_len, dim]`` and ``name + "_mask"`` → bool ``[batch, max_len]``;
        a sequence that ``shares`` an id feature uses that feature's lookup and table, so a history item and
        the target item live in one space (what DIN-style attention compares);
      * raw sequence ``name`` (no vocabulary: timestamps, actions) → ``[batch, max_len]`` in its own dtype,
        exact, with its mask;
      * dense ``name`` → ``[batch, dim]`` in the layer's compute dtype, like the embeddings (float32, or
        float16/bfloat16 under a mixed-precision policy); an int64 dense feature (a request time) stays int64,
        exact: a model that wants it as a float converts a difference of times, never the time itself.
        A ``log1p`` feature is ``sign(x)·log(1 + |x|)`` of the value sent.
    ``tables``: the model's ``EmbeddingTables``, or a schema (the view then owns tables of its own).
    ``include``: feature names to embed (default: every input).
    """

    def __init__(self, tables, include=None, **kwargs):
        super().__init__(**kwargs)
        self.tables = tables if isinstance(tables, EmbeddingTables) else EmbeddingTables(tables)
        schema = self.tables.schema
        self.include = list(include) if include is not None else [f.name for f in schema.inputs]
        self._features = [schema[name] for name in self.include]

    @property
    def schema(self) -> FeatureSchema:
        return self.tables.schema

    def call(self, features):
        out = {}
        masks = {}  # by length feature: aligned sequences share one mask (one traced op, not one per sequence)
        for feature in self._features:
            if feature.name not in features:
                raise KeyError(f"input feature {feature.name!r} is missing; got {sorted(features)}")
            value = features[feature.name]
            if isinstance(feature, DenseFeature):
                if feature.log1p:
                    value = tf.sign(value) * tf.math.log1p(tf.abs(value))
                if value.dtype != tf.int64:
                    value = tf.cast(value, self.compute_dtype)
                out[feature.name] = tf.reshape(value, [-1, feature.dim])
                continue
            if isinstance(value, tf.RaggedTensor):
                # A ragged batch (make_dataset(ragged=True)): padded here, its mask from the row lengths.
                mask = tf.sequence_mask(value.row_lengths(), feature.max_len)
                value = value.to_tensor(shape=[None, feature.max_len])
            elif isinstance(feature, SequenceFeature):
                key = (feature.length_name, feature.max_len)
                if key not in masks:
                    masks[key] = tf.sequence_mask(features[feature.length_name], feature.max_len)
                mask = masks[key]
            out[feature.name] = self.tables.embed(feature.table, value) if feature.embedded else value
            if isinstance(feature, SequenceFeature):
                out[feature.name + "_mask"] = mask
        return out

    def get_config(self):
        return {**super().get_config(), "schema": self.schema.to_json(), "include": self.include}

    @classmethod
    def from_config(cls, config):
        return cls(FeatureSchema.from_config(config.pop("schema")), **config)


__all__ = ["IdLookup", "EmbeddingTables", "FeatureEmbedding"]
