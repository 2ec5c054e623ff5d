"""HSTU, the Hierarchical Sequential Transduction Unit of Zhai et al., "Actions Speak Louder than Words:
Trillion-Parameter Sequential Transducers for Generative Recommendations" (ICML 2024), with three attention
paths that give the same numbers.

One layer, over a batch of time-ordered event sequences ``X`` ``[batch, L, D]`` of which row ``b`` holds
``n_b = lengths[b]`` events (the rest is padding):

    U, V, Q, K = split(SiLU(f1(LayerNorm(X))))                       pointwise projection, f1 without bias
    A          = SiLU(Q Kᵀ + rab^{p,t}) / N  ⊙  M                    pointwise aggregation: no softmax
    Y          = X + f2(dropout(LayerNorm(A V) ⊙ U))                  pointwise transformation, residual

- ``U, V`` ``[batch, L, H·d_v]``, ``Q, K`` ``[batch, L, H·d_qk]``, split per head for ``A`` ``[batch, H, L, L]``;
  ``LayerNorm(A V)`` normalises the concatenated heads. LayerNorms have no learned scale or offset (as the
  public reference, meta-recsys/generative-recommenders ``hstu.py``).
- No softmax: the weights of a row do not sum to one, so the output keeps how *much* of a kind the user did
  (the paper's 90% clothing / 10% electronics argument). ``N`` is the fixed hyperparameter ``max_seq_len``,
  not the padded length as in the reference, so that padding a batch to a longer bucket changes nothing.
- ``M`` is a {0, 1} mask applied by multiplication *after* the activation: an additive −∞ would give
  SiLU(−∞) = −∞·0 = NaN, and a large finite negative leaves SiLU(−20) ≈ −4e−8 instead of 0. ``M[i, j] = 1``
  iff ``j <= i < n`` (causal, valid) and key ``j`` is not one of the row's last ``num_targets[b]`` events,
  except ``j = i``: candidate items appended for ranking see the history and themselves, never each other,
  so scoring m candidates in one pass equals scoring each alone.
- ``rab^{p,t}[b, i, j] = w_p[bucket(p_i − p_j + 1)] + w_t[bucket(|t_i − t_j|)]``, shared by all heads, with
  ``p_i = min(i, n − num_targets[b])``: every candidate takes the position right after the history (a
  candidate's bias must not depend on how many candidates precede it). The buckets are log-linear:
  ``*_buckets_per_doubling`` buckets per doubling of the value, read from the float32 exponent and top
  mantissa bits of the value, clamped to the table size. Integer work only, so the
  padded, XLA and jagged paths (and GPUs) pick the very same bucket; the reference's
  ``floor(ln(Δt) / 0.301)`` is one bucket per factor 1.35, the default here one per factor 2^(1/4) ≈ 1.19.
  The query side uses its own timestamp ``t_i`` (the reference uses the next event's, which makes an output
  depend on a later event's time): a model that wants the gap to the request time passes it as the
  timestamp of an appended token.
- Outputs at padded positions are 0, and padded inputs reach no valid output (and get zero gradient).

Causal blocks (``attention_block_size`` b): when the padded length ``L`` is known when the layer is traced
(static shapes: batches padded to a fixed ``max_len``, eager calls; the XLA path then pads to a static
length bucket) and exceeds b, the queries are taken b rows at a time and each block reads only the keys up
to its last row: the upper triangle, where ``M`` is 0, is never computed. At ``L = 1024`` and b = 256 that
is 10 of 16 ``b × b`` tiles of ``Q Kᵀ``, ``A V``, the bias and the mask (and of their gradients). The
result equals the full ``L × L`` computation (the skipped weights are exact zeros); with an unknown ``L``
(serving signatures, the jagged path's groups inside a ``tf.function``) the layer computes the full ``L × L``.

Gradient: the attention of each causal block (``Q Kᵀ`` to ``A V``) and the bias gather carry their gradient
written out (``_pointwise_attention``, ``_gather_with_dense_gradient``): the same equations as automatic
differentiation (a test compares them). The gather's is a dense segment sum per block (automatic
differentiation concatenated the blocks' sparse gradients before one scatter-add, which under XLA on CPU took
longer than the scatter); the attention's keeps ``Q Kᵀ``, ``A``, the bias and the mask of each block. Inside
XLA the projection's SiLU keeps its derivative from the forward (``_silu_keeping_derivative``).

Attention paths (``attention_path``), equal to float rounding:
- ``"padded"``: the whole batch padded to its length ``L`` (in causal blocks when ``L`` is static); the
  reference and the serving path.
- ``"xla"``: the padded computation in ``tf.function(jit_compile=True)`` (``tfrecsys.layers.xla.XlaLayer``),
  with ``L`` padded up to a length bucket so that lengths inside one bucket share one compilation. Exported
  serving signatures take the padded path (TF Serving runs XLA only behind experimental flags).
- ``"jagged"``: skips the padded work: the sequences are sorted by length and cut into ``jagged_groups``
  groups, each run padded only to its own longest sequence, so the cost follows ``Σ_b n_b²`` rather than
  ``batch · L²``. Plain TensorFlow ops, no XLA: serving-safe as it is.
"""

from typing import Optional, Sequence

import tensorflow as tf

from tfrecsys.layers.xla import (DEFAULT_LENGTH_BUCKETS, XlaLayer, bucket_length, in_serving_mode,
                                 tracing_inside_xla)

ATTENTION_PATHS = ("padded", "xla", "jagged")
_LAYER_NORM_EPSILON = 1e-6
_FLOAT32_MANTISSA_BITS = 23
_FLOAT32_EXPONENT_BIAS = 127


def log_linear_bucket(values: tf.Tensor, buckets_per_doubling: int, num_buckets: int) -> tf.Tensor:
    """``[...] int → [...] int32``: 0 for values <= 1, then ``buckets_per_doubling`` buckets per doubling
    (exact integers while the value is below ``2 · buckets_per_doubling``), clamped to ``num_buckets − 1``.

    The bucket is the float32 exponent and top mantissa bits of the value: deterministic integer work, so
    every device and compiler agrees on it (a float ``log`` can differ by an ulp and flip a boundary)."""
    shift = _FLOAT32_MANTISSA_BITS - (buckets_per_doubling.bit_length() - 1)
    as_float = tf.cast(tf.maximum(values, tf.ones_like(values)), tf.float32)
    raw = tf.bitwise.right_shift(tf.bitcast(as_float, tf.int32), shift)
    raw -= _FLOAT32_EXPONENT_BIAS * buckets_per_doubling
    return tf.clip_by_value(raw, 0, num_buckets - 1)


def _dense(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """``[batch, L, D_in] @ [D_in, D_out] → [batch, L, D_out]`` as one 2-D matmul. Not an einsum: under XLA the
    einsum's kernel gradient became a fusion that recomputed the SiLU gradient in transposed (strided) order,
    about a fifth of the layer's forward + backward at L = 1024 on CPU."""
    flat = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), kernel)
    return tf.reshape(flat, [tf.shape(x)[0], tf.shape(x)[1], kernel.shape[-1]])


def _gather_with_dense_gradient(table: tf.Tensor, indices: tf.Tensor, compiled: bool) -> tf.Tensor:
    """``tf.gather(table [N], indices [...]) → [...]`` whose gradient is a dense ``[N]`` segment sum at once.
    ``tf.gather``'s own gradient is sparse (indices and values), and the sparse gradients of the causal
    blocks' gathers were concatenated (index and value copies of every ``[batch, b, stop]`` block) before one
    scatter-add: under XLA on CPU the two concatenations took longer than the scatter itself.

    The segment sum takes each compiler's fast kernel (``compiled``: inside an XLA-compiled function): XLA
    compiles ``unsorted_segment_sum`` to a loop of about 2.5 ns per element on CPU, while TensorFlow's own
    CPU kernels of it (and of ``scatter_nd``, ``tensor_scatter_nd_add``) took 22-28 ns per element and
    ``bincount`` with weights 2.5 ns, which XLA cannot compile (its output size is not a compile-time constant)."""
    @tf.custom_gradient
    def gather(table):
        def gradient(upstream):
            if compiled:
                return tf.math.unsorted_segment_sum(upstream, indices, tf.shape(table)[0])
            # bincount's kernels take float32 and float64 weights only (bfloat16 sums in float32).
            weights = upstream if upstream.dtype in (tf.float32, tf.float64) else tf.cast(upstream, tf.float32)
            size = tf.shape(table)[0]
            sums = tf.math.bincount(tf.reshape(indices, [-1]), weights=tf.reshape(weights, [-1]),
                                    minlength=size, maxlength=size, dtype=weights.dtype)
            return tf.cast(sums, upstream.dtype)
        return tf.gather(table, indices), gradient
    return gather(table)


def _pointwise_attention(q, k, v, bias, scaled_mask):
    """``A V`` with ``A = SiLU(Q Kᵀ + rab) ⊙ M / N``: ``q`` ``[batch, H, b, d_qk]`` (one causal block of
    queries), ``k`` ``[batch, H, s, d_qk]``, ``v`` ``[batch, H, s, d_v]``, ``bias`` ``[batch, b, s]`` (shared by
    the heads), ``scaled_mask`` ``M / N`` ``[batch, 1, b, s]`` → ``[batch, H, b, d_v]``.

    The gradient is written out (the same equations as automatic differentiation, ``S = Q Kᵀ + rab``)::

        dA = dO Vᵀ,  dS = dA ⊙ M / N ⊙ σ(S) (1 + S (1 − σ(S))),  dQ = dS K,  dK = dSᵀ Q,  dV = Aᵀ dO,  drab = Σ_h dS

    It keeps ``Q Kᵀ``, ``A``, the bias and the mask; under XLA on CPU it measured a few percent faster than
    automatic differentiation of the same operations. It keeps ``Q Kᵀ`` rather than ``S``: with ``S`` the
    dot's only use, XLA's CPU backend fused the bias addition into the dot (a oneDNN post-op broadcasting
    over the heads), and with a batch of one at ``L = 4096`` a step took 20-47 s instead of about 0.5 s."""
    @tf.custom_gradient
    def attention(q, k, v, bias):
        query_key = tf.matmul(q, k, transpose_b=True)
        weights = tf.nn.silu(query_key + bias[:, None]) * scaled_mask

        def gradient(d_out):
            scores = query_key + bias[:, None]
            sigmoid = tf.sigmoid(scores)
            d_scores = (tf.matmul(d_out, v, transpose_b=True) * scaled_mask
                        * (sigmoid * (1 + scores * (1 - sigmoid))))
            return (tf.matmul(d_scores, k), tf.matmul(d_scores, q, transpose_a=True),
                    tf.matmul(weights, d_out, transpose_a=True), tf.reduce_sum(d_scores, axis=1))
        return tf.matmul(weights, v), gradient
    return attention(q, k, v, bias)


@tf.custom_gradient
def _silu_keeping_derivative(z: tf.Tensor) -> tf.Tensor:
    """``SiLU(z) = z σ(z)`` whose forward also keeps the derivative ``σ(z) (1 + z (1 − σ(z)))`` for the
    backward (``tf.nn.silu``'s gradient recomputes ``σ(z)``). For the XLA path's projection: there XLA fused
    the recomputed exponential and division into the fusion that concatenates ``dU, dV, dQ, dK`` and transposes
    the heads back, whose index arithmetic keeps it from vectorising; with the derivative computed in the
    forward's elementwise pass, that fusion only multiplies (it took half the time, and the layer's XLA step
    2-3% less CPU time at ``L = 256`` to ``4096``). The padded path keeps ``tf.nn.silu``, as it was."""
    sigmoid = tf.sigmoid(z)
    derivative = sigmoid * (1 + z * (1 - sigmoid))
    return z * sigmoid, lambda upstream: upstream * derivative


def _layer_norm(x: tf.Tensor) -> tf.Tensor:
    """``(x − E[x]) / sqrt(Var[x] + ε)`` over the last axis, computed in float32 whatever ``x``'s dtype (a no-op
    cast for float32): in float16 the gradient of the rsqrt at a zero variance (a padded row),
    ``−½ ε^−1.5 ≈ −5·10⁸``, overflows, and mixed_float16 training never took a step (every gradient non-finite
    at any loss scale)."""
    wide = tf.cast(x, tf.float32)
    mean, variance = tf.nn.moments(wide, axes=[-1], keepdims=True)
    return tf.cast((wide - mean) * tf.math.rsqrt(variance + _LAYER_NORM_EPSILON), x.dtype)


class HSTULayer(XlaLayer):
    """One HSTU layer (equations and paths in the module docstring).

    Call: ``layer(x [batch, L, D], lengths [batch] int, timestamps [batch, L] int64, num_targets=None [batch]
    int, training=None) -> [batch, L, D]``. ``num_targets[b]`` (default 0): how many of row ``b``'s last valid
    events are ranking candidates that must not see each other.

    ``num_heads`` H, ``attention_dim`` d_qk and ``value_dim`` d_v (default d_qk) per head; ``max_seq_len`` N
    of ``A = SiLU(·) / N``; bias tables of ``num_position_buckets`` and ``num_time_buckets`` entries with
    ``position_buckets_per_doubling`` / ``time_buckets_per_doubling`` (powers of two); ``dropout`` on the gated
    product before f2; ``input_norm``: the pre-LayerNorm on X (the reference has it; the paper's equations do
    not). ``length_buckets``: the padded lengths the ``"xla"`` path compiles for; ``jagged_groups``: the
    number of length groups of the ``"jagged"`` path; ``attention_block_size``: the query rows of one causal
    block (0: always the full ``L × L``).
    """

    xla_reduce_retracing = False  # padded to length buckets: one trace (one XLA compilation) per bucket

    def __init__(self, num_heads: int = 2, attention_dim: int = 32, value_dim: Optional[int] = None,
                 max_seq_len: int = 256, num_position_buckets: int = 128, position_buckets_per_doubling: int = 8,
                 num_time_buckets: int = 128, time_buckets_per_doubling: int = 4, dropout: float = 0.0,
                 input_norm: bool = True, attention_path: str = "padded",
                 length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS, jagged_groups: int = 8,
                 attention_block_size: int = 256, **kwargs):
        if attention_path not in ATTENTION_PATHS:
            raise ValueError(f"HSTULayer attention_path must be one of {ATTENTION_PATHS}, got {attention_path!r}")
        for name, per_doubling in (("position_buckets_per_doubling", position_buckets_per_doubling),
                                   ("time_buckets_per_doubling", time_buckets_per_doubling)):
            if per_doubling < 1 or per_doubling & (per_doubling - 1) or per_doubling > 2 ** 16:
                raise ValueError(f"HSTULayer {name} must be a power of two in [1, 65536], got {per_doubling}")
        if list(length_buckets) != sorted(set(length_buckets)) or not length_buckets or length_buckets[0] < 1:
            raise ValueError(f"HSTULayer length_buckets must be ascending positive lengths, got {length_buckets}")
        if attention_block_size < 0:
            raise ValueError(f"HSTULayer attention_block_size must be >= 0 (0: no causal blocks), got "
                             f"{attention_block_size}")
        if jagged_groups < 1 or max_seq_len < 1 or num_heads < 1:
            raise ValueError("HSTULayer jagged_groups, max_seq_len and num_heads must be >= 1, got "
                             f"{jagged_groups}, {max_seq_len}, {num_heads}")
        kwargs.pop("xla", None)  # from_config: the path says it
        super().__init__(xla=attention_path == "xla", **kwargs)
        self.num_heads = num_heads
        self.attention_dim = attention_dim
        self.value_dim = value_dim or attention_dim
        self.max_seq_len = max_seq_len
        self.num_position_buckets = num_position_buckets
        self.position_buckets_per_doubling = position_buckets_per_doubling
        self.num_time_buckets = num_time_buckets
        self.time_buckets_per_doubling = time_buckets_per_doubling
        self.dropout = dropout
        self.input_norm = input_norm
        self.attention_path = attention_path
        self.length_buckets = tuple(int(b) for b in length_buckets)
        self.jagged_groups = jagged_groups
        self.attention_block_size = attention_block_size
        self._dropout = tf.keras.layers.Dropout(dropout) if dropout else None

    def build(self, input_shape):
        model_dim = int(input_shape[-1])
        heads_v, heads_qk = self.num_heads * self.value_dim, self.num_heads * self.attention_dim

        def small():  # one initializer object per weight: a reused unseeded one repeats its draws
            return tf.keras.initializers.RandomNormal(stddev=0.02)

        self.projection_kernel = self.add_weight(
            "projection_kernel", shape=(model_dim, 2 * heads_v + 2 * heads_qk), initializer=small())
        self.output_kernel = self.add_weight("output_kernel", shape=(heads_v, model_dim), initializer="glorot_uniform")
        self.output_bias = self.add_weight("output_bias", shape=(model_dim,), initializer="zeros")
        self.position_bias = self.add_weight("position_bias", shape=(self.num_position_buckets,), initializer=small())
        self.time_bias = self.add_weight("time_bias", shape=(self.num_time_buckets,), initializer=small())
        super().build(input_shape)

    def call(self, x, lengths, timestamps, num_targets=None, training=None):
        lengths = tf.cast(lengths, tf.int32)
        timestamps = tf.cast(timestamps, tf.int64)
        num_targets = tf.zeros_like(lengths) if num_targets is None else tf.cast(num_targets, tf.int32)
        tf.debugging.assert_less_equal(lengths, tf.shape(x)[1], message=(
            f"{self.name}: lengths exceed the padded length of x [batch, L, D]"))
        if self.attention_path == "jagged":
            return self._jagged_call(x, lengths, timestamps, num_targets, training)
        if self.xla and not in_serving_mode():
            return self._bucketed_xla_call(x, lengths, timestamps, num_targets, training)
        return self.plain_call(x, lengths, timestamps, num_targets, training=training)

    def plain_call(self, x, lengths, timestamps, num_targets, training=None):
        """The padded path: ``[batch, L, D] → [batch, L, D]`` over the whole padded width."""
        batch, width = tf.shape(x)[0], tf.shape(x)[1]
        valid = tf.cast(tf.range(width)[None, :] < lengths[:, None], x.dtype)[..., None]  # [batch, L, 1]
        x = x * valid
        normed = _layer_norm(x) if self.input_norm else x
        # Inside an XLA-compiled function (the layer's own, or a whole train step under --jit_compile), where
        # the projection's SiLU and the bias gradient take the forms that compile well.
        compiled = tracing_inside_xla()
        projected = _dense(normed, tf.cast(self.projection_kernel, x.dtype))
        projected = _silu_keeping_derivative(projected) if compiled else tf.nn.silu(projected)
        heads_v, heads_qk = self.num_heads * self.value_dim, self.num_heads * self.attention_dim
        u, v, q, k = tf.split(projected, [heads_v, heads_v, heads_qk, heads_qk], axis=-1)

        def per_head(t, dim):  # [batch, L, H·dim] → [batch, H, L, dim]
            return tf.transpose(tf.reshape(t, [batch, width, self.num_heads, dim]), [0, 2, 1, 3])

        q, k, v = per_head(q, self.attention_dim), per_head(k, self.attention_dim), per_head(v, self.value_dim)
        # One gather from the [P·T] table of all sums instead of two gathers and an add: the gathers and their
        # scatter-add gradients over [batch, L, L] are what the bias costs, the table is small.
        bias_table = tf.cast(tf.reshape(self.position_bias[:, None] + self.time_bias[None, :], [-1]), x.dtype)
        causal_blocks = self.causal_blocks(x.shape[1])
        # A split, not slices: the gradient of a split is one concatenation, that of slices a sum of padded copies.
        query_blocks = [q] if len(causal_blocks) == 1 else tf.split(
            q, [stop - start for start, stop in causal_blocks], axis=2)
        blocks = []
        for (start, stop), query_block in zip(causal_blocks, query_blocks):
            stop = width if stop is None else stop
            bias = _gather_with_dense_gradient(  # [batch, b, stop]
                bias_table, self.bias_buckets(timestamps, lengths - num_targets, start, stop), compiled)
            scaled_mask = self.attention_mask(lengths, num_targets, start, stop, x.dtype) / tf.cast(
                self.max_seq_len, x.dtype)
            blocks.append(_pointwise_attention(query_block, k[:, :, :stop], v[:, :, :stop], bias,
                                               scaled_mask[:, None]))  # [batch, H, b, d_v]
        attended = blocks[0] if len(blocks) == 1 else tf.concat(blocks, axis=2)
        attended = tf.reshape(tf.transpose(attended, [0, 2, 1, 3]), [batch, width, heads_v])
        gated = _layer_norm(attended) * u
        if self._dropout is not None:
            gated = self._dropout(gated, training=training)
        y = _dense(gated, tf.cast(self.output_kernel, x.dtype)) + tf.cast(self.output_bias, x.dtype)
        return (x + y) * valid

    def causal_blocks(self, static_width: Optional[int]) -> list:
        """The ``[start, stop)`` query rows of each causal block (the block reads keys ``[0, stop)``):
        ``attention_block_size`` rows at a time when the padded length is static and longer, else one block
        ``(0, None)`` of all rows and keys."""
        size = self.attention_block_size
        if static_width is None or not size or static_width <= size:
            return [(0, None)]
        return [(start, min(start + size, static_width)) for start in range(0, static_width, size)]

    def bias_buckets(self, timestamps, history_lengths, start, stop) -> tf.Tensor:
        """Indices into the ``[P·T]`` table of ``rab^{p,t}`` sums, ``[batch, stop − start, stop]`` for queries
        ``[start, stop)`` and keys ``[0, stop)``: position bucket of ``p_i − p_j + 1`` times ``T`` plus time
        bucket of ``|t_i − t_j|``, with ``p_i = min(i, history_length)``: every candidate sits right after the
        history."""
        positions = tf.minimum(tf.range(stop)[None, :], history_lengths[:, None])  # [batch, stop]
        distance = tf.maximum(positions[:, start:, None] - positions[:, None, :], 0) + 1  # future keys: masked
        position_bucket = log_linear_bucket(distance, self.position_buckets_per_doubling, self.num_position_buckets)
        gap = tf.abs(timestamps[:, start:stop, None] - timestamps[:, None, :stop])
        time_bucket = log_linear_bucket(gap, self.time_buckets_per_doubling, self.num_time_buckets)
        return position_bucket * self.num_time_buckets + time_bucket

    @staticmethod
    def attention_mask(lengths, num_targets, start, stop, dtype) -> tf.Tensor:
        """``M`` ``[batch, stop − start, stop]`` for queries ``[start, stop)`` and keys ``[0, stop)``: 1 where
        query ``i`` may read key ``j`` (``j <= i < n``, and ``j`` not another candidate among the last
        ``num_targets`` events), else 0."""
        query = tf.range(start, stop)[None, :, None]
        key = tf.range(stop)[None, None, :]
        history = (lengths - num_targets)[:, None, None]
        allowed = (key <= query) & (query < lengths[:, None, None]) & ((key < history) | (key == query))
        return tf.cast(allowed, dtype)

    def _bucketed_xla_call(self, x, lengths, timestamps, num_targets, training):
        width = x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]
        padding = bucket_length(width, self.length_buckets) - width
        if isinstance(padding, int) and padding == 0:  # a static bucket length: no pad, slice and their gradients
            return self._compiled.function(x, lengths, timestamps, num_targets, training=training)
        y = self._compiled.function(tf.pad(x, [[0, 0], [0, padding], [0, 0]]), lengths,
                                    tf.pad(timestamps, [[0, 0], [0, padding]]), num_targets, training=training)
        return y[:, :width]

    def _jagged_call(self, x, lengths, timestamps, num_targets, training):
        batch, width = tf.shape(x)[0], tf.shape(x)[1]
        order = tf.argsort(lengths, direction="DESCENDING", stable=True)
        group_size = (batch + self.jagged_groups - 1) // self.jagged_groups
        outputs = []
        for group in range(self.jagged_groups):
            rows = order[group * group_size:(group + 1) * group_size]
            group_lengths = tf.gather(lengths, rows)
            group_width = tf.reduce_max(tf.concat([group_lengths, [0]], 0))
            y = self.plain_call(tf.gather(x, rows)[:, :group_width], group_lengths,
                                tf.gather(timestamps, rows)[:, :group_width], tf.gather(num_targets, rows),
                                training=training)
            outputs.append(tf.pad(y, [[0, 0], [0, width - group_width], [0, 0]]))
        return tf.gather(tf.concat(outputs, 0), tf.argsort(order))  # back to the input's row order

    def get_config(self):
        config = {**super().get_config(), "num_heads": self.num_heads, "attention_dim": self.attention_dim,
                  "value_dim": self.value_dim, "max_seq_len": self.max_seq_len,
                  "num_position_buckets": self.num_position_buckets,
                  "position_buckets_per_doubling": self.position_buckets_per_doubling,
                  "num_time_buckets": self.num_time_buckets,
                  "time_buckets_per_doubling": self.time_buckets_per_doubling, "dropout": self.dropout,
                  "input_norm": self.input_norm, "attention_path": self.attention_path,
                  "length_buckets": list(self.length_buckets), "jagged_groups": self.jagged_groups,
                  "attention_block_size": self.attention_block_size}
        config.pop("xla")
        return config


class HSTUStack(tf.keras.layers.Layer):
    """``num_layers`` HSTU layers in sequence (each with its own residual): ``X_{l+1} = HSTULayer_l(X_l)``.

    Call as ``HSTULayer``: ``(x [batch, L, D], lengths [batch], timestamps [batch, L], num_targets=None) ->
    [batch, L, D]``. ``layer_kwargs`` go to every layer (heads, dims, ``attention_path``, ...).
    """

    def __init__(self, num_layers: int = 2, name: Optional[str] = None, **layer_kwargs):
        if num_layers < 1:
            raise ValueError(f"HSTUStack num_layers must be >= 1, got {num_layers}")
        layer_kwargs = dict(layer_kwargs)
        base_kwargs = {key: layer_kwargs.pop(key) for key in ("trainable", "dtype") if key in layer_kwargs}
        super().__init__(name=name, **base_kwargs)
        self.num_layers = num_layers
        self.layer_kwargs = layer_kwargs
        self.hstu_layers = [HSTULayer(**layer_kwargs, dtype=self.dtype_policy, name=f"hstu_{i}")
                            for i in range(num_layers)]

    def call(self, x, lengths, timestamps, num_targets=None, training=None):
        for layer in self.hstu_layers:
            x = layer(x, lengths, timestamps, num_targets=num_targets, training=training)
        return x

    def get_config(self):
        return {**super().get_config(), "num_layers": self.num_layers, **self.layer_kwargs}
