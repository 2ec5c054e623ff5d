"""Loss weighting: how the shared train step combines the tasks' losses (config ``train.loss_weighting``).

Every kind weights task ``t``'s loss ``L_t`` (its global weighted mean, ``tfrecsys.models.tasks``) by the
task's configured ``weight`` ``w_t`` and by a multiplier ``λ_t`` of its own:

* ``fixed`` (default): ``L = Σ_t w_t L_t`` (``λ = 1``);
* ``uncertainty`` (Kendall, Gal & Cipolla, CVPR 2018): ``L = Σ_t exp(−s_t) w_t L_t + s_t`` with a trainable
  ``s_t = log σ_t²`` starting at 0; over ``s_t`` the optimum is ``exp(s_t) = w_t L_t``, i.e. ``λ_t = 1/(w_t L_t)``
  (a small loss gets a large weight, and the total can go negative);
* ``dwa`` (Liu, Johns & Davison, CVPR 2019): ``λ_k = K·softmax_k(r_k / temperature)`` with
  ``r_k = L̄_k(p−1) / L̄_k(p−2)`` the ratio of the task's mean loss over the last two finished periods of
  ``period_steps`` steps (the paper's epochs); ``λ = 1`` until two periods are finished;
* ``gradnorm`` (Chen et al., ICML 2018): ``G_t = ||∇_W λ_t w_t L_t||`` on the shared parameters ``W``,
  ``r_t = L̃_t / mean(L̃)`` with ``L̃_t = L_t / L_t(0)``, and after each step
  ``λ ← λ − learning_rate · ∂/∂λ Σ_t |G_t − mean(G)·r_t^alpha|`` (the target held constant), renormalised to
  ``Σ_t λ_t = K``;
* ``pcgrad`` (Yu et al., NeurIPS 2020): on the shared parameters each task's gradient ``g_i`` loses its
  component along every other task's ``g_j`` that it conflicts with (``g_i·g_j < 0``, others taken in a
  random order): ``g_i ← g_i − (g_i·g_j / ||g_j||²) g_j``; the update is ``Σ_i g_i``. Task-specific
  parameters take their tasks' plain gradients.

"Shared parameters" are the trainable variables that two or more tasks' losses reach. ``gradnorm`` and
``pcgrad`` take one gradient per task (a persistent tape) and work on dense copies of the shared
gradients: for models with large embedding tables they cost memory the fixed kinds do not.

Under a distribution strategy each replica holds its share of every task loss (the shares add up to the
global mean): gradient surgery and GradNorm work on the all-reduced (global) per-task gradients, and DWA and
GradNorm read the all-reduced losses, so every replica takes the same decision. Under a
``LossScaleOptimizer`` the per-task gradients are taken of the scaled losses and unscaled.
"""

import dataclasses
import inspect
from typing import Optional, Sequence

import tensorflow as tf


def global_sum(value):
    """The sum over replicas in a replica context (the value itself outside one)."""
    context = tf.distribute.get_replica_context()
    return value if context is None else context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _global_sums(tensors: list) -> list:
    """Each tensor summed over replicas, in one all-reduce: separate all-reduces that no data dependency
    orders may run in another order on each replica, and collectives then pair up mismatched tensors."""
    flat = global_sum(tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0))
    sizes = [t.shape.num_elements() for t in tensors]
    return [tf.reshape(part, t.shape) for part, t in zip(tf.split(flat, sizes), tensors)]


@dataclasses.dataclass
class TaskLosses:
    """One step's losses: ``shares`` this replica's share of each task's loss (K differentiable scalars on the
    tape, tasks with a loss in order; over replicas they add up to the global means), ``global_means`` the
    global means ``[K]`` (constants, alike on every replica), ``extra`` this replica's share of the model's
    own losses (regularisers, ``add_loss``)."""
    shares: list
    global_means: tf.Tensor
    extra: tf.Tensor


def _replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


class LossWeighting(tf.keras.layers.Layer):
    """``fixed``: ``L = Σ_t w_t L_t``. Base of every kind.

    ``combine(losses: TaskLosses, training)`` → this replica's share of the weighted task losses, the scalar to
    minimise (and to report). A kind with ``uses_task_gradients`` also gives
    ``gradients(tape, losses, variables, optimizer)``, one per variable (``losses`` recorded on ``tape``), which
    the step applies instead of the gradient of the combined loss.
    """

    kind = "fixed"
    uses_task_gradients = False

    def __init__(self, task_weights: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        self.task_weights = tuple(float(w) for w in task_weights)

    @property
    def num_tasks(self) -> int:
        return len(self.task_weights)

    def multipliers(self) -> tf.Tensor:
        """``λ`` ``[K]``: each task's weight on top of its configured one."""
        return tf.ones([self.num_tasks])

    def combine(self, losses: TaskLosses, training: bool) -> tf.Tensor:
        weights = tf.constant(self.task_weights) * tf.stop_gradient(self.multipliers())
        return tf.reduce_sum(weights * tf.stack(losses.shares))

    def get_config(self):
        return {**super().get_config(), "task_weights": list(self.task_weights)}


class UncertaintyWeighting(LossWeighting):
    """``L = Σ_t exp(−s_t) w_t L_t + s_t``, ``s_t = log σ_t²`` trainable, 0 at start (Kendall et al. 2018)."""

    kind = "uncertainty"

    def __init__(self, task_weights, **kwargs):
        super().__init__(task_weights, **kwargs)
        self.log_variance = self.add_weight(name="log_variance", shape=[self.num_tasks], initializer="zeros",
                                            dtype=tf.float32)

    def multipliers(self):
        return tf.exp(-self.log_variance)

    def combine(self, losses, training):
        weighted = tf.constant(self.task_weights) * tf.stack(losses.shares)
        # s_t once per global step: every replica adds its share, and the shares' gradients are summed.
        return tf.reduce_sum(self.multipliers() * weighted + self.log_variance / _replicas())


def dwa_multipliers(last: tf.Tensor, before_last: tf.Tensor, temperature: float) -> tf.Tensor:
    """``K·softmax(r / temperature)`` with ``r = last / before_last`` (a task whose loss falls slowest gets the
    largest weight; equal ratios give all 1)."""
    ratio = tf.math.divide_no_nan(last, before_last)
    return tf.cast(tf.size(last), tf.float32) * tf.nn.softmax(ratio / temperature)


def _state(layer, name, shape, dtype=tf.float32):
    """A non-trainable variable every replica holds alike: it is only assigned values already all-reduced."""
    return layer.add_weight(name=name, shape=shape, initializer="zeros", dtype=dtype, trainable=False,
                            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


class DynamicWeightAverage(LossWeighting):
    """DWA (Liu et al. 2019): weights from the tasks' loss-descent rates over the last two periods."""

    kind = "dwa"

    def __init__(self, task_weights, temperature: float = 2.0, period_steps: int = 100, **kwargs):
        super().__init__(task_weights, **kwargs)
        if temperature <= 0 or period_steps < 1:
            raise ValueError(f"dwa needs temperature > 0 and period_steps >= 1, got {temperature}, {period_steps}")
        self.temperature = float(temperature)
        self.period_steps = int(period_steps)
        self.period_sum = _state(self, "period_sum", [self.num_tasks])
        self.period_count = _state(self, "period_count", [])
        self.last = _state(self, "last_period_mean", [self.num_tasks])
        self.before_last = _state(self, "before_last_period_mean", [self.num_tasks])
        self.periods = _state(self, "finished_periods", [])

    def multipliers(self):
        return tf.cond(self.periods >= 2.0,
                       lambda: dwa_multipliers(self.last, self.before_last, self.temperature),
                       lambda: tf.ones([self.num_tasks]))

    def combine(self, losses, training):
        if training:
            self._record(losses.global_means)
        return super().combine(losses, training)

    def _record(self, global_losses):
        # Unconditional assignments (no tf.cond): a replica-context assignment is a synchronisation point, which
        # a distribution strategy does not allow inside control flow.
        period_sum = self.period_sum + global_losses
        count = self.period_count + 1.0
        closing = count >= float(self.period_steps)
        last = self.last.read_value()
        self.before_last.assign(tf.where(closing, last, self.before_last))
        self.last.assign(tf.where(closing, period_sum / count, last))
        self.period_sum.assign(tf.where(closing, tf.zeros_like(period_sum), period_sum))
        self.period_count.assign(tf.where(closing, 0.0, count))
        self.periods.assign_add(tf.cast(closing, tf.float32))

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "period_steps": self.period_steps}


def per_task_gradients(tape, task_losses, variables, optimizer, weights):
    """``[task][variable]`` this replica's gradients of ``weights[t] · task_losses[t]`` (None where the task
    does not reach the variable), dense, unscaled under a LossScaleOptimizer. ``task_losses`` is a list of
    scalars: sliced from one stacked tensor, every task would reach every variable (with zeros) and none
    would look task-specific."""
    scaled = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    with tape:  # the targets must be recorded, or they reach no variable
        targets = [loss * weights[t] for t, loss in enumerate(task_losses)]
        if scaled:
            targets = [optimizer.get_scaled_loss(target) for target in targets]
    out = []
    for target in targets:
        grads = tape.gradient(target, variables)
        if scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        out.append([None if g is None else tf.convert_to_tensor(g) for g in grads])
    return out


def extra_gradients(tape, extra_loss, variables, optimizer):
    """This replica's gradients of the model's own losses (regularisers), zeros where they reach nothing."""
    scaled = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    with tape:
        loss = optimizer.get_scaled_loss(extra_loss) if scaled else extra_loss
    grads = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    if scaled:
        grads = optimizer.get_unscaled_gradients(grads)
    return [tf.convert_to_tensor(g) for g in grads]


def shared_indices(task_grads) -> list[int]:
    """Variables that two or more tasks reach."""
    return [v for v in range(len(task_grads[0])) if sum(g[v] is not None for g in task_grads) >= 2]


def _unflatten(vector, indices, variables):
    out, start = {}, 0
    for v in indices:
        size = variables[v].shape.num_elements()
        out[v] = tf.reshape(vector[start:start + size], variables[v].shape)
        start += size
    return out


def _dense_task_vectors(task_grads, indices, variables):
    """``[K, P]``: each task's shared gradients flattened (zeros for a variable it does not reach)."""
    rows = []
    for grads in task_grads:
        rows.append(tf.concat([tf.reshape(grads[v], [-1]) if grads[v] is not None else
                               tf.zeros([variables[v].shape.num_elements()]) for v in indices], axis=0))
    return tf.stack(rows)


def pcgrad_project(gradients: tf.Tensor, order: tf.Tensor) -> tf.Tensor:
    """PCGrad: ``gradients`` ``[K, P]`` → projected ``[K, P]``. For each task ``i`` and each other task ``j`` in
    ``order`` (a permutation of ``[0, K)``), ``g_i ← g_i − (g_i·g_j / ||g_j||²) g_j`` when ``g_i·g_j < 0``."""
    tasks = gradients.shape[0]
    projected = []
    for i in range(tasks):
        g = gradients[i]
        for step in range(tasks):
            j = order[step]
            other = tf.gather(gradients, j)
            dot = tf.reduce_sum(g * other)
            conflicting = tf.logical_and(tf.not_equal(j, i), dot < 0.0)
            coefficient = tf.where(conflicting, tf.math.divide_no_nan(dot, tf.reduce_sum(other * other)), 0.0)
            g = g - coefficient * other
        projected.append(g)
    return tf.stack(projected)


def combined_gradients(weighting, combine_shared, tape, losses: TaskLosses, variables, optimizer) -> list:
    """One gradient per variable for the optimizer: the tasks' plain gradients on task-specific variables,
    ``combine_shared(vectors [K, P], global_means [K], optimizer) -> [P]`` on the shared ones (global
    per-task gradients), plus the model's own losses' gradients; each divided by the replica count, as the
    optimizer sums the replicas' gradients and these are already global."""
    weights = tf.constant(weighting.task_weights) * tf.stop_gradient(weighting.multipliers())
    local = per_task_gradients(tape, losses.shares, variables, optimizer, weights)
    extras = extra_gradients(tape, losses.extra, variables, optimizer)
    reached = [(t, v) for t, grads in enumerate(local) for v, g in enumerate(grads) if g is not None]
    reduced = _global_sums([local[t][v] for t, v in reached] + extras)
    task_grads = [[None] * len(variables) for _ in local]
    for (t, v), g in zip(reached, reduced):
        task_grads[t][v] = g
    combined = reduced[len(reached):]
    shared = shared_indices(task_grads)
    for grads in task_grads:
        for v, g in enumerate(grads):
            if g is not None and v not in shared:
                combined[v] = combined[v] + g
    if shared:
        merged = combine_shared(_dense_task_vectors(task_grads, shared, variables), losses.global_means, optimizer)
        for v, g in _unflatten(merged, shared, variables).items():
            combined[v] = combined[v] + tf.cast(g, combined[v].dtype)
    return [g / _replicas() for g in combined]


class PCGrad(LossWeighting):
    """PCGrad (Yu et al. 2020) gradient surgery on the shared parameters; ``seed`` fixes the random order
    (drawn per step from the step number, so every replica draws the same)."""

    kind = "pcgrad"
    uses_task_gradients = True

    def __init__(self, task_weights, seed: int = 0, **kwargs):
        super().__init__(task_weights, **kwargs)
        self.seed = int(seed)

    def gradients(self, tape, losses: TaskLosses, variables, optimizer) -> list:
        return combined_gradients(self, self.combine_shared, tape, losses, variables, optimizer)

    def combine_shared(self, vectors, global_means, optimizer):
        step = tf.cast(optimizer.iterations, tf.int32)
        order = tf.argsort(tf.random.stateless_uniform([self.num_tasks], seed=tf.stack([self.seed, step])))
        return tf.reduce_sum(pcgrad_project(vectors, order), axis=0)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def gradnorm_update(multipliers, gradient_norms, losses, initial_losses, alpha: float, learning_rate: float):
    """One GradNorm step: ``G = λ·g``, target ``mean(G)·r^alpha`` (constant), ``λ ← λ − lr·sign(G − target)·g``,
    kept positive and renormalised to ``Σ λ = K``. ``gradient_norms`` ``g_t = ||∇_W w_t L_t||``."""
    norms = multipliers * gradient_norms
    relative = tf.math.divide_no_nan(losses, initial_losses)
    rate = tf.math.divide_no_nan(relative, tf.reduce_mean(relative))
    target = tf.reduce_mean(norms) * tf.pow(rate, alpha)
    updated = tf.maximum(multipliers - learning_rate * tf.sign(norms - target) * gradient_norms, 1e-3)
    return updated * tf.cast(tf.size(updated), updated.dtype) / tf.reduce_sum(updated)


class GradNorm(LossWeighting):
    """GradNorm (Chen et al. 2018) over all shared parameters."""

    kind = "gradnorm"
    uses_task_gradients = True

    def __init__(self, task_weights, alpha: float = 1.5, learning_rate: float = 0.025, **kwargs):
        super().__init__(task_weights, **kwargs)
        self.alpha = float(alpha)
        self.learning_rate = float(learning_rate)
        self.lambdas = self.add_weight(name="gradnorm_weights", shape=[self.num_tasks], initializer="ones",
                                       trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.initial_losses = _state(self, "initial_losses", [self.num_tasks])

    def multipliers(self):
        return tf.identity(self.lambdas)

    def gradients(self, tape, losses: TaskLosses, variables, optimizer) -> list:
        return combined_gradients(self, self.combine_shared, tape, losses, variables, optimizer)

    def combine_shared(self, vectors, global_means, optimizer):
        losses = global_means * tf.constant(self.task_weights)
        initial = self.initial_losses.assign(
            tf.where(tf.reduce_all(self.initial_losses == 0.0), losses, self.initial_losses))
        # vectors hold ∇ λ_t w_t L_t: divided by λ_t they are the g_t of the formula.
        norms = tf.math.divide_no_nan(tf.norm(vectors, axis=1), self.lambdas)
        merged = tf.reduce_sum(vectors, axis=0)
        with tf.control_dependencies([merged]):
            self.lambdas.assign(gradnorm_update(self.lambdas, norms, losses, initial, self.alpha, self.learning_rate))
        return merged

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "learning_rate": self.learning_rate}


KINDS = {cls.kind: cls for cls in (LossWeighting, UncertaintyWeighting, DynamicWeightAverage, GradNorm, PCGrad)}


def loss_weighting_from_config(block: Optional[dict], task_weights: Sequence[float]) -> LossWeighting:
    """The weighting of a ``train.loss_weighting`` block (``{"kind": ..., settings}``; fixed when absent)."""
    settings = dict(block or {})
    kind = settings.pop("kind", "fixed")
    if kind not in KINDS:
        raise ValueError(f"config.train.loss_weighting.kind {kind!r} is not one of {sorted(KINDS)}")
    cls = KINDS[kind]
    known = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "task_weights",
                                                                                       "kwargs")]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"config.train.loss_weighting: kind {kind!r} takes {known}, not {unknown}")
    return cls(task_weights, name="loss_weighting", **settings)
