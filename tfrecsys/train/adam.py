"""Keras' Adam with the scalars of a step built once per step, not once per variable.

tf_keras' ``Adam.update_step`` builds ``α_t = lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ)`` for every variable it updates (two
variable reads, a cast, two powers, two subtractions, a square root, a product and a quotient) and converts
``1 − β₁``, ``1 − β₂`` and ``ε`` to a constant at each of their uses: 18 of the about 45 graph nodes of each
variable's update. With one table per feature (Census-Income: 32 tables, 48 variables in all) Adam made 60%
of the nodes of MMoE's train function (4,128), and every node is paid for three times before the first step:
traced in Python, optimised by grappler, instantiated by the executor (bench/RESULTS.md, time to first
step, issues 12 and 13). Here a step builds them once and every variable's update reads them: the same ops
on the same values, so the same weights, bit for bit (tests/test_adam.py); the variables, slots and
checkpoints are Keras' own. MMoE's train function: 3,171 nodes.
"""

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="tfrecsys")
class Adam(tf.keras.optimizers.Adam):
    """``tf.keras.optimizers.Adam`` (same arguments, same update), its per-step scalars shared by the variables."""

    # Untracked: a dict attribute would otherwise become checkpointed state of the optimizer.
    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def _distributed_apply_gradients_fn(self, distribution, grads_and_vars, **kwargs):
        # One step's updates: the scalars built for the first variable are reused by the others of the same
        # graph and dtype, then dropped (the next trace builds its own).
        self._step_scalars = {}
        try:
            return super()._distributed_apply_gradients_fn(distribution, grads_and_vars, **kwargs)
        finally:
            self._step_scalars = None

    def _scalars(self, dtype) -> dict:
        """The step's scalars in ``dtype``: ``α_t`` and ``√(1 − β₂ᵗ)`` computed as Keras' ``update_step`` computes
        them, and the constants it converts from Python floats for every variable (``1 − β₁``, ``1 − β₂``,
        ``ε``: the same float32 values)."""
        key = (id(tf.compat.v1.get_default_graph()), dtype)
        cache = getattr(self, "_step_scalars", None)
        if cache is not None and key in cache:
            return cache[key]
        lr = tf.cast(self.learning_rate, dtype)
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1_power = tf.pow(tf.cast(self.beta_1, dtype), local_step)
        beta_2_power = tf.pow(tf.cast(self.beta_2, dtype), local_step)
        bias_correction_2 = tf.sqrt(1 - beta_2_power)
        scalars = {"alpha": lr * bias_correction_2 / (1 - beta_1_power),
                   "one_minus_beta_1": tf.convert_to_tensor(1 - self.beta_1, dtype),
                   "one_minus_beta_2": tf.convert_to_tensor(1 - self.beta_2, dtype),
                   "epsilon": (self.epsilon * bias_correction_2 if self.adaptive_epsilon
                               else tf.convert_to_tensor(self.epsilon, dtype))}
        if cache is not None:
            cache[key] = scalars
        return scalars

    def update_step(self, gradient, variable):
        """Keras' ``Adam.update_step`` with the scalars of ``_scalars``."""
        scalars = self._scalars(variable.dtype)
        one_minus_beta_1, one_minus_beta_2 = scalars["one_minus_beta_1"], scalars["one_minus_beta_2"]
        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        if isinstance(gradient, tf.IndexedSlices):
            m.assign_add(-m * one_minus_beta_1)
            m.scatter_add(tf.IndexedSlices(gradient.values * one_minus_beta_1, gradient.indices))
            v.assign_add(-v * one_minus_beta_2)
            v.scatter_add(tf.IndexedSlices(tf.square(gradient.values) * one_minus_beta_2, gradient.indices))
        else:
            m.assign_add((gradient - m) * one_minus_beta_1)
            v.assign_add((tf.square(gradient) - v) * one_minus_beta_2)
        if self.amsgrad:
            v_hat = self._velocity_hats[index]
            v_hat.assign(tf.maximum(v_hat, v))
            v = v_hat
        variable.assign_sub((m * scalars["alpha"]) / (tf.sqrt(v) + scalars["epsilon"]))
