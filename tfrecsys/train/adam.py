"""Keras' Adam with the scalars of a step built once per step, and each variable's update fused into one op.

tf_keras' ``Adam.update_step`` builds ``α_t = lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ)`` for every variable it updates (two
variable reads, a cast, two powers, two subtractions, a square root, a product and a quotient) and converts
``1 − β₁``, ``1 − β₂`` and ``ε`` to a constant at each of their uses: 18 of the about 45 graph nodes of each
variable's update. With one table per feature (Census-Income: 32 tables, 48 variables in all) Adam made 60%
of the nodes of MMoE's train function (4,128), and every node is paid for three times before the first step:
traced in Python, optimised by grappler, instantiated by the executor (bench/RESULTS.md, time to first
step, issues 12 and 13). Here a step builds them once and every variable's update reads them (MMoE: 3,171
nodes).

``fused=True`` (the default, ``config.train.optimizer = "adam"``) also writes each variable's update as one
``ResourceApplyAdam`` (``ResourceApplyAdamWithAmsgrad`` with ``amsgrad``), the kernel tf-keras' legacy Adam
uses, instead of Keras' ~12 ops per dense variable and ~25 per embedding table (deduplication, decays, scatters,
the step): MMoE's train function falls to about 2,000 nodes. The algorithm is Keras' own, sparse gradients
included: Keras decays the moments of every row of a table at each step, touched or not, so a sparse gradient
is summed into a dense one (duplicate rows added, as Keras' deduplication adds them) and applied like any
other. Only the rounding differs: the kernel takes ``1 − β₂`` in float32 arithmetic, Keras converts Python's
``1 − 0.999``, and it orders the moment update as ``m + (g − m)(1 − β₁)`` for sparse gradients too; weights
differ from Keras' by a few float32 ulps per step (tests/test_adam.py). ``fused=False`` is Keras' update bit for
bit (``config.train.optimizer = "adam_keras"``); so is every variable the kernel does not cover (adaptive ε,
dtypes other than float32 and float64). The variables, slots and checkpoints are Keras' own either way.
"""

import tensorflow as tf

# The dtypes ResourceApplyAdam has CPU and GPU kernels for that Keras trains in (float16 and bfloat16
# variables go through Keras' update).
_FUSED_DTYPES = (tf.float32, tf.float64)


@tf.keras.utils.register_keras_serializable(package="tfrecsys")
class Adam(tf.keras.optimizers.Adam):
    """``tf.keras.optimizers.Adam`` (same arguments, same algorithm), its per-step scalars shared by the
    variables; ``fused``: each variable's update is one kernel (see the module docstring)."""

    def __init__(self, *args, fused: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused = fused

    def get_config(self):
        return {**super().get_config(), "fused": self.fused}

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
        them, the constants it converts from Python floats for every variable (``1 − β₁``, ``1 − β₂``, ``ε``: the
        same float32 values), and the fused kernel's inputs (``β₁ᵗ``, ``β₂ᵗ``, ``lr``, ``β₁``, ``β₂``)."""
        key = (id(tf.compat.v1.get_default_graph()), dtype)
        cache = getattr(self, "_step_scalars", None)
        if cache is not None and key in cache:
            return cache[key]
        lr = tf.cast(self.learning_rate, dtype)
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        beta_1_power, beta_2_power = tf.pow(beta_1, local_step), tf.pow(beta_2, local_step)
        if self._fuses(dtype):
            # The kernel derives α_t and the constants itself.
            scalars = {"lr": lr, "beta_1": beta_1, "beta_2": beta_2, "beta_1_power": beta_1_power,
                       "beta_2_power": beta_2_power, "epsilon": tf.convert_to_tensor(self.epsilon, dtype)}
        else:
            bias_correction_2 = tf.sqrt(1 - beta_2_power)
            scalars = {"alpha": lr * bias_correction_2 / (1 - beta_1_power),
                       "one_minus_beta_1": tf.convert_to_tensor(1 - self.beta_1, dtype),
                       "one_minus_beta_2": tf.convert_to_tensor(1 - self.beta_2, dtype),
                       "epsilon": (self.epsilon * bias_correction_2 if self.adaptive_epsilon
                                   else tf.convert_to_tensor(self.epsilon, dtype))}
        if cache is not None:
            cache[key] = scalars
        return scalars

    def _fuses(self, dtype) -> bool:
        """Whether a variable of ``dtype`` is updated by the fused kernel."""
        return self.fused and not self.adaptive_epsilon and tf.as_dtype(dtype) in _FUSED_DTYPES

    def _deduplicate_sparse_grad(self, grads):
        # Deduplication (a unique and a segment sum per table) is left to ``update_step``: the fused update sums
        # duplicate rows in the one segment sum that makes the gradient dense.
        return list(grads)

    def update_step(self, gradient, variable):
        """Keras' ``Adam.update_step`` with the scalars of ``_scalars``, fused where ``_fuses``."""
        scalars = self._scalars(variable.dtype)
        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        if self._fuses(variable.dtype):
            if isinstance(gradient, tf.IndexedSlices):
                gradient = tf.math.unsorted_segment_sum(gradient.values, gradient.indices, variable.shape[0])
            arguments = dict(var=variable.handle, m=m.handle, v=v.handle, beta1_power=scalars["beta_1_power"],
                             beta2_power=scalars["beta_2_power"], lr=scalars["lr"], beta1=scalars["beta_1"],
                             beta2=scalars["beta_2"], epsilon=scalars["epsilon"], grad=gradient)
            if self.amsgrad:
                return tf.raw_ops.ResourceApplyAdamWithAmsgrad(vhat=self._velocity_hats[index].handle, **arguments)
            return tf.raw_ops.ResourceApplyAdam(**arguments)
        one_minus_beta_1, one_minus_beta_2 = scalars["one_minus_beta_1"], scalars["one_minus_beta_2"]
        if isinstance(gradient, tf.IndexedSlices):
            [gradient] = super()._deduplicate_sparse_grad([gradient])
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
