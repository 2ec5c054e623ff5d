"""Experts and softmax gates: the shared-bottom, MMoE and PLE backbones of multi-task ranking.

Every backbone maps one input ``x`` ``[batch, d]`` to one representation per task, a list of ``[batch, h]``
that the task towers read:

* ``SharedBottomBackbone``: ``f(x)`` for every task (hard sharing, ``y_k = h^k(f(x))``);
* ``MixtureOfExpertsBackbone`` (MMoE, Ma et al. KDD 2018): ``f^k(x) = Σ_i g^k(x)_i f_i(x)`` with
  ``g^k(x) = softmax(W_k x)``, one gate per task over ``n`` shared experts;
* ``ProgressiveLayeredExtraction`` (PLE, Tang et al. RecSys 2020): stacked ``ExtractionLevel``s (CGC); task
  ``k``'s gate mixes its own experts and the shared ones, and a non-final level's shared gate mixes all of
  them into the next level's shared input;
* ``IdentityBackbone``: ``x`` itself for every task (ESMM's towers read the shared embeddings directly).

Experts of a group keep one ``[n, d_in, d_out]`` kernel per layer (``Experts``) and run it as ``n`` plain 2-D
matmuls, one per expert: on CPU oneDNN's MatMul is faster than the single ``einsum``/batched matmul of the same
function (bench/RESULTS.md, issue 13 speed).
"""

import math
from typing import Sequence

import tensorflow as tf


class Experts(tf.keras.layers.Layer):
    """``n`` independent MLP experts, ``f_i(x) = act(W_{i,L} … act(W_{i,1} x + b_{i,1}) … + b_{i,L})``.

    Input ``[batch, d]`` (every expert reads the same input), ``[batch, n, d]`` or a list of ``n`` ``[batch, d]``
    (expert ``i`` reads the ``i``-th); output ``[batch, n, hidden_units[-1]]``, or with ``stack_outputs=False``
    the list of ``n`` ``[batch, hidden_units[-1]]`` (for a reader that takes experts apart: slicing the stacked
    tensor would cost a zero-padded gradient of its whole size per slice). Each expert's kernels are
    Glorot-uniform over their own ``(d_in, d_out)``, as ``n`` separate Dense layers would be.
    """

    def __init__(self, num_experts: int, hidden_units: Sequence[int], activation="relu", dropout=0.0,
                 stack_outputs: bool = True, **kwargs):
        super().__init__(**kwargs)
        if num_experts < 1 or not hidden_units:
            raise ValueError(f"{self.name}: experts need num_experts >= 1 and hidden_units, got {num_experts} and "
                             f"{list(hidden_units)}")
        self.num_experts = num_experts
        self.hidden_units = list(hidden_units)
        self.activation = tf.keras.activations.get(activation)
        self.dropout = dropout
        self.stack_outputs = stack_outputs
        self._dropout = tf.keras.layers.Dropout(dropout) if dropout else None

    def build(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (tf.TensorShape, list, tuple)):
            input_shape = input_shape[0]  # a list of per-expert inputs, all of one width
        d_in = int(input_shape[-1])
        self.kernels, self.biases = [], []
        for layer, units in enumerate(self.hidden_units):
            limit = math.sqrt(6.0 / (d_in + units))
            self.kernels.append(self.add_weight(f"kernel_{layer}", shape=(self.num_experts, d_in, units),
                                                initializer=tf.keras.initializers.RandomUniform(-limit, limit)))
            self.biases.append(self.add_weight(f"bias_{layer}", shape=(self.num_experts, units), initializer="zeros"))
            d_in = units
        super().build(input_shape)

    def call(self, inputs, training=None):
        if isinstance(inputs, (list, tuple)):
            hidden = list(inputs)
        elif inputs.shape.rank == 2:
            hidden = [inputs] * self.num_experts
        else:
            hidden = tf.unstack(inputs, num=self.num_experts, axis=1)
        if len(hidden) != self.num_experts:
            raise ValueError(f"{self.name}: {len(hidden)} inputs for {self.num_experts} experts")
        for kernel, bias in zip(self.kernels, self.biases):
            # Unstacking a kernel is one copy, and its gradient one stack (slicing would add n zero-padded
            # gradients of the whole kernel).
            kernels, biases = tf.unstack(kernel, num=self.num_experts), tf.unstack(bias, num=self.num_experts)
            hidden = [self.activation(tf.matmul(h, k) + b) for h, k, b in zip(hidden, kernels, biases)]
            if self._dropout is not None:
                hidden = [self._dropout(h, training=training) for h in hidden]
        return tf.stack(hidden, axis=1) if self.stack_outputs else hidden

    def get_config(self):
        return {**super().get_config(), "num_experts": self.num_experts, "hidden_units": self.hidden_units,
                "activation": tf.keras.activations.serialize(self.activation), "dropout": self.dropout,
                "stack_outputs": self.stack_outputs}


class SoftmaxGate(tf.keras.layers.Layer):
    """``g(x) = softmax(W_g x)``: ``[batch, d]`` → ``[batch, n]`` weights, non-negative, summing to 1 per row
    (the MMoE paper's gate, no bias; dense gating, not top-k)."""

    def __init__(self, num_experts: int, **kwargs):
        super().__init__(**kwargs)
        self.num_experts = num_experts
        self._logits = tf.keras.layers.Dense(num_experts, use_bias=False, name="logits")

    def call(self, inputs):
        return tf.nn.softmax(self._logits(inputs), axis=-1)

    def get_config(self):
        return {**super().get_config(), "num_experts": self.num_experts}


def mix(gate: tf.Tensor, expert_outputs: tf.Tensor) -> tf.Tensor:
    """``Σ_i g_i f_i``: gate ``[batch, n]`` and experts ``[batch, n, h]`` → ``[batch, h]``."""
    return tf.reduce_sum(gate[:, :, tf.newaxis] * expert_outputs, axis=1)


class IdentityBackbone(tf.keras.layers.Layer):
    """Every task reads ``x`` ``[batch, d]`` itself: towers directly over the shared embeddings (ESMM)."""

    def __init__(self, num_tasks: int, **kwargs):
        super().__init__(**kwargs)
        self.num_tasks = num_tasks

    def call(self, inputs, training=None):
        return [inputs] * self.num_tasks

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks}


class SharedBottomBackbone(tf.keras.layers.Layer):
    """``f(x)`` ``[batch, hidden_units[-1]]`` for every task: one shared bottom MLP (hard sharing)."""

    def __init__(self, num_tasks: int, hidden_units: Sequence[int], dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_tasks = num_tasks
        self.hidden_units = list(hidden_units)
        self.dropout = dropout
        # One expert of the batched kind: MMoE with one expert is exactly this (its gate is identically 1).
        self.bottom = Experts(1, hidden_units, dropout=dropout, stack_outputs=False, name="bottom")

    def call(self, inputs, training=None):
        return self.bottom(inputs, training=training) * self.num_tasks

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks, "hidden_units": self.hidden_units,
                "dropout": self.dropout}


class MixtureOfExpertsBackbone(tf.keras.layers.Layer):
    """MMoE: ``f^k(x) = Σ_i softmax(W_k x)_i f_i(x)``, ``n`` shared experts and one gate per task.

    Input ``[batch, d]``; output a list of ``num_tasks`` ``[batch, expert_units[-1]]``. ``gates(x)`` gives the
    gate weights ``[batch, n]`` per task (which experts each task uses).
    """

    def __init__(self, num_tasks: int, num_experts: int, expert_units: Sequence[int], dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_tasks = num_tasks
        self.num_experts = num_experts
        self.expert_units = list(expert_units)
        self.dropout = dropout
        self.experts = Experts(num_experts, expert_units, dropout=dropout, name="experts")
        self.task_gates = [SoftmaxGate(num_experts, name=f"gate_{k}") for k in range(num_tasks)]

    def gates(self, inputs) -> list:
        return [gate(inputs) for gate in self.task_gates]

    def call(self, inputs, training=None):
        experts = self.experts(inputs, training=training)
        return [mix(gate, experts) for gate in self.gates(inputs)]

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks, "num_experts": self.num_experts,
                "expert_units": self.expert_units, "dropout": self.dropout}


class ExtractionLevel(tf.keras.layers.Layer):
    """One CGC level: ``m_s`` shared experts, ``m_k = task_experts`` experts per task, a gate per task and,
    unless ``last``, a shared gate.

    Inputs: a list of ``num_tasks + 1`` tensors ``[batch, d]``, the task inputs then the shared input (at the
    first level all are ``x``). Task ``k``: ``g^k = softmax(W_k x_k) · [E_k(x_k) ; E_s(x_s)]`` over its own and
    the shared experts. Shared (non-last levels): ``g^s = softmax(W_s x_s) · [E_1 ; … ; E_K ; E_s]`` over all
    experts. Output: the same list layout, ``[batch, expert_units[-1]]`` each (no shared entry when ``last``).
    Task ``k``'s experts get gradient only from what reads them: at the last level, only task ``k``'s loss.
    """

    def __init__(self, num_tasks: int, shared_experts: int, task_experts: int, expert_units: Sequence[int],
                 last: bool, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if shared_experts + task_experts < 1:
            raise ValueError(f"{self.name}: a PLE level needs at least one shared or task-specific expert")
        self.num_tasks = num_tasks
        self.shared_experts = shared_experts
        self.task_experts = task_experts
        self.expert_units = list(expert_units)
        self.last = last
        self.dropout = dropout
        # All experts of the level in one batch: task 0's, …, task K-1's, then the shared ones.
        self.experts = Experts(num_tasks * task_experts + shared_experts, expert_units, dropout=dropout,
                               stack_outputs=False, name="experts")
        self.task_gates = [SoftmaxGate(task_experts + shared_experts, name=f"gate_{k}") for k in range(num_tasks)]
        self.shared_gate = None if last else SoftmaxGate(num_tasks * task_experts + shared_experts,
                                                         name="shared_gate")

    def gates(self, inputs) -> list:
        gates = [gate(x) for gate, x in zip(self.task_gates, inputs)]
        return gates if self.last else gates + [self.shared_gate(inputs[-1])]

    def call(self, inputs, training=None):
        same_input = all(x is inputs[0] for x in inputs)
        if same_input:
            expert_inputs = inputs[0]
        else:
            copies = [x for x in inputs[:-1] for _ in range(self.task_experts)]
            expert_inputs = copies + [inputs[-1]] * self.shared_experts
        experts = self.experts(expert_inputs, training=training)
        m, shared = self.task_experts, experts[self.num_tasks * self.task_experts:]
        gates = self.gates(inputs)
        outputs = [mix(gates[k], tf.stack(experts[k * m:(k + 1) * m] + shared, axis=1))
                   for k in range(self.num_tasks)]
        return outputs if self.last else outputs + [mix(gates[-1], tf.stack(experts, axis=1))]

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks, "shared_experts": self.shared_experts,
                "task_experts": self.task_experts, "expert_units": self.expert_units, "last": self.last,
                "dropout": self.dropout}


class ProgressiveLayeredExtraction(tf.keras.layers.Layer):
    """PLE: ``num_levels`` ``ExtractionLevel``s; level ``j``'s task ``k`` reads level ``j-1``'s task ``k``
    output, its shared experts the previous shared output; the last level has no shared gate.

    Input ``[batch, d]``; output a list of ``num_tasks`` ``[batch, expert_units[-1]]``. One level without
    task-specific experts is MMoE with ``shared_experts`` experts.
    """

    def __init__(self, num_tasks: int, num_levels: int, shared_experts: int, task_experts: int,
                 expert_units: Sequence[int], dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if num_levels < 1:
            raise ValueError(f"{self.name}: PLE needs num_levels >= 1, got {num_levels}")
        self.num_tasks = num_tasks
        self.num_levels = num_levels
        self.shared_experts = shared_experts
        self.task_experts = task_experts
        self.expert_units = list(expert_units)
        self.dropout = dropout
        self.levels = [ExtractionLevel(num_tasks, shared_experts, task_experts, expert_units,
                                       last=j == num_levels - 1, dropout=dropout, name=f"level_{j}")
                       for j in range(num_levels)]

    def call(self, inputs, training=None):
        hidden = [inputs] * (self.num_tasks + 1)
        for level in self.levels:
            hidden = level(hidden, training=training)
        return hidden

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks, "num_levels": self.num_levels,
                "shared_experts": self.shared_experts, "task_experts": self.task_experts,
                "expert_units": self.expert_units, "dropout": self.dropout}
