"""DIEN's recurrent layers (Zhou et al., Deep Interest Evolution Network, AAAI 2019, §4.2–4.3).

* ``InterestExtractor``: a GRU over the behaviour embeddings whose hidden state ``h_t`` is the interest at step
  ``t``, and ``auxiliary_loss``, which makes ``h_t`` predict the next behaviour against a negative one.
* ``InterestEvolution``: a second GRU over ``h_t`` driven by the attention of each ``h_t`` to the target ad,
  in one of three variants: AIGRU (attention scales the input), AGRU (attention replaces the update gate) and
  AUGRU (attention scales the update gate, the paper's final model), built on ``AttentionGRUCell``; and
  ``augru_keep``, the AUGRU of the DIEN authors' released code and DeepCTR (attention scales the keep gate).

Gate convention: the paper writes ``h_t = (1 − u_t) ∘ h_{t−1} + u_t ∘ h̃_t``, Keras' GRU
``h_t = z_t ∘ h_{t−1} + (1 − z_t) ∘ h̃_t``, i.e. ``z = 1 − u``. ``AttentionGRUCell`` follows the paper, so
"attention 0" means "keep the state" in every variant.
"""

import functools

import tensorflow as tf

from tfrecsys.layers.target_attention import TargetAttention
from tfrecsys.layers.xla import in_serving_mode, tracing_inside_xla
from tfrecsys.losses.replicas import mean_over_global_batch

GRU_VARIANTS = ("aigru", "agru", "augru", "augru_keep")
ATTENTION_MOMENTS = ("valid", "every_slot")
AUX_NORMALIZATIONS = ("valid_pairs", "grid")


@tf.keras.utils.register_keras_serializable(package="tfrecsys")
class GateBiasInitializer(tf.keras.initializers.Initializer):
    """The ``[2, 3·units]`` bias of a ``reset_after`` GRU (rows: input, recurrent; columns: update, reset,
    candidate) with the input row's update columns at ``update`` and reset columns at ``reset``, all else 0.

    Why: ``tf.compat.v1.nn.rnn_cell.GRUCell``, which DeepCTR's and the DIEN authors' GRUs and AUGRU build on,
    starts its gate biases at 1 (keep and reset gates σ(1) ≈ 0.73: the state is mostly carried at the start of
    training); Keras' ``GRUCell`` starts them at 0 (0.5).
    """

    def __init__(self, update: float = 0.0, reset: float = 0.0):
        self.update, self.reset = float(update), float(reset)

    def __call__(self, shape, dtype=None, **kwargs):
        units = shape[-1] // 3
        row = tf.concat([tf.fill([units], self.update), tf.fill([units], self.reset), tf.zeros([units])], axis=0)
        return tf.cast(tf.stack([row, tf.zeros_like(row)]), dtype or tf.float32)

    def get_config(self):
        return {"update": self.update, "reset": self.reset}


@tf.keras.utils.register_keras_serializable(package="tfrecsys")
class JointGlorotUniform(tf.keras.initializers.Initializer):
    """A ``[rows, 3·units]`` slice (columns: update, reset, candidate) of ``tf.compat.v1.nn.rnn_cell.GRUCell``'s
    kernels, which act on the joint input ``[x ; h]`` of ``fan_in = dim + units`` rows: the gates' kernel
    ``[fan_in, 2·units]`` and the candidate's ``[fan_in, units]``, each glorot-uniform over its own shape.

    Why: with ``reset_after=False`` (the reset-before candidate) our GRUs can start as DeepCTR's and the DIEN
    authors' (``tf.compat.v1`` GRUCell, DeepCTR's ``VecAttGRUCell``): glorot-uniform entries are independent,
    so ``W`` (``dim`` rows) and ``U`` (``units`` rows) drawn with these limits are the two row blocks of those
    joint kernels. Keras' GRU draws ``W`` glorot-uniform over ``[dim, 3·units]`` and ``U`` orthogonal.
    """

    def __init__(self, fan_in: int, seed=None):
        self.fan_in, self.seed = int(fan_in), seed

    def __call__(self, shape, dtype=None, **kwargs):
        units = shape[-1] // 3
        gates = tf.keras.initializers.RandomUniform(-(6.0 / (self.fan_in + 2 * units)) ** 0.5,
                                                    (6.0 / (self.fan_in + 2 * units)) ** 0.5, seed=self.seed)
        candidate = tf.keras.initializers.RandomUniform(-(6.0 / (self.fan_in + units)) ** 0.5,
                                                        (6.0 / (self.fan_in + units)) ** 0.5,
                                                        seed=None if self.seed is None else self.seed + 1)
        return tf.concat([gates([shape[0], 2 * units], dtype), candidate([shape[0], units], dtype)], axis=-1)

    def get_config(self):
        return {"fan_in": self.fan_in, "seed": self.seed}


def gru_initializers(dim: int, units: int, reset_after: bool) -> dict:
    """The kernel and recurrent-kernel initialisers of our GRUs: Keras' (glorot-uniform and orthogonal) for
    the ``reset_after`` form, ``tf.compat.v1`` GRUCell's joint glorot-uniform for the reset-before form."""
    if reset_after:
        return {"kernel_initializer": "glorot_uniform", "recurrent_initializer": "orthogonal"}
    joint = JointGlorotUniform(dim + units)
    return {"kernel_initializer": joint, "recurrent_initializer": joint}


class AttentionGRUCell(tf.keras.layers.Layer):
    """One step of AGRU or AUGRU; its input is ``[i_t ; a_t]`` ``[batch, dim + 1]``, the attention score last.

    ``u_t = σ(W^u i_t + U^u h_{t−1} + b^u)``, ``r_t = σ(W^r i_t + U^r h_{t−1} + b^r)``,
    ``h̃_t = tanh(W^h i_t + r_t ∘ (U^h h_{t−1}) + b^h)`` (Keras' ``reset_after`` form, as in DIEN; with
    ``reset_after=False`` the reset-before form ``h̃_t = tanh(W^h i_t + U^h (r_t ∘ h_{t−1}) + b^h)`` of
    ``tf.compat.v1``'s GRUCell and DeepCTR's ``VecAttGRUCell``, with their initialisers: ``gru_initializers``), then
    AUGRU: ``ũ_t = a_t · u_t``, ``h_t = (1 − ũ_t) ∘ h_{t−1} + ũ_t ∘ h̃_t``;
    AGRU:  ``h_t = (1 − a_t) · h_{t−1} + a_t · h̃_t`` (no update gate);
    AUGRU-keep: ``k_t = (1 − a_t) · (1 − u_t)``, ``h_t = k_t ∘ h_{t−1} + (1 − k_t) ∘ h̃_t`` (the DIEN authors' code
    and DeepCTR's ``VecAttGRUCell``: attention scales the keep gate, so ``a_t`` 0 is a plain GRU step and 1
    takes the candidate whole; unlike the paper's, attention 0 does not keep the state).
    State ``[batch, units]``. ``gate_bias``: the initial ``b^r`` and ``−b^u`` (the paper's update gate is
    Keras' keep gate's complement, so ``gate_bias`` 1 starts ``1 − u_t`` and ``r_t`` at σ(1) as
    ``tf.compat.v1``'s GRUCell starts its keep and reset gates; ``GateBiasInitializer``).
    """

    def __init__(self, units: int, variant: str = "augru", gate_bias: float = 0.0, reset_after: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        if variant not in ("agru", "augru", "augru_keep"):
            raise ValueError(f"{self.name}: an attention GRU cell is 'agru', 'augru' or 'augru_keep', "
                             f"got {variant!r}")
        self.units = units
        self.variant = variant
        self.gate_bias = float(gate_bias)
        self.reset_after = bool(reset_after)
        self.state_size = units
        self.output_size = units

    def build(self, input_shape):
        dim = input_shape[-1] - 1
        # Columns: update, reset, candidate.
        initializers = gru_initializers(dim, self.units, self.reset_after)
        self.kernel = self.add_weight(name="kernel", shape=[dim, 3 * self.units],
                                      initializer=initializers["kernel_initializer"])
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=[self.units, 3 * self.units],
                                                initializer=initializers["recurrent_initializer"])
        self.bias = self.add_weight(name="bias", shape=[2, 3 * self.units],
                                    initializer=GateBiasInitializer(update=-self.gate_bias, reset=self.gate_bias))
        super().build(input_shape)

    def call(self, inputs, states):
        state = states[0]
        x, attention = inputs[:, :-1], inputs[:, -1:]
        from_input = tf.matmul(x, self.kernel) + self.bias[0]
        x_u, x_r, x_h = tf.split(from_input, 3, axis=-1)
        if self.reset_after:
            from_state = tf.matmul(state, self.recurrent_kernel) + self.bias[1]
            h_u, h_r, h_h = tf.split(from_state, 3, axis=-1)
            reset = tf.sigmoid(x_r + h_r)
            candidate = tf.tanh(x_h + reset * h_h)
        else:
            gate_kernel, candidate_kernel = tf.split(self.recurrent_kernel, [2 * self.units, self.units], axis=-1)
            gate_bias, candidate_bias = tf.split(self.bias[1], [2 * self.units, self.units])
            h_u, h_r = tf.split(tf.matmul(state, gate_kernel) + gate_bias, 2, axis=-1)
            reset = tf.sigmoid(x_r + h_r)
            candidate = tf.tanh(x_h + tf.matmul(reset * state, candidate_kernel) + candidate_bias)
        if self.variant == "augru":
            update = attention * tf.sigmoid(x_u + h_u)
        elif self.variant == "augru_keep":
            update = 1.0 - (1.0 - attention) * (1.0 - tf.sigmoid(x_u + h_u))
        else:
            update = attention
        new_state = (1.0 - update) * state + update * candidate
        return new_state, [new_state]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "variant": self.variant, "gate_bias": self.gate_bias,
                "reset_after": self.reset_after}


class InterestExtractor(tf.keras.layers.Layer):
    """DIEN's interest extractor: ``h_t = GRU(e_b[t], h_{t−1})`` over the behaviours.

    ``call(behaviours [batch, len, dim], mask [batch, len] bool)`` → ``[batch, len, units]``; padded steps keep the
    state (as Keras' masked RNN) and their output is not used by anything downstream. The weights are a Keras
    ``GRUCell``'s (``reset_after``); the steps run in ``gated_recurrence``. ``gate_bias``: the initial bias of the
    keep (Keras' update) and reset gates (``GateBiasInitializer``: 0 is Keras', 1 ``tf.compat.v1``'s, DeepCTR's).
    ``xla``: in training calls, run the recurrence's forward and backward loops XLA-compiled
    (``gated_recurrence(xla=True)``); other calls (evaluation, prediction, exported signatures) run them plain.
    ``reset_after``: False runs the reset-before candidate of ``tf.compat.v1``'s GRUCell (DeepCTR's), with its
    kernels' initialisation (``gated_recurrence``, ``gru_initializers``).
    """

    def __init__(self, units: int, gate_bias: float = 0.0, xla: bool = True, reset_after: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.gate_bias = float(gate_bias)
        self.xla = bool(xla)
        self.reset_after = bool(reset_after)
        # Keras' reset_after weight layout ([2, 3·units] bias) in both forms: gated_recurrence reads it either way.
        self.cell = tf.keras.layers.GRUCell(units, bias_initializer=GateBiasInitializer(gate_bias, gate_bias),
                                            name="gru_cell")

    def build(self, behaviours_shape, mask_shape=None):
        if not self.reset_after:  # tf.compat.v1 GRUCell's kernels, which need the input's width
            initializers = gru_initializers(behaviours_shape[-1], self.units, self.reset_after)
            self.cell.kernel_initializer = initializers["kernel_initializer"]
            self.cell.recurrent_initializer = initializers["recurrent_initializer"]
        self.cell.build(behaviours_shape)
        super().build(behaviours_shape)

    def call(self, behaviours, mask, training=None):
        cell = self.cell
        return gated_recurrence(behaviours, mask, cell.kernel, cell.recurrent_kernel, cell.bias, gate="gru",
                                xla=self.xla and bool(training), reset_after=self.reset_after)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "gate_bias": self.gate_bias, "xla": self.xla,
                "reset_after": self.reset_after}


GATES = ("gru", "augru", "agru", "augru_keep")


def _update(gate, z, scale):
    """The share ``g`` of the candidate in ``h_t = h_{t−1} + g ∘ (h̃_t − h_{t−1})``, and ``∂g/∂z``.

    ``gate``: a name of ``GATES``, picked when the loop is traced (the plain loops), or an int32 scalar tensor,
    its index in ``GATES``, picked when the loop runs: every gate's form is computed and the gate's is
    selected (exact), so one compiled loop pair serves every gate, DIEN's extractor GRU and its evolution's
    AUGRU alike: fewer traces and XLA compilations before the first step (bench/RESULTS.md, issue 12, branch
    dienfirst2). A few elementwise ops on ``[batch, units]`` per step; the forms stay the per-gate ones (a
    generic ``p + q ∘ w`` form with a second per-step input slowed XLA's backward loop by a quarter).
    """
    if not isinstance(gate, str):
        forms = [_update(name, z, scale) for name in GATES]
        return tuple(functools.reduce(lambda chosen, index: tf.where(tf.equal(gate, index), values[index], chosen),
                                      range(1, len(GATES)), values[0])
                     for values in zip(*forms))
    if gate == "gru":  # Keras: h_t = z ∘ h_{t−1} + (1 − z) ∘ h̃_t, scale = the mask
        return scale * (1.0 - z), -scale
    if gate == "augru":  # ũ_t = a_t · u_t, scale = a_t (0 at padding)
        return scale * z, scale
    if gate == "augru_keep":  # 1 − (1 − a_t)(1 − u_t), scale = 1 + a_t (0 at padding)
        valid = tf.cast(scale > 0, z.dtype)
        return valid * (1.0 - (2.0 - scale) * (1.0 - z)), valid * (2.0 - scale)
    return scale + 0.0 * z, 0.0 * z  # agru: a_t replaces the update gate


def _update_by_scale(gate: str, z, scale):
    """``∂g/∂s`` of ``_update``'s ``g`` (``gate`` a name)."""
    if gate == "gru":
        return 1.0 - z
    if gate == "augru":
        return z
    if gate == "augru_keep":
        return tf.cast(scale > 0, z.dtype) * (1.0 - z)
    return tf.ones_like(z)


def _forward_steps(step_inputs, recurrent_kernel, recurrent_bias, gate, units: int, reset_after: bool = True):
    """The forward loop of ``gated_recurrence``: ``step_inputs`` ``[len, batch, 3·units + 1]`` (``W x_t + b_x``
    and ``s_t``, time-major; ``gate``: ``_update``'s) → ``[len, batch, 5·units]``: ``h_t``, ``z_t``, ``r_t``,
    ``h̃_t`` and the candidate's recurrent term (``U^h h_{t−1} + b^h_h``; reset before:
    ``U^h (r_t ∘ h_{t−1}) + b^h_h``) per step."""
    dtype = step_inputs.dtype
    steps, batch = tf.unstack(tf.shape(step_inputs)[:2])
    inputs = tf.TensorArray(dtype, size=steps).unstack(step_inputs)
    gate_kernel, candidate_kernel = tf.split(recurrent_kernel, [2 * units, units], axis=-1)
    gate_bias, candidate_bias = tf.split(recurrent_bias, [2 * units, units])

    def forward(t, state, kept):
        x_zr, x_h, step_scale = tf.split(inputs.read(t), [2 * units, units, 1], axis=-1)
        if reset_after:
            h_zr, h_h = tf.split(tf.matmul(state, recurrent_kernel) + recurrent_bias, [2 * units, units], axis=-1)
            zr = tf.sigmoid(x_zr + h_zr)
            z, r = tf.split(zr, 2, axis=-1)
            candidate = tf.tanh(x_h + r * h_h)
        else:  # the reset gate needs U^{zr} h first, then U^h sees r ∘ h: two matmuls a step
            zr = tf.sigmoid(x_zr + tf.matmul(state, gate_kernel) + gate_bias)
            z, r = tf.split(zr, 2, axis=-1)
            h_h = tf.matmul(r * state, candidate_kernel) + candidate_bias
            candidate = tf.tanh(x_h + h_h)
        update, _ = _update(gate, z, step_scale)
        state = state + update * (candidate - state)
        return t + 1, state, kept.write(t, tf.concat([state, zr, candidate, h_h], axis=-1))

    empty = tf.zeros(tf.stack([batch, units]), dtype)
    _, _, kept = tf.while_loop(lambda t, *_: t < steps, forward, (0, empty, tf.TensorArray(dtype, size=steps)))
    return kept.stack()


def _backward_steps(step_values, recurrent_kernel, gate, units: int, reset_after: bool = True):
    """The backward loop of ``gated_recurrence``, last step first: ``step_values`` ``[len, batch, 6·units + 1]``
    (``∂L/∂h_t`` from outside, ``z_t``, ``r_t``, ``h̃_t``, the candidate's recurrent term, ``h_{t−1}``, ``s_t``) →
    ``[len, batch, 4·units]``: the gradients at the inputs of ``z_t``'s and ``r_t``'s sigmoids and of ``h̃_t``'s
    tanh, and the total ``∂L/∂h_t``."""
    dtype = step_values.dtype
    steps, batch = tf.unstack(tf.shape(step_values)[:2])
    values = tf.TensorArray(dtype, size=steps).unstack(step_values)
    transposed_kernel = tf.transpose(recurrent_kernel)
    transposed_gate_kernel, transposed_candidate_kernel = tf.split(transposed_kernel, [2 * units, units], axis=0)

    def step_back(t, d_carry, d_steps):
        t = t - 1
        d_output, z, r, candidate, h_h, previous_state, step_scale = tf.split(
            values.read(t), [units] * 6 + [1], axis=-1)
        d_state = d_carry + d_output
        update, d_update_d_z = _update(gate, z, step_scale)
        d_candidate = d_state * update * (1.0 - candidate * candidate)
        d_z = d_state * (candidate - previous_state) * d_update_d_z * z * (1.0 - z)
        if reset_after:
            d_r = d_candidate * h_h * r * (1.0 - r)
            d_previous = d_state * (1.0 - update) + tf.matmul(tf.concat([d_z, d_r, d_candidate * r], axis=-1),
                                                               transposed_kernel)
        else:  # h̃ = tanh(… + U^h (r ∘ h_{t−1}) + …): ∂L/∂(r ∘ h_{t−1}) first, then r's and h_{t−1}'s shares
            d_reset_state = tf.matmul(d_candidate, transposed_candidate_kernel)
            d_r = d_reset_state * previous_state * r * (1.0 - r)
            d_previous = (d_state * (1.0 - update) + d_reset_state * r
                          + tf.matmul(tf.concat([d_z, d_r], axis=-1), transposed_gate_kernel))
        return t, d_previous, d_steps.write(t, tf.concat([d_z, d_r, d_candidate, d_state], axis=-1))

    empty = tf.zeros(tf.stack([batch, units]), dtype)
    _, _, d_steps = tf.while_loop(lambda t, *_: t > 0, step_back, (steps, empty, tf.TensorArray(dtype, size=steps)))
    return d_steps.stack()


def _compiled_steps(units: int, reset_after: bool = True):
    """``(forward, backward)``: ``_forward_steps`` and ``_backward_steps`` for ``units`` and ``reset_after`` as
    XLA-compiled functions, one pair per process for every gate (the gate is an input of the loops:
    ``_update``), traced once for any batch size and length; XLA compiles once per concrete input
    shape and caches it, so DIEN's two GRUs, of equal width, share both compilations."""
    return _compiled_steps_once(int(units), bool(reset_after))


@functools.lru_cache(maxsize=None)
def _compiled_steps_once(units: int, reset_after: bool):
    # autograph=False: the loops are tf.while_loops written out, and AutoGraph's conversion of the two (which a
    # tf.function applies to what it wraps, whatever tfrecsys' DoNotConvert rule says) cost 0.25-0.5 CPU-second
    # of DIEN's first step (bench/RESULTS.md, issue 12, branch dienfirst2).
    return tuple(tf.function(functools.partial(steps, units=units, reset_after=reset_after), jit_compile=True,
                             reduce_retracing=True, autograph=False) for steps in (_forward_steps, _backward_steps))


def gated_recurrence(inputs, scale, kernel, recurrent_kernel, bias, gate: str = "gru", xla: bool = False,
                     reset_after: bool = True):
    """The GRU family's steps over a sequence, with a hand-written backward pass: ``[batch, len, units]`` states
    ``h_1..h_T`` (``h_0 = 0``).

    ``inputs`` ``[batch, len, dim]`` are ``x_t``; ``kernel`` ``[dim, 3·units]``, ``recurrent_kernel``
    ``[units, 3·units]`` and ``bias`` ``[2, 3·units]`` (rows: input, recurrent) are ``W``, ``U``, ``b`` of Keras'
    ``reset_after`` GRU (columns: update, reset, candidate): ``z_t = σ(·_z)``, ``r_t = σ(·_r)`` of
    ``W x_t + b_x + U h_{t−1} + b_h``, ``h̃_t = tanh(W^h x_t + b^h_x + r_t ∘ (U^h h_{t−1} + b^h_h))``, then
    ``h_t = h_{t−1} + g_t ∘ (h̃_t − h_{t−1})`` with ``g_t`` by ``gate``: ``gru`` ``s_t (1 − z_t)`` (Keras' GRU,
    ``s`` the mask), ``augru`` ``s_t z_t`` (``s = a_t``, the update gate in the paper's convention), ``agru``
    ``s_t``, ``augru_keep`` ``1 − (2 − s_t)(1 − z_t)`` for ``s_t = 1 + a_t`` (the keep gate scaled by
    ``1 − a_t``; ``s_t`` 0 marks padding). ``scale`` ``s`` ``[batch, len]``: 0 keeps the state exactly.
    ``reset_after=False``: the candidate of ``tf.compat.v1``'s GRUCell (DeepCTR's and the DIEN authors' GRUs),
    reset before the matmul: ``h̃_t = tanh(W^h x_t + b^h_x + U^h (r_t ∘ h_{t−1}) + b^h_h)``; the same weights.

    Why by hand: differentiated by TensorFlow, a while loop stacks every intermediate of every step and runs
    about twice the forward's ops per step backward; here the forward keeps ``[h, z, r, h̃, U^h h + b]`` per
    step and the backward loop does only what the recurrence needs (the weights', biases' and inputs'
    gradients are batched matmuls and sums after it). The input projection ``W x_t + b_x`` is inside too, as
    one matmul over every step, and each loop reads one tensor array and writes one: every node fewer is
    traced, optimised and instantiated once per process (bench/RESULTS.md, issue 12, branch firststep5).
    Gradients flow to all five inputs.

    ``xla``: run the forward loop and the backward loop each as one XLA-compiled function (``_compiled_steps``).
    A step is a few ops on ``[batch, units]`` tensors, where TensorFlow's executor spends more on dispatching
    each op than on its arithmetic; compiled, a loop is one call that runs its steps without dispatching ops
    (bench/RESULTS.md, issue 12, branch seqspeed6). The projections and the weights' gradients stay plain
    (oneDNN's matmuls). Both loops compile once per input shape (0.05-0.2 CPU-second each), and every gate of
    the same ``units`` and ``reset_after`` runs the same compiled pair (``_update``). Inside
    ``serving_mode()`` (exported signatures: TF Serving runs no XLA without its experimental flags) and inside
    an XLA-compiled function (``--jit_compile``) the plain loops run; the results agree to float rounding.
    """
    if gate not in GATES:
        raise ValueError(f"gated_recurrence: gate must be one of {GATES}, got {gate!r}")
    dtype = inputs.dtype
    kernel, recurrent_kernel, bias = (tf.cast(weight, dtype) for weight in (kernel, recurrent_kernel, bias))
    dim, units = kernel.shape[0], recurrent_kernel.shape[0]
    reset_after = bool(reset_after)
    if xla and not in_serving_mode() and not tracing_inside_xla():
        compiled_forward, compiled_backward = _compiled_steps(units, reset_after)

        gate_index = tf.constant(GATES.index(gate), tf.int32)
        forward_steps = functools.partial(compiled_forward, gate=gate_index)
        backward_steps = functools.partial(compiled_backward, gate=gate_index)
    else:
        forward_steps = functools.partial(_forward_steps, gate=gate, units=units, reset_after=reset_after)
        backward_steps = functools.partial(_backward_steps, gate=gate, units=units, reset_after=reset_after)

    @tf.custom_gradient
    def recurrence(inputs, scale, kernel, recurrent_kernel, bias):
        batch, steps = tf.unstack(tf.shape(inputs)[:2])
        flat_inputs = tf.reshape(tf.transpose(inputs, [1, 0, 2]), [-1, dim])  # time-major rows
        input_bias, recurrent_bias = tf.unstack(bias)
        projected = tf.reshape(tf.matmul(flat_inputs, kernel) + input_bias, tf.stack([steps, batch, 3 * units]))
        time_major_scale = tf.transpose(scale)[..., tf.newaxis]
        # Under stop_gradient: the backward below is the gradient, and an eager tape that saw the loop's inputs
        # would have the compiled function keep per-step accumulators, which XLA cannot compile.
        kept = forward_steps(*(tf.stop_gradient(x) for x in (tf.concat([projected, time_major_scale], -1),
                                                              recurrent_kernel, recurrent_bias)))
        # [len, batch, units] states, [len, batch, 4·units] z, r, h̃ and the candidate's recurrent term.
        states, kept = tf.split(kept, [units, 4 * units], axis=-1)
        previous = tf.concat([tf.zeros_like(states[:1]), states[:-1]], axis=0)

        def backward(d_states):
            d_steps = backward_steps(
                tf.concat([tf.transpose(d_states, [1, 0, 2]), kept, previous, time_major_scale], axis=-1),
                recurrent_kernel)
            d_zr, d_candidate, d_states_total = tf.split(d_steps, [2 * units, units, units], axis=-1)
            z, r, candidate, _ = tf.split(kept, 4, axis=-1)
            flat_d_projected = tf.reshape(tf.concat([d_zr, d_candidate], axis=-1), [-1, 3 * units])
            flat_previous = tf.reshape(previous, [-1, units])
            if reset_after:
                flat_d_from_state = tf.reshape(tf.concat([d_zr, d_candidate * r], axis=-1), [-1, 3 * units])
                d_recurrent_kernel = tf.matmul(flat_previous, flat_d_from_state, transpose_a=True)
            else:  # U^{zr} sees h_{t−1}, U^h sees r ∘ h_{t−1}
                flat_d_from_state = flat_d_projected
                d_recurrent_kernel = tf.concat([
                    tf.matmul(flat_previous, tf.reshape(d_zr, [-1, 2 * units]), transpose_a=True),
                    tf.matmul(tf.reshape(r * previous, [-1, units]), tf.reshape(d_candidate, [-1, units]),
                              transpose_a=True)], axis=-1)
            d_bias = tf.stack([tf.reduce_sum(flat_d_projected, axis=0), tf.reduce_sum(flat_d_from_state, axis=0)])
            d_inputs = tf.reshape(tf.matmul(flat_d_projected, kernel, transpose_b=True), tf.stack([steps, batch, dim]))
            d_scale = tf.reduce_sum(d_states_total * (candidate - previous)
                                    * _update_by_scale(gate, z, time_major_scale), axis=-1)
            return (tf.transpose(d_inputs, [1, 0, 2]), tf.transpose(d_scale),
                    tf.matmul(flat_inputs, flat_d_projected, transpose_a=True), d_recurrent_kernel, d_bias)

        return tf.transpose(states, [1, 0, 2]), backward

    return recurrence(inputs, tf.cast(scale, dtype), kernel, recurrent_kernel, bias)


def auxiliary_loss(interests, next_behaviours, negative_behaviours, mask, scorer=None,
                   normalization: str = "valid_pairs"):
    """DIEN eq. 6: ``L_aux = −1/N Σ_i Σ_t [log σ(s(h_t, e_b[t+1])) + log(1 − σ(s(h_t, ê_b[t+1])))]``.

    ``interests`` ``[batch, len, d]`` are the extractor's states ``h_t``; ``next_behaviours`` and
    ``negative_behaviours`` ``[batch, len, d]`` the clicked behaviours and the sampled negatives, so that step
    ``t`` is scored against ``e_b[t+1]``; ``mask`` ``[batch, len]`` bool the valid behaviours. Pairs ``(t, t+1)``
    with both steps valid count. ``normalization`` picks the paper's ``N``: ``valid_pairs`` (default) the mean
    over those pairs (0 when a batch has none), so history length does not weight a user and the weight of
    ``α`` does not follow a batch's fill; ``grid`` the sum over them divided by every ``(row, t)`` slot,
    ``batch · (len − 1)`` (padding counts 0), as DeepCTR's and the DIEN authors' ``reduce_mean`` of the masked
    loss: longer histories weigh more, and at the same ``α`` the loss weighs the batch's share of valid slots
    (0.73 on the Taobao peer protocol) times ``valid_pairs``' weight. Under a distribution strategy ``N`` counts
    the pairs (slots) of the global batch (``tfrecsys.losses.replicas``). ``scorer(states, behaviours)`` → logits
    ``[2, pairs]`` (``states`` ``[pairs, d]`` broadcast against ``behaviours`` ``[2, pairs, d]``: the positives,
    then the negatives) is the auxiliary network ``s`` (e.g. ``tfrecsys.layers.auxiliary_net.AuxiliaryNet``,
    which projects each state once for both); None is the paper's inner product ``s(h, e) = h · e`` (which
    needs ``d`` equal for both).
    """
    if normalization not in AUX_NORMALIZATIONS:
        raise ValueError(f"auxiliary_loss: normalization must be one of {AUX_NORMALIZATIONS}, "
                         f"got {normalization!r}")
    valid = tf.logical_and(mask[:, :-1], mask[:, 1:])
    if scorer is None:
        def scorer(states, behaviours):
            return tf.reduce_sum(states * behaviours, axis=-1)
    if tracing_inside_xla():
        # XLA compiles static shapes only (the pairs' count varies by batch): every (row, t) slot is scored
        # and the invalid pairs' losses are masked out, the same sum over more work.
        def slots_of(values):  # [batch, len − 1, d] → [batch · (len − 1), d]
            return tf.reshape(values, [-1, values.shape[-1]])

        states = slots_of(interests[:, :-1])
        behaviours = tf.stack([slots_of(next_behaviours[:, 1:]), slots_of(negative_behaviours[:, 1:])])
        pair_weights = tf.reshape(tf.cast(valid, tf.float32), [-1])
    else:
        # Only the valid pairs are gathered and scored (a quarter of Taobao's steps are padding), positives and
        # negatives in one call of the scorer, each state given once: the same mean, less work. Gathered by
        # position from the whole sequences, not from [:, :-1] / [:, 1:] slices: the slices' gradients
        # (StridedSliceGrad, three of [batch, len, d]) cost 16 of DIEN + aux's ~105 CPU ms per step.
        positions = tf.where(valid)  # [pairs, 2]: (row, t)
        next_positions = positions + tf.constant([0, 1], positions.dtype)
        states = tf.gather_nd(interests, positions)
        behaviours = tf.stack([tf.gather_nd(next_behaviours, next_positions),
                               tf.gather_nd(negative_behaviours, next_positions)])
        pair_weights = None
    positive_logits, negative_logits = tf.unstack(tf.cast(scorer(states, behaviours), tf.float32))
    # −log σ(x) = softplus(−x) and −log(1 − σ(x)) = softplus(x), without overflow.
    losses = tf.nn.softplus(-positive_logits) + tf.nn.softplus(negative_logits)
    if pair_weights is None:
        total, pairs = tf.reduce_sum(losses), tf.shape(losses)[0]
    else:
        total, pairs = tf.reduce_sum(losses * pair_weights), tf.reduce_sum(pair_weights)
    slots = tf.size(valid) if normalization == "grid" else pairs
    # Under a strategy, the mean over the global batch's pairs (slots), not the mean of the replicas' means.
    return mean_over_global_batch(total, slots)


class InterestEvolution(tf.keras.layers.Layer):
    """DIEN's interest-evolving layer: the final interest ``h'_T`` of a GRU over ``h_1..h_T`` steered by the
    target.

    ``a_t`` is the softmax over valid steps of the activation unit's score of ``h_t`` against the target
    ``e_a`` (``TargetAttention(normalization="softmax")``, as DeepCTR's DIEN; the paper writes the bilinear
    ``h_t W e_a``). Variants: ``aigru`` runs a plain GRU on ``a_t · h_t``; ``agru``, ``augru`` and
    ``augru_keep`` run ``AttentionGRUCell``. ``call(interests [batch, len, d], mask [batch, len] bool, target [batch, d])`` →
    ``[batch, units]``, the state after the last valid step (zeros for an empty history). ``gate_bias``: the
    cells' initial gate bias, as ``InterestExtractor``'s (for AGRU/AUGRU see ``AttentionGRUCell``).
    ``cell_trainable``: False keeps the recurrent cell's weights at their initial values (the attention still
    trains, through the cell): DeepCTR 0.9.4's DIEN on TF 2 runs that way, because its AUGRU/AGRU cells create
    their variables with ``tf.compat.v1.get_variable`` inside a Keras layer, which Keras does not track, so its
    optimizer never updates them (measured: bench/RESULTS.md, issue 12, branch dien3). ``xla`` and
    ``reset_after``: as ``InterestExtractor``'s. ``attention_moments``: where the attention's Dice takes its
    batch moments in training: ``valid`` (default) the valid steps only; ``every_slot`` every ``[batch, len]``
    slot, padding included with its interests zeroed, as DeepCTR's DIEN (its ``BatchNormalization`` over the
    zero-padded GRU outputs of ``dynamic_rnn``); the activation unit then runs on every slot.
    """

    def __init__(self, units: int, variant: str = "augru", attention_units=(64, 16), attention_activation="dice",
                 gate_bias: float = 0.0, cell_trainable: bool = True, xla: bool = True, reset_after: bool = True,
                 attention_moments: str = "valid", **kwargs):
        super().__init__(**kwargs)
        if attention_moments not in ATTENTION_MOMENTS:
            raise ValueError(f"{self.name}: attention_moments must be one of {ATTENTION_MOMENTS}, "
                             f"got {attention_moments!r}")
        self.attention_moments = attention_moments
        self.xla = bool(xla)
        self.reset_after = bool(reset_after)
        if variant not in GRU_VARIANTS:
            raise ValueError(f"{self.name}: variant must be one of {GRU_VARIANTS}, got {variant!r}")
        self.units = units
        self.variant = variant
        self.attention_units = tuple(attention_units)
        self.attention_activation = attention_activation
        self.gate_bias = float(gate_bias)
        self.attention = TargetAttention(attention_units, attention_activation, normalization="softmax",
                                         name="attention")
        # The weights of one step; the steps run in gated_recurrence.
        if variant == "aigru":
            self.cell = tf.keras.layers.GRUCell(units, bias_initializer=GateBiasInitializer(gate_bias, gate_bias),
                                                name="gru_cell")
        else:
            self.cell = AttentionGRUCell(units, variant, gate_bias, reset_after=reset_after, name=f"{variant}_cell")
        self.cell_trainable = bool(cell_trainable)
        self.cell.trainable = self.cell_trainable

    def build(self, interests_shape, mask_shape=None, target_shape=None):
        dim = interests_shape[-1]
        if self.variant == "aigru" and not self.reset_after:  # as InterestExtractor.build
            initializers = gru_initializers(dim, self.units, self.reset_after)
            self.cell.kernel_initializer = initializers["kernel_initializer"]
            self.cell.recurrent_initializer = initializers["recurrent_initializer"]
        self.cell.build([None, dim] if self.variant == "aigru" else [None, dim + 1])
        super().build(interests_shape)

    def call(self, interests, mask, target, training=None):
        if self.attention_moments == "every_slot":
            # Without a key mask the activation unit runs on every slot and Dice's moments span them all; the
            # softmax over valid steps is TargetAttention.weights_for's.
            padded = tf.where(mask[..., tf.newaxis], interests, tf.zeros_like(interests))
            raw = self.attention.unit(padded, target, key_mask=None, training=training)
            lowest = tf.fill(tf.shape(raw), tf.constant(raw.dtype.min, raw.dtype))
            scores = tf.nn.softmax(tf.where(mask, raw, lowest), axis=-1) * tf.cast(mask, raw.dtype)
        else:
            scores = self.attention.weights_for(interests, mask, target, training=training)
        # AIGRU needs the mask (a zero input still moves a GRU); AGRU/AUGRU keep their state at padding anyway,
        # where the attention is 0, and the mask makes that independent of float rounding.
        # augru_keep's attention 0 is a GRU step, not a kept state: its padding needs its own mark, s = 0.
        if self.variant == "aigru":
            inputs, scale = interests * scores[..., tf.newaxis], mask
        else:
            inputs = interests
            scale = (1.0 + scores if self.variant == "augru_keep" else scores) * tf.cast(mask, scores.dtype)
        states = gated_recurrence(inputs, scale, self.cell.kernel, self.cell.recurrent_kernel, self.cell.bias,
                                  gate="gru" if self.variant == "aigru" else self.variant,
                                  xla=self.xla and bool(training), reset_after=self.reset_after)
        return states[:, -1]  # padded steps keep the state: the state after the last valid step

    def get_config(self):
        return {**super().get_config(), "units": self.units, "variant": self.variant,
                "attention_units": self.attention_units, "attention_activation": self.attention_activation,
                "gate_bias": self.gate_bias, "cell_trainable": self.cell_trainable, "xla": self.xla,
                "reset_after": self.reset_after, "attention_moments": self.attention_moments}
