"""HSTU layer (tfrecsys/layers/hstu.py): the paper's equations against a per-sequence numpy reference, the
padded, XLA and jagged paths agreeing in outputs and gradients, causality, padding invariance, candidates that
never see each other, one XLA trace per length bucket, and a serving path without XLA."""

import numpy as np
import pytest
import tensorflow as tf

from tfrecsys.layers.hstu import (ATTENTION_PATHS, HSTULayer, HSTUStack, _gather_with_dense_gradient,
                                  _pointwise_attention, _silu_keeping_derivative, log_linear_bucket)
from tfrecsys.layers.xla import bucket_length, serving_mode

DIM, HEADS, HEAD_DIM, MAX_SEQ_LEN = 16, 2, 8, 64


def ragged_batch(batch=6, width=37, seed=0):
    """Random ragged batch: lengths include 0 (a fully padded row) and the full width; sorted timestamps."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, width, batch)
    lengths[0] = width
    lengths[1:2] = 0
    x = rng.normal(size=(batch, width, DIM)).astype(np.float32)
    timestamps = 1_700_000_000 + np.cumsum(rng.integers(0, 50_000, (batch, width)), axis=1)
    return x, lengths.astype(np.int32), timestamps.astype(np.int64)


def same_layers(paths=ATTENTION_PATHS, **kwargs):
    """One layer per attention path, all with the weights of the first (bias tables made non-trivial)."""
    tf.keras.utils.set_random_seed(0)
    kwargs = {"num_heads": HEADS, "attention_dim": HEAD_DIM, "max_seq_len": MAX_SEQ_LEN, "jagged_groups": 3,
              "length_buckets": (16, 64), **kwargs}
    layers = {path: HSTULayer(attention_path=path, **kwargs) for path in paths}
    for layer in layers.values():
        layer.build(tf.TensorShape([None, None, DIM]))  # not a call: that would compile the XLA path
    first = next(iter(layers.values()))
    for seed, weight in enumerate((first.position_bias, first.time_bias, first.output_bias)):
        weight.assign(tf.random.stateless_normal(weight.shape, seed=[seed, 2]))
    for layer in layers.values():
        layer.set_weights(first.get_weights())
    return layers


def reference_bucket(value: int, per_doubling: int, num_buckets: int) -> int:
    """Log-linear bucket from frexp: ``value = f·2^e`` with ``f ∈ [1, 2)``, bucket ``e·k + ⌊(f − 1)·k⌋``."""
    mantissa, exponent = np.frexp(float(np.float32(max(value, 1))))
    return min((exponent - 1) * per_doubling + int(np.floor((2 * mantissa - 1) * per_doubling)), num_buckets - 1)


def numpy_hstu(layer, x, lengths, timestamps, num_targets):
    """The module docstring's equations, one unpadded sequence at a time, in float64."""
    w1, w2, b2, wp, wt = (v.numpy().astype(np.float64) for v in (
        layer.projection_kernel, layer.output_kernel, layer.output_bias, layer.position_bias, layer.time_bias))

    def silu(t):
        return t / (1 + np.exp(-t))

    def norm(t):
        return (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-6)

    out = np.zeros_like(x, dtype=np.float64)
    hv, hq = HEADS * HEAD_DIM, HEADS * HEAD_DIM
    for b, (n, m) in enumerate(zip(lengths, num_targets)):
        xb = x[b, :n].astype(np.float64)
        u, v, q, k = np.split(silu(norm(xb) @ w1), np.cumsum([hv, hv, hq]), axis=-1)
        rab = np.array([[wp[reference_bucket(min(i, n - m) - min(j, n - m) + 1, 8, len(wp))]
                         + wt[reference_bucket(abs(int(timestamps[b, i]) - int(timestamps[b, j])), 4, len(wt))]
                         for j in range(n)] for i in range(n)]).reshape(n, n)
        mask = np.array([[j <= i and (j < n - m or j == i) for j in range(n)] for i in range(n)], dtype=np.float64)
        heads = []
        for h in range(HEADS):
            cols = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            weights = silu(q[:, cols] @ k[:, cols].T + rab) * mask / MAX_SEQ_LEN
            heads.append(weights @ v[:, cols])
        attended = np.concatenate(heads, -1) if n else np.zeros((0, hv))
        out[b, :n] = xb + (norm(attended) * u) @ w2 + b2
    return out


def test_log_linear_buckets_are_exact_when_small_monotone_and_clamped():
    values = np.arange(0, 5000, dtype=np.int64)
    buckets = log_linear_bucket(tf.constant(values), 4, 40).numpy()
    assert list(buckets[:9]) == [0, 0, 4, 6, 8, 9, 10, 11, 12]  # 0 and 1 share; exact below 2·4 = 8
    assert np.all(np.diff(buckets) >= 0) and buckets.max() == 39
    assert [reference_bucket(int(v), 4, 40) for v in values] == list(buckets)
    assert bucket_length(17, (16, 64)) == 64 and bucket_length(130, (16, 64)) == 192
    assert int(bucket_length(tf.constant(130), (16, 64))) == 192 and int(bucket_length(tf.constant(5), (16, 64))) == 16


def test_padded_path_equals_the_papers_equations_per_sequence():
    layer = same_layers(("padded",))["padded"]
    x, lengths, timestamps = ragged_batch()
    num_targets = np.array([3, 0, 1, 0, 2, 0], np.int32)
    got = layer(x, lengths, timestamps, num_targets=num_targets).numpy()
    np.testing.assert_allclose(got, numpy_hstu(layer, x, lengths, timestamps, num_targets), atol=2e-5)
    assert np.abs(got - x * (np.arange(x.shape[1]) < lengths[:, None])[..., None]).max() > 1e-2  # f2 did something


def output_and_gradients(layer, x, lengths, timestamps, num_targets=(2, 0, 0, 1, 0, 0)):
    """The layer's output and the gradients of a random projection of it for the input and every weight."""
    x = tf.constant(x)
    probe = tf.random.stateless_normal(x.shape, seed=[5, 6])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, lengths, timestamps, num_targets=list(num_targets), training=True)
        loss = tf.reduce_sum(y * probe)
    return y.numpy(), [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, [x] + layer.trainable_variables)]


def test_padded_xla_and_jagged_paths_agree_in_outputs_and_gradients():
    layers = same_layers(attention_block_size=32)  # in causal blocks: 2 at XLA's bucket 64 and at padded 37
    x, lengths, timestamps = ragged_batch()
    outputs, gradients = {}, {}
    for path, layer in layers.items():
        outputs[path], gradients[path] = output_and_gradients(layer, x, lengths, timestamps)
    assert np.all(np.isfinite(outputs["padded"])) and np.abs(outputs["padded"]).max() > 0.5
    assert all(np.abs(g).max() > 1e-4 for g in gradients["padded"])  # every weight gets a gradient
    for path in ("xla", "jagged"):
        np.testing.assert_allclose(outputs[path], outputs["padded"], atol=1e-5, rtol=0, err_msg=path)
        for got, want in zip(gradients[path], gradients["padded"]):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=path)


def test_causal_blocks_equal_the_full_square_in_outputs_and_gradients():
    """Blocks of 16 query rows (the last one partial at width 37) against one full L × L block, with candidates
    and padded rows in the batch. (The XLA path runs in blocks in the three-path test above.)"""
    layers = same_layers(("padded", "xla"), attention_block_size=0)
    full, blocked = layers["padded"], layers["xla"]
    blocked.attention_block_size, blocked.xla = 16, False
    x, lengths, timestamps = ragged_batch()
    assert blocked.causal_blocks(x.shape[1]) == [(0, 16), (16, 32), (32, 37)]
    assert full.causal_blocks(37) == [(0, None)] and blocked.causal_blocks(None) == [(0, None)]
    want_output, want_gradients = output_and_gradients(full, x, lengths, timestamps)
    output, gradients = output_and_gradients(blocked, x, lengths, timestamps)
    np.testing.assert_allclose(output, want_output, atol=1e-5, rtol=0)
    for got, want in zip(gradients, want_gradients):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("compiled", [False, True])
def test_written_out_attention_gradient_equals_automatic_differentiation(compiled):
    """The layer's attention and bias gather carry hand-written gradients (for speed); every path runs them, so
    the path tests cannot see a wrong one: compare them with automatic differentiation of the plain ops. The
    bias gradient has one kernel for XLA-compiled functions and one for the others: both are checked."""
    rng = np.random.default_rng(3)
    q, k, v = (tf.constant(rng.normal(size=shape)) for shape in ([2, 2, 5, 4], [2, 2, 7, 4], [2, 2, 7, 3]))
    table = tf.constant(rng.normal(size=[11]))
    indices = tf.constant(rng.integers(0, 11, [2, 5, 7]), tf.int32)
    scaled_mask = tf.constant((rng.random([2, 1, 5, 7]) < 0.7) / 64.0)
    probe = tf.constant(rng.normal(size=[2, 2, 5, 3]))

    def gradients(attention):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v, table])
            loss = tf.reduce_sum(attention() * probe)
        return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, [q, k, v, table])]

    def plain():
        scores = tf.matmul(q, k, transpose_b=True) + tf.gather(table, indices)[:, None]
        return tf.matmul(tf.nn.silu(scores) * scaled_mask, v)

    written_out = gradients(lambda: _pointwise_attention(
        q, k, v, _gather_with_dense_gradient(table, indices, compiled), scaled_mask))
    for got, want in zip(written_out, gradients(plain)):
        assert np.abs(want).max() > 1e-3
        np.testing.assert_allclose(got, want, atol=1e-12, rtol=1e-9)


def test_silu_keeping_its_derivative_equals_silu_and_its_gradient():
    """The XLA path's projection SiLU stores its derivative in the forward: same values and gradient as
    ``tf.nn.silu`` (the path test checks it only to 1e-5, through the whole layer)."""
    z = tf.constant(np.random.default_rng(4).normal(size=[3, 7]) * 4)
    probe = tf.constant(np.random.default_rng(5).normal(size=[3, 7]))
    results = []
    for silu in (_silu_keeping_derivative, tf.nn.silu):
        with tf.GradientTape() as tape:
            tape.watch(z)
            y = silu(z)
            loss = tf.reduce_sum(y * probe)
        results.append((y.numpy(), tape.gradient(loss, z).numpy()))
    (got, got_gradient), (want, want_gradient) = results
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_gradient, want_gradient, rtol=1e-12, atol=1e-12)


def assert_later_events_never_change_earlier_outputs(layer, width):
    x, lengths, timestamps = ragged_batch(batch=3, width=width)
    lengths[:] = width
    before = layer(x, lengths, timestamps).numpy()
    x[:, 12:] += 3.0
    timestamps[:, 12:] += 10_000_000
    after = layer(x, lengths, timestamps).numpy()
    np.testing.assert_array_equal(after[:, :12], before[:, :12])
    assert np.abs(after[:, 12:] - before[:, 12:]).max() > 0.1


def test_later_events_never_change_earlier_outputs():
    assert_later_events_never_change_earlier_outputs(same_layers(("padded",))["padded"], width=20)


def test_padding_changes_nothing_gets_no_gradient_and_outputs_zero():
    layer = same_layers(("padded",))["padded"]
    x, lengths, timestamps = ragged_batch()
    padded = np.arange(x.shape[1])[None, :] >= lengths[:, None]
    junk_x = np.where(padded[..., None], 1e4, x).astype(np.float32)
    junk_t = np.where(padded, -(2 ** 62), timestamps)
    x_tensor = tf.constant(junk_x)
    with tf.GradientTape() as tape:
        tape.watch(x_tensor)
        y = layer(x_tensor, lengths, junk_t)
        total = tf.reduce_sum(y)
    gradient = tape.gradient(total, x_tensor).numpy()
    np.testing.assert_array_equal(y.numpy(), layer(x, lengths, timestamps).numpy())
    assert np.all(y.numpy()[padded] == 0) and np.all(gradient[padded] == 0) and np.abs(gradient).max() > 0


def test_m_candidates_in_one_pass_equal_m_single_candidate_passes():
    layer = same_layers(("padded",))["padded"]
    x, _, timestamps = ragged_batch(batch=1, width=12)
    history, candidates = 8, 4
    together = layer(x, [12], timestamps, num_targets=[candidates]).numpy()[0]
    for c in range(candidates):
        rows = list(range(history)) + [history + c]
        alone = layer(x[:, rows], [history + 1], timestamps[:, rows], num_targets=[1]).numpy()[0]
        np.testing.assert_allclose(together[history + c], alone[history], atol=1e-6)
        np.testing.assert_allclose(together[:history], alone[:history], atol=1e-6)
    plain_causal = layer(x, [12], timestamps).numpy()[0]
    assert np.abs(plain_causal[history + 1:] - together[history + 1:]).max() > 1e-4  # the mask matters


def test_lengths_inside_one_bucket_share_one_xla_trace_and_the_xla_path_is_causal():
    layer = same_layers(("xla",), length_buckets=(16, 32, 64))["xla"]
    compiled = layer._compiled.function
    traces = compiled.experimental_get_tracing_count()
    for width in (17, 25, 32):
        x, lengths, timestamps = ragged_batch(batch=3, width=width)
        assert layer(x, lengths, timestamps).shape == (3, width, DIM)
    assert_later_events_never_change_earlier_outputs(layer, width=20)
    assert compiled.experimental_get_tracing_count() == traces + 1
    x, lengths, timestamps = ragged_batch(batch=3, width=33)
    layer(x, lengths, timestamps)
    assert compiled.experimental_get_tracing_count() == traces + 2


def xla_compiled_in_trace(layer) -> list[str]:
    spec = (tf.TensorSpec([None, None, DIM]), tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, None], tf.int64))
    graph = tf.function(lambda x, n, t: layer(x, n, t)).get_concrete_function(*spec).graph.as_graph_def()
    return [f.signature.name for f in graph.library.function
            if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b]


def test_xla_path_compiles_in_training_and_serving_takes_a_plain_path():
    layer = HSTULayer(num_heads=HEADS, attention_dim=HEAD_DIM, attention_path="xla")
    assert xla_compiled_in_trace(layer)
    with serving_mode():
        assert xla_compiled_in_trace(layer) == []
    jagged = HSTULayer(num_heads=HEADS, attention_dim=HEAD_DIM, attention_path="jagged")
    stack = HSTUStack(2, num_heads=HEADS, attention_dim=HEAD_DIM, attention_path="xla")
    clone = HSTUStack.from_config(stack.get_config())
    assert [layer.attention_path for layer in clone.hstu_layers] == ["xla", "xla"]
    assert HSTULayer.from_config(jagged.get_config()).get_config() == jagged.get_config()


def test_bfloat16_stays_close_to_float32():
    x, lengths, timestamps = ragged_batch(batch=2, width=24)
    full = same_layers(("padded",))["padded"]
    half = HSTULayer(num_heads=HEADS, attention_dim=HEAD_DIM, max_seq_len=MAX_SEQ_LEN, dtype="mixed_bfloat16")
    half(x, lengths, timestamps)
    half.set_weights(full.get_weights())
    got = half(x, lengths, timestamps)
    assert got.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), full(x, lengths, timestamps).numpy(), atol=0.1)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="attention_path"):
        HSTULayer(attention_path="flash")
    with pytest.raises(ValueError, match="time_buckets_per_doubling"):
        HSTULayer(time_buckets_per_doubling=3)
    with pytest.raises(ValueError, match="attention_block_size"):
        HSTULayer(attention_block_size=-1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="lengths exceed"):
        HSTULayer()(np.zeros((1, 4, DIM), np.float32), [5], np.zeros((1, 4), np.int64))


@pytest.mark.slow
def test_the_speed_benchmark_runs_its_bfloat16_path_on_cpu(capsys):
    """bench/bench_hstu.py's ``--dtype=bfloat16`` (documented for GPUs) runs every section, tiny, on the CPU."""
    from bench import bench_hstu
    try:
        bench_hstu.main(["--lengths=32", "--tokens_per_batch=64", "--repeats=1", "--jagged_length=32",
                         "--jagged_batch=4", "--flops_length=32", "--dtype=bfloat16",
                         "--sections=paths,jagged,flops,dots"])
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    printed = capsys.readouterr().out
    assert "dtype bfloat16" in printed and "padded/jagged" in printed and "fraction" in printed
    assert " 32     2 " in printed  # the section-1 row of L = 32
    assert "Q Kᵀ, dO Vᵀ; 32 x 32" in printed and "square" in printed  # section 4, one causal block at L = 32
