"""Raw ids → embedding rows, inside the model so that a SavedModel takes raw ids and strings."""

from typing import NamedTuple

import numpy as np
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

# The attribute that holds a layout's table layers: its name is the layout's root in every checkpoint
# (``embeddings/_tables/<table>/embeddings`` against ``embeddings/_packed/<width>/embeddings``).
_LAYOUT_ATTRIBUTES = {False: "_tables", True: "_packed"}


class TableSlice(NamedTuple):
    """Where a table's rows live: rows ``[offset, offset + rows)`` of ``variable`` (the table's own variable,
    offset 0, or its width's packed variable)."""

    variable: tf.Variable
    offset: int
    rows: int

    def values(self) -> tf.Tensor:
        """The table's ``[rows, dim]`` values (a read of the slice; no copy is kept)."""
        return self.variable[self.offset:self.offset + self.rows]

    def assign(self, values) -> None:
        """Writes ``[rows, dim]`` values into the table's rows (and no other)."""
        self.variable[self.offset:self.offset + self.rows].assign(values)


class PackedEmbedding(tf.keras.layers.Layer):
    """Every table of one embedding width in one variable ``W`` ``[Σ_t n_t, dim]``: table ``t`` is rows
    ``[o_t, o_t + n_t)``, ``o_t = Σ_{s < t} n_s``, so row ``r`` of table ``t`` is ``W[o_t + r]``.

    Input: packed row indices ``[...]`` (a table's row plus its offset). Output: ``[..., dim]`` in the compute
    dtype. One gather, one sparse gradient and one optimizer update serve all the tables, where one variable
    per table needs one of each per table. ``tables``: ``(name, rows)`` in packing order. ``initializers``:
    one per table, each called with its table's own shape ``[n_t, dim]``, so every table starts as it would in
    a variable of its own (a seeded initialiser gives each table the same first rows, as one per table does).
    ``regularizer``: on the whole variable; an L2 of it is the sum of its tables' L2s.
    """

    def __init__(self, tables, dim: int, initializers=None, regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.tables = [(name, int(rows)) for name, rows in tables]
        self.dim = int(dim)
        self.offsets, total = {}, 0
        for name, rows in self.tables:
            self.offsets[name] = total
            total += rows
        self.total_rows = total
        self.initializers = list(initializers) if initializers is not None else [
            tf.keras.initializers.TruncatedNormal(stddev=INITIAL_STDDEV) for _ in self.tables]
        self.regularizer = regularizer

    def build(self, input_shape=None):
        def initial_values(shape, dtype=None):
            return tf.concat([initializer([rows, self.dim], dtype=dtype)
                              for initializer, (_, rows) in zip(self.initializers, self.tables)], axis=0)

        # Not autocast: under a mixed policy the gathered rows are cast, not the whole variable at each read.
        self.embeddings = self.add_weight(name="embeddings", shape=(self.total_rows, self.dim),
                                          initializer=initial_values, regularizer=self.regularizer,
                                          experimental_autocast=False)
        self.built = True

    def call(self, rows):
        out = tf.gather(self.embeddings, rows)
        return out if out.dtype == self.compute_dtype else tf.cast(out, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "tables": [list(table) for table in self.tables], "dim": self.dim}


class EmbeddingTables(tf.keras.layers.Layer):
    """The one owner of a model's embedding tables: a lookup and a ``[vocab.size, embedding_dim]`` table per
    table name of the schema (an id feature, or a sequence with its own vocabulary).

    Towers and branches embed through views (``view(names)``, a ``FeatureEmbedding``) that hold no variables,
    so a history that ``shares`` ``item_id`` and the candidate ``item_id`` of another tower read one variable.
    A table's variable is created the first time a view embeds a feature that uses it. ``l2``: see
    ``regularize``. Rows start truncated-normal with standard deviation 0.05 (``INITIAL_STDDEV``) unless
    ``initialize_normal`` says other.

    ``fused`` (``pack_by_width``): every table of one embedding width lives in one variable
    (``PackedEmbedding``), at its own row offset; a view gathers all its features of one width at once. The
    same model, lookups and maths per row, fewer variables and ops (bench/RESULTS.md, issue 13, branch
    fused29); its checkpoints name other variables than the one-per-table layout's, and neither layout
    restores into the other (the restore raises a ``ValueError`` that says so).
    """

    def __init__(self, schema: FeatureSchema, l2: float = 0.0, fused: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.schema = schema
        self.l2 = 0.0
        self.fused = bool(fused)
        self._lookups = {}
        self._initializers = {}
        for feature in schema.inputs:
            if not feature.embedded or feature.table in self._lookups:
                continue
            owner = schema[feature.table]
            self._lookups[feature.table] = IdLookup(owner.vocab, owner.dtype, name=f"{feature.table}_lookup")
            self._initializers[feature.table] = tf.keras.initializers.TruncatedNormal(stddev=INITIAL_STDDEV)
        # The table layers are made at the first use (``_layout``), so that the layout can be chosen after
        # the model's construction (``pack_by_width``) without a layer of the other one left tracked.
        self._has_layout = False
        if l2:
            self.regularize(l2)

    @property
    def table_names(self) -> list:
        """Every table of the schema, in its order (an id feature's name, or a sequence's with its own
        vocabulary)."""
        return list(self._lookups)

    def pack_by_width(self) -> None:
        """Packs every table of one embedding width into one variable (``PackedEmbedding``), in the schema's
        order: config ``model.fused_embeddings``. The tables' initialisers and L2 (set before or after) apply
        as they do to tables of their own. Call it before the tables are used."""
        if self._has_layout and not self.fused:
            raise ValueError(f"{self.name}: the tables are packed by width before they are used; they already "
                             "have one variable each")
        self.fused = True

    def packed_group(self, table: str) -> str:
        """The packed variable that holds ``table``: its width, e.g. ``"16d"``."""
        return f"{self.schema[table].embedding_dim}d"

    def _layout(self) -> dict:
        """The table layers, made on the first call: ``{table: Embedding}``, or ``{width: PackedEmbedding}``
        when packed."""
        if not self._has_layout:
            # The owner's dtype policy (the global one at its construction), whenever the first use comes.
            policy = self._dtype_policy
            if self.fused:
                widths = {}
                for name in self._lookups:
                    widths.setdefault(self.packed_group(name), []).append(name)
                self._packed = {group: PackedEmbedding(
                    [(name, self.schema[name].vocab.size) for name in names], self.schema[names[0]].embedding_dim,
                    name=f"packed_{group}", dtype=policy) for group, names in widths.items()}
            else:
                self._tables = {name: tf.keras.layers.Embedding(
                    self.schema[name].vocab.size, self.schema[name].embedding_dim, name=f"{name}_embedding",
                    dtype=policy) for name in self._lookups}
            self._has_layout = True
            self._configure_layers()
        return self._packed if self.fused else self._tables

    def _configure_layers(self) -> None:
        """Gives the table layers (once made) the tables' initialisers and L2."""
        if not self._has_layout:
            return
        regularizer = (lambda: tf.keras.regularizers.L2(self.l2)) if self.l2 else (lambda: None)
        if self.fused:
            for layer in self._packed.values():
                layer.initializers = [self._initializers[name] for name, _ in layer.tables]
                layer.regularizer = regularizer()
        else:
            for name, table in self._tables.items():
                table.embeddings_initializer = self._initializers[name]
                table.embeddings_regularizer = regularizer()

    def _check_unbuilt(self, what: str) -> None:
        if not self._has_layout:
            return
        if self.fused:
            built = [name for layer in self._packed.values() if layer.built for name, _ in layer.tables]
        else:
            built = [name for name, table in self._tables.items() if table.built]
        if built:
            raise ValueError(f"{self.name}: {what} before the tables are built; {sorted(built)} already are")

    def _lookup_dependency(self, name, cached_dependencies=None):
        """A checkpoint of the other layout names a child this layer does not have: without this, restoring it
        would leave every table at its initial values and say nothing. (A restore passes the children it
        has; tracking an attribute, which also looks names up, passes none.)"""
        if cached_dependencies is not None and name == _LAYOUT_ATTRIBUTES[not self.fused]:
            written, wanted = ("one variable per width", "one variable per table") if not self.fused else (
                "one variable per table", "one variable per width")
            raise ValueError(
                f"{self.name}: this checkpoint holds the embedding tables with {written} "
                f"(model.fused_embeddings={not self.fused}), and this model has {wanted} "
                f"(model.fused_embeddings={self.fused}): the two layouts do not restore into each other. Restore "
                f"with model.fused_embeddings={not self.fused}, or train this layout afresh.")
        return super()._lookup_dependency(name, cached_dependencies)

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
        self._check_unbuilt("embedding L2 is set")
        self.l2 = float(l2)
        self._configure_layers()

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
        self._check_unbuilt("the embeddings' initialiser is set")
        for name in self._initializers:
            self._initializers[name] = tf.keras.initializers.RandomNormal(stddev=stddev, seed=seed)
        self._configure_layers()

    def embed(self, table: str, ids: tf.Tensor) -> tf.Tensor:
        """Raw ids of any shape ``[...]`` → ``[..., embedding_dim]`` rows of ``table``."""
        if self.fused:
            return self._layout()[self.packed_group(table)](self.packed_rows(table, self._lookups[table](ids)))
        return self._layout()[table](self._lookups[table](ids))

    def rows(self, table: str, ids: tf.Tensor) -> tf.Tensor:
        """Raw ids → row indices of ``table`` (OOV ids land in its OOV rows)."""
        return self._lookups[table](ids)

    def packed_rows(self, table: str, rows: tf.Tensor) -> tf.Tensor:
        """Row indices of ``table`` → the same rows' indices in its variable (``rows`` itself unfused)."""
        offset = self.table_slice(table).offset if self.fused else 0
        return rows + tf.constant(offset, rows.dtype) if offset else rows

    def variable_rows(self, table: str, ids: tf.Tensor) -> tuple:
        """Raw ids → ``(variable, rows)``: the variable that holds ``table`` and the ids' rows in it (offset
        added when packed). The variable must exist (the table built)."""
        return self.table_slice(table).variable, self.packed_rows(table, self.rows(table, ids))

    def table_slice(self, name: str) -> TableSlice:
        """Where ``name``'s rows live (``TableSlice``), in either layout; the variable once built."""
        if self.fused:
            layer = self._layout()[self.packed_group(name)]
            return TableSlice(getattr(layer, "embeddings", None), layer.offsets[name], self.schema[name].vocab.size)
        return TableSlice(getattr(self._layout()[name], "embeddings", None), 0, self.schema[name].vocab.size)

    def table(self, name: str) -> tf.keras.layers.Embedding:
        """The Keras ``Embedding`` layer of ``name`` (one variable per table only; ``table_slice`` in both)."""
        if self.fused:
            raise ValueError(f"{self.name}: table {name!r} is rows of the packed variable of width "
                             f"{self.packed_group(name)} (model.fused_embeddings): use table_slice({name!r})")
        return self._layout()[name]

    def gather_together(self, group: str, table_rows: list) -> list:
        """Embeds several lookups' rows from one packed variable with one gather (packed layout only).

        ``table_rows``: ``[(table, rows)]``, ``rows`` int64 row indices of ``table`` (``rows(table, ids)``),
        each ``[batch]`` or ``[batch, n_i]`` with ``n_i`` known. Their indices plus their tables' offsets are
        put side by side ``[batch, Σ n_i]`` (a ``[batch]`` one as one column), gathered once
        ``[batch, Σ n_i, dim]`` and split back: ``[batch, dim]`` and ``[batch, n_i, dim]``.
        """
        layer = self._layout()[group]
        if len(table_rows) == 1:
            (table, rows), = table_rows
            return [layer(self.packed_rows(table, rows))]
        columns = [1 if rows.shape.rank == 1 else int(rows.shape[1]) for _, rows in table_rows]
        offsets = np.repeat([layer.offsets[table] for table, _ in table_rows], columns).astype(np.int64)
        singles = all(rows.shape.rank == 1 for _, rows in table_rows)
        if singles:
            side_by_side = tf.stack([rows for _, rows in table_rows], axis=1)
        else:
            side_by_side = tf.concat([rows[:, tf.newaxis] if rows.shape.rank == 1 else rows
                                      for _, rows in table_rows], axis=1)
        embedded = layer(side_by_side + offsets)
        if singles:
            return tf.unstack(embedded, axis=1)
        return [tf.squeeze(part, axis=1) if rows.shape.rank == 1 else part
                for part, (_, rows) in zip(tf.split(embedded, columns, axis=1), table_rows)]

    def view(self, include, name=None) -> "FeatureEmbedding":
        return FeatureEmbedding(self, include=include, name=name)

    def call(self, features):
        """Every schema input embedded (``FeatureEmbedding`` over all inputs)."""
        return FeatureEmbedding(self)(features)

    def get_config(self):
        return {**super().get_config(), "schema": self.schema.to_json(), "l2": self.l2, "fused": self.fused}

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
        together = {}  # packed tables: width → [(feature name, table, rows)], gathered at once below
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
            if not feature.embedded:
                out[feature.name] = value
            elif self.tables.fused and _side_by_side(value):
                rows = self.tables.rows(feature.table, value)
                together.setdefault(self.tables.packed_group(feature.table), []).append(
                    (feature.name, feature.table, rows))
                out[feature.name] = None  # filled below, in this place of the output's order
            else:
                out[feature.name] = self.tables.embed(feature.table, value)
            if isinstance(feature, SequenceFeature):
                out[feature.name + "_mask"] = mask
        for group, lookups in together.items():
            embedded = self.tables.gather_together(group, [(table, rows) for _, table, rows in lookups])
            out.update({name: rows for (name, _, _), rows in zip(lookups, embedded)})
        return out

    def get_config(self):
        return {**super().get_config(), "schema": self.schema.to_json(), "include": self.include}

    @classmethod
    def from_config(cls, config):
        return cls(FeatureSchema.from_config(config.pop("schema")), **config)


def _side_by_side(ids) -> bool:
    """Whether ids can join others of their width in one gather: ``[batch]`` or ``[batch, n]`` with ``n``
    known when traced (a feature of another shape is gathered alone)."""
    return ids.shape.rank == 1 or (ids.shape.rank == 2 and ids.shape[1] is not None)


__all__ = ["IdLookup", "EmbeddingTables", "FeatureEmbedding", "PackedEmbedding", "TableSlice"]
